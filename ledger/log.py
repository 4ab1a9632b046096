"""The transparency log: group-committed appends, signed checkpoints, receipts, proofs.

Append protocol (``specs/log-format.md`` §3, §4):

1. An appender's events are encoded to canonical leaf bytes in its own task.
2. One writer task takes every pending append (a *batch*), checks each stream's
   expected sequence, extends the tree in one pass (:func:`~ledger.tlog.extend`: new
   stored hashes, root and every new leaf's inclusion proof), signs one C2SP
   checkpoint over the new root and builds the receipts. An append that is right
   only if the appends to its stream not yet committed fail is held out of the
   batch until they have committed or failed, then checked again: a conflict is
   always with committed events.
3. The batch — events, new tree hashes and checkpoint — is queued to be committed in
   one durable transaction, behind at most one batch still being written. Only after
   its own commit are the in-memory tree, stream heads and latest checkpoint
   advanced, and each appender receives its receipts.

A batch whose commit fails is discarded whole: its checkpoint never leaves the
process, nothing is acknowledged, and the next batch reuses the same tree positions.
A batch queued behind it fails too (the store refuses a batch that does not continue
the log), and nothing of it is acknowledged either. A batch still being prepared is
not queued yet: it is prepared again, on the log's real end.

The batching and the commits are here; :class:`Log` composes the rest: the streams'
heads (:mod:`ledger._stream_heads`), proofs (:mod:`ledger._proofs`), the records read
back (:mod:`ledger._records`), storage health (:mod:`ledger._storage_health`) and the
check of the stored tree at open (:mod:`ledger._open_check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from ledger import tlog
from ledger._hash_cache import HashCache
from ledger._open_check import check_stored_tree
from ledger._proofs import Proofs
from ledger._records import Records
from ledger._storage_health import StorageHealth
from ledger._stream_heads import StreamHeads
from ledger.checkpoint import Checkpoint
from ledger.errors import (
    ConflictError,
    InvalidEventError,
    LedgerError,
    StorageUnavailableError,
)
from ledger.events import (
    LEAF_VERSION,
    Event,
    EventCatalog,
    NewEvent,
    encode_leaf,
    format_time,
)
from ledger.ids import UlidMint, uuid_str
from ledger.note import NoteSigner, NoteVerifier
from ledger.receipt import Receipt
from ledger.recorded import RecordedEvent, SignedCheckpoint
from ledger.store import Batch, CheckpointRecord, EventStore, HashRow, StoredEvent
from ledger.tiles import Tile

__all__ = ["Listener", "Log", "ReceiptListener", "RecordedEvent", "SignedCheckpoint"]

_log = structlog.get_logger()
_sha256 = hashlib.sha256  # the leaf hash of RFC 6962 §2.1, inlined on the append path

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,199}\Z")

Listener = Callable[[Sequence["RecordedEvent"]], None]
#: Called with each committed batch's receipts, as (tenant_id, stream_id, receipt).
ReceiptListener = Callable[[Sequence[tuple[str, str, Receipt]]], None]


_SEAL_PURPOSE = b"maip-ledger/local-seal/v1"

# A burst is split in two only if each half has at least this many events: below it,
# a second commit (one more fsync and signature) costs more than the overlap saves.
_MIN_SPLIT = 16


class _Outcome(asyncio.Future[list[Receipt]]):
    """An append's outcome, which a cancelled awaiter cannot cancel: asyncio then
    delivers the awaiting task's ``CancelledError`` when the outcome is set."""

    def cancel(self, msg: Any | None = None) -> bool:
        return False


@dataclass(slots=True)
class _Append:
    tenant: str
    stream: str
    expected: int
    events: list[Event]
    leaves: list[bytes]
    ids: list[bytes]
    hashes: list[bytes]
    future: asyncio.Future[list[Receipt]]


@dataclass(slots=True)
class _Prepared:
    epoch: int
    accepted: list[tuple[_Append, int]]
    receipts: list[list[Receipt]]
    frontier: tlog.Frontier
    heads: dict[tuple[str, str], int]
    row: HashRow
    batch: Batch


def _fail(requests: Sequence[_Append], error: BaseException) -> None:
    for req in requests:
        if not req.future.done():
            req.future.set_exception(error)


def _report_close(closed: asyncio.Task[None]) -> None:
    if not closed.cancelled() and closed.exception() is not None:
        _log.error("log.close_failed", error=repr(closed.exception()))


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidEventError(f"{name} {value!r} must be 1-200 characters of [A-Za-z0-9._:@/+-]")


class Log:
    """One append-only Merkle log over an :class:`~ledger.store.EventStore`.

    ``hash_cache_bytes`` bounds the stored tree hashes kept in memory for proofs. A
    tree stores about 64 bytes per leaf, so the default 128 MiB holds every hash of a
    log of about two million entries; beyond that, proofs of old leaves read their
    rows from the store (about 9k proofs/s at 1.3M entries with half that cache,
    against ~14k with all of it, on the 2-core bench machine).
    """

    def __init__(
        self,
        store: EventStore,
        signer: NoteSigner,
        catalog: EventCatalog,
        *,
        now: Callable[[], datetime] | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
        max_batch: int = 2048,
        hash_cache_bytes: int = 128 << 20,
        stream_cache: int = 200_000,
    ) -> None:
        self._store = store
        self._signer = signer
        self._verifier: NoteVerifier = signer.verifier
        self._seal_key = signer.derive_secret(_SEAL_PURPOSE)
        self._catalog = catalog
        self._now = now or (lambda: datetime.now(UTC))
        self._ids = UlidMint(entropy)
        self._known_ids: set[str] = set()
        self._max_batch = max_batch
        self._hashes = HashCache(hash_cache_bytes)
        self._streams = StreamHeads(store, stream_cache)
        # The committed heads themselves, for submit's check, which every append makes:
        # no call on the append path while the stream's head is cached.
        self._heads = self._streams.committed
        self._proofs = Proofs(store, self._hashes, lambda: self._frontier.size)
        self._records = Records(store, catalog, self._proofs)
        self._frontier = tlog.Frontier()
        # The provisional tip: the committed tree plus every batch prepared but not yet
        # committed. ``_epoch`` changes whenever a failed commit discards that tip.
        self._tip = self._frontier
        self._epoch = 0
        self._chain: list[asyncio.Task[None]] = []
        self._latest: SignedCheckpoint | None = None
        self._pending: list[_Append] = []
        #: The batch the writer has taken from ``_pending`` and not yet handed on.
        self._taken: list[_Append] = []
        #: Appends whose expected sequence is right only if appends to their stream
        #: still in flight fail: they wait for the end of a batch in flight.
        self._held: list[_Append] = []
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        #: close()'s own task: the drain and the store's close, which no caller cancels.
        self._closed: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._receipt_listeners: list[ReceiptListener] = []
        self._health = StorageHealth(store)

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        store: EventStore,
        signer: NoteSigner,
        catalog: EventCatalog,
        **options: object,
    ) -> Log:
        """Open the store, check the tree against the last checkpoint, start writing."""
        await store.open()
        log = cls(store, signer, catalog, **options)  # type: ignore[arg-type]
        try:
            await log._recover()
        except BaseException:
            await store.close()
            raise
        log._writer = asyncio.create_task(log._run(), name="ledger-log-writer")
        log._writer.add_done_callback(log._writer_ended)
        return log

    def _writer_ended(self, writer: asyncio.Task[None]) -> None:
        """If the writer task died, refuse further appends and fail the queued ones:
        their outcomes cannot be cancelled (:meth:`submit`), so nothing else would ever
        end their callers' waits."""
        if writer.cancelled() and self._closing:
            # A cancelled close() does not cancel the writer (close() shields its own
            # task), so only the loop's teardown does, before the close finished.
            _log.warning(
                "log.close_cut_short", detail="the event loop ended before Log.close() finished"
            )
        elif writer.cancelled():
            # Else only the loop's own teardown cancels it: the owner let its event
            # loop end without closing the log.
            _log.warning("log.not_closed", detail="the event loop ended before Log.close()")
        elif writer.exception() is None:
            return  # closed normally, with every queued append finished
        else:
            _log.error("log.writer_died", error=repr(writer.exception()))
        self._closing = True
        stranded = self._taken + self._held + self._pending
        self._taken, self._held, self._pending = [], [], []
        _fail(
            stranded, StorageUnavailableError("the log's writer stopped; nothing more is written")
        )

    async def _recover(self) -> None:
        recovered = await check_stored_tree(self._store, self._verifier, self._proofs.hashes)
        if recovered is not None:
            frontier, self._latest = recovered
            self._frontier = frontier
            self._tip = frontier.copy()

    async def close(self) -> None:
        """Finish every append already accepted, then close the store.

        Cancelling the task that awaits this (a shutdown timeout) cancels only its wait:
        the appends the log accepted are still committed (or fail as their commit does)
        and the store is closed, in the background; a later close() waits for that same
        end. A closer that gives up waiting is no reason to fail accepted appends: their
        clients would be told of a storage failure that never happened. Only the event
        loop's own end stops the close short, and every undecided append then fails.
        """
        closed = self._closed
        if closed is None:
            self._closing = True
            self._wake.set()
            closed = self._closed = asyncio.create_task(self._close(), name="ledger-log-close")
        try:
            await asyncio.shield(closed)
        except asyncio.CancelledError:
            if not closed.done():
                _log.warning(
                    "log.close_cancelled",
                    detail="Log.close() was cancelled; the log finishes the appends it "
                    "accepted and closes in the background",
                )
                # Nobody may await it again: how it ends is said here.
                closed.add_done_callback(_report_close)
            raise

    async def _close(self) -> None:
        if self._writer is not None:
            # A writer that died has been reported (_writer_ended); the store still closes.
            with contextlib.suppress(Exception):
                await self._writer
            self._writer = None
        # Nothing queues once closing is set (submit), so this is only a backstop: an
        # append left here would never be decided, and its caller would wait for ever.
        stranded, self._pending = self._pending, []
        _fail(stranded, StorageUnavailableError("the log closed before this append was taken"))
        await self._store.close()

    # -- appending ---------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        return self._store

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    def seal(self, *parts: bytes | bytearray) -> bytes:
        """An HMAC-SHA256 tag of ``parts`` joined, under a secret derived from the
        signing key: for what this log keeps about itself outside the tree (snapshots),
        so that an edit to it is noticed by anyone who could not also forge checkpoints.
        Taking the parts rather than their join spares a copy of a large state."""
        mac = hmac.new(self._seal_key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.digest()

    @property
    def catalog(self) -> EventCatalog:
        return self._catalog

    @property
    def healthy(self) -> bool:
        """False after a commit failed for lack of storage, until one succeeds again."""
        return self._health.healthy

    async def check_storage(self, idle_seconds: float, *, now: float | None = None) -> bool:
        """Probe the store if a commit failed for lack of storage, or if nothing was
        written for ``idle_seconds``; whether it is healthy (:mod:`ledger._storage_health`)."""
        return await self._health.check(idle_seconds, now=now)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every committed batch's events, in log order."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` (added by :meth:`add_listener`); no error if absent."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def add_receipt_listener(self, listener: ReceiptListener) -> None:
        """Call ``listener`` with every committed batch's receipts, in log order."""
        self._receipt_listeners.append(listener)

    async def append(
        self,
        tenant_id: str,
        stream_id: str,
        expected_seq: int,
        events: Sequence[NewEvent],
        *,
        now: datetime | None = None,
    ) -> list[Receipt]:
        """Append ``events`` to a stream that is at ``expected_seq``; one receipt each.

        Returns once the events are durable and covered by a signed checkpoint. Raises
        :class:`ConflictError` (and writes nothing) if the stream has moved on. A caller
        cancelled once the append is queued hears of it when the append's outcome is
        decided (see :meth:`submit`).
        """
        return await (await self.submit(tenant_id, stream_id, expected_seq, events, now=now))

    async def submit(
        self,
        tenant_id: str,
        stream_id: str,
        expected_seq: int,
        events: Sequence[NewEvent],
        *,
        now: datetime | None = None,
    ) -> asyncio.Future[list[Receipt]]:
        """Check, encode and queue an append; its outcome, as :meth:`append` has it.

        The outcome cannot be cancelled: a task cancelled while awaiting it gets its
        ``CancelledError`` once the outcome is decided, and the outcome stays on the
        future. So a caller that must know whether its events were written (a stream
        writer tracking its sequence) always can, without a task or a shield of its own.
        A caller cancelled before this returns queued nothing.
        """
        if self._closing:
            raise StorageUnavailableError("the log is shutting down")
        known = self._known_ids
        if tenant_id not in known or stream_id not in known:
            _check_id("tenant_id", tenant_id)
            _check_id("stream_id", stream_id)
            if len(known) >= 65536:
                known.clear()
            known.add(tenant_id)
            known.add(stream_id)
        if not events:
            raise InvalidEventError("an append needs at least one event")
        if type(expected_seq) is not int or expected_seq < 0:
            raise InvalidEventError(f"expected_seq {expected_seq!r} must be an integer >= 0")
        moment = now or self._now()
        default_time = format_time(moment)
        ms = int(moment.timestamp() * 1000)
        if not 0 <= ms < 1 << 48:
            # Event ids are ULIDs, whose 48-bit millisecond time starts at 1970.
            raise InvalidEventError(
                f"append time {default_time} is outside the event id time range (1970 on)"
            )
        mint = self._ids.mint
        coerce = self._catalog.coerce
        built: list[Event] = []
        leaves: list[bytes] = []
        ids: list[bytes] = []
        hashes: list[bytes] = []
        seq = expected_seq
        for new in events:
            raw, text = mint(ms)
            seq += 1
            event = Event(
                LEAF_VERSION,
                text,
                tenant_id,
                stream_id,
                seq,
                new.type,
                format_time(new.occurred_at) if new.occurred_at else default_time,
                coerce(new.type, new.payload),
                new.causation_id,
                new.correlation_id,
            )
            leaf = encode_leaf(event)
            built.append(event)
            leaves.append(leaf)
            ids.append(raw)
            hashes.append(_sha256(b"\x00" + leaf).digest())
        key = (tenant_id, stream_id)
        if key not in self._heads:
            await self._streams.get(key)
            # The log may have closed, or its writer died, during that read: nothing
            # would ever take this append, and its outcome cannot be cancelled.
            if self._closing:
                raise StorageUnavailableError("the log is shutting down")
        future: asyncio.Future[list[Receipt]] = _Outcome(loop=self._loop)
        self._pending.append(
            _Append(tenant_id, stream_id, expected_seq, built, leaves, ids, hashes, future)
        )
        if not self._wake.is_set():
            self._wake.set()
        return future

    async def _run(self) -> None:
        """Take batches and chain their commits, at most two in flight.

        While one batch's commit runs in the store's thread, the next is prepared —
        conflict checks, tree hashes, signature, proofs — on the provisional tip.
        Commits still happen strictly in order, and a batch is acknowledged only after
        its own commit; if one fails, every batch prepared on top of it fails too.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and len(self._chain) < 2:
                # Let appenders woken by the last batch enqueue before taking the next,
                # or the group splits into ever smaller batches (a group-commit convoy).
                for _ in range(2):
                    await asyncio.sleep(0)
                limit = self._max_batch
                if not self._chain:
                    pending = sum(len(req.events) for req in self._pending)
                    if pending >= 2 * _MIN_SPLIT:
                        limit = min(limit, (pending + 1) // 2)
                take, count = 0, 0
                while take < len(self._pending) and count < limit:
                    count += len(self._pending[take].events)
                    take += 1
                batch, self._pending = self._pending[:take], self._pending[take:]
                self._taken = batch
                try:
                    prepared = await self._prepare(batch)
                except Exception as e:  # noqa: BLE001 — a writer that dies would strand every appender
                    _log.exception("log.batch_failed")
                    _fail(batch, e if isinstance(e, LedgerError) else LedgerError(str(e)))
                    self._taken = []
                    continue
                if prepared is not None:
                    # Queued now, so the store starts it as soon as the batch before
                    # it is written; acknowledging still waits for that batch's fate.
                    written = self._store.commit(prepared.batch)
                    prev = self._chain[-1] if self._chain else None
                    task = asyncio.create_task(self._finish(prepared, written, prev))
                    self._chain.append(task)
                self._taken = []
            if self._closing and not self._pending and not self._chain:
                return

    async def _prepare(self, batch: list[_Append]) -> _Prepared | None:
        """Check, hash, sign and build receipts for a batch on the provisional tip."""
        heads = self._streams
        tip_heads = heads.tip  # cleared in place when a tip is discarded, never replaced
        while True:
            epoch = self._epoch
            frontier = self._tip
            start_size = size = frontier.size
            overlay: dict[tuple[str, str], int] = {}
            accepted: list[tuple[_Append, int]] = []
            conflicts: list[tuple[_Append, ConflictError]] = []
            held: list[_Append] = []
            leaves: list[bytes] = []
            for req in batch:
                key = (req.tenant, req.stream)
                current = overlay.get(key)
                if current is None:
                    current = tip_heads.get(key)
                if current is None:
                    current = await heads.get(key)
                    if self._epoch != epoch:
                        break
                if req.expected != current:
                    # ``current`` may count appends not yet committed (batches in flight,
                    # or earlier in this one), which may yet fail. The committed head
                    # (cached: no read) tells whether their fate decides this one.
                    head = await heads.get(key)
                    if self._epoch != epoch:
                        break
                    if head <= req.expected < current:
                        # Right if they fail, wrong if they commit: judged once they
                        # have, or the client hears of a conflict with events that were
                        # never written.
                        held.append(req)
                        continue
                    # Wrong whatever they do: heads only grow, to at most ``current``.
                    pending = None if head == current else current
                    error = ConflictError(req.stream, req.expected, head, pending_seq=pending)
                    conflicts.append((req, error))
                    continue
                accepted.append((req, size))
                leaves.extend(req.hashes)
                size += len(req.hashes)
                overlay[key] = current + len(req.hashes)
            else:
                break
            # A commit failed during that read and its tip was discarded: this batch,
            # not yet queued, is the next one, and starts again where the log ends.
        for req, error in conflicts:
            if not req.future.done():
                req.future.set_exception(error)
        if not accepted:
            if self._chain:
                # What they wait for is in a batch in flight: its end (_finish) hands
                # them back.
                self._held += held
            else:
                # It ended while a head was read here: judged again on what it left.
                self._pending[:0] = held
            return None
        ext = tlog.extend(frontier, leaves)
        note = Checkpoint(self._signer.name, size, ext.root).sign(self._signer)
        row = HashRow(tlog.stored_hash_count(start_size), ext.stored)
        stored: list[StoredEvent] = []
        receipts: list[list[Receipt]] = []
        proofs = ext.proofs
        for req, first in accepted:
            tenant, stream = req.tenant, req.stream
            mine: list[Receipt] = []
            index = first
            for event, leaf, event_id, h in zip(
                req.events, req.leaves, req.ids, req.hashes, strict=True
            ):
                stored.append(
                    StoredEvent(
                        index, event_id, tenant, stream, event.stream_seq, event.type, size, leaf
                    )
                )
                mine.append(
                    Receipt(
                        uuid_str(event_id),
                        event.event_id,
                        index,
                        h,
                        size,
                        proofs[index - start_size],
                        note,
                    )
                )
                index += 1
            receipts.append(mine)
        # The next batch's proofs need this row before it is committed; it leaves the
        # cache again if the commit fails.
        self._hashes.add([row])
        self._tip = ext.frontier
        tip_heads.update(overlay)
        # Only now that nothing can fail: a batch that raises fails all its appends.
        # What they wait for is in a batch in flight or in this one, queued next, so a
        # batch's end (_finish) hands them back.
        self._held += held
        return _Prepared(
            epoch=self._epoch,
            accepted=accepted,
            receipts=receipts,
            frontier=ext.frontier,
            heads=overlay,
            row=row,
            batch=Batch(stored, row, CheckpointRecord(size, ext.root, note)),
        )

    def _abandon(self, prepared: _Prepared) -> None:
        """Forget the provisional tip: every batch prepared on it will fail too."""
        self._hashes.discard(prepared.row.start)
        if prepared.epoch == self._epoch:
            self._epoch += 1
            self._tip = self._frontier.copy()
            self._streams.tip.clear()

    async def _finish(
        self, prepared: _Prepared, written: Awaitable[None], prev: asyncio.Task[None] | None
    ) -> None:
        try:
            await self._finish_in_order(prepared, written, prev)
        except asyncio.CancelledError:
            # Only the event loop's end cancels this (close() never does): the batch's
            # appenders must still hear something, for their outcomes cannot be
            # cancelled and the loop's teardown waits for them. Whether the commit
            # reached the disk is unknown; the store's next open says.
            self._closing = True
            _fail(
                [req for req, _ in prepared.accepted],
                LedgerError("the log stopped before this append's commit ended; it may be written"),
            )
            raise
        finally:
            self._chain.remove(asyncio.current_task())  # type: ignore[arg-type]
            if self._held:
                # Checked again on what is now committed (and held again if a later
                # batch in flight still decides them); ahead of later arrivals.
                self._pending[:0] = self._held
                self._held = []
            self._wake.set()

    async def _finish_in_order(
        self, p: _Prepared, written: Awaitable[None], prev: asyncio.Task[None] | None
    ) -> None:
        cp = p.batch.checkpoint
        if prev is not None:
            await asyncio.wait([prev])
        if p.epoch != self._epoch:
            # Built on a batch that failed: the store refuses it (it would leave a gap),
            # and whatever it says, nothing of it is acknowledged.
            with contextlib.suppress(Exception):
                await written
            self._hashes.discard(p.row.start)
            _fail(
                [req for req, _ in p.accepted],
                StorageUnavailableError("an earlier batch could not be written; nor was this one"),
            )
            return
        try:
            await written
        except StorageUnavailableError as e:
            self._abandon(p)
            self._health.healthy = False
            _log.warning("log.commit_unavailable", error=str(e), batch_events=len(p.batch.events))
            _fail([req for req, _ in p.accepted], e)
            return
        except Exception as e:  # noqa: BLE001 — every appender must hear how its batch ended
            self._abandon(p)
            _log.exception("log.commit_failed")
            _fail(
                [req for req, _ in p.accepted],
                e if isinstance(e, LedgerError) else LedgerError(str(e)),
            )
            return
        self._health.written()
        self._frontier = p.frontier
        self._latest = SignedCheckpoint(cp.tree_size, cp.root, cp.note)
        self._streams.commit(p.heads)
        for (req, _), receipts_for in zip(p.accepted, p.receipts, strict=True):
            if not req.future.done():
                req.future.set_result(receipts_for)
        if self._listeners or self._receipt_listeners:
            self._notify(p.accepted, p.receipts, cp.tree_size)

    def _notify(
        self, accepted: list[tuple[_Append, int]], receipts: list[list[Receipt]], size: int
    ) -> None:
        calls: list[tuple[Callable[[Any], None], Sequence[Any]]] = []
        if self._listeners:
            recorded = [
                RecordedEvent(event, leaf, first + i, receipt.receipt_id, size)
                for (req, first), rs in zip(accepted, receipts, strict=True)
                for i, (event, leaf, receipt) in enumerate(
                    zip(req.events, req.leaves, rs, strict=True)
                )
            ]
            calls += [(listener, recorded) for listener in self._listeners]
        if self._receipt_listeners:
            issued = [
                (req.tenant, req.stream, receipt)
                for (req, _), rs in zip(accepted, receipts, strict=True)
                for receipt in rs
            ]
            calls += [(listener, issued) for listener in self._receipt_listeners]
        for listener, batch in calls:
            try:
                listener(batch)
            except Exception:  # noqa: BLE001 — one broken listener must not stop the log
                _log.exception("log.listener_failed")

    # -- reading: proofs (ledger/_proofs.py) and records (ledger/_records.py) ----------

    @property
    def size(self) -> int:
        return self._frontier.size

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._latest

    async def checkpoint_at(self, tree_size: int) -> SignedCheckpoint:
        return await self._records.checkpoint_at(tree_size)

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """PATH(index, D[tree_size]) for any size up to the current tree."""
        return await self._proofs.inclusion_proof(index, tree_size)

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]) for 1 <= old_size <= new_size <= current size."""
        return await self._proofs.consistency_proof(old_size, new_size)

    async def tile(self, tile: Tile) -> bytes:
        """A C2SP tlog-tiles hash tile (:mod:`ledger.tiles`) of the latest checkpoint's
        tree; NotFoundError if that tree does not hold all of its hashes yet."""
        return await self._proofs.tile(tile, self._latest.size if self._latest is not None else 0)

    async def root_at(self, tree_size: int) -> bytes:
        return await self._proofs.root_at(tree_size)

    async def read_stream(
        self, tenant_id: str, stream_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        return await self._records.read_stream(tenant_id, stream_id, after_seq, limit)

    async def stream_head(self, tenant_id: str, stream_id: str) -> int:
        return await self._streams.get((tenant_id, stream_id))

    async def read_log(self, from_index: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return await self._records.read_log(from_index, limit)

    async def recorded(self, identifier: str, tenant_id: str | None = None) -> RecordedEvent:
        """The event for an event ULID or receipt UUID; another tenant's is not found."""
        return await self._records.recorded(identifier, tenant_id)

    async def get_receipt(self, identifier: str, tenant_id: str | None = None) -> Receipt:
        """The receipt issued for an event, by receipt UUID or event ULID."""
        return (await self.stream_receipt(identifier, tenant_id))[1]

    async def stream_receipt(
        self, identifier: str, tenant_id: str | None = None
    ) -> tuple[str, Receipt]:
        """:meth:`get_receipt` with its event's stream id; of the leaf it decodes only
        the envelope, to check the columns it was found by."""
        return await self._records.stream_receipt(identifier, tenant_id)
