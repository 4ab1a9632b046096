"""The registry's orchestration index, folded from random histories: what a restart
resumes (``unfinished``) and what a listing shows agree with the summaries, live and
after a snapshot."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import LEAF_VERSION, Event
from ledger.orchestration import events as ev
from ledger.orchestration.registry import Registry, RegistryProjection

_TIME = "2026-11-29T12:00:00.000000Z"


def _created(oid: str, executor: str) -> ev.OrchestrationCreated:
    return ev.OrchestrationCreated(
        orchestration_id=oid,
        executor=executor,  # type: ignore[arg-type]  # drawn from the two literals
        workflow_id=None,
        workflow_version=None,
        workflow_hash=None,
        agent_id="agent-1",
        agents=("agent-1",),
        input=None,
        parameters={},
        model=None,
        max_steps=8,
        timeout_seconds=60.0,
        started_by="test",
        request_shape="agent",
    )


_NEXT: dict[str, Any] = {
    ev.ORCHESTRATION_STARTED: ev.OrchestrationStarted,
    ev.ORCHESTRATION_COMPLETED: lambda oid: ev.OrchestrationCompleted(oid, results=None),
    ev.ORCHESTRATION_FAILED: lambda oid: ev.OrchestrationFailed(oid, "timed_out", None),
    ev.ORCHESTRATION_CANCELLED: lambda oid: ev.OrchestrationCancelled(oid, "asked", None),
}

# Per orchestration: its executor and tenant, then the events after its creation.
_histories = st.lists(
    st.tuples(
        st.sampled_from(["engine", "external"]),
        st.sampled_from(["t1", "t2"]),
        st.lists(st.sampled_from(sorted(_NEXT)), max_size=3),
    ),
    max_size=12,
)


def _fold(histories: list[tuple[str, str, list[str]]], interleave: int) -> Registry:
    registry = Registry()
    streams = []
    for n, (executor, tenant, after) in enumerate(histories):
        oid = f"00000000-0000-0000-0000-{n:012d}"
        events = [(ev.ORCHESTRATION_CREATED, _created(oid, executor))]
        events += [(kind, _NEXT[kind](oid)) for kind in after]
        streams.append((tenant, oid, events))
    # Round-robin across the streams, starting at a drawn offset: each stream's events
    # stay in order while streams interleave.
    position = [0] * len(streams)
    turn = interleave
    while any(p < len(s[2]) for p, s in zip(position, streams, strict=True)):
        k = turn % len(streams)
        turn += 1
        tenant, oid, events = streams[k]
        if position[k] < len(events):
            kind, payload = events[position[k]]
            position[k] += 1
            registry.apply(
                Event(LEAF_VERSION, "0" * 26, tenant, oid, position[k], kind, _TIME, payload)
            )
    return registry


def _all_summaries(registry: Registry) -> list[Any]:
    return [s for t in ("t1", "t2") for s in registry.list_orchestrations(t, limit=100)[0]]


@settings(max_examples=200, deadline=None)
@given(_histories, st.integers(0, 50))
def test_unfinished_is_every_engine_run_that_has_not_ended(
    histories: list[tuple[str, str, list[str]]], interleave: int
) -> None:
    registry = _fold(histories, interleave)
    expected = sorted(
        (
            s
            for s in _all_summaries(registry)
            if s.executor == "engine" and s.status in ("pending", "running")
        ),
        key=lambda s: s.orchestration_id,
    )
    assert registry.unfinished() == expected
    restored = RegistryProjection().decode(RegistryProjection().encode(registry))
    assert restored.unfinished() == expected
    assert _all_summaries(restored) == _all_summaries(registry)
