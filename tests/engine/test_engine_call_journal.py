"""A resumed llm step reuses the calls its interrupted attempt completed (journal.py).

Each test writes the log a crashed process would have left (``append_run``), then
starts an engine on it with a real OpenAI-compatible server on loopback, and counts
what that server is asked. The SIGKILL version is in test_engine_restart.py.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import pytest
from engine_helpers import (
    TENANT,
    DyingLog,
    FakeOpenAI,
    Harness,
    append_run,
    completion,
    new_created,
    no_sleep,
)

from ledger.errors import StorageUnavailableError
from ledger.events import NewEvent
from ledger.log import Log
from ledger.orchestration import (
    ORCHESTRATION_EVENTS,
    Engine,
    RedactionPolicy,
    ToolRegistry,
    replay,
)
from ledger.orchestration import events as ev
from ledger.orchestration.calls import MAX_ERROR_CHARS, as_text
from ledger.orchestration.errors import ToolError
from ledger.orchestration.journal import CallJournal, CallsDiverged, response_of
from ledger.orchestration.providers.base import LLMRequest
from ledger.sqlite_store import SQLiteEventStore

LLM_STEP = {"steps": [{"id": "s0", "action": "llm", "prompt": "go"}]}
ASKED = ({"role": "user", "content": "go"},)


def _requested(oid: str, messages: tuple[Any, ...] = ASKED) -> tuple[str, Any]:
    """The ``llm.requested`` the engine records for ``LLM_STEP``'s first model call."""
    return ev.LLM_REQUESTED, ev.LLMRequested(
        orchestration_id=oid,
        step_id="s0",
        attempt=1,
        gen_ai_operation_name="chat",
        gen_ai_provider_name="openai",
        gen_ai_request_model="m1",
        messages=messages,
    )


def _completed(oid: str, content: str | None, error: str | None = None) -> tuple[str, Any]:
    return ev.LLM_COMPLETED, ev.LLMCompleted(
        orchestration_id=oid,
        step_id="s0",
        attempt=1,
        gen_ai_response_model="m1",
        gen_ai_response_id="chatcmpl-0",
        gen_ai_response_finish_reasons=("stop",) if error is None else (),
        gen_ai_usage_input_tokens=3,
        gen_ai_usage_output_tokens=1,
        message={"role": "assistant", "content": content} if error is None else None,
        latency_ms=1.0,
        error=error,
        transient=error is not None,
    )


def _started(oid: str) -> tuple[str, Any]:
    return ev.STEP_STARTED, ev.StepStarted(
        orchestration_id=oid,
        step_id="s0",
        agent_id=None,
        action="llm",
        attempt=1,
        inputs={"prompt": "go"},
    )


async def _resume(
    harness: Harness,
    server: FakeOpenAI,
    history: Any,
    *,
    definition: dict[str, Any] = LLM_STEP,
    **engine_options: Any,
) -> tuple[Any, list[Any]]:
    """Write a crashed run of ``LLM_STEP`` with ``history``, restart, wait for it; its
    final state and events."""
    engine = await harness.open()
    agent = await engine.register_agent(
        TENANT, name="gpt", provider={"kind": "openai", "base_url": server.url}, model="m1"
    )
    assert harness.log is not None
    oid = await append_run(engine, harness.log, definition, history, agents=[agent.agent_id])
    await harness.close()
    engine = await harness.open(**engine_options)
    state = await engine.wait(TENANT, oid)
    assert harness.log is not None
    events = [r.event for r in await harness.log.read_stream(TENANT, oid)]
    assert replay(events) == state
    return state, events


async def test_a_recorded_model_call_is_not_made_again(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    state, events = await _resume(
        harness,
        fake_openai,
        lambda oid: [_started(oid), _requested(oid), _completed(oid, "recorded")],
    )
    assert state.status == "completed", state
    assert state.results["s0"]["content"] == "recorded"
    assert state.results["s0"]["finish_reason"] == "stop"
    assert fake_openai.requests == []
    types = [e.type for e in events]
    assert types.count("step.started") == 1
    assert "step.failed" not in types


async def test_a_recorded_failed_call_fails_its_attempt_as_it_did_live(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    state, events = await _resume(
        harness,
        fake_openai,
        lambda oid: [_started(oid), _requested(oid), _completed(oid, None, "HTTP 500: boom")],
    )
    assert state.status == "completed", state
    failed = [e.payload for e in events if e.type == "step.failed"]
    assert [(f.attempt, f.error, f.retrying) for f in failed] == [(1, "HTTP 500: boom", True)]
    # Only the retry (attempt 2) asked the model.
    assert len(fake_openai.requests) == 1
    assert state.results["s0"]["content"] == "done"


async def test_a_journal_the_run_does_not_retrace_retries_the_attempt(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    other = ({"role": "user", "content": "something else"},)
    state, events = await _resume(
        harness,
        fake_openai,
        lambda oid: [_started(oid), _requested(oid, other), _completed(oid, "stale")],
    )
    assert state.status == "completed", state
    assert state.results["s0"]["content"] == "done"  # asked again, not the stale answer
    failed = [e.payload for e in events if e.type == "step.failed"]
    assert len(failed) == 1
    assert failed[0].retrying
    assert failed[0].error.startswith("interrupted: the resumed attempt made a model call")
    assert [e.payload.attempt for e in events if e.type == "step.started"] == [1, 2]
    assert len(fake_openai.requests) == 1


async def test_regression_a_journal_not_retraced_on_the_last_attempt_fails_as_interrupted(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """An attempt whose journal the run did not retrace ended, with no attempt left, as
    step_failed (and after a backoff), where an interrupted attempt without a journal
    ends as interrupted: the same cause, two reasons."""
    other = ({"role": "user", "content": "something else"},)
    state, events = await _resume(
        harness,
        fake_openai,
        lambda oid: [_started(oid), _requested(oid, other), _completed(oid, "stale")],
        definition={"steps": [{"id": "s0", "action": "llm", "prompt": "go", "max_attempts": 1}]},
    )
    assert (state.status, state.reason) == ("failed", "interrupted")
    failed = [e.payload for e in events if e.type == "step.failed"]
    assert [(f.attempt, f.retrying) for f in failed] == [(1, False)]
    assert failed[0].error.startswith("interrupted: the resumed attempt made a model call")
    assert fake_openai.requests == []


async def test_no_journal_when_redaction_may_change_recorded_calls(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """A redacted response in the log is not the one the model gave: the attempt is
    retried from the start, as before journals."""
    policy = RedactionPolicy(["llm.completed:message.content"], lambda tenant: b"salt")
    state, events = await _resume(
        harness,
        fake_openai,
        lambda oid: [_started(oid), _requested(oid), _completed(oid, "recorded")],
        redaction=policy,
    )
    assert state.status == "completed", state
    failed = [e.payload for e in events if e.type == "step.failed"]
    assert [f.error for f in failed] == [
        "interrupted: the engine stopped while the step was in flight"
    ]
    assert len(fake_openai.requests) == 1


async def test_the_call_in_flight_is_made_again_in_the_same_attempt(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """A model call requested but never completed is left out of the journal."""
    fake_openai.script = [completion("live")]
    state, events = await _resume(
        harness,
        fake_openai,
        lambda oid: [_started(oid), _requested(oid)],
    )
    # Nothing completed: no journal, the attempt is interrupted and retried.
    assert state.status == "completed", state
    assert state.results["s0"]["content"] == "live"
    assert [e.payload.attempt for e in events if e.type == "step.started"] == [1, 2]


# -- the journal itself (pure) ---------------------------------------------------------


def _request(messages: tuple[Any, ...] = ASKED) -> LLMRequest:
    return LLMRequest(model="m1", messages=messages)


def test_journal_pairs_calls_in_order_and_drops_the_one_in_flight() -> None:
    _, asked = _requested("o")
    _, done = _completed("o", "a")
    journal = CallJournal([asked, done, asked])
    assert journal.llm(_request()) == done
    assert not journal


def test_journal_matches_messages_whatever_their_key_order() -> None:
    _, asked = _requested("o", ({"content": "go", "role": "user"},))
    _, done = _completed("o", "a")
    assert CallJournal([asked, done]).llm(_request()) == done


def test_journal_refuses_a_call_other_than_the_recorded_one_and_empties() -> None:
    _, asked = _requested("o")
    _, done = _completed("o", "a")
    journal = CallJournal([asked, done, asked, done])
    with pytest.raises(CallsDiverged, match="a call of tool 'echo' where its history"):
        journal.tool("echo", "call_0", {})
    assert not journal


def test_response_of_rebuilds_tool_calls_from_the_recorded_message() -> None:
    _, done = _completed("o", None)
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "echo", "arguments": '{"x": [1, 2]}'},
            }
        ],
    }
    r = response_of(msgspec.structs.replace(done, message=message))
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("call_0", "echo", {"x": [1, 2]})
    ]
    assert r.content is None
    assert r.message == message


@pytest.mark.parametrize(
    "message",
    [None, "text", {"content": 3}, {"tool_calls": [{"id": "c"}]}, {"tool_calls": ["x"]}],
)
def test_response_of_a_message_it_cannot_read_is_a_divergence(message: Any) -> None:
    _, done = _completed("o", "a")
    with pytest.raises(CallsDiverged):
        response_of(msgspec.structs.replace(done, message=message))


# -- what the agent loop feeds the model after a failed tool step ---------------------


class _DiesAfterAnswer(DyingLog):
    """The real log until the batch holding ``step_id``'s ``llm.completed`` is written;
    every later write is refused, as after a SIGKILL right behind that commit."""

    def __init__(self, log: Log, step_id: str) -> None:
        super().__init__(log)
        self._step_id = step_id

    async def submit(self, *args: Any, **kw: Any) -> Any:
        if self.dead:
            raise StorageUnavailableError("the process is gone")
        self.dead = any(
            e.type == ev.LLM_COMPLETED and e.payload.step_id == self._step_id for e in args[3]
        )
        return await self._log.submit(*args, **kw)


def _boom_tools() -> ToolRegistry:
    async def boom(args: Any) -> Any:
        raise ToolError("x" * (MAX_ERROR_CHARS + 100))  # recorded cut short

    tools = ToolRegistry()
    tools.register("boom", boom)
    return tools


def _asks_for_boom() -> dict[str, Any]:
    return completion(None, [{"name": "boom", "args": {}}])


def _tool_step_in_flight_on_its_last_attempt(oid: str, agent_id: str) -> list[NewEvent]:
    """An agent loop's history: ``llm-1`` asked for ``boom``; ``tool-1-1``'s third (last)
    attempt was in flight when the process stopped."""
    message = _asks_for_boom()["choices"][0]["message"]
    output = {
        "content": None,
        "json": None,
        "finish_reason": "tool_calls",
        "message": message,
        "tool_calls": [{"id": "call_0", "name": "boom", "arguments": {}}],
    }
    llm = ev.StepStarted(
        orchestration_id=oid,
        step_id="llm-1",
        agent_id=agent_id,
        action="llm",
        attempt=1,
        inputs=None,
    )
    events = [
        NewEvent(ev.STEP_STARTED, llm),
        NewEvent(
            ev.STEP_COMPLETED,
            ev.StepCompleted(orchestration_id=oid, step_id="llm-1", attempt=1, output=output),
        ),
    ]
    inputs = {"tool_call_id": "call_0", "name": "boom", "arguments": {}}
    for n in (1, 2, 3):
        started = ev.StepStarted(
            orchestration_id=oid,
            step_id="tool-1-1",
            agent_id=agent_id,
            action="tool",
            attempt=n,
            inputs=inputs,
        )
        events.append(NewEvent(ev.STEP_STARTED, started))
        if n < 3:
            failed = ev.StepFailed(
                orchestration_id=oid, step_id="tool-1-1", attempt=n, error="busy", retrying=True
            )
            events.append(NewEvent(ev.STEP_FAILED, failed))
    return events


@pytest.mark.parametrize("failure", ["interrupted on its last attempt", "an error cut short"])
async def test_regression_a_failed_agent_loop_tool_step_feeds_the_model_its_recorded_error(
    harness: Harness, fake_openai: FakeOpenAI, failure: str
) -> None:
    # The live run fed the model {"error": "interrupted"} (or the whole error text),
    # a resumed run the error its step.failed records ("interrupted: the engine
    # stopped…", or the text cut short): llm-2's request no longer matched the recorded
    # llm.requested, the journal could not answer it, and the paid call was made again.
    interrupted = failure.startswith("interrupted")
    engine = await harness.open(tools=_boom_tools())
    provider = {"kind": "openai", "base_url": fake_openai.url}
    agent = await engine.register_agent(
        TENANT, name="gpt", provider=provider, model="m1", tools=["boom"]
    )
    oid = ""
    if interrupted:
        created = new_created(engine, agent_id=agent.agent_id, agents=[agent.agent_id], input="go")
        oid = created.orchestration_id
        started = ev.OrchestrationStarted(orchestration_id=oid)
        history = _tool_step_in_flight_on_its_last_attempt(oid, agent.agent_id)
        assert harness.log is not None
        await harness.log.append(
            TENANT,
            oid,
            0,
            [
                NewEvent(ev.ORCHESTRATION_CREATED, created),
                NewEvent(ev.ORCHESTRATION_STARTED, started),
                *history,
            ],
        )
    await harness.close()

    # A process that dies right after llm-2's answer is durable (its step.completed not).
    fake_openai.script = [] if interrupted else [_asks_for_boom()]
    fake_openai.script.append(completion("final"))
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    # The engine's own, left open by a killed process, would outlive the test.
    session = aiohttp.ClientSession()
    try:
        dying = _DiesAfterAnswer(log, "llm-2")
        engine = Engine(dying, tools=_boom_tools(), sleep=no_sleep, session=session)  # type: ignore[arg-type]
        await engine.start()
        if not interrupted:
            oid = (
                await engine.execute(TENANT, agent_id=agent.agent_id, input="go")
            ).orchestration_id
        await engine.wait(TENANT, oid, max_wait=20)
        assert dying.dead
        assert engine.stalled == 1
    finally:
        await log.close()  # killed: the engine is never closed
        await session.close()
    asked = len(fake_openai.requests)

    engine = await harness.open(tools=_boom_tools())
    state = await engine.wait(TENANT, oid, max_wait=20)
    assert len(fake_openai.requests) == asked, "a recorded model call was made again"
    assert (state.status, state.results["content"]) == ("completed", "final"), state
    assert harness.log is not None
    events = [r.event.payload for r in await harness.log.read_stream(TENANT, oid)]
    assert [
        p.attempt for p in events if isinstance(p, ev.StepStarted) and p.step_id == "llm-2"
    ] == [1]
    failed = [p for p in events if isinstance(p, ev.StepFailed) and p.step_id == "tool-1-1"]
    fed = [m for p in events if isinstance(p, ev.LLMRequested) for m in p.messages][-1]
    assert fed["content"] == as_text({"error": failed[-1].error})
    assert replay([r.event for r in await harness.log.read_stream(TENANT, oid)]) == state
