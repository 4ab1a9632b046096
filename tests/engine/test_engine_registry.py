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
    restored = RegistryProjection().decode(b"".join(RegistryProjection().encode(registry)))
    assert restored.unfinished() == expected
    assert _all_summaries(restored) == _all_summaries(registry)


@settings(max_examples=200, deadline=None)
@given(
    _histories,
    st.integers(0, 50),
    st.sampled_from([None, "pending", "running", "completed", "failed", "cancelled"]),
    st.integers(1, 4),
    st.integers(1, 5),
)
def test_bounded_pages_walk_to_exactly_the_filtered_listing(
    histories: list[tuple[str, str, list[str]]],
    interleave: int,
    status: str | None,
    limit: int,
    examine: int,
) -> None:
    """However few orchestrations a page may examine, following next_cursor until it is
    None yields every match once, newest first, and no page exceeds its limit."""
    registry = _fold(histories, interleave)
    for tenant in ("t1", "t2"):
        expected, _ = registry.list_orchestrations(tenant, status=status, limit=10_000)
        walked: list[Any] = []
        cursor: str | None = None
        for _ in range(len(histories) + 2):  # each page examines at least one
            page, cursor = registry.list_orchestrations(
                tenant, status=status, cursor=cursor, limit=limit, examine=examine
            )
            assert len(page) <= limit
            walked += page
            if cursor is None:
                break
        assert cursor is None
        assert walked == expected
        ids = [s.orchestration_id for s in expected]
        assert ids == sorted(ids, reverse=True)


def test_a_rare_filter_ends_a_page_early_with_a_cursor() -> None:
    """One failed run under many completed: a page stops after ``examine`` summaries
    instead of scanning everything, and its cursor leads on to the match."""
    histories = [("engine", "t1", [ev.ORCHESTRATION_FAILED])] + [
        ("engine", "t1", [ev.ORCHESTRATION_COMPLETED])
    ] * 30
    registry = _fold(histories, 0)
    page, cursor = registry.list_orchestrations("t1", status="failed", limit=5, examine=10)
    assert page == []
    assert cursor == "00000000-0000-0000-0000-000000000021"  # the tenth from the newest
    found: list[Any] = []
    while cursor is not None:
        page, cursor = registry.list_orchestrations(
            "t1", status="failed", cursor=cursor, limit=5, examine=10
        )
        found += page
    assert [s.orchestration_id for s in found] == ["00000000-0000-0000-0000-000000000000"]
