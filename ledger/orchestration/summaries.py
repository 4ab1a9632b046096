"""The live index of orchestration summaries: a store, and what it has not been told yet.

The engine folds each committed event here, synchronously, from the log's listener; a
background write hands the folded changes to the :class:`SummaryStore` in batches. So
memory holds only:

- the summaries of runs this engine would resume (pending or running engine runs: the
  restart and the metrics need them at once, and they change with every step), and
- the changes not written yet: whole summaries created since the last write, and a
  :class:`SummaryPatch` per other stream with events since.

A read looks here first, then at the store with the pending patch applied; a listing
first waits for a write, so it sees every orchestration created before it was asked.

:meth:`Summaries.unfinished` counts on the engine writing nothing to a run after its
end (it does not): a run's stream revived after its end by another writer is counted
once its summary is read back from the store, at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Final

import msgspec
import structlog

from ledger.errors import StorageUnavailableError
from ledger.events import Event
from ledger.orchestration.summary import (
    STATUS_TYPES,
    OrchestrationSummary,
    SummaryPatch,
    created_summary,
    is_engine_unfinished,
    merge_patches,
    patch_for,
    patched,
)
from ledger.orchestration.summary_store import (
    PageQuery,
    SummaryKey,
    SummaryProgress,
    SummaryStore,
    matches,
)

__all__ = ["Summaries"]

_log = structlog.get_logger()

#: Pending changes that start a write at once.
WRITE_AFTER_CHANGES: Final = 512
#: How long a change waits, at most, before a write starts.
WRITE_AFTER_SECONDS: Final = 0.25
# After a failed write: how long before the next try.
_RETRY_SECONDS = 1.0


class Summaries:
    def __init__(
        self,
        store: SummaryStore,
        *,
        write_after_changes: int = WRITE_AFTER_CHANGES,
        write_after_seconds: float = WRITE_AFTER_SECONDS,
    ) -> None:
        self.store = store
        self._write_after_changes = write_after_changes
        self._write_after_seconds = write_after_seconds
        #: Summaries held here: engine runs not ended, and any not written yet.
        self._hot: dict[SummaryKey, OrchestrationSummary] = {}
        #: Keys of ``_hot`` changed since the last write began.
        self._dirty: set[SummaryKey] = set()
        #: Changes to summaries not held here, since the last write began.
        self._patches: dict[SummaryKey, SummaryPatch] = {}
        #: The patches of the write in flight.
        self._writing_patches: dict[SummaryKey, SummaryPatch] = {}
        #: Writes completed: a read from the store spanning one may have missed a patch.
        self._written = 0
        self._progress = SummaryProgress()
        self._writing: asyncio.Task[str | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Whether the last write failed (the next waits for its retry, not the next event).
        self._failed = False
        #: Writes the store refused, since this index was made (for metrics).
        self.write_failures = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> SummaryProgress:
        """Open the store; returns how far into the log its fold reaches."""
        self._progress = await self.store.open()
        return self._progress

    async def load_unfinished(self) -> None:
        for summary in await self.store.unfinished():
            self._hot[(summary.tenant_id, summary.orchestration_id)] = summary

    async def reset(self) -> None:
        """Forget everything: the store's fold no longer matches the log."""
        await self.store.reset()
        self._hot.clear()
        self._dirty.clear()
        self._patches.clear()
        self._progress = SummaryProgress()

    async def close(self) -> None:
        """Write what is pending, then close the store."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        try:
            await self.flush()
        except Exception as e:  # noqa: BLE001 — derived data: the next start folds it again
            _log.warning("summaries.final_write_failed", error=f"{type(e).__name__}: {e}")
        finally:
            await self.store.close()

    @property
    def count(self) -> int:
        """How many orchestrations there are."""
        return self._progress.count

    # -- folding (synchronous: the log's listener calls it) ----------------------------

    def apply(self, event: Event, leaf_index: int) -> None:
        key = (event.tenant_id, event.stream_id)
        old = self._hot.get(key)
        count = self._progress.count
        if old is not None and event.type not in STATUS_TYPES:
            # Most events: a step of a run held here, which moves only its seq (the
            # event loop folds every event: no patch is built for it).
            self._hot[key] = msgspec.structs.replace(old, seq=event.stream_seq)
            self._dirty.add(key)
        elif (created := created_summary(event)) is not None:
            self._hot[key] = created
            self._dirty.add(key)
            count += 1
        elif old is not None:
            self._hot[key] = patched(old, patch_for(event))
            self._dirty.add(key)
        else:
            patch = patch_for(event)
            pending = self._patches.get(key)
            self._patches[key] = merge_patches(pending, patch) if pending else patch
        self._progress = SummaryProgress(leaf_index + 1, event.event_id, count)
        if self._writing is None:
            self._schedule()

    def apply_all(self, events: Iterable[tuple[Event, int]]) -> None:
        for event, leaf_index in events:
            self.apply(event, leaf_index)

    def _schedule(self) -> None:
        if self._closed or self._writing is not None:
            return  # the write in flight schedules the next when it ends
        if self._timer is not None and self._failed:
            return  # the store refused the last write: its retry is already due
        if len(self._dirty) + len(self._patches) >= self._write_after_changes:
            self._start_write()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._write_after_seconds, self._start_write)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_write(self) -> asyncio.Task[str | None] | None:
        self._cancel_timer()
        if self._writing is None and (self._dirty or self._patches):
            self._writing = asyncio.get_running_loop().create_task(
                self._write(), name="summaries-write"
            )
        return self._writing

    # -- writing ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Return once everything folded before the call is in the store; raise
        :class:`~ledger.errors.StorageUnavailableError` if the store refused it."""
        while self._writing is not None:
            # Its changes are older than the call's, but the rest are not in it.
            await asyncio.shield(self._writing)
        if not (self._dirty or self._patches):
            return
        writing = self._start_write()
        assert writing is not None
        error = await asyncio.shield(writing)
        if error is not None:
            raise StorageUnavailableError(f"the summaries were not written: {error}")

    async def _write(self) -> str | None:
        """Write the pending changes; returns why it could not (``None``: written)."""
        dirty, self._dirty = self._dirty, set()
        patches, self._patches = self._patches, {}
        self._writing_patches = patches
        summaries = [self._hot[key] for key in dirty]
        progress = self._progress
        try:
            await self.store.write(summaries, patches, progress)
        except BaseException as e:
            # Nothing was written: the changes go back under any made meanwhile.
            self._dirty |= dirty
            for key, patch in patches.items():
                newer = self._patches.get(key)
                self._patches[key] = merge_patches(patch, newer) if newer else patch
            self._writing_patches = {}
            self._writing = None
            if not isinstance(e, Exception):  # cancelled: the caller's to handle
                raise
            _log.warning("summaries.write_failed", error=f"{type(e).__name__}: {e}")
            self._failed = True
            self.write_failures += 1
            if not self._closed:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(_RETRY_SECONDS, self._start_write)
            return f"{type(e).__name__}: {e}"
        else:
            self._failed = False
            self._written += 1
            # Written: a summary no run here needs is read from the store from now on.
            for key in dirty:
                if key not in self._dirty and not is_engine_unfinished(self._hot[key]):
                    del self._hot[key]
        self._writing_patches = {}
        self._writing = None
        if self._dirty or self._patches:
            self._schedule()
        return None

    # -- reads -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Changes folded but not in the store yet (they grow while it refuses writes)."""
        return len(self._dirty) + len(self._patches) + len(self._writing_patches)

    @property
    def held(self) -> int:
        """How many summaries are held in memory (the rest are read from the store)."""
        return len(self._hot)

    async def get(self, tenant_id: str, orchestration_id: str) -> OrchestrationSummary | None:
        key = (tenant_id, orchestration_id)
        while True:
            summary = self._hot.get(key)
            if summary is not None:
                return summary
            written = self._written
            stored = await self.store.get(tenant_id, orchestration_id)
            summary = self._hot.get(key)
            if summary is not None:
                return summary
            if written == self._written:
                break
            # A write ended while the store was read: the row may predate a patch that
            # write dropped from memory. Read again.
        return self._fresh(stored) if stored is not None else None

    async def page(
        self, tenant_id: str, query: PageQuery
    ) -> tuple[list[OrchestrationSummary], str | None]:
        if not self._failed:  # after a refusal, wait for the retry: do not hammer it
            with contextlib.suppress(StorageUnavailableError):
                # A write that fails keeps the changes here; the page then lacks the newest.
                await self.flush()
        page, cursor = await self.store.page(tenant_id, query)
        # The store matched each row as written; one brought up to date with what was
        # folded since may no longer match (a run that ended while the page was read is
        # not ``running``). It is left out: the cursor still says what was examined.
        fresh = (self._fresh(s) for s in page)
        return [s for s in fresh if matches(s, query)], cursor

    def _fresh(self, stored: OrchestrationSummary) -> OrchestrationSummary:
        """``stored`` with what was folded since it was written."""
        key = (stored.tenant_id, stored.orchestration_id)
        summary = self._hot.get(key)
        if summary is not None:
            return summary
        pending = self._writing_patches.get(key)
        newer = self._patches.get(key)
        if pending is not None and newer is not None:
            pending = merge_patches(pending, newer)
        elif newer is not None:
            pending = newer
        return patched(stored, pending) if pending is not None else stored

    def unfinished(self) -> list[OrchestrationSummary]:
        """Engine runs that are pending or running, in creation order."""
        return sorted(
            (s for s in self._hot.values() if is_engine_unfinished(s)),
            key=lambda s: s.orchestration_id,
        )
