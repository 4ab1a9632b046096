"""Property: for random valid workflows with branches and decisions, the live state
equals a fresh replay of the stream, and every step's events are in causal order."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from engine_helpers import TENANT, Harness, scripted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.orchestration import ToolRegistry, replay, validate_definition


@st.composite
def workflows(draw: st.DrawFn) -> tuple[dict[str, Any], list[bool]]:
    n = draw(st.integers(2, 7))
    flags = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        sid = f"s{i}"
        deps = (
            sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]), max_size=3)))
            if i
            else []
        )
        action = draw(st.sampled_from(["llm", "tool", "decision"]))
        step: dict[str, Any] = {"id": sid, "action": action, "depends_on": deps}
        if action == "llm":
            step["prompt"] = "text: {{ input.text }}"
        elif action == "tool":
            ref = f"{{{{ steps.{deps[0]}.output ?? null }}}}" if deps else "{{ input.text }}"
            step["tool"] = draw(st.sampled_from(["echo", "calculator", "pairs"]))
            step["inputs"] = {"expression": "1+2"} if step["tool"] == "calculator" else {"v": ref}
        else:
            k = draw(st.integers(0, 2))
            step["condition"] = draw(
                st.sampled_from(
                    [
                        {"eq": [f"input.flags[{k}]", True]},
                        {"not": {"eq": [f"input.flags[{k}]", True]}},
                        {"and": [{"exists": "input.text"}, {"eq": [f"input.flags[{k}]", True]}]},
                    ]
                )
            )
        steps.append(step)
    # Branches: each decision splits (part of) its direct children between then/else.
    for step in steps:
        if step["action"] != "decision":
            continue
        children = [s["id"] for s in steps if step["id"] in s["depends_on"]]
        if not children:
            keep = {"id": step["id"], "depends_on": step["depends_on"]}
            step.clear()
            step.update(keep, action="tool", tool="echo")
            continue
        then = draw(st.lists(st.sampled_from(children), unique=True, max_size=len(children)))
        rest = [c for c in children if c not in then]
        other = (
            draw(st.lists(st.sampled_from(rest), unique=True, max_size=len(rest))) if rest else []
        )
        if not then and not other:
            then = [children[0]]
        step["then"], step["else"] = then, other
    return {"steps": steps}, flags


async def _pairs(args: Any) -> Any:
    """A result JSON does not keep as it is (a tuple, an int key): the live run, its
    state and a replay must all see it as the log holds it."""
    return {0: (args, "x"), "k": ("v",)}


def _check_causal_order(events: list[Any], definition: dict[str, Any]) -> None:
    first_start: dict[str, int] = {}
    finished: dict[str, int] = {}
    open_attempt: dict[str, int] = {}
    for e in events:
        p = e.payload
        step_id = getattr(p, "step_id", None)
        if step_id is None:
            continue
        if e.type == "step.started":
            assert step_id not in open_attempt, f"{step_id} restarted before its attempt ended"
            open_attempt[step_id] = p.attempt
            first_start.setdefault(step_id, e.stream_seq)
        elif e.type in ("llm.requested", "llm.completed", "tool.invoked", "tool.completed"):
            assert open_attempt.get(step_id) == p.attempt, f"{e.type} outside its attempt"
        elif e.type == "decision.made":
            assert step_id in open_attempt
        elif e.type in ("step.completed", "step.failed"):
            assert open_attempt.pop(step_id) == p.attempt
            if e.type == "step.completed":
                finished[step_id] = e.stream_seq
        elif e.type == "step.skipped":
            assert step_id not in first_start
            finished[step_id] = e.stream_seq
    assert not open_attempt
    for step in definition["steps"]:
        at = first_start.get(step["id"], finished.get(step["id"]))
        assert at is not None, f"step {step['id']} neither ran nor was skipped"
        for dep in step["depends_on"]:
            assert finished[dep] < at, f"{step['id']} began before its dependency {dep} ended"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=workflows())
async def test_replay_equals_live_and_events_are_causal(
    case: tuple[dict[str, Any], list[bool]],
) -> None:
    definition, flags = case
    validate_definition(definition)
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "p.db")
        tools = ToolRegistry()
        tools.register("pairs", _pairs, pure=True)
        engine = await h.open(tools=tools)
        try:
            agent = await engine.register_agent(
                TENANT, name="a", provider=scripted({"content": '{"x": 1}'})
            )
            wf = await engine.register_workflow(TENANT, name="w", definition=definition)
            started = await engine.execute(
                TENANT,
                workflow_id=wf.workflow_id,
                agents=[agent.agent_id],
                input={"text": "t", "flags": flags},
                max_steps=50,
            )
            live = await engine.wait(TENANT, started.orchestration_id)
            assert live.status == "completed", live
            assert h.log is not None
            events = [r.event for r in await h.log.read_stream(TENANT, started.orchestration_id)]
            assert replay(events) == live
            assert engine.live_state(TENANT, started.orchestration_id) == live
            assert [e.stream_seq for e in events] == list(range(1, len(events) + 1))
            assert len(live.receipts) == len(events)
            _check_causal_order(events, definition)
        finally:
            await h.close()
