"""Workflow execution: DAG, decisions, skips, concurrency, bounds, cancel, tenants, listing."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from engine_helpers import (
    OTHER_TENANT,
    TENANT,
    Harness,
    append_run,
    bundle_of,
    scripted,
    step_started,
)

from ledger.errors import InvalidEventError
from ledger.orchestration import (
    AgentNotFound,
    Engine,
    OrchestrationNotFound,
    OrchestrationStateError,
    RedactionPathError,
    RedactionPolicy,
    WorkflowValidationError,
    commitment,
)
from verifier import verify_bundle

CLASSIFY = {"content": '{"label": "spam", "score": 0.93}'}

ROUTING = {
    "steps": [
        {"id": "classify", "action": "llm", "prompt": "Classify: {{ input.text }}"},
        {
            "id": "route",
            "action": "decision",
            "depends_on": ["classify"],
            "condition": {"eq": ["steps.classify.output.json.label", "spam"]},
            "then": ["drop"],
            "else": ["reply"],
        },
        {
            "id": "drop",
            "action": "tool",
            "tool": "echo",
            "depends_on": ["route"],
            "inputs": {"dropped": "{{ input.text }}"},
        },
        {"id": "reply", "action": "llm", "depends_on": ["route"], "prompt": "reply"},
        {"id": "notify", "action": "tool", "tool": "echo", "depends_on": ["reply"]},
        {
            "id": "summary",
            "action": "tool",
            "tool": "echo",
            "depends_on": ["drop", "notify"],
            "inputs": {"result": "{{ steps.drop.output ?? steps.notify.output }}"},
        },
    ],
    "output": {
        "label": "{{ steps.classify.output.json.label }}",
        "s": "{{ steps.summary.output }}",
    },
}


async def _types(harness: Harness, oid: str) -> list[str]:
    assert harness.log is not None
    return [r.event.type for r in await harness.log.read_stream(TENANT, oid)]


async def test_decision_branch_and_skips(engine: Engine, harness: Harness, make_agent: Any) -> None:
    agent = await make_agent(CLASSIFY)
    wf = await engine.register_workflow(TENANT, name="routing", definition=ROUTING)
    started = await engine.execute(
        TENANT, workflow_id=wf.workflow_id, agents=[agent], input={"text": "buy now"}
    )
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    status = {s.step_id: s.status for s in state.steps}
    assert status == {
        "classify": "completed",
        "route": "completed",
        "drop": "completed",
        "reply": "skipped",
        "notify": "skipped",
        "summary": "completed",
    }
    assert state.results == {"label": "spam", "s": {"result": {"dropped": "buy now"}}}
    assert state.workflow_version == 1
    assert state.step("reply").agent_id == agent  # type: ignore[union-attr]
    assert harness.log is not None
    events = [r.event for r in await harness.log.read_stream(TENANT, started.orchestration_id)]
    created = events[0].payload
    assert created.workflow_hash == wf.version_hash
    decision = next(e.payload for e in events if e.type == "decision.made")
    assert decision.branch == "then"
    assert decision.values == {"steps.classify.output.json.label": "spam"}
    assert decision.skipped == ("reply",)
    assert await engine.get_state(TENANT, started.orchestration_id) == state
    assert engine.live_state(TENANT, started.orchestration_id) == state


async def test_other_branch(engine: Engine, make_agent: Any) -> None:
    agent = await make_agent({"content": '{"label": "ham"}'})
    wf = await engine.register_workflow(TENANT, name="routing", definition=ROUTING)
    started = await engine.execute(
        TENANT, workflow_id=wf.workflow_id, agents=[agent], input={"text": "hi"}
    )
    state = await engine.wait(TENANT, started.orchestration_id)
    status = {s.step_id: s.status for s in state.steps}
    assert status["drop"] == "skipped"
    assert status["reply"] == status["notify"] == status["summary"] == "completed"


async def test_independent_branches_run_concurrently(engine: Engine, make_agent: Any) -> None:
    barrier = asyncio.Barrier(2)

    async def rendezvous(args: Any) -> Any:
        async with asyncio.timeout(5):
            await barrier.wait()  # only passes if both branches are in flight at once
        return args

    engine.tools.register("rendezvous", rendezvous, pure=True)
    defn = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "rendezvous", "inputs": {"b": "a"}},
            {"id": "b", "action": "tool", "tool": "rendezvous", "inputs": {"b": "b"}},
            {"id": "join", "action": "tool", "tool": "echo", "depends_on": ["a", "b"]},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="par", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    assert state.results["a"] == {"b": "a"}


async def test_workflow_versions_are_immutable(engine: Engine) -> None:
    d1 = {"steps": [{"id": "a", "action": "tool", "tool": "echo"}]}
    v1 = await engine.register_workflow(TENANT, name="w", definition=d1)
    again = await engine.register_workflow(
        TENANT, name="w", definition=d1, workflow_id=v1.workflow_id
    )
    assert again == v1
    d2 = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "calculator", "inputs": {"expression": "1+1"}}
        ]
    }
    v2 = await engine.register_workflow(TENANT, name="w", definition=d2, workflow_id=v1.workflow_id)
    assert (v2.version, v1.version) == (2, 1)
    assert v2.version_hash != v1.version_hash
    assert engine.get_workflow(TENANT, v1.workflow_id, 1).definition == v1.definition
    s1 = await engine.execute(TENANT, workflow_id=v1.workflow_id, workflow_version=1)
    s2 = await engine.execute(TENANT, workflow_id=v1.workflow_id)
    assert (await engine.wait(TENANT, s1.orchestration_id)).results == {"a": {}}
    assert (await engine.wait(TENANT, s2.orchestration_id)).results == {"a": 2}


async def test_registration_errors_name_the_field(engine: Engine) -> None:
    with pytest.raises(WorkflowValidationError) as info:
        await engine.register_workflow(
            TENANT,
            name="w",
            definition={
                "steps": [{"id": "a", "action": "tool", "tool": "echo", "inputs": "{{ bad }}"}]
            },
        )
    assert (info.value.step_id, info.value.field) == ("a", "inputs")
    with pytest.raises(WorkflowValidationError) as info:
        await engine.register_agent(
            TENANT, name="x", provider={"kind": "openai", "base_url": "http://h", "api_key": "sk-1"}
        )
    assert info.value.field == "provider.api_key"
    with pytest.raises(WorkflowValidationError) as info:
        await engine.register_agent(TENANT, name="x", provider=scripted(), tools=["nope"])
    assert info.value.field == "tools[0]"


async def test_runtime_missing_reference_fails_step_naming_it(engine: Engine) -> None:
    defn = {
        "steps": [
            {
                "id": "a",
                "action": "tool",
                "tool": "echo",
                "inputs": {"v": "{{ input.customer.id }}"},
            }
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, input={"customer": {}})
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.reason == "step_failed"
    assert "input.customer.id" in state.steps[0].result["error"]


async def test_max_steps_in_workflow(engine: Engine) -> None:
    defn = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "echo"},
            {"id": "b", "action": "tool", "tool": "echo", "depends_on": ["a"]},
            {"id": "c", "action": "tool", "tool": "echo", "depends_on": ["b"]},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, max_steps=2)
    state = await engine.wait(TENANT, started.orchestration_id)
    assert (state.status, state.reason) == ("failed", "max_steps_exceeded")
    assert [s.step_id for s in state.steps] == ["a", "b"]


async def test_max_steps_in_agent_loop(engine: Engine, make_agent: Any) -> None:
    agent = await make_agent(
        {"tool_calls": [{"name": "echo", "arguments": {"again": True}}]}, tools=["echo"]
    )
    started = await engine.execute(TENANT, agent_id=agent, input="loop forever", max_steps=3)
    state = await engine.wait(TENANT, started.orchestration_id)
    assert (state.status, state.reason) == ("failed", "max_steps_exceeded")
    assert [s.step_id for s in state.steps if s.action == "llm"] == ["llm-1", "llm-2", "llm-3"]


async def test_timeout(engine: Engine, make_agent: Any) -> None:
    agent = await make_agent({"content": "slow", "delay_seconds": 30})
    started = await engine.execute(TENANT, agent_id=agent, input="x", timeout_seconds=0.3)
    state = await asyncio.wait_for(engine.wait(TENANT, started.orchestration_id), 10)
    assert (state.status, state.reason) == ("failed", "timed_out")
    assert state.steps[0].status == "failed"
    assert state.steps[0].result == {"error": "timed out"}


async def test_cancel_stops_in_flight_call(
    engine: Engine, harness: Harness, make_agent: Any
) -> None:
    agent = await make_agent({"content": "slow", "delay_seconds": 30})
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    await asyncio.sleep(0.2)
    state = await asyncio.wait_for(
        engine.cancel(TENANT, started.orchestration_id, reason="user asked", requested_by="alice"),
        10,
    )
    assert (state.status, state.reason) == ("cancelled", "user asked")
    assert state.steps[0].status == "failed"
    types = await _types(harness, started.orchestration_id)
    assert types[-1] == "orchestration.cancelled"
    assert "llm.completed" not in types  # the call never finished
    with pytest.raises(OrchestrationStateError):
        await engine.cancel(TENANT, started.orchestration_id)


async def test_tenants_are_isolated(engine: Engine, make_agent: Any) -> None:
    agent = await make_agent()
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    await engine.wait(TENANT, started.orchestration_id)
    with pytest.raises(OrchestrationNotFound):
        await engine.get_state(OTHER_TENANT, started.orchestration_id)
    with pytest.raises(OrchestrationNotFound):
        await engine.cancel(OTHER_TENANT, started.orchestration_id)
    with pytest.raises(AgentNotFound):
        await engine.execute(OTHER_TENANT, agent_id=agent, input="x")
    assert await engine.list_orchestrations(OTHER_TENANT) == ([], None)


async def test_list_with_filters_and_cursor(engine: Engine, make_agent: Any) -> None:
    a1 = await make_agent(name="one")
    a2 = await make_agent(name="two")
    ids = []
    for agent in (a1, a2, a1, a1, a2):
        s = await engine.execute(TENANT, agent_id=agent, input="x")
        await engine.wait(TENANT, s.orchestration_id)
        ids.append(s.orchestration_id)
    page, cursor = await engine.list_orchestrations(TENANT, agent_id=a1, limit=2)
    assert [p.orchestration_id for p in page] == [ids[3], ids[2]]
    assert cursor is not None
    page2, cursor2 = await engine.list_orchestrations(TENANT, agent_id=a1, limit=2, cursor=cursor)
    assert [p.orchestration_id for p in page2] == [ids[0]]
    assert cursor2 is None
    done, _ = await engine.list_orchestrations(TENANT, status="completed", limit=50)
    assert len(done) == 5
    assert (await engine.list_orchestrations(TENANT, status="running"))[0] == []


async def test_external_executor_records_steps_with_receipts(
    engine: Engine, harness: Harness
) -> None:
    state = await engine.create_external(TENANT, input={"q": 1}, started_by="langgraph")
    oid = state.orchestration_id
    assert (state.executor, state.status) == ("external", "running")
    receipts = await engine.record_step(
        TENANT,
        oid,
        [
            (
                "step.started",
                {"step_id": "s1", "agent_id": None, "action": "tool", "attempt": 1, "inputs": {}},
            ),
            (
                "tool.invoked",
                {
                    "step_id": "s1",
                    "attempt": 1,
                    "gen_ai.tool.name": "search",
                    "gen_ai.tool.call.id": None,
                    "arguments": {"q": 1},
                },
            ),
            (
                "tool.completed",
                {
                    "step_id": "s1",
                    "attempt": 1,
                    "gen_ai.tool.name": "search",
                    "gen_ai.tool.call.id": None,
                    "result": [1],
                    "error": None,
                    "latency_ms": 3.0,
                },
            ),
            ("step.completed", {"step_id": "s1", "attempt": 1, "output": [1]}),
        ],
    )
    assert len(receipts) == 4
    assert harness.log is not None
    recorded = await harness.log.read_stream(TENANT, oid)
    assert [r.receipt_id for r in recorded[2:]] == [r.receipt_id for r in receipts]
    with pytest.raises(InvalidEventError):
        await engine.record_step(TENANT, oid, [("orchestration.created", {})])
    with pytest.raises(InvalidEventError):
        await engine.record_step(TENANT, oid, [("step.completed", {"step_id": "s1"})])
    await engine.record_step(TENANT, oid, [("orchestration.completed", {"results": {"ok": True}})])
    final = await engine.get_state(TENANT, oid)
    assert final.status == "completed"
    assert final.steps[0].result == [1]
    assert len(final.receipts) == 7
    with pytest.raises(OrchestrationStateError):
        await engine.record_step(
            TENANT,
            oid,
            [
                (
                    "step.started",
                    {
                        "step_id": "s2",
                        "agent_id": None,
                        "action": "llm",
                        "attempt": 1,
                        "inputs": None,
                    },
                )
            ],
        )


async def test_redaction_commits_pii_in_stored_events(harness: Harness) -> None:
    salt = b"\x01" * 32
    engine = await harness.open(redaction=RedactionPolicy(["*:input.email"], lambda t: salt))
    defn = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "echo", "inputs": {"to": "{{ input.email }}"}}
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(
        TENANT, workflow_id=wf.workflow_id, input={"email": "bob@example.com"}
    )
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed"
    assert state.input["email"].startswith("redacted:sha256:")
    assert state.results == {"a": {"to": "bob@example.com"}}  # the run saw the real value
    await harness.close()
    # The database file (and its WAL, if any) holds only the commitment.
    data = b"".join(p.read_bytes() for p in harness.path.parent.iterdir() if p.is_file())
    assert b"bob@example.com" in data  # the step output was not configured for redaction
    assert b'"email":"bob@example.com"' not in data
    assert state.input["email"].encode() in data


async def test_cancel_workflow_cancels_concurrent_branches(
    engine: Engine, harness: Harness
) -> None:
    gate = asyncio.Event()
    entered: list[str] = []

    async def block(args: Any) -> Any:
        entered.append(args["b"])
        await gate.wait()  # never set: only cancellation ends it
        return args

    engine.tools.register("block", block)
    defn = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "block", "inputs": {"b": "a"}},
            {"id": "b", "action": "tool", "tool": "block", "inputs": {"b": "b"}},
            {"id": "after", "action": "tool", "tool": "echo", "depends_on": ["a", "b"]},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    for _ in range(100):
        if len(entered) == 2:
            break
        await asyncio.sleep(0.01)
    state = await asyncio.wait_for(engine.cancel(TENANT, started.orchestration_id), 10)
    assert (state.status, state.reason) == ("cancelled", "cancelled")
    assert {s.step_id: s.status for s in state.steps} == {"a": "failed", "b": "failed"}
    types = await _types(harness, started.orchestration_id)
    assert types.count("tool.completed") == 0
    assert types[-1] == "orchestration.cancelled"


async def test_cancel_external_orchestration(engine: Engine) -> None:
    state = await engine.create_external(TENANT, input=None)
    cancelled = await engine.cancel(TENANT, state.orchestration_id, requested_by="ops")
    assert (cancelled.status, cancelled.reason) == ("cancelled", "cancelled")


async def test_regression_external_write_locks_do_not_pile_up(engine: Engine) -> None:
    """Each orchestration's external writes are serialized by a lock, which was kept
    for the life of the process: one per orchestration ever written to."""
    oids = [(await engine.create_external(TENANT)).orchestration_id for _ in range(4)]

    def started(i: int) -> list[tuple[str, dict[str, object]]]:
        return [
            (
                "step.started",
                {
                    "step_id": f"s{i}",
                    "agent_id": None,
                    "action": "tool",
                    "attempt": 1,
                    "inputs": {},
                },
            )
        ]

    # Concurrent writes to one orchestration: serialized, each on the head the last left.
    await asyncio.gather(
        *(engine.record_step(TENANT, o, started(i)) for o in oids for i in range(3))
    )
    for oid in oids:
        state = await engine.get_state(TENANT, oid)
        assert sorted(s.step_id for s in state.steps) == ["s0", "s1", "s2"]
    await engine.cancel(TENANT, oids[0])
    assert engine._runs._external_locks == {}


async def _chain_blocked_in_a_tool(engine: Engine, **options: Any) -> tuple[str, list[str]]:
    """A two-step chain whose first step blocks until cancelled: it runs in the
    orchestration's own task (Cancellation.inline in cancellation.py), not a task of its own."""
    entered: list[str] = []

    async def block(args: Any) -> Any:
        entered.append("first")
        await asyncio.Event().wait()  # only cancellation ends it
        return args

    engine.tools.register("block", block)
    defn = {
        "steps": [
            {"id": "first", "action": "tool", "tool": "block"},
            {"id": "second", "action": "tool", "tool": "echo", "depends_on": ["first"]},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="chain", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, **options)
    for _ in range(1000):
        if entered:
            break
        await asyncio.sleep(0.01)
    assert entered == ["first"]
    return started.orchestration_id, entered


async def test_cancel_reaches_the_one_step_of_a_chain_in_flight(
    engine: Engine, harness: Harness
) -> None:
    oid, _ = await _chain_blocked_in_a_tool(engine)
    state = await asyncio.wait_for(
        engine.cancel(TENANT, oid, reason="user asked", requested_by="alice"), 10
    )
    assert (state.status, state.reason) == ("cancelled", "user asked")
    assert [(s.step_id, s.status) for s in state.steps] == [("first", "failed")]
    assert state.steps[0].result == {"error": "cancelled"}
    types = await _types(harness, oid)
    assert "tool.completed" not in types
    assert types[-1] == "orchestration.cancelled"
    assert await engine.get_state(TENANT, oid) == state


async def test_timeout_reaches_the_one_step_of_a_chain_in_flight(
    engine: Engine, harness: Harness
) -> None:
    oid, _ = await _chain_blocked_in_a_tool(engine, timeout_seconds=0.3)
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
    assert (state.status, state.reason) == ("failed", "timed_out")
    assert [(s.step_id, s.status) for s in state.steps] == [("first", "failed")]
    assert state.steps[0].result == {"error": "timed out"}
    assert (await _types(harness, oid))[-1] == "orchestration.failed"


async def test_a_step_that_cancels_its_own_orchestration_ends_it_cancelled(
    engine: Engine, harness: Harness
) -> None:
    """The one step of a chain runs in the orchestration's own task; a tool awaiting
    the cancel of that same orchestration must neither deadlock nor escape as an
    engine stop."""

    async def cancel_myself(args: Any) -> Any:
        (summary,) = [
            s
            for s in (await engine.list_orchestrations(TENANT))[0]
            if s.status in ("pending", "running")
        ]
        await engine.cancel(TENANT, summary.orchestration_id, reason="tool quit")
        return args

    engine.tools.register("cancel_myself", cancel_myself)
    defn = {
        "steps": [
            {"id": "quit", "action": "tool", "tool": "cancel_myself"},
            {"id": "after", "action": "tool", "tool": "echo", "depends_on": ["quit"]},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="self-cancel", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await asyncio.wait_for(engine.wait(TENANT, started.orchestration_id), 10)
    assert (state.status, state.reason) == ("cancelled", "tool quit")
    assert [(s.step_id, s.status) for s in state.steps] == [("quit", "failed")]
    assert (await _types(harness, started.orchestration_id))[-1] == "orchestration.cancelled"


@pytest.mark.parametrize("timeout", [True, False])
async def test_regression_a_bool_timeout_is_rejected(
    engine: Engine, make_agent: Any, timeout: bool
) -> None:
    # bool is an int to Python; max_steps already refuses it, timeout_seconds must too.
    agent = await make_agent()
    with pytest.raises(WorkflowValidationError) as info:
        await engine.execute(TENANT, agent_id=agent, input="x", timeout_seconds=timeout)
    assert info.value.field == "timeout_seconds"


async def test_regression_redacting_inside_a_typed_field_keeps_the_run_going(
    harness: Harness,
) -> None:
    # `decision.made:values` itself is refused when the policy is built (a dict cannot
    # become a string); what is inside it can be redacted, and the run completes.
    with pytest.raises(RedactionPathError, match="holds an object"):
        RedactionPolicy(["decision.made:values"], lambda t: b"salt")
    policy = RedactionPolicy(["decision.made:values.*", "*:input.ssn"], lambda t: b"salt")
    engine = await harness.open(redaction=policy)
    wf = await engine.register_workflow(
        TENANT,
        name="d",
        definition={
            "steps": [{"id": "d", "action": "decision", "condition": {"exists": "input.ssn"}}]
        },
    )
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, input={"ssn": "123"})
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=5)
    assert (state.status, state.steps[0].result["branch"]) == ("completed", "then")
    assert harness.log is not None
    records = await harness.log.read_stream(TENANT, started.orchestration_id)
    (made,) = [r.event.payload for r in records if r.event.type == "decision.made"]
    assert made.values == {"input.ssn": commitment(b"salt", "123")}


FANOUT = {
    "steps": [
        {"id": "a", "action": "tool", "tool": "echo", "inputs": {"n": 1}},
        {"id": "b", "action": "tool", "tool": "echo", "inputs": {"n": 2}},
        {"id": "c", "action": "tool", "tool": "echo", "inputs": {"n": 3}},
    ]
}


@pytest.mark.parametrize("max_steps", [1, 2])
async def test_regression_max_steps_bounds_steps_ready_together(
    engine: Engine, harness: Harness, max_steps: int
) -> None:
    # Steps were counted when they started, after the whole pass was scheduled: three
    # independent steps all ran under max_steps=1.
    wf = await engine.register_workflow(TENANT, name="fanout", definition=FANOUT)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, max_steps=max_steps)
    state = await engine.wait(TENANT, started.orchestration_id)
    assert (state.status, state.reason) == ("failed", "max_steps_exceeded")
    assert len(state.steps) <= max_steps
    types = await _types(harness, started.orchestration_id)
    assert types.count("step.started") <= max_steps


async def test_regression_a_resumed_run_counts_steps_as_the_live_one_did(
    harness: Harness,
) -> None:
    # Crashed with `a` in flight; `b` and `c` are new. Counting `a` from the history and
    # each new step when it is scheduled, `c` is one too many, as it was for the live run.
    engine = await harness.open()
    assert harness.log is not None
    oid = await append_run(
        engine, harness.log, FANOUT, lambda o: [step_started(o, "a")], max_steps=2
    )
    await harness.close()
    engine = await harness.open()
    state = await engine.wait(TENANT, oid)
    assert (state.status, state.reason) == ("failed", "max_steps_exceeded")
    types = await _types(harness, oid)
    assert types.count("step.started") == 1  # only a's, from before the crash
    # The attempt the crash interrupted is closed, not left running for ever.
    assert [(s.step_id, s.status) for s in state.steps] == [("a", "failed")]


async def _live_equals_replay(engine: Engine, oid: str) -> Any:
    live = await engine.wait(TENANT, oid, max_wait=10)
    assert live.terminal, (live.status, [(s.step_id, s.status) for s in live.steps])
    assert engine.live_state(TENANT, oid) == live
    assert await engine.get_state(TENANT, oid) == live
    return live


async def _run_tool_step(engine: Engine, step: dict[str, Any]) -> Any:
    """Run a workflow of the one tool ``step``; its final state, checked against replay."""
    defn = {"steps": [{"id": "a", "action": "tool", **step}]}
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    return await _live_equals_replay(engine, started.orchestration_id)


async def test_regression_live_state_equals_replay_for_values_json_does_not_keep(
    engine: Engine,
) -> None:
    # The live fold saw the payloads in memory (a tuple, int keys), the log their JSON:
    # and the run itself went on with values no resumed run would read.
    async def odd(args: Any) -> Any:
        return {1: ("a", "b"), "n": {2: (3,)}}

    engine.tools.register("odd", odd)
    defn = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "odd"},
            {
                "id": "b",
                "action": "tool",
                "tool": "echo",
                "depends_on": ["a"],
                "inputs": {"first": "{{ steps.a.output.1[0] }}"},
            },
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, input={"t": (1, 2), 3: "x"})
    state = await _live_equals_replay(engine, started.orchestration_id)
    assert state.status == "completed", state.steps
    assert state.input == {"t": [1, 2], "3": "x"}
    assert state.results == {"a": {"1": ["a", "b"], "n": {"2": [3]}}, "b": {"first": "a"}}


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
async def test_regression_a_tool_result_holding_inf_or_nan_fails_the_step(
    engine: Engine, value: float
) -> None:
    async def bad(args: Any) -> Any:
        return {"x": [1.0, value]}

    engine.tools.register("bad", bad)
    state = await _run_tool_step(engine, {"id": "a", "tool": "bad"})
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert "not a JSON number" in state.steps[0].result["error"]


@pytest.mark.parametrize(("levels", "status"), [(128, "completed"), (129, "failed")])
async def test_regression_a_tool_result_nests_at_most_as_deep_as_any_outside_json(
    engine: Engine, levels: int, status: str
) -> None:
    # Nested near JSON's limit, a result could encode into its leaf and then fail to
    # decode when read from deeper in the call stack.
    async def nested(args: Any) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    engine.tools.register("nested", nested)
    state = await _run_tool_step(engine, {"id": "a", "tool": "nested"})
    assert state.status == status, state.steps
    if status == "failed":
        assert "nests more than 128 levels" in state.steps[0].result["error"]


async def test_regression_a_calculator_overflow_fails_the_step_live_as_in_replay(
    engine: Engine,
) -> None:
    inputs = {"expression": "1e999"}
    state = await _run_tool_step(engine, {"id": "c", "tool": "calculator", "inputs": inputs})
    assert (state.status, state.steps[0].result) == ("failed", {"error": "result is not finite"})


BIG = "x" * 150_000


async def test_regression_an_llm_answer_too_large_for_a_leaf_ends_the_run(
    engine: Engine, make_agent: Any
) -> None:
    # The step's output holds the answer twice (content and message): over 256 KiB. The
    # event stayed in the writer's buffer, every flush failed, the run never ended.
    agent = await make_agent({"content": BIG})
    started = await engine.execute(TENANT, agent_id=agent, input="hi")
    state = await _live_equals_replay(engine, started.orchestration_id)
    assert (state.status, state.reason) == ("failed", "step_failed")
    error = state.steps[0].result["error"]
    assert error.startswith("output: the step.completed event is ")
    assert error.endswith("the limit is 262144")


async def _too_large_for_a_leaf(args: Any) -> Any:
    return {"blob": "x" * 300_000}


async def test_regression_a_tool_result_too_large_for_a_leaf_ends_the_run(
    engine: Engine, harness: Harness
) -> None:
    engine.tools.register("big", _too_large_for_a_leaf)
    state = await _run_tool_step(engine, {"id": "b", "tool": "big"})
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert "the result cannot be recorded: the tool.completed event is" in str(state.steps)
    assert harness.log is not None
    records = await harness.log.read_stream(TENANT, state.orchestration_id)
    (done,) = [r.event.payload for r in records if r.event.type == "tool.completed"]
    assert (done.result, done.error is not None) == (None, True)


async def test_a_tool_result_too_large_for_a_leaf_is_an_error_the_model_sees(
    engine: Engine, make_agent: Any
) -> None:
    engine.tools.register("big", _too_large_for_a_leaf)
    agent = await make_agent(
        {"tool_calls": [{"name": "big", "arguments": {}}]}, {"content": "done"}, tools=["big"]
    )
    started = await engine.execute(TENANT, agent_id=agent, input="hi")
    state = await _live_equals_replay(engine, started.orchestration_id)
    assert state.status == "completed", state.steps
    assert state.step("tool-1-1") is not None
    assert state.step("tool-1-1").status == "failed"  # type: ignore[union-attr]


async def _failure(harness: Harness, oid: str) -> str | None:
    assert harness.log is not None
    records = await harness.log.read_stream(TENANT, oid)
    assert records[-1].event.type == "orchestration.failed"
    error: str | None = records[-1].event.payload.error
    return error


@pytest.mark.parametrize(
    ("second", "error"),
    [
        (  # reads a's output twice
            {"tool": "echo", "depends_on": ["a"], "inputs": ["{{ steps.a.output }}"] * 2},
            "step 'b' failed: inputs: the step.started event is ",
        ),
        ({"tool": "half"}, "results: the orchestration.completed event is "),
    ],
)
async def test_regression_inputs_or_results_too_large_for_a_leaf_end_the_run(
    engine: Engine, harness: Harness, second: dict[str, Any], error: str
) -> None:
    async def half(args: Any) -> Any:
        return BIG

    engine.tools.register("half", half)
    defn = {
        "steps": [
            {"id": "a", "action": "tool", "tool": "half"},
            {"id": "b", "action": "tool", **second},
        ]
    }
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
    state = await _live_equals_replay(engine, started.orchestration_id)
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert (await _failure(harness, started.orchestration_id) or "").startswith(error)


async def test_regression_a_redaction_that_fails_ends_the_run(harness: Harness) -> None:
    # The salt source is the caller's code: if it fails, the event cannot be written,
    # and the run must end (failed) rather than crash and stay "running".
    def salts(tenant: str) -> bytes:
        raise RuntimeError("key service unavailable")

    engine = await harness.open(redaction=RedactionPolicy(["tool.invoked:arguments"], salts))
    state = await _run_tool_step(engine, {"id": "a", "tool": "echo", "inputs": {"n": 1}})
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert "key service unavailable" in state.steps[0].result["error"]


async def test_a_start_too_large_for_a_leaf_is_refused_and_leaves_nothing(
    engine: Engine, make_agent: Any
) -> None:
    agent = await make_agent()
    with pytest.raises(InvalidEventError, match=r"orchestration\.created event is"):
        await engine.execute(TENANT, agent_id=agent, input="x" * 300_000)
    assert await engine.list_orchestrations(TENANT) == ([], None)
    assert not engine._runs.writers


def _counting_tool(calls: list[Any]) -> Any:
    async def secret(args: Any) -> Any:
        calls.append(args)
        return {"leaked": True}

    return secret


async def _tool_outcomes(harness: Harness, oid: str) -> list[tuple[str, Any, str | None]]:
    assert harness.log is not None
    records = await harness.log.read_stream(TENANT, oid)
    return [
        (r.event.payload.gen_ai_tool_name, r.event.payload.result, r.event.payload.error)
        for r in records
        if r.event.type == "tool.completed"
    ]


async def test_regression_an_agent_loop_calls_only_the_tools_its_agent_was_given(
    engine: Engine, harness: Harness, make_agent: Any
) -> None:
    # A model (or a prompt injected into it) named a tool the process has registered but
    # this agent was never given; it was called.
    calls: list[Any] = []
    engine.tools.register("secret", _counting_tool(calls))
    agent = await make_agent(
        {"tool_calls": [{"name": "secret", "arguments": {"x": 1}}]},
        {"tool_calls": [{"name": "echo", "arguments": {"y": 2}}]},
        {"content": "done"},
        tools=["echo"],
    )
    started = await engine.execute(TENANT, agent_id=agent, input="hi")
    state = await _live_equals_replay(engine, started.orchestration_id)
    assert state.status == "completed", state.steps
    assert calls == []
    assert await _tool_outcomes(harness, started.orchestration_id) == [
        ("secret", None, "tool 'secret' is not one of this agent's tools"),
        ("echo", {"y": 2}, None),
    ]


async def test_regression_an_llm_step_calls_only_the_tools_its_agent_was_given(
    engine: Engine, harness: Harness, make_agent: Any
) -> None:
    calls: list[Any] = []
    engine.tools.register("secret", _counting_tool(calls))
    agent = await make_agent(
        {"tool_calls": [{"name": "secret", "arguments": {}}]}, {"content": "done"}
    )
    defn = {"steps": [{"id": "ask", "action": "llm", "prompt": "hi"}]}
    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    started = await engine.execute(TENANT, workflow_id=wf.workflow_id, agents=[agent])
    state = await _live_equals_replay(engine, started.orchestration_id)
    assert state.status == "completed", state.steps
    assert calls == []
    assert await _tool_outcomes(harness, started.orchestration_id) == [
        ("secret", None, "tool 'secret' is not one of this agent's tools"),
    ]


async def test_regression_external_step_events_need_their_step_started(
    engine: Engine, harness: Harness
) -> None:
    """An external executor could record a step's completion, failure or calls with no
    ``step.started`` for it: the engine's state silently left the step out, and the
    orchestration's own bundle then failed to verify (§7.3: "which never started")."""
    oid = (await engine.create_external(TENANT)).orchestration_id
    orphans: list[tuple[str, dict[str, Any]]] = [
        ("step.completed", {"step_id": "s1", "attempt": 1, "output": 1}),
        ("step.failed", {"step_id": "s1", "attempt": 1, "error": "x", "retrying": False}),
        (
            "decision.made",
            {
                "step_id": "s1",
                "condition": {"exists": "input"},
                "values": {},
                "branch": "then",
                "skipped": [],
            },
        ),
        (
            "tool.invoked",
            {"step_id": "s1", "attempt": 1, "gen_ai.tool.name": "t", "gen_ai.tool.call.id": None},
        ),
    ]
    for event in orphans:
        with pytest.raises(InvalidEventError, match="step 's1', which has not started"):
            await engine.record_step(TENANT, oid, [event])
    start = step_started(oid, "s1")[1]
    started = {k: v for k, v in msgspec.to_builtins(start).items() if k != "orchestration_id"}
    # Started earlier in the same request, or in an earlier one: recorded.
    await engine.record_step(TENANT, oid, [("step.started", started), orphans[3]])
    await engine.record_step(TENANT, oid, [orphans[0], ("orchestration.completed", {"results": 1})])
    state = await engine.get_state(TENANT, oid)
    assert [(s.step_id, s.status, s.result) for s in state.steps] == [("s1", "completed", 1)]
    assert harness.log is not None
    verify_bundle(await bundle_of(harness.log, oid), harness.log.verifier.vkey)


async def test_regression_decision_made_records_its_attempt(
    engine: Engine, harness: Harness
) -> None:
    """``decision.made`` carried no ``attempt`` while the step's other events do: a
    decision retried (here: in flight when the process died, so retried once resumed)
    recorded which attempt decided nowhere in its own event."""
    assert harness.log is not None
    defn = {
        "steps": [
            {"id": "d", "action": "decision", "condition": {"exists": "input"}, "else": ["e"]},
            {"id": "e", "action": "tool", "tool": "echo", "inputs": {}, "depends_on": ["d"]},
        ]
    }

    def in_flight(oid: str) -> list[tuple[str, Any]]:
        _, start = step_started(oid, "d")
        return [("step.started", msgspec.structs.replace(start, action="decision"))]

    wf = await engine.register_workflow(TENANT, name="w", definition=defn)
    live = (await engine.execute(TENANT, workflow_id=wf.workflow_id)).orchestration_id
    await engine.wait(TENANT, live, max_wait=10)
    resumed = await append_run(engine, harness.log, defn, in_flight)
    await harness.close()
    engine = await harness.open()
    assert harness.log is not None
    for oid, attempt in ((live, 1), (resumed, 2)):
        state = await engine.wait(TENANT, oid, max_wait=10)
        assert state.status == "completed", state.steps
        events = [r.event for r in await harness.log.read_stream(TENANT, oid)]
        decisions = [(i, e.payload) for i, e in enumerate(events) if e.type == "decision.made"]
        assert [(p.step_id, p.attempt) for _, p in decisions] == [("d", attempt)]
        # The attempt of the step.started it follows, as for a call of the step.
        i = decisions[0][0]
        started = [e.payload for e in events[:i] if e.type == "step.started"]
        assert (started[-1].step_id, started[-1].attempt) == ("d", attempt)
        verify_bundle(await bundle_of(harness.log, oid), harness.log.verifier.vkey)
