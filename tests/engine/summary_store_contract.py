"""The contract every :class:`SummaryStore` backend passes, behind the live index
(:class:`Summaries`) the engine folds into: subclass :class:`SummaryStoreContract` once
per backend (``test_engine_summary_stores.py``).

The reference is the plain fold: each orchestration's ``created`` summary with every
later event of its stream patched in, in log order. Whatever the backend, whenever its
writes happen and whatever it holds in memory, the answers must be that fold's.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.events import LEAF_VERSION, Event
from ledger.orchestration import events as ev
from ledger.orchestration.summaries import Summaries
from ledger.orchestration.summary import (
    OrchestrationSummary,
    created_summary,
    is_engine_unfinished,
    patch_for,
    patched,
)
from ledger.orchestration.summary_store import PageQuery, SummaryProgress, SummaryStore, matches

TIME = "2026-11-29T12:00:00.000000Z"
TENANTS = ("t1", "t2")
STATUSES = (None, "pending", "running", "completed", "failed", "cancelled")


def created(oid: str, executor: str, agents: tuple[str, ...] = ("agent-1",)) -> Any:
    return ev.OrchestrationCreated(
        orchestration_id=oid,
        executor=executor,  # type: ignore[arg-type]  # drawn from the two literals
        workflow_id=None,
        workflow_version=None,
        workflow_hash=None,
        agent_id=agents[0] if agents else None,
        agents=agents,
        input=None,
        parameters={},
        model=None,
        max_steps=8,
        timeout_seconds=60.0,
        started_by="test",
        request_shape="agent",
    )


NEXT: dict[str, Any] = {
    ev.ORCHESTRATION_STARTED: ev.OrchestrationStarted,
    ev.ORCHESTRATION_COMPLETED: lambda oid: ev.OrchestrationCompleted(oid, results=None),
    ev.ORCHESTRATION_FAILED: lambda oid: ev.OrchestrationFailed(oid, "timed_out", None),
    ev.ORCHESTRATION_CANCELLED: lambda oid: ev.OrchestrationCancelled(oid, "asked", None),
    ev.STEP_SKIPPED: None,  # any other event of the stream: moves only its seq
}

# Per orchestration: its executor, tenant and agents, then the events after its creation.
histories = st.lists(
    st.tuples(
        st.sampled_from(["engine", "external"]),
        st.sampled_from(TENANTS),
        st.sampled_from([("agent-1",), ("agent-2",), ("agent-1", "agent-2")]),
        st.lists(st.sampled_from(sorted(NEXT)), max_size=3),
    ),
    max_size=12,
)
History = list[tuple[str, str, tuple[str, ...], list[str]]]


def oid_of(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def events_of(history: History, interleave: int) -> list[Event]:
    """The histories' events in one log order: each stream's in order, streams
    round-robin from a drawn offset, and an agent's registration stream among them (a
    stream that is not an orchestration). An external executor may write anything,
    even a start after an end; the engine ends its runs last."""
    streams = []
    for n, (executor, tenant, agents, drawn) in enumerate(history):
        oid = oid_of(n)
        after = drawn
        if executor == "engine":  # the engine writes nothing to a run after its end
            ends = [i for i, kind in enumerate(drawn) if kind in ev.TERMINAL_TYPES]
            after = drawn[: ends[0] + 1] if ends else drawn
        payloads = [(ev.ORCHESTRATION_CREATED, created(oid, executor, agents))]
        for kind in after:
            if NEXT[kind] is None:
                skipped = ev.StepSkipped(orchestration_id=oid, step_id="s", reason="branch")
                payloads.append((ev.STEP_SKIPPED, skipped))
            else:
                payloads.append((kind, NEXT[kind](oid)))
        streams.append((tenant, oid, payloads))
    agent = ev.AgentRegistered("agent-1", "bot", {"kind": "scripted"}, None, (), None)
    streams.append(("t1", "agent-1", [(ev.AGENT_REGISTERED, agent)]))
    position = [0] * len(streams)
    turn = interleave
    out: list[Event] = []
    while any(p < len(s[2]) for p, s in zip(position, streams, strict=True)):
        k = turn % len(streams)
        turn += 1
        tenant, stream, payloads = streams[k]
        if position[k] < len(payloads):
            kind, payload = payloads[position[k]]
            position[k] += 1
            event_id = f"{len(out):026d}"
            out.append(
                Event(LEAF_VERSION, event_id, tenant, stream, position[k], kind, TIME, payload)
            )
    return out


def reference(events: list[Event]) -> dict[tuple[str, str], OrchestrationSummary]:
    out: dict[tuple[str, str], OrchestrationSummary] = {}
    for event in events:
        key = (event.tenant_id, event.stream_id)
        summary = created_summary(event)
        if summary is not None:
            out[key] = summary
        elif key in out:
            out[key] = patched(out[key], patch_for(event))
    return out


def listing(
    folded: dict[tuple[str, str], OrchestrationSummary], tenant: str, query: PageQuery
) -> list[OrchestrationSummary]:
    mine = [s for (t, _), s in folded.items() if t == tenant and matches(s, query)]
    return sorted(mine, key=lambda s: s.orchestration_id, reverse=True)


async def walk(
    read: Callable[
        [str, PageQuery], Coroutine[Any, Any, tuple[list[OrchestrationSummary], str | None]]
    ],
    tenant: str,
    query: PageQuery,
    bound: int,
) -> list[OrchestrationSummary]:
    """Every page from the first until the cursor is ``None``; each within its limit."""
    walked: list[OrchestrationSummary] = []
    cursor = None
    for _ in range(bound + 2):  # each page examines at least one
        page, cursor = await read(tenant, PageQuery(**{**fields_of(query), "cursor": cursor}))
        assert len(page) <= query.limit
        walked += page
        if cursor is None:
            return walked
    raise AssertionError("the pages never ended")


def fields_of(query: PageQuery) -> dict[str, Any]:
    return {f: getattr(query, f) for f in query.__struct_fields__}


# Each backend's subclass runs the same drawn tests: the executor picks the backend,
# and nothing drawn depends on it.
_PER_BACKEND = [HealthCheck.differing_executors]


class SummaryStoreContract:
    """Subclasses say how to open the backend in a directory, and how to open it
    again after a close (a restart)."""

    def open_store(self, directory: Path) -> SummaryStore:
        raise NotImplementedError

    def reopen_store(self, store: SummaryStore, directory: Path) -> SummaryStore:
        raise NotImplementedError

    def run(self, test: Callable[[Path], Coroutine[Any, Any, None]]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(test(Path(directory)))

    @settings(max_examples=60, deadline=None, suppress_health_check=_PER_BACKEND)
    @given(histories, st.integers(0, 50), st.integers(1, 6), st.sets(st.integers(0, 60)))
    def test_the_index_answers_as_the_fold_of_the_log(
        self, history: History, interleave: int, write_after: int, flush_at: set[int]
    ) -> None:
        """Written in batches of any size, with reads between, before and after a
        restart: every summary, every listing and the runs to resume are the fold's."""
        events = events_of(history, interleave)
        expected = reference(events)

        async def check(summaries: Summaries) -> None:
            for (tenant, oid), summary in expected.items():
                assert await summaries.get(tenant, oid) == summary
                other = next(t for t in TENANTS if t != tenant)
                assert await summaries.get(other, oid) is None  # another tenant's: none
            assert await summaries.get("t1", "agent-1") is None  # not an orchestration
            unfinished = sorted(
                (s for s in expected.values() if is_engine_unfinished(s)),
                key=lambda s: s.orchestration_id,
            )
            assert summaries.unfinished() == unfinished
            for tenant in TENANTS:
                for status in STATUSES:
                    query = PageQuery(status=status, limit=3, examine=4)
                    want = listing(expected, tenant, query)
                    assert await walk(summaries.page, tenant, query, len(events)) == want
                agent_query = PageQuery(agent_id="agent-2", limit=100)
                assert (await summaries.page(tenant, agent_query))[0] == listing(
                    expected, tenant, agent_query
                )

        async def test(directory: Path) -> None:
            store = self.open_store(directory)
            summaries = Summaries(store, write_after_changes=write_after, write_after_seconds=0)
            assert (await summaries.open()).upto == 0
            for i, event in enumerate(events):
                summaries.apply(event, i)
                if i in flush_at:
                    await asyncio.sleep(0)  # a write may start, or end, here
            await check(summaries)
            await summaries.close()

            again = Summaries(self.reopen_store(store, directory))
            progress = await again.open()
            assert progress.upto == len(events)
            assert progress.count == len(expected)
            assert progress.last_event_id == (events[-1].event_id if events else None)
            await again.load_unfinished()
            await check(again)
            await again.close()

        self.run(test)

    @settings(max_examples=60, deadline=None, suppress_health_check=_PER_BACKEND)
    @given(
        histories,
        st.integers(0, 50),
        st.sampled_from(STATUSES),
        st.integers(1, 4),
        st.integers(1, 5),
    )
    def test_bounded_pages_walk_to_exactly_the_filtered_listing(
        self, history: History, interleave: int, status: str | None, limit: int, examine: int
    ) -> None:
        """However few orchestrations a page may examine, following the cursor until it
        is None yields every match once, newest first, and no page exceeds its limit."""
        events = events_of(history, interleave)
        expected = reference(events)

        async def test(directory: Path) -> None:
            store = self.open_store(directory)
            summaries = Summaries(store)
            await summaries.open()
            summaries.apply_all((e, i) for i, e in enumerate(events))
            await summaries.flush()
            query = PageQuery(status=status, limit=limit, examine=examine)
            for tenant in TENANTS:
                want = listing(expected, tenant, query)
                assert await walk(store.page, tenant, query, len(events)) == want
            await summaries.close()

        self.run(test)

    def test_a_rare_filter_ends_a_page_early_with_a_cursor(self) -> None:
        """One failed run under many completed: a page stops after ``examine`` summaries
        instead of scanning everything, and its cursor leads on to the match."""
        history: History = [("engine", "t1", ("agent-1",), [ev.ORCHESTRATION_FAILED])]
        history += [("engine", "t1", ("agent-1",), [ev.ORCHESTRATION_COMPLETED])] * 30

        async def test(directory: Path) -> None:
            summaries = Summaries(self.open_store(directory))
            await summaries.open()
            summaries.apply_all((e, i) for i, e in enumerate(events_of(history, 0)))
            query = PageQuery(status="failed", limit=5, examine=10)
            page, cursor = await summaries.page("t1", query)
            assert page == []
            assert cursor == oid_of(21)  # the tenth from the newest
            found = []
            while cursor is not None:
                page, cursor = await summaries.page(
                    "t1", PageQuery(**{**fields_of(query), "cursor": cursor})
                )
                found += page
            assert [s.orchestration_id for s in found] == [oid_of(0)]
            await summaries.close()

        self.run(test)

    def test_reset_forgets_every_summary_and_the_progress(self) -> None:
        history: History = [("engine", "t1", ("agent-1",), [])] * 3

        async def test(directory: Path) -> None:
            store = self.open_store(directory)
            summaries = Summaries(store)
            await summaries.open()
            summaries.apply_all((e, i) for i, e in enumerate(events_of(history, 0)))
            await summaries.flush()
            assert len(await store.unfinished()) == 3
            await summaries.reset()
            assert await store.unfinished() == []
            assert await store.get("t1", oid_of(0)) is None
            assert (await store.page("t1", PageQuery())) == ([], None)
            await summaries.close()
            reopened = self.reopen_store(store, directory)
            assert await reopened.open() == SummaryProgress()  # nothing folded
            await reopened.close()

        self.run(test)
