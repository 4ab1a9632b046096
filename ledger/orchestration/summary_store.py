"""Where orchestration summaries are kept: the port, and a backend in memory.

The summaries are a projection of the log, as Temporal's visibility store is of its
histories: derived, never authoritative, rebuilt from the log when the store is missing,
damaged or behind. A store records how far into the log its rows are the fold
(:class:`SummaryProgress`), in the same write as the rows, so a restart folds only what
came after. The SQLite backend is ``ledger/orchestration/sqlite_summaries.py``; both
pass ``tests/engine/summary_store_contract.py``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from ledger.orchestration.summary import (
    OrchestrationSummary,
    SummaryPatch,
    is_engine_unfinished,
    patched,
)

__all__ = [
    "MemorySummaryStore",
    "PageQuery",
    "SummaryKey",
    "SummaryProgress",
    "SummaryStore",
    "matches",
]

#: (tenant_id, orchestration_id)
SummaryKey = tuple[str, str]


class SummaryProgress(msgspec.Struct, frozen=True):
    """How far into the log a store's rows are the fold."""

    #: The rows are the fold of the log's first ``upto`` leaves.
    upto: int = 0
    #: The event id of leaf ``upto - 1``: that the store folded *this* log, not another.
    last_event_id: str | None = None
    #: How many summaries the store holds.
    count: int = 0


class PageQuery(msgspec.Struct, frozen=True):
    """One page of a tenant's orchestrations, newest first (see :meth:`SummaryStore.page`)."""

    status: str | None = None
    agent_id: str | None = None
    workflow_id: str | None = None
    #: The next cursor of the previous page: the page holds ids below it.
    cursor: str | None = None
    limit: int = 50
    #: The most orchestrations the page examines (at least ``limit``).
    examine: int = 5_000


def matches(summary: OrchestrationSummary, query: PageQuery) -> bool:
    return (
        (query.status is None or summary.status == query.status)
        and (
            query.agent_id is None
            or summary.agent_id == query.agent_id
            or query.agent_id in summary.agents
        )
        and (query.workflow_id is None or summary.workflow_id == query.workflow_id)
    )


class SummaryStore(Protocol):
    async def open(self) -> SummaryProgress:
        """Open (creating if need be) and say how far the stored fold reaches."""
        ...

    async def close(self) -> None: ...

    async def reset(self) -> None:
        """Forget every summary: the fold starts again from the log's first leaf."""
        ...

    async def get(self, tenant_id: str, orchestration_id: str) -> OrchestrationSummary | None:
        """The stored summary, as of the last :meth:`write`."""
        ...

    async def page(
        self, tenant_id: str, query: PageQuery
    ) -> tuple[list[OrchestrationSummary], str | None]:
        """Up to ``query.limit`` of the tenant's summaries that match ``query``, newest
        (highest id) first, and the cursor of the next page (``None``: the end).

        A page examines at most ``max(limit, examine)`` orchestrations below the cursor:
        a filter few match would otherwise walk a tenant's whole history in one call.
        So a page can hold fewer than ``limit`` (even none) and still have a cursor. The
        cursor is the last id examined, or ``None`` when no older one is left.
        """
        ...

    async def unfinished(self) -> list[OrchestrationSummary]:
        """Engine-run summaries that are pending or running, in id order."""
        ...

    async def write(
        self,
        summaries: Sequence[OrchestrationSummary],
        patches: Mapping[SummaryKey, SummaryPatch],
        progress: SummaryProgress,
    ) -> None:
        """In one atomic write: store ``summaries`` whole (replacing any with their
        key), apply each patch to the stored summary of its key (a key with none is
        not an orchestration: nothing to do), and record ``progress``."""
        ...


class MemorySummaryStore:
    """A :class:`SummaryStore` in this process: for tests and embedders that keep no
    files. It holds every summary, so its memory grows with the log."""

    def __init__(self) -> None:
        self._rows: dict[SummaryKey, OrchestrationSummary] = {}
        #: Per tenant, orchestration ids in ascending order (ULID-derived: creation order).
        self._order: dict[str, list[str]] = {}
        self._progress = SummaryProgress()

    async def open(self) -> SummaryProgress:
        return self._progress

    async def close(self) -> None:
        return None

    async def reset(self) -> None:
        self._rows.clear()
        self._order.clear()
        self._progress = SummaryProgress()

    async def get(self, tenant_id: str, orchestration_id: str) -> OrchestrationSummary | None:
        return self._rows.get((tenant_id, orchestration_id))

    async def page(
        self, tenant_id: str, query: PageQuery
    ) -> tuple[list[OrchestrationSummary], str | None]:
        order = self._order.get(tenant_id, [])
        end = bisect.bisect_left(order, query.cursor) if query.cursor is not None else len(order)
        page: list[OrchestrationSummary] = []
        i = end - 1
        stop = max(-1, end - 1 - max(query.limit, query.examine))
        while i > stop and len(page) < query.limit:
            summary = self._rows[(tenant_id, order[i])]
            if matches(summary, query):
                page.append(summary)
            i -= 1
        # Everything above ``i`` was examined; the next page starts below it.
        return page, (order[i + 1] if i >= 0 else None)

    async def unfinished(self) -> list[OrchestrationSummary]:
        return sorted(
            (s for s in self._rows.values() if is_engine_unfinished(s)),
            key=lambda s: s.orchestration_id,
        )

    async def write(
        self,
        summaries: Sequence[OrchestrationSummary],
        patches: Mapping[SummaryKey, SummaryPatch],
        progress: SummaryProgress,
    ) -> None:
        for summary in summaries:
            key = (summary.tenant_id, summary.orchestration_id)
            if key not in self._rows:
                bisect.insort(self._order.setdefault(summary.tenant_id, []), key[1])
            self._rows[key] = summary
        for key, patch in patches.items():
            old = self._rows.get(key)
            if old is not None:
                self._rows[key] = patched(old, patch)
        self._progress = progress
