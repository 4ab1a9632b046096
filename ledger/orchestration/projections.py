"""The engine's projections of the log, and following the log to keep them live.

:class:`Projections` holds the registry of agents and workflows, every orchestration's
summary, and the live state of recent runs. :meth:`Projections.build` folds them from the
stored registry snapshot and the summaries' store, then the listener folds each commit as
it lands; the registry is snapshotted now and then, so a start folds only the log's tail.
A wait for a run's end learns of it here too, as its terminal event is followed in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from ledger.errors import IntegrityError, LedgerError
from ledger.events import Event
from ledger.orchestration import events as ev
from ledger.orchestration.engine_log import EngineLog, Recorded
from ledger.orchestration.errors import OrchestrationNotFoundError
from ledger.orchestration.registry import Registry, RegistryProjection
from ledger.orchestration.state import OrchestrationProjection, OrchestrationState
from ledger.orchestration.summaries import Summaries
from ledger.orchestration.summary_store import SummaryStore
from ledger.replay import load_snapshot, save_snapshot

__all__ = ["Projections"]

_log = structlog.get_logger()

_LIVE_STATES = 10_000
_REGISTRY = RegistryProjection()
# A start that had to fold at least this many events saves a snapshot at once, so a
# process that keeps crashing does not fold the same long tail every time.
_SNAPSHOT_AFTER_REPLAY = 100_000
# A running engine snapshots its registry every this many events as well, in the
# background: a crash then costs the next start at most this much folding, not all
# the log written since the last clean stop (the summaries' store keeps its own place,
# a fraction of a second behind the log)...
_SNAPSHOT_EVERY = 20_000
# ...or every this many events per agent registration and workflow version it holds,
# if that is more: a snapshot encodes them all on the event loop and writes them whole,
# so the interval grows with them and snapshots stay a small part of the work.
_SNAPSHOT_EVENTS_PER_RECORD = 20


class Projections:
    def __init__(
        self, log: EngineLog, summaries: SummaryStore, *, closing: Callable[[], bool]
    ) -> None:
        self._log = log
        #: Whether the engine is closing: no snapshot is started, no wait begins.
        self._closing = closing
        self.registry = Registry()
        self.summaries = Summaries(summaries)
        self._live: OrderedDict[tuple[str, str], OrchestrationProjection.FoldState] = OrderedDict()
        #: Waits on orchestrations no task here runs (external ones): set when one's
        #: terminal event commits; (event, waiters), dropped when no one waits.
        self._enders: dict[tuple[str, str], tuple[asyncio.Event, list[int]]] = {}
        self._projection = OrchestrationProjection()
        self._indexed_from = 0
        #: The registry is the fold of the first ``_registry_upto`` leaves (once started).
        self._registry_upto = 0
        self._registry_ready = False
        #: Events committed while start() folds the older log: folded after it, in order.
        self._early: list[tuple[Event, int]] = []
        #: The log size the stored registry snapshot covers (0: none).
        self._snapshot_upto = 0
        self._saving = asyncio.Lock()
        #: The background snapshot in flight, and where the log must reach for the next.
        self._snapshotting: asyncio.Task[None] | None = None
        self._next_snapshot_at = 0
        self._replayed_at_start = 0

    @property
    def replayed_at_start(self) -> int:
        """How many events :meth:`build` folded into the registry after its snapshot."""
        return self._replayed_at_start

    # -- building and following ------------------------------------------------------

    async def build(self) -> None:
        """Fold the log into the projections and follow it live from then on."""
        try:
            loaded = await load_snapshot(self._log, _REGISTRY)
        except LedgerError as e:  # the snapshot is only a shortcut: fold from the start
            _log.warning("engine.registry_snapshot_unreadable", error=str(e))
            loaded = None
        summaries_upto = await self._open_summaries()
        # No await from here to the listener: every leaf is either folded below (before
        # ``_indexed_from``) or by the listener (from it on), never both or neither.
        self._indexed_from = self._registry_upto = self._log.size
        self._log.add_listener(self._on_commit)
        registry_upto = 0
        if loaded is not None:
            self.registry, registry_upto = loaded
        self._snapshot_upto = registry_upto
        # Each projection folds from where its own stored state ends.
        index = first = min(registry_upto, summaries_upto)
        while index < self._indexed_from:
            page = await self._log.read_log(index, min(1000, self._indexed_from - index))
            if not page or page[0].leaf_index != index:
                # A registry short of the log must never be marked whole and snapshotted.
                raise IntegrityError(
                    f"the log holds no leaf {index} below its size {self._indexed_from}",
                    index=index,
                )
            for rec in page:
                if rec.leaf_index >= registry_upto:
                    self.registry.apply(rec.event)
                if rec.leaf_index >= summaries_upto:
                    self.summaries.apply(rec.event, rec.leaf_index)
            index = page[-1].leaf_index + 1
        for event, leaf_index in self._early:
            self.registry.apply(event)
            self.summaries.apply(event, leaf_index)
        self._early = []
        self._registry_ready = True
        self._replayed_at_start = index - first
        _log.info(
            "engine.registry_built",
            snapshot_size=registry_upto if loaded is not None else None,
            summaries_upto=summaries_upto,
            replayed_events=self._replayed_at_start,
        )
        self._next_snapshot_at = self._registry_upto + self._snapshot_interval()
        if self._replayed_at_start >= _SNAPSHOT_AFTER_REPLAY:
            await self._save_registry()
            with contextlib.suppress(LedgerError):  # derived: only a slower next start
                await self.summaries.flush()

    async def forget(self) -> None:
        """Undo a build that failed, so a later one begins again from nothing."""
        self._log.remove_listener(self._on_commit)
        self._registry_ready = False
        snapshotting, self._snapshotting = self._snapshotting, None
        if snapshotting is not None:  # it saves nothing once the registry is not ready
            snapshotting.cancel()
            await asyncio.wait([snapshotting])
        self._early = []
        self.registry = Registry()
        await self.summaries.close()  # writes what it folded: a consistent prefix
        self.summaries = Summaries(self.summaries.store)
        self._live.clear()  # commits while no listener was attached never reached it
        self._indexed_from = self._registry_upto = self._snapshot_upto = 0
        self._replayed_at_start = self._next_snapshot_at = 0

    async def _open_summaries(self) -> int:
        """Open the summaries' store; returns how far into this log its fold reaches (0
        if it folded another log, or more than this one holds: it starts again)."""
        progress = await self.summaries.open()
        upto = progress.upto
        if upto:
            last = await self._log.read_log(upto - 1, 1) if upto <= self._log.size else []
            if not last or last[0].event.event_id != progress.last_event_id:
                _log.warning("engine.summaries_rebuilt", stored_upto=upto, log_size=self._log.size)
                await self.summaries.reset()
                upto = 0
        await self.summaries.load_unfinished()
        return upto

    def _on_commit(self, batch: Sequence[Recorded]) -> None:
        for rec in batch:
            if rec.leaf_index < self._indexed_from:
                continue
            event = rec.event
            if self._registry_ready:
                self.registry.apply(event)
                self.summaries.apply(event, rec.leaf_index)
            else:
                self._early.append((event, rec.leaf_index))
            # Per event, once folded: if a later one raised, a snapshot still names
            # exactly what the registry holds.
            self._registry_upto = rec.leaf_index + 1
            key = (event.tenant_id, event.stream_id)
            if self._enders and event.type in ev.TERMINAL_TYPES:
                ender = self._enders.get(key)
                if ender is not None:
                    ender[0].set()
            fold = self._live.get(key)
            if fold is None:
                if not isinstance(event.payload, ev.OrchestrationCreated):
                    continue
                fold = self._projection.initial()
            self._live[key] = self._projection.apply(fold, event, rec.receipt_id)
            self._live.move_to_end(key)
            if len(self._live) > _LIVE_STATES:
                self._live.popitem(last=False)
        if (
            self._registry_ready
            and self._registry_upto >= self._next_snapshot_at
            and not self._closing()
            and (self._snapshotting is None or self._snapshotting.done())
        ):
            # The next one is due a whole interval on, whether this one succeeds or not:
            # a store that refuses snapshots must not be asked again at every commit.
            self._next_snapshot_at = self._registry_upto + self._snapshot_interval()
            self._snapshotting = asyncio.create_task(
                self._save_registry(), name="engine-registry-snapshot"
            )

    # -- saving ----------------------------------------------------------------------

    async def save(self) -> None:
        """Save what the next start would otherwise fold again: the registry's snapshot
        (once any in the background is done) and the summaries not written yet."""
        if self._snapshotting is not None:
            await asyncio.wait([self._snapshotting])
        if self._registry_ready:
            await self._save_registry()
        with contextlib.suppress(LedgerError):  # derived: the next start folds it again
            await self.summaries.flush()

    async def close(self) -> None:
        """Close the summaries' store: reads of summaries not held in memory fail."""
        await self.summaries.close()

    def _snapshot_interval(self) -> int:
        return max(_SNAPSHOT_EVERY, _SNAPSHOT_EVENTS_PER_RECORD * self.registry.records)

    async def _save_registry(self) -> None:
        """Snapshot the registry, so the next start folds only what follows. A failure
        costs the next start time, never correctness: it is logged and let go."""
        async with self._saving:  # one at a time, so a newer one is never overwritten
            if not self._registry_ready:
                return  # a start that failed: nothing whole to save
            upto = self._registry_upto
            if upto <= self._snapshot_upto:
                return  # nothing new since the stored one
            try:
                # Encodes the registry before its first await: exactly ``upto`` leaves.
                await save_snapshot(self._log, _REGISTRY, self.registry, upto)
            except Exception as e:  # noqa: BLE001 — storage or encoding: a slower next start
                _log.warning("engine.registry_snapshot_failed", error=f"{type(e).__name__}: {e}")
            else:
                self._snapshot_upto = upto

    # -- orchestrations' live state and ends -----------------------------------------

    def live_state(self, tenant_id: str, orchestration_id: str) -> OrchestrationState | None:
        """The state kept live from committed events (``None`` if not cached)."""
        fold = self._live.get((tenant_id, orchestration_id))
        return fold.state if fold else None

    def state_now(self, tenant_id: str, oid: str) -> OrchestrationState:
        fold = self._live.get((tenant_id, oid))
        if fold is None or fold.state is None:
            raise OrchestrationNotFoundError(f"no orchestration {oid!r}")
        return fold.state

    def refold(self, key: tuple[str, str], events: Sequence[Event]) -> None:
        """Set a run's live state to the fold of its whole history, as read back."""
        fold = self._projection.initial()
        for e in events:
            fold = self._projection.apply(fold, e)
        self._live[key] = fold

    async def read_committed(self, tenant_id: str, orchestration_id: str) -> Sequence[Any]:
        """The stream, at least up to the head the listener has seen committed.

        Workaround: the SQLite store's shared reader connection can serve a snapshot
        from before the latest commit while other reads are in flight; re-read briefly
        until the stream reaches the committed head (read-your-writes).
        """
        summary = await self.summaries.get(tenant_id, orchestration_id)
        head = summary.seq if summary else 0
        records = await self._log.read_stream(tenant_id, orchestration_id)
        for attempt in range(50):
            if len(records) >= head:
                break
            await asyncio.sleep(0.001 * attempt)
            records = await self._log.read_stream(tenant_id, orchestration_id)
        return records

    async def await_end(self, key: tuple[str, str], max_wait: float) -> None:
        """Until the run's terminal event commits, at most ``max_wait`` seconds."""
        if self._closing():
            return
        summary = await self.summaries.get(*key)
        if summary is None or summary.status in ("completed", "failed", "cancelled"):
            return
        ender = self._enders.get(key)
        if ender is None:
            ender = self._enders[key] = (asyncio.Event(), [0])
        ender[1][0] += 1
        try:
            async with asyncio.timeout(max_wait):
                await ender[0].wait()
        except TimeoutError:
            pass
        finally:
            ender[1][0] -= 1
            if not ender[1][0] and self._enders.get(key) is ender:
                del self._enders[key]

    def end_waits(self) -> None:
        """Answer every wait at once (the engine is closing)."""
        for ender, _ in self._enders.values():
            ender.set()
