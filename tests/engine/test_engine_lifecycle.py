"""Engine lifecycle: close at a step boundary and resume in-process, step timeouts,
and regression tests for bugs found while building the engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import structlog
from engine_helpers import (
    TENANT,
    DyingLog,
    FakeOpenAI,
    GatedRead,
    Harness,
    append_run,
    bundle_of,
    completion,
    crash_with_unfinished_runs,
    new_created,
    no_sleep,
    scripted,
    step_started,
)

from ledger.errors import IntegrityError, LedgerError, StorageUnavailableError
from ledger.events import EventCatalog, NewEvent, parse_time
from ledger.log import Log, _Outcome
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine, RedactionPolicy, ToolRegistry, replay
from ledger.orchestration import events as ev
from ledger.orchestration.errors import ToolError
from ledger.orchestration.runner import INTERRUPTED
from ledger.sqlite_store import SQLiteEventStore
from verifier import build_timeline, verify_bundle


async def test_close_stops_at_step_boundary_and_resume_completes(harness: Harness) -> None:
    calls: list[int] = []

    async def slow(args: Any) -> Any:
        calls.append(args["n"])
        await asyncio.sleep(0.2)
        return args["n"]

    tools = ToolRegistry()
    tools.register("slow", slow)
    engine = await harness.open(tools=tools)
    defn = {
        "steps": [
            {"id": f"s{i}", "action": "tool", "tool": "slow", "inputs": {"n": i}}
            | ({"depends_on": [f"s{i - 1}"]} if i else {})
            for i in range(4)
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    await asyncio.sleep(0.3)  # s0 done, s1 in flight
    await harness.close()  # lets s1 finish, starts nothing new, records no terminal event
    assert calls == [0, 1]

    engine = await harness.open(tools=tools)  # start() resumes it
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    assert calls == [0, 1, 2, 3]  # no completed step ran twice
    assert state.results == {"s0": 0, "s1": 1, "s2": 2, "s3": 3}


async def test_regression_a_resumed_run_runs_as_the_agent_it_started_with(
    harness: Harness,
) -> None:
    """A run resumed after its agent was re-registered used the latest registration:
    the second half of one orchestration ran as a different agent from the first, and
    the record of the start did not say which. Now the start records each agent's
    revision, and a resumed run looks that revision up."""
    gate = asyncio.Event()

    async def wait_for_gate(args: Any) -> Any:
        await gate.wait()
        return "done"

    tools = ToolRegistry()
    tools.register("gate", wait_for_gate)
    engine = await harness.open(tools=tools)
    first = await engine.register_agent(
        TENANT, name="bot", provider=scripted({"content": "as registered first"})
    )
    defn = {
        "steps": [
            {"id": "wait", "action": "tool", "tool": "gate", "inputs": {}},
            {"id": "think", "action": "llm", "agent": "bot", "depends_on": ["wait"]},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    records = await harness.log.read_stream(TENANT, started.orchestration_id)  # type: ignore[union-attr]
    assert records[0].event.payload.agent_revisions == {first.agent_id: first.revision}
    closing = asyncio.create_task(harness.close())
    await asyncio.sleep(0.05)
    gate.set()  # the tool step ends; close starts nothing new
    await closing

    # Re-registered while the run is stopped (an engine that resumes nothing).
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    registrar = Engine(log)
    assert await registrar.start(resume=False) == []
    second = await registrar.register_agent(
        TENANT,
        name="bot",
        agent_id=first.agent_id,
        provider=scripted({"content": "as registered later"}),
    )
    assert second.revision > first.revision
    await registrar.close()
    await log.close()

    engine = await harness.open(tools=tools)  # start() resumes the run
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    assert state.results["think"]["content"] == "as registered first"
    later = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await engine.wait(TENANT, later.orchestration_id)
    assert state.results["think"]["content"] == "as registered later"


async def test_step_timeout_is_retried_then_fails(engine: Engine) -> None:
    await engine.register_agent(
        TENANT, name="slowbot", provider=scripted({"content": "x", "delay_seconds": 5})
    )
    defn = {
        "steps": [
            {
                "id": "think",
                "action": "llm",
                "agent": "slowbot",
                "timeout_seconds": 0.1,
                "max_attempts": 2,
            }
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await asyncio.wait_for(engine.wait(TENANT, started.orchestration_id), 10)
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert state.steps[0].attempts == 2
    assert "step timed out after 0.1s" in state.steps[0].result["error"]


async def test_regression_get_state_reads_its_own_writes_under_concurrency(
    engine: Engine, make_agent: Any
) -> None:
    """Found by the benchmark: with many reads in flight, the store's shared reader
    connection served a snapshot from before the orchestration's last commit, so
    get_state() right after completion replayed only the first two events."""
    agent = await make_agent({"content": "ok"})

    async def one() -> None:
        started = await engine.execute(TENANT, agent_id=agent, input="x")
        await engine.wait(TENANT, started.orchestration_id)
        replayed = await engine.get_state(TENANT, started.orchestration_id)
        assert replayed.status == "completed"
        assert replayed == engine.live_state(TENANT, started.orchestration_id)

    for _ in range(4):
        await asyncio.gather(*(one() for _ in range(32)))


async def test_regression_user_tool_raising_any_exception_fails_the_step(engine: Engine) -> None:
    """A user tool raising RuntimeError used to escape the step and leave the
    orchestration running with no terminal event."""

    async def broken(args: Any) -> Any:
        raise RuntimeError("boom")

    engine.tools.register("broken", broken)
    defn = {"steps": [{"id": "t", "action": "tool", "tool": "broken"}]}
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await asyncio.wait_for(engine.wait(TENANT, started.orchestration_id), 10)
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert "RuntimeError: boom" in state.steps[0].result["error"]
    assert state.steps[0].attempts == 1


class _OneStreamUnreadable:
    """The real log, except that reading ``stream`` raises ``error`` while ``failing``
    is set."""

    def __init__(self, log: Log, stream: str, error: LedgerError) -> None:
        self._log = log
        self._stream = stream
        self._error = error
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def read_stream(self, tenant_id: str, stream_id: str, *args: Any) -> Any:
        if self.failing and stream_id == self._stream:
            raise self._error
        return await self._log.read_stream(tenant_id, stream_id, *args)


async def test_regression_one_run_that_cannot_be_resumed_does_not_stop_the_others(
    harness: Harness,
) -> None:
    """start() resumed runs one after another and gave up at the first that raised:
    the runs after it stayed stopped, and start() stayed marked done."""
    log, (first, second) = await crash_with_unfinished_runs(harness, 2)
    seam = _OneStreamUnreadable(log, first, StorageUnavailableError("the disk went away"))
    engine = Engine(seam, sleep=no_sleep)  # type: ignore[arg-type]  # a seam around the real log
    try:
        assert await engine.start() == [second]
        assert (engine.stalled, engine.unresumable) == (1, 0)
        assert (await engine.wait(TENANT, second)).status == "completed"
        seam.failing = False  # storage is back
        assert await engine.resume_stalled() == [first]
        assert (await engine.wait(TENANT, first)).status == "completed"
    finally:
        await engine.close()
        await log.close()


@pytest.mark.parametrize("read", ["read_log", "read_stream"])  # the fold; a run's history
async def test_regression_a_close_during_start_resumes_nothing(harness: Harness, read: str) -> None:
    """close() while start() still read (the log, to build the registry, or a run's
    history, to resume it) found nothing to stop and returned; start() then launched
    the run, which went on writing after the engine closed."""
    log, (oid,) = await crash_with_unfinished_runs(harness, 1)
    seam = GatedRead(log, read)
    engine = Engine(seam, sleep=no_sleep)  # type: ignore[arg-type]  # a seam around the real log
    try:
        starting = asyncio.create_task(engine.start())
        await seam.entered.wait()
        await engine.close()
        head = await log.stream_head(TENANT, oid)
        seam.gate.set()
        assert await starting == []
        for _ in range(20):  # a launched run would write within a few loop turns
            await asyncio.sleep(0)
        assert await log.stream_head(TENANT, oid) == head
    finally:
        await log.close()


async def test_regression_runs_a_cancelled_start_did_not_resume_wait_for_resume_stalled(
    harness: Harness,
) -> None:
    """start() cancelled while it resumed runs stayed started (its registry is whole and
    followed live), but the runs it had not reached were left for the next process:
    a second start() returns at once, and nothing else resumed them."""
    log, oids = await crash_with_unfinished_runs(harness, 2)
    seam = GatedRead(log, "read_stream")
    engine = Engine(seam, sleep=no_sleep)  # type: ignore[arg-type]  # a seam around the real log
    try:
        starting = asyncio.create_task(engine.start())
        await seam.entered.wait()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert engine.stalled == 2
        seam.gate.set()
        assert await engine.resume_stalled() == oids
        for oid in oids:
            assert (await engine.wait(TENANT, oid)).status == "completed"
    finally:
        await engine.close()
        await log.close()


async def test_a_run_whose_history_does_not_read_back_is_counted_and_left_unfinished(
    harness: Harness,
) -> None:
    log, (first, second) = await crash_with_unfinished_runs(harness, 2)
    broken = IntegrityError("leaf 3 is stored under tenant 'x', stream 'y', but its bytes ...")
    seam = _OneStreamUnreadable(log, first, broken)
    engine = Engine(seam, sleep=no_sleep)  # type: ignore[arg-type]  # a seam around the real log
    try:
        assert await engine.start() == [second]
        assert (engine.stalled, engine.unresumable) == (0, 1)
        assert (await engine.wait(TENANT, second)).status == "completed"
        summary = await engine.summaries.get(TENANT, first)
        assert summary is not None
        assert summary.status == "running"  # left as it was, for the next start
    finally:
        await engine.close()
        await log.close()


def _tool_call(
    oid: str, result: Any, error: str | None = None, *, transient: bool = False
) -> list[tuple[str, Any]]:
    common = {"orchestration_id": oid, "step_id": "a", "attempt": 1}
    names = {"gen_ai_tool_name": "effect", "gen_ai_tool_call_id": None}
    done = ev.ToolCompleted(**common, **names, result=result, error=error, transient=transient)
    return [
        step_started(oid, "a", inputs={"n": 1}),
        (ev.TOOL_INVOKED, ev.ToolInvoked(**common, **names, arguments={"n": 1})),
        (ev.TOOL_COMPLETED, done),
    ]


@pytest.mark.parametrize("failed", [None, "transient", "permanent"])
async def test_regression_a_resumed_run_does_not_repeat_a_completed_tool_call(
    harness: Harness, failed: str | None
) -> None:
    # A non-pure tool's tool.completed is written at once, its step.completed later: a
    # crash in between re-ran the call (its effect) on resume. A completed call is not
    # repeated: its recorded result completes the step; its recorded error fails it,
    # retried only if the error was transient, as the live run would have done.
    calls: list[Any] = []

    async def effect(args: Any) -> Any:
        calls.append(args)
        return {"charged": 2}

    tools = ToolRegistry()
    tools.register("effect", effect)
    engine = await harness.open(tools=tools)
    assert harness.log is not None
    defn = {"steps": [{"id": "a", "action": "tool", "tool": "effect", "inputs": {"n": 1}}]}
    error = "boom" if failed else None
    oid = await append_run(
        engine,
        harness.log,
        defn,
        lambda o: _tool_call(o, {"charged": 1}, error, transient=failed == "transient"),
    )
    await harness.close()
    engine = await harness.open(tools=tools)
    state = await engine.wait(TENANT, oid)
    if failed == "permanent":
        assert (state.status, state.reason, calls) == ("failed", "step_failed", [])
        assert state.steps[0].attempts == 1
        records = await harness.log.read_stream(TENANT, oid)
        failures = [r.event.payload for r in records if r.event.type == "step.failed"]
        assert [(f.error, f.retrying) for f in failures] == [("boom", False)]
    elif failed == "transient":
        assert state.status == "completed", state.steps
        assert (calls, state.results) == ([{"n": 1}], {"a": {"charged": 2}})
        assert state.steps[0].attempts == 2
    else:
        assert state.status == "completed", state.steps
        assert (calls, state.results) == ([], {"a": {"charged": 1}})
        assert state.steps[0].attempts == 1
        types = [r.event.type for r in await harness.log.read_stream(TENANT, oid)]
        assert types[-2:] == ["step.completed", "orchestration.completed"]


async def test_regression_a_non_pure_call_whose_result_cannot_be_recorded_is_not_repeated(
    harness: Harness,
) -> None:
    # The call's tool.completed (its error: the receipt is too large for a leaf) stayed
    # buffered while the agent loop went on with pure work; the process died there, and
    # the resumed run made the call (its effect) again.
    calls: list[Any] = []
    box: list[DyingLog] = []

    async def effect(args: Any) -> Any:  # "send the e-mail", then a large receipt
        calls.append(args)
        return {"receipt": "x" * 300_000}

    async def probe(args: Any) -> Any:  # later pure work, during which the process dies
        box[0].dead = True
        return "ok"

    def tools() -> ToolRegistry:
        registry = ToolRegistry()
        registry.register("effect", effect, pure=False)
        registry.register("probe", probe, pure=True)
        return registry

    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    box.append(DyingLog(log))
    engine = Engine(box[0], tools=tools(), sleep=no_sleep)  # type: ignore[arg-type]
    harness.engine = engine
    await engine.start()
    asks = [{"name": "effect", "arguments": {"n": 1}}, {"name": "probe", "arguments": {}}]
    agent = await engine.register_agent(
        TENANT,
        name="bot",
        provider=scripted({"tool_calls": asks}, {"content": "done"}),
        tools=["effect", "probe"],
    )
    started = await engine.execute(TENANT, agent_id=agent.agent_id, input="hi")
    await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert box[0].dead
    assert len(calls) == 1
    await harness.close()

    engine = await harness.open(tools=tools())
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert state.status == "completed", state
    assert len(calls) == 1, f"the non-pure tool ran {len(calls)} times"
    assert state.results["content"] == "done"


class _SlowCommit:
    """The real log; once ``slow`` is set, the next commit is acknowledged 0.5 s late (a
    busy disk), its outcome uncancellable as the real log's is."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.slow = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(self, *args: Any, **kw: Any) -> Any:
        real = await self._log.submit(*args, **kw)
        if not self.slow:
            return real
        self.slow = False
        late: asyncio.Future[Any] = _Outcome(loop=asyncio.get_running_loop())

        async def relay() -> None:
            await asyncio.sleep(0.5)
            try:
                late.set_result(await real)
            except Exception as e:  # handed on as the real outcome
                late.set_exception(e)

        self._relay = asyncio.ensure_future(relay())
        return late


@pytest.mark.parametrize("fails", [False, True])
async def test_regression_a_step_timeout_after_a_non_pure_call_completed_does_not_repeat_it(
    harness: Harness, fails: bool
) -> None:
    # The step timer fired while the call's tool.completed was being committed: the
    # step was retried as timed out and the call (its effect) made again. The recorded
    # outcome is the attempt's, as it is for a resumed run.
    calls: list[Any] = []
    box: list[_SlowCommit] = []

    async def effect(args: Any) -> Any:  # "charge the card": done, and fast
        calls.append(args)
        box[0].slow = True
        if fails:
            raise ToolError("card declined")
        return {"charged": True}

    tools = ToolRegistry()
    tools.register("effect", effect, pure=False)
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    box.append(_SlowCommit(log))
    engine = Engine(box[0], tools=tools, sleep=no_sleep)  # type: ignore[arg-type]
    harness.engine = engine
    await engine.start()
    step = {"id": "pay", "action": "tool", "tool": "effect", "timeout_seconds": 0.2}
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": [step]})
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=20)
    assert len(calls) == 1, f"the non-pure tool ran {len(calls)} times"
    if fails:
        assert (state.status, state.steps[0].attempts) == ("failed", 1)
    else:
        assert (state.status, state.results) == ("completed", {"pay": {"charged": True}})
    assert state == await engine.get_state(TENANT, started.orchestration_id)


class _SlowAnswerCommit(_SlowCommit):
    """The real log; the first commit holding an ``llm.completed`` is acknowledged late."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self._armed = True

    async def submit(self, *args: Any, **kw: Any) -> Any:
        if self._armed and any(e.type == ev.LLM_COMPLETED for e in args[3]):
            self._armed, self.slow = False, True
        return await super().submit(*args, **kw)


@pytest.mark.parametrize("answer", ["final", "refused", "asks for a tool"])
async def test_regression_a_step_timeout_after_a_paid_model_call_returned_does_not_repeat_it(
    harness: Harness, fake_openai: FakeOpenAI, answer: str
) -> None:
    # The step timer fired while a (paid) model call's llm.completed was being
    # committed: the step was retried as timed out and the model asked again, though
    # the call's outcome was in the log. An answer with no tool calls is the llm
    # step's outcome, a refusal ends the attempt: neither is asked again. A model
    # that asks for tools leaves the step's loop unfinished: the timeout stands.
    fake_openai.script = {
        "final": [completion("answer")],
        "refused": [400],
        "asks for a tool": [completion(None, [{"name": "echo", "args": {"x": 1}}])],
    }[answer]
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    engine = Engine(_SlowAnswerCommit(log), sleep=no_sleep)  # type: ignore[arg-type]
    harness.engine = engine
    await engine.start()
    provider = {"kind": "openai", "base_url": fake_openai.url}
    await engine.register_agent(TENANT, name="gpt", provider=provider, model="m1", tools=["echo"])
    step = {"id": "s", "action": "llm", "agent": "gpt", "timeout_seconds": 0.2}
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": [step]})
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=20)
    if answer == "final":
        assert len(fake_openai.requests) == 1, "the model was asked again"
        assert (state.status, state.steps[0].attempts) == ("completed", 1), state
        assert state.results["s"]["content"] == "answer"
    elif answer == "refused":
        assert len(fake_openai.requests) == 1, "the model was asked again"
        assert (state.status, state.reason, state.steps[0].attempts) == (
            "failed",
            "provider_error",
            1,
        ), state
    else:
        # Attempt 2 starts the loop again, and the model answers it ("done").
        assert len(fake_openai.requests) == 2
        assert (state.status, state.steps[0].attempts) == ("completed", 2), state
        assert state.results["s"]["content"] == "done"
    assert state == await engine.get_state(TENANT, started.orchestration_id)


class _Batches:
    """The real log, noting the event types of each batch submitted."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.batches: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(self, *args: Any, **kw: Any) -> Any:
        self.batches.append([e.type for e in args[3]])
        return await self._log.submit(*args, **kw)


async def test_regression_a_failed_paid_llm_call_is_recorded_before_the_run_goes_on(
    harness: Harness,
) -> None:
    # A call to a provider with outside effects (not deterministic) that failed left
    # its llm.completed buffered with the rest of the run: a crash there lost the
    # record of a call that may have been paid for.
    batches, engine = await harness.open_on(_Batches)
    agent = await engine.register_agent(
        TENANT,
        name="bot",  # no answer for this turn: the call fails (after its delay)
        provider=scripted({"content": "x", "when": "never", "delay_seconds": 0.001}),
    )
    started = await engine.execute(TENANT, agent_id=agent.agent_id, input="hi")
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert (state.status, state.reason) == ("failed", "provider_error")
    assert ["llm.completed"] in batches.batches, batches.batches


@pytest.mark.parametrize("mode", ["workflow", "agent loop"])
async def test_regression_a_resumed_run_whose_history_cannot_be_read_back_ends_failed(
    harness: Harness, mode: str
) -> None:
    # A run whose recorded definition (or a recorded agent-loop round) did not decode,
    # as a redaction rule reaching into it once left it, crashed on every start and
    # stayed "running" for ever.
    engine = await harness.open()
    assert harness.log is not None
    commitment = "redacted:sha256:" + "0" * 64
    agent = await engine.register_agent(TENANT, name="bot", provider=scripted())
    wf = await engine.register_workflow(
        TENANT, name="w", definition={"steps": [{"id": "a", "action": "llm", "prompt": "hi"}]}
    )
    workflow = mode == "workflow"
    created = new_created(
        engine,
        workflow_id=wf.workflow_id if workflow else None,
        agent_id=None if workflow else agent.agent_id,
        agents=[agent.agent_id],
        input="hi",
    )
    oid = created.orchestration_id
    events = [NewEvent(ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=oid))]
    if workflow:
        created = msgspec.structs.replace(created, definition={"steps": commitment})
    else:
        common = {"orchestration_id": oid, "step_id": "llm-1", "attempt": 1}
        events += [
            NewEvent(
                ev.STEP_STARTED,
                ev.StepStarted(**common, agent_id=agent.agent_id, action="llm", inputs=None),
            ),
            NewEvent(ev.STEP_COMPLETED, ev.StepCompleted(**common, output=commitment)),
        ]
    await harness.log.append(TENANT, oid, 0, [NewEvent(ev.ORCHESTRATION_CREATED, created), *events])
    await harness.close()

    engine = await harness.open()
    state = await engine.wait(TENANT, oid, max_wait=10)
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert harness.log is not None
    records = await harness.log.read_stream(TENANT, oid)
    assert "cannot be read back" in str(records[-1].event.payload.error)


async def test_regression_resuming_a_run_whose_history_is_terminal_keeps_no_writer(
    engine: Engine, make_agent: Any
) -> None:
    # The run had ended (its registry entry lagging behind, say): nothing launched it,
    # so nothing ever dropped the writer kept for it.
    agent_id = await make_agent({"content": "done"})
    started = await engine.execute(TENANT, agent_id=agent_id, input="hi")
    await engine.wait(TENANT, started.orchestration_id)
    summary = await engine.summaries.get(TENANT, started.orchestration_id)
    assert summary is not None
    assert not await engine._runs._resume(summary)
    assert (TENANT, started.orchestration_id) not in engine._runs.writers


async def test_regression_a_resumed_decision_skips_the_branch_it_recorded_not_taken(
    harness: Harness,
) -> None:
    # A resumed run took the branch not taken from the decision's recorded output: one
    # a redaction of step.completed:output had left a commitment (a string) skipped
    # nothing, so a step of that branch that also waited on a step in flight at the
    # crash ran, with its effect. The branch comes from decision.made and the definition.
    calls: list[str] = []

    async def slow(args: Any) -> Any:
        return {"ok": True}

    async def effect(args: Any) -> Any:
        calls.append("effect")
        return {"done": True}

    tools = ToolRegistry()
    tools.register("slow", slow)
    tools.register("effect", effect)
    engine = await harness.open(tools=tools)
    assert harness.log is not None
    defn = {
        "steps": [
            {"id": "d", "action": "decision", "condition": {"exists": "input"}, "else": ["e"]},
            {"id": "x", "action": "tool", "tool": "slow", "inputs": {}},
            {"id": "e", "action": "tool", "tool": "effect", "inputs": {}, "depends_on": ["d", "x"]},
        ]
    }

    def history(oid: str) -> list[tuple[str, Any]]:
        d = {"orchestration_id": oid, "step_id": "d"}
        made = ev.DecisionMade(**d, condition={}, values={}, branch="then", skipped=("e",))
        return [
            (
                ev.STEP_STARTED,
                ev.StepStarted(**d, agent_id=None, action="decision", attempt=1, inputs=None),
            ),
            (ev.DECISION_MADE, made),
            (
                ev.STEP_COMPLETED,
                ev.StepCompleted(**d, attempt=1, output="redacted:sha256:" + "0" * 64),
            ),
            step_started(oid, "x"),
            (
                ev.TOOL_INVOKED,
                ev.ToolInvoked(
                    orchestration_id=oid,
                    step_id="x",
                    attempt=1,
                    gen_ai_tool_name="slow",
                    gen_ai_tool_call_id=None,
                    arguments={},
                ),
            ),
        ]

    oid = await append_run(engine, harness.log, defn, history)
    await harness.close()
    engine = await harness.open(tools=tools)
    state = await engine.wait(TENANT, oid, max_wait=10)
    assert state.status == "completed", state.steps
    assert calls == []
    assert [(s.step_id, s.status) for s in state.steps if s.step_id == "e"] == [("e", "skipped")]


def _blocking_then(entered: asyncio.Event, result: Any) -> tuple[Any, Any]:
    """A tool that blocks once called (its tool.invoked durable: it is not pure), and
    one that answers ``result`` at once, for the process that resumes the run."""

    async def blocking(args: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    async def answer(args: Any) -> Any:
        return result

    return blocking, answer


async def _resume_redacted(
    harness: Harness, oid: str, step_id: str, **engine_options: Any
) -> tuple[Any, list[Any]]:
    """Start the engine again and wait for ``oid`` to end; its state (equal to a replay)
    and records. ``step_id``'s recorded output content is a commitment exactly when the
    run's redaction policy covers it."""
    engine = await harness.open(**engine_options)
    state = await engine.wait(TENANT, oid, max_wait=10)
    assert harness.log is not None
    records = list(await harness.log.read_stream(TENANT, oid))
    assert replay(r.event for r in records) == state
    contents = [
        p.output["content"]
        for r in records
        if isinstance(p := r.event.payload, ev.StepCompleted) and p.step_id == step_id
    ]
    redacted = engine_options.get("redaction") is not None
    assert [c.startswith("redacted:sha256:") for c in contents] == [redacted]
    return state, records


@pytest.mark.parametrize("paths", [None, ["step.completed:output.content"]])
async def test_a_workflow_resumed_under_a_redacted_output_field_takes_the_same_branches(
    harness: Harness, paths: list[str] | None
) -> None:
    policy = RedactionPolicy(paths, lambda t: b"salt") if paths else None
    entered = asyncio.Event()
    blocking, answer = _blocking_then(entered, {"ok": True})
    calls: list[str] = []

    async def effect(args: Any) -> Any:
        calls.append("effect")
        return {"done": True}

    def tools(slow: Any) -> ToolRegistry:
        registry = ToolRegistry()
        registry.register("slow", slow)
        registry.register("effect", effect)
        return registry

    definition = {
        "steps": [
            {"id": "a", "action": "llm", "prompt": "hi"},
            {"id": "d", "action": "decision", "condition": {"eq": ["input.x", 1]}, "else": ["e"]},
            {"id": "x", "action": "tool", "tool": "slow", "inputs": {}},
            {"id": "e", "action": "tool", "tool": "effect", "inputs": {}, "depends_on": ["d", "x"]},
        ]
    }
    engine = await harness.open(tools=tools(blocking), redaction=policy, stop_grace_seconds=0.1)
    wf = await engine.register_workflow(TENANT, name="w", definition=definition)
    agent = await engine.register_agent(TENANT, name="a", provider=scripted())
    started = await engine.execute(
        TENANT, workflow_id=wf.workflow_id, agent_id=agent.agent_id, input={"x": 1}
    )
    await asyncio.wait_for(entered.wait(), 10)
    await harness.close()  # x is cancelled in flight; the run stays "running"
    state, _ = await _resume_redacted(
        harness, started.orchestration_id, "a", tools=tools(answer), redaction=policy
    )
    assert state.status == "completed", state.steps
    assert calls == []
    assert [s.status for s in state.steps if s.step_id == "e"] == ["skipped"]


@pytest.mark.parametrize("paths", [None, ["step.completed:output.content"]])
async def test_an_agent_loop_resumed_under_a_redacted_output_field_completes(
    harness: Harness, paths: list[str] | None
) -> None:
    policy = RedactionPolicy(paths, lambda t: b"salt") if paths else None
    entered = asyncio.Event()
    blocking, answer = _blocking_then(entered, {"ok": True})

    def tools(fn: Any) -> ToolRegistry:
        registry = ToolRegistry()
        registry.register("lookup", fn)
        return registry

    provider = scripted(
        {"content": "looking", "tool_calls": [{"name": "lookup", "arguments": {"q": 1}}]},
        {"content": "final answer"},
    )
    engine = await harness.open(tools=tools(blocking), redaction=policy, stop_grace_seconds=0.1)
    agent = await engine.register_agent(TENANT, name="a", provider=provider, tools=["lookup"])
    started = await engine.execute(TENANT, agent_id=agent.agent_id, input="go")
    await asyncio.wait_for(entered.wait(), 10)
    await harness.close()  # tool-1-1 is cancelled in flight; llm-1 is completed
    state, records = await _resume_redacted(
        harness, started.orchestration_id, "llm-1", tools=tools(answer), redaction=policy
    )
    assert (state.status, state.reason) == ("completed", None), records[-1].event.payload
    assert state.results == {"content": "final answer", "json": None}


async def test_regression_redacting_a_nullable_field_leaves_null_as_null(harness: Harness) -> None:
    # A rule on tool.completed:error committed the null of every successful call, so
    # the log held an error for it, and a run resumed between that call's
    # tool.completed and its step.completed failed the step whose call had succeeded.
    policy = RedactionPolicy(["tool.completed:error"], lambda t: b"salt")
    calls: list[Any] = []
    box: list[DyingLog] = []

    async def charge(args: Any) -> Any:  # not pure: its tool.completed is written at once
        calls.append(args)
        return {"charged": True}

    async def probe(args: Any) -> Any:  # later pure work, during which the process dies
        box[0].dead = True
        return "ok"

    def tools() -> ToolRegistry:
        registry = ToolRegistry()
        registry.register("charge", charge)
        registry.register("probe", probe, pure=True)
        return registry

    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    box.append(DyingLog(log))
    engine = Engine(box[0], tools=tools(), sleep=no_sleep, redaction=policy)  # type: ignore[arg-type]
    harness.engine = engine
    await engine.start()
    steps = [
        {"id": "a", "action": "tool", "tool": "charge", "inputs": {}},
        {"id": "b", "action": "tool", "tool": "probe", "inputs": {}, "depends_on": ["a"]},
    ]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert box[0].dead
    await harness.close()

    engine = await harness.open(tools=tools(), redaction=policy)
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert harness.log is not None
    records = await harness.log.read_stream(TENANT, started.orchestration_id)
    done = [r.event.payload for r in records if isinstance(r.event.payload, ev.ToolCompleted)]
    assert [(d.step_id, d.error) for d in done] == [("a", None), ("b", None)]
    assert (state.status, state.reason) == ("completed", None), state.steps
    assert calls == [{}]
    assert state.results == {"a": {"charged": True}, "b": "ok"}


async def test_regression_a_start_made_durable_while_closing_is_not_launched(
    harness: Harness,
) -> None:
    # execute() checked for close() only on entry: one waiting for its start to be
    # durable when close() ran launched its run after close() had returned, and its
    # tool ran while the server closed the log under it. The run is left durable and
    # unlaunched; the next start resumes it.
    calls: list[str] = []

    async def effect(args: Any) -> Any:
        calls.append("effect")
        return {"ok": True}

    tools = ToolRegistry()
    tools.register("effect", effect)
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    gated = GatedRead(log, "submit")  # the engine's stream writes; registrations append
    engine = Engine(gated, tools=tools, sleep=no_sleep)  # type: ignore[arg-type]
    await engine.start()
    steps = [{"id": "a", "action": "tool", "tool": "effect", "inputs": {}}]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    execute = asyncio.create_task(engine.execute(TENANT, workflow_id=wf.workflow_id))
    await gated.entered.wait()  # the start is being made durable
    await engine.close()
    gated.gate.set()
    state = await execute
    assert state.status == "running"
    assert (engine._runs._tasks, engine._runs._runners, engine._runs.writers) == ({}, {}, {})
    assert engine.live_state(TENANT, state.orchestration_id) == await engine.get_state(
        TENANT, state.orchestration_id
    )
    await harness.close()
    assert calls == []

    engine = await harness.open(tools=tools)
    done = await engine.wait(TENANT, state.orchestration_id, max_wait=10)
    assert (done.status, calls) == ("completed", ["effect"])


class _ReadThenWait:
    """The real log, except that the first read_stream, once it has read, waits for
    ``gate``: the time a resume spends between reading a history and acting on it."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.gate = asyncio.Event()
        self.read = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def read_stream(self, *args: Any, **kw: Any) -> Any:
        records = await self._log.read_stream(*args, **kw)
        if not self.read.is_set():
            self.read.set()
            await self.gate.wait()
        return records


async def test_regression_a_cancel_during_a_resume_s_read_is_not_lost_or_overrun(
    harness: Harness,
) -> None:
    # A cancel of a run not yet resumed wrote orchestration.cancelled directly; written
    # while a resume was between its read and its launch, it never reached the live
    # state (no entry for the run yet), and a runner was launched over the cancelled
    # run on the stale history (it then crashed on a stream conflict).
    async def block(args: Any) -> Any:  # the resumed run is still going when cancelled
        await asyncio.Event().wait()

    tools = ToolRegistry()
    tools.register("block", block)
    engine = await harness.open(tools=tools)
    assert harness.log is not None
    steps = [{"id": "a", "action": "tool", "tool": "block", "inputs": {}}]
    oid = await append_run(engine, harness.log, {"steps": steps})
    await harness.close()
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    gated = _ReadThenWait(log)
    engine = Engine(gated, tools=tools, sleep=no_sleep)  # type: ignore[arg-type]
    harness.engine = engine
    start = asyncio.create_task(engine.start())
    await gated.read.wait()  # the resume has read the run's history
    cancel = asyncio.create_task(engine.cancel(TENANT, oid, reason="operator"))

    async def cancel_written_or_waiting() -> None:
        while not cancel.done():
            entry = engine._runs._external_locks.get((TENANT, oid))
            if entry is not None and entry[1][0] > 1:  # it waits for the resume
                return
            await asyncio.sleep(0.001)

    await asyncio.wait_for(cancel_written_or_waiting(), 10)
    gated.gate.set()
    await start
    cancelled = await cancel
    await engine.wait(TENANT, oid, max_wait=10)
    replayed = await engine.get_state(TENANT, oid)
    assert (cancelled.status, replayed.status) == ("cancelled", "cancelled")
    assert engine.live_state(TENANT, oid) == replayed
    records = await log.read_stream(TENANT, oid)
    assert [r.event.type for r in records].count(ev.ORCHESTRATION_CANCELLED) == 1


class _CommitThenWait:
    """The real log, except that the first stream write, once committed, is reported
    to its writer only when ``gate`` opens: the moment between a start being durable
    (the registry already lists the run) and ``execute()`` going on to launch it."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.gate = asyncio.Event()
        self.committed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(self, *args: Any, **kw: Any) -> Any:
        outcome = await self._log.submit(*args, **kw)
        if self.committed.is_set():
            return outcome
        reported: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def relay() -> None:
            receipts = await outcome
            self.committed.set()
            await self.gate.wait()
            reported.set_result(receipts)

        self._relay = asyncio.create_task(relay())
        return reported


async def test_regression_a_cancel_between_a_start_s_commit_and_its_launch_cancels_the_run(
    harness: Harness,
) -> None:
    # cancel() of a run with no runner yet wrote orchestration.cancelled directly; one
    # that came after execute()'s start was committed (the run listed, so cancellable)
    # but before execute() launched it left the run launched over the cancelled
    # stream: its first write conflicted and the live state never saw the cancel.
    async def block(args: Any) -> Any:
        await asyncio.Event().wait()

    tools = ToolRegistry()
    tools.register("block", block)
    seam, engine = await harness.open_on(_CommitThenWait, tools=tools)
    steps = [{"id": "a", "action": "tool", "tool": "block", "inputs": {}}]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    oid = engine.new_orchestration_id()
    execute = asyncio.create_task(
        engine.execute(TENANT, workflow_id=wf.workflow_id, orchestration_id=oid)
    )
    await asyncio.wait_for(seam.committed.wait(), 10)
    assert await engine.summaries.get(TENANT, oid) is not None  # listed: cancellable
    with structlog.testing.capture_logs() as logs:
        cancel = asyncio.create_task(engine.cancel(TENANT, oid, reason="operator"))
        for _ in range(20):
            await asyncio.sleep(0)
        seam.gate.set()
        await execute
        cancelled = await asyncio.wait_for(cancel, 10)
        final = await engine.wait(TENANT, oid, max_wait=10)
    assert [e for e in logs if e["log_level"] == "error"] == []  # no run crashed
    assert (cancelled.status, final.status) == ("cancelled", "cancelled")
    assert (engine._runs._tasks, engine._runs._runners) == ({}, {})
    assert engine.live_state(TENANT, oid) == await engine.get_state(TENANT, oid)
    events = [r.event for r in await harness.log.read_stream(TENANT, oid)]
    assert [e.type for e in events].count(ev.ORCHESTRATION_CANCELLED) == 1
    assert events[-1].type == ev.ORCHESTRATION_CANCELLED


async def _block_forever(_: float) -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize("ending", ["cancel", "timeout"])
async def test_regression_a_run_ended_during_a_retry_backoff_ends_the_step_too(
    harness: Harness, ending: str
) -> None:
    # A step whose attempt failed transiently (step.failed retrying=true) was waiting
    # out its backoff when the run was cancelled or timed out: the run ended and the
    # step stayed "running" for ever, its promised retry never recorded as abandoned.
    calls: list[Any] = []

    async def flaky(args: Any) -> Any:
        calls.append(args)
        raise ToolError("busy", transient=True)

    tools = ToolRegistry()
    tools.register("flaky", flaky)
    engine = await harness.open(tools=tools, sleep=_block_forever)
    steps = [{"id": "a", "action": "tool", "tool": "flaky", "inputs": {}}]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    if ending == "cancel":
        started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
        for _ in range(1000):
            if calls:
                break
            await asyncio.sleep(0.01)
        state = await asyncio.wait_for(engine.cancel(TENANT, started.orchestration_id), 10)
        assert (state.status, calls) == ("cancelled", [{}])
    else:
        started = await engine.execute(TENANT, workflow_id=wf.workflow_id, timeout_seconds=0.3)
        state = await asyncio.wait_for(engine.wait(TENANT, started.orchestration_id), 10)
        assert (state.status, state.reason, calls) == ("failed", "timed_out", [{}])
    assert [(s.step_id, s.status, s.attempts) for s in state.steps] == [("a", "failed", 1)]
    assert await engine.get_state(TENANT, started.orchestration_id) == state


async def test_step_failed_records_what_ended_the_attempt(harness: Harness) -> None:
    # A step's own error is the kind the run ends with; a step beside it that the run's
    # end cut short is "aborted"; a step in flight at a crash, with no attempt left,
    # is "interrupted", and so is the run.
    async def fail(args: Any) -> Any:
        raise ToolError("no", transient=False)

    async def hang(args: Any) -> Any:
        await asyncio.Event().wait()

    tools = ToolRegistry()
    tools.register("fail", fail)
    tools.register("hang", hang)
    engine = await harness.open(tools=tools)
    assert harness.log is not None
    both = {
        "steps": [
            {"id": "hang", "action": "tool", "tool": "hang", "inputs": {}},
            {"id": "bad", "action": "tool", "tool": "fail", "inputs": {}},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="both", definition=both)
    live = (await engine.execute(TENANT, workflow_id=wf.workflow_id)).orchestration_id
    await asyncio.wait_for(engine.wait(TENANT, live), 10)
    one = [{"id": "a", "action": "tool", "tool": "echo", "inputs": {}, "max_attempts": 1}]
    crashed = await append_run(
        engine, harness.log, {"steps": one}, lambda oid: [step_started(oid, "a")]
    )
    await harness.close()
    engine = await harness.open(tools=tools)
    assert harness.log is not None
    for oid, reason, failures in (
        (live, "step_failed", [("bad", "no", "step_failed"), ("hang", "step_failed", "aborted")]),
        (crashed, "interrupted", [("a", INTERRUPTED, "interrupted")]),
    ):
        state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
        assert (state.status, state.reason) == ("failed", reason)
        records = await harness.log.read_stream(TENANT, oid)
        failed = [r.event.payload for r in records if r.event.type == ev.STEP_FAILED]
        assert [(f.step_id, f.error, f.kind) for f in failed] == failures
        assert not any(f.retrying for f in failed)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("provider_error", "provider_error"),
        ("interrupted", "interrupted"),
        ("step_failed", "step_failed"),
        # A leaf written before kind was recorded: the run ends as it always did.
        (None, "step_failed"),
    ],
)
async def test_regression_a_resumed_run_ends_with_the_kind_of_its_step_s_final_failure(
    harness: Harness, kind: ev.FailureKind | None, reason: str
) -> None:
    # The process died after a step's final step.failed was durable, before the run's
    # orchestration.failed: the resumed run ended step_failed whatever the live run
    # would have said (test_engine_restart.py kills a real process at that point).
    engine = await harness.open()
    assert harness.log is not None
    steps = [{"id": "a", "action": "tool", "tool": "echo", "inputs": {}}]

    def history(oid: str) -> list[tuple[str, Any]]:
        failed = ev.StepFailed(
            orchestration_id=oid, step_id="a", attempt=1, error="no", retrying=False, kind=kind
        )
        return [step_started(oid, "a"), (ev.STEP_FAILED, failed)]

    oid = await append_run(engine, harness.log, {"steps": steps}, history)
    await harness.close()
    engine = await harness.open()
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
    assert (state.status, state.reason) == ("failed", reason)
    assert [(s.step_id, s.status, s.result) for s in state.steps] == [
        ("a", "failed", {"error": "no"})
    ]
    recorded = [r.event for r in await harness.log.read_stream(TENANT, oid)]
    assert [e.type for e in recorded[-2:]] == [ev.STEP_FAILED, ev.ORCHESTRATION_FAILED]
    assert recorded[-1].payload.error == "step 'a' failed: no"
    assert await engine.get_state(TENANT, oid) == state


class _StepFailedV1(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``step.failed`` as the engine wrote it before it recorded ``kind``."""

    orchestration_id: str
    step_id: str
    attempt: int
    error: str
    retrying: bool


class _DecisionMadeV1(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``decision.made`` as the engine wrote it before it recorded ``attempt``."""

    orchestration_id: str
    step_id: str
    condition: Any
    values: dict[str, Any]
    branch: str
    skipped: tuple[str, ...]


#: The catalog of an engine from before ``kind`` and ``attempt``: its leaves lack both.
_CATALOG_V1 = EventCatalog(
    {name: ORCHESTRATION_EVENTS.payload_type(name) for name in ORCHESTRATION_EVENTS.names()}
    | {ev.STEP_FAILED: _StepFailedV1, ev.DECISION_MADE: _DecisionMadeV1}
)


async def test_regression_a_run_in_leaves_without_kind_or_attempt_resumes_and_verifies(
    harness: Harness,
) -> None:
    # A log written by an engine from before step.failed's kind and decision.made's
    # attempt (leaf format v1 both ways: log-format.md §2), its process dead after a
    # step's final failure: the engine of now reads those leaves, resumes the run as
    # it did then (step_failed: no kind says otherwise), its state is their replay,
    # and the orchestration's bundle verifies.
    engine = await harness.open()
    steps = [
        {"id": "d", "action": "decision", "condition": {"exists": "input"}, "else": ["e"]},
        {"id": "a", "action": "tool", "tool": "echo", "inputs": {}, "depends_on": ["d"]},
        {"id": "e", "action": "tool", "tool": "echo", "inputs": {}, "depends_on": ["d"]},
    ]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    created = new_created(engine, workflow_id=wf.workflow_id, input={"x": 1})
    oid = created.orchestration_id
    await harness.close()

    def started(step_id: str, action: ev.Action) -> NewEvent:
        return NewEvent(
            ev.STEP_STARTED,
            ev.StepStarted(
                orchestration_id=oid,
                step_id=step_id,
                agent_id=None,
                action=action,
                attempt=1,
                inputs=None,
            ),
        )

    d = {"orchestration_id": oid, "step_id": "d"}
    old = await Log.open(SQLiteEventStore(harness.path), harness.signer, _CATALOG_V1)
    await old.append(
        TENANT,
        oid,
        0,
        [
            NewEvent(ev.ORCHESTRATION_CREATED, created),
            NewEvent(ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=oid)),
            started("d", "decision"),
            NewEvent(
                ev.DECISION_MADE,
                _DecisionMadeV1(
                    **d, condition={"exists": "input"}, values={}, branch="then", skipped=("e",)
                ),
            ),
            NewEvent(
                ev.STEP_COMPLETED,
                ev.StepCompleted(
                    **d, attempt=1, output={"branch": "then", "result": True, "skipped": ["e"]}
                ),
            ),
            started("a", "tool"),
            NewEvent(
                ev.STEP_FAILED,
                _StepFailedV1(
                    orchestration_id=oid, step_id="a", attempt=1, error="no", retrying=False
                ),
            ),
        ],
    )
    await old.close()

    engine = await harness.open()
    assert harness.log is not None
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert [(s.step_id, s.status) for s in state.steps] == [
        ("d", "completed"),
        ("a", "failed"),
        ("e", "skipped"),
    ]
    records = await harness.log.read_stream(TENANT, oid)
    (failed,) = [r for r in records if r.event.type == ev.STEP_FAILED]
    (decided,) = [r for r in records if r.event.type == ev.DECISION_MADE]
    assert b'"kind":' not in failed.leaf
    assert b'"attempt":' not in decided.leaf
    assert (failed.event.payload.kind, decided.event.payload.attempt) == (None, None)
    assert replay(r.event for r in records) == state
    bundle = await bundle_of(harness.log, oid)
    verify_bundle(bundle, harness.log.verifier.vkey)
    timeline = build_timeline(bundle, harness.log.verifier.vkey)
    assert timeline.verified
    assert [(s.step_id, s.status, s.failure_kind) for s in timeline.steps] == [
        ("d", "completed", None),
        ("a", "failed", None),
        ("e", "skipped", None),
    ]


async def test_regression_a_resumed_run_that_ends_before_a_step_s_retry_ends_the_step(
    harness: Harness,
) -> None:
    # The same, for a run resumed from a history whose last word on a step is a
    # step.failed with retrying=true (the process died during the backoff) and that
    # ends (here: its timeout long past) before the step runs again.
    engine = await harness.open()
    assert harness.log is not None
    steps = [{"id": "a", "action": "tool", "tool": "echo", "inputs": {}}]

    def history(oid: str) -> list[tuple[str, Any]]:
        failed = ev.StepFailed(
            orchestration_id=oid, step_id="a", attempt=1, error="busy", retrying=True
        )
        return [step_started(oid, "a"), (ev.STEP_FAILED, failed)]

    oid = await append_run(engine, harness.log, {"steps": steps}, history)
    await harness.close()
    later = datetime.now(UTC) + timedelta(hours=1)  # past the run's timeout_seconds=300
    engine = await harness.open(now=lambda: later)
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
    assert (state.status, state.reason) == ("failed", "timed_out")
    assert [(s.step_id, s.status, s.attempts) for s in state.steps] == [("a", "failed", 1)]
    assert await engine.get_state(TENANT, oid) == state


@pytest.mark.parametrize(
    ("attempt", "error", "elapsed", "waits"),
    [
        (1, "busy", 0.5, [1.5]),  # backoff 2 s, 0.5 s of it gone before the death
        (2, "busy", 0.5, [3.5]),  # the second retry's backoff: 4 s
        (1, "busy", 5.0, []),  # the whole backoff went by while no process ran
        # An interrupted attempt is retried at once, live or resumed.
        (1, "interrupted: the engine stopped while the step was in flight", 0.5, []),
    ],
)
async def test_regression_a_run_resumed_during_a_retry_backoff_waits_out_the_rest(
    harness: Harness, attempt: int, error: str, elapsed: float, waits: list[float]
) -> None:
    # The process died while a step waited out its backoff (its last step.failed has
    # retrying=true): the resumed run retried at once. It waits what the live run had
    # left to wait, counted from the step.failed's recorded time.
    engine = await harness.open()
    assert harness.log is not None
    steps = [{"id": "a", "action": "tool", "tool": "echo", "inputs": {}, "backoff_seconds": 2}]

    def history(oid: str) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        for n in range(1, attempt + 1):
            failed = ev.StepFailed(
                orchestration_id=oid, step_id="a", attempt=n, error=error, retrying=True
            )
            events += [step_started(oid, "a", n), (ev.STEP_FAILED, failed)]
        return events

    oid = await append_run(engine, harness.log, {"steps": steps}, history)
    recorded = await harness.log.read_stream(TENANT, oid)
    failed_at = parse_time(recorded[-1].event.occurred_at)
    await harness.close()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    later = failed_at + timedelta(seconds=elapsed)
    engine = await harness.open(now=lambda: later, sleep=sleep)
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
    assert (state.status, state.steps[0].attempts) == ("completed", attempt + 1)
    assert slept == waits
    assert await engine.get_state(TENANT, oid) == state


class _HeldWrites:
    """The real log, except that while ``open`` is clear a stream write waits for it."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.open = asyncio.Event()
        self.open.set()
        self.held = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(self, *args: Any, **kw: Any) -> Any:
        if not self.open.is_set():
            self.held.set()
            await self.open.wait()
        return await self._log.submit(*args, **kw)


async def test_regression_a_cancel_while_the_run_stops_for_close_is_not_lost(
    harness: Harness,
) -> None:
    # close() stops a run at its next step boundary; a cancel() that came while the
    # stopped run was writing its last events found the runner still there, asked it
    # to cancel (too late: it had passed its last boundary) and returned the run as
    # "running", cancel recorded nowhere. The next start resumed it and ran it to the end.
    release, entered = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def hold(args: Any) -> Any:
        entered.set()
        await release.wait()
        return 1

    async def after(args: Any) -> Any:
        ran.append("after")
        return 2

    tools = ToolRegistry()
    tools.register("hold", hold, pure=True)  # its events wait in the buffer
    tools.register("after", after, pure=True)
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    harness.log = log
    held = _HeldWrites(log)
    engine = Engine(held, tools=tools, sleep=no_sleep)  # type: ignore[arg-type]
    await engine.start()
    steps = [
        {"id": "a", "action": "tool", "tool": "hold", "inputs": {}},
        {"id": "b", "action": "tool", "tool": "after", "inputs": {}, "depends_on": ["a"]},
    ]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    oid = (await engine.execute(TENANT, workflow_id=wf.workflow_id)).orchestration_id
    await asyncio.wait_for(entered.wait(), 10)
    closing = asyncio.create_task(engine.close())
    await asyncio.sleep(0)  # close() has asked the run to stop
    held.open.clear()
    release.set()  # step a ends; the run stops at the boundary and writes what it holds
    await asyncio.wait_for(held.held.wait(), 10)
    cancel = asyncio.create_task(engine.cancel(TENANT, oid, reason="operator"))
    for _ in range(20):
        await asyncio.sleep(0)
    held.open.set()
    cancelled = await asyncio.wait_for(cancel, 10)
    await closing
    assert (cancelled.status, cancelled.reason) == ("cancelled", "operator")
    await log.close()
    harness.log = None

    engine = await harness.open(tools=tools)  # resumes nothing: the run is cancelled
    state = await engine.wait(TENANT, oid)
    assert (state.status, state.reason, ran) == ("cancelled", "operator", [])
    assert await engine.get_state(TENANT, oid) == cancelled


async def test_regression_cancelling_a_stalled_run_ends_the_step_it_had_in_flight(
    harness: Harness,
) -> None:
    # A run that storage stopped (stalled) mid-step has no runner; cancel() recorded
    # orchestration.cancelled directly and nothing else, so the step's open attempt
    # stayed "running" in a cancelled run for ever (a runner's cancel closes it).
    release, entered = asyncio.Event(), asyncio.Event()

    async def hold(args: Any) -> Any:
        entered.set()
        await release.wait()
        return 1

    tools = ToolRegistry()
    tools.register("hold", hold)  # not pure: its start is durable before the call
    storage, engine = await harness.open_on(DyingLog, tools=tools)
    steps = [{"id": "a", "action": "tool", "tool": "hold", "inputs": {}}]
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": steps})
    oid = (await engine.execute(TENANT, workflow_id=wf.workflow_id)).orchestration_id
    await asyncio.wait_for(entered.wait(), 10)
    storage.dead = True
    release.set()
    for _ in range(1000):
        if engine.stalled:
            break
        await asyncio.sleep(0.01)
    assert engine.stalled == 1
    storage.dead = False  # storage is back; the run is cancelled before it resumes
    state = await engine.cancel(TENANT, oid, reason="operator")
    assert (state.status, state.reason) == ("cancelled", "operator")
    assert [(s.step_id, s.status, s.result) for s in state.steps] == [
        ("a", "failed", {"error": "cancelled"})
    ]
    assert await engine.resume_stalled() == []
    assert await engine.get_state(TENANT, oid) == state


@pytest.mark.parametrize("action", ["llm", "tool"])
async def test_regression_a_step_timeout_records_the_outcome_of_the_call_it_cut_off(
    harness: Harness, fake_openai: FakeOpenAI, action: str
) -> None:
    # A step timeout that fired while the attempt's call was in flight (a paid model
    # call already sent, a tool's effect under way) retried the step but recorded no
    # llm.completed / tool.completed: the call's outcome was nowhere in the history.
    answer = asyncio.Event()  # the model's first answer never comes before the timeout
    fake_openai.script = [answer, completion("second")]
    calls: list[Any] = []

    async def hangs_once(args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            await asyncio.Event().wait()
        return {"n": len(calls)}

    tools = ToolRegistry()
    tools.register("hangs_once", hangs_once)
    engine = await harness.open(tools=tools)
    provider = {"kind": "openai", "base_url": fake_openai.url}
    await engine.register_agent(TENANT, name="gpt", provider=provider, model="m1")
    step: dict[str, Any] = {"id": "s", "action": action, "timeout_seconds": 0.3}
    step |= {"agent": "gpt"} if action == "llm" else {"tool": "hangs_once", "inputs": {}}
    wf = await engine.register_workflow(TENANT, name="w", definition={"steps": [step]})
    oid = (await engine.execute(TENANT, workflow_id=wf.workflow_id)).orchestration_id
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 20)
    answer.set()
    assert state.status == "completed", state
    assert state.steps[0].attempts == 2
    assert harness.log is not None
    events = [r.event.payload for r in await harness.log.read_stream(TENANT, oid)]
    done_type = ev.LLMCompleted if action == "llm" else ev.ToolCompleted
    asked_type = ev.LLMRequested if action == "llm" else ev.ToolInvoked
    asked = [p.attempt for p in events if isinstance(p, asked_type)]
    done = [(p.attempt, p.error, p.transient) for p in events if isinstance(p, done_type)]
    assert asked == [1, 2]
    assert done == [(1, "step timed out after 0.3s", True), (2, None, False)]
    assert await engine.get_state(TENANT, oid) == state
