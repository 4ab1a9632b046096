"""A resumed llm step reuses the calls its interrupted attempt completed (journal.py).

Each test writes the log a crashed process would have left (``append_run``), then
starts an engine on it with a real OpenAI-compatible server on loopback, and counts
what that server is asked. The SIGKILL version is in test_engine_restart.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from engine_helpers import TENANT, FakeOpenAI, Harness, append_run, completion

from ledger.orchestration import RedactionPolicy, replay
from ledger.orchestration import events as ev
from ledger.orchestration.journal import CallJournal, CallsDiverged, response_of
from ledger.orchestration.providers.base import LLMRequest

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
