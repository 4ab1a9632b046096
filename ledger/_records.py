"""The log's records read back from the store (``specs/log-format.md`` §2, §4): events
by stream, by position or by id, each checked against its leaf bytes; each event's
receipt; the checkpoints the log issued.
"""

from __future__ import annotations

from collections import OrderedDict

from ledger._batched_reads import BatchedReads
from ledger._proofs import Proofs
from ledger.errors import IntegrityError, InvalidEventError, LedgerError, NotFoundError
from ledger.events import EventCatalog, decode_leaf, decode_leaf_envelope
from ledger.ids import ulid_str, uuid_str
from ledger.merkle import leaf_hash
from ledger.receipt import Receipt, event_id_bytes
from ledger.recorded import RecordedEvent, SignedCheckpoint
from ledger.store import EventStore, StoredEvent

__all__ = ["Records"]


def _check_filed(row: StoredEvent, event_id: str, tenant_id: str, stream_id: str) -> None:
    """Reads select by a row's columns; the leaf bytes, which the tree covers, must say
    the same, or an edited column would hand one tenant another's event or receipt."""
    if tenant_id != row.tenant_id or stream_id != row.stream_id:
        raise IntegrityError(
            f"leaf {row.leaf_index} is stored under tenant {row.tenant_id!r}, stream "
            f"{row.stream_id!r}, but its bytes name another",
            index=row.leaf_index,
        )
    if event_id != ulid_str(row.event_id):
        raise IntegrityError(
            f"leaf {row.leaf_index} is stored as event {ulid_str(row.event_id)}, but its "
            f"bytes say {event_id}",
            index=row.leaf_index,
        )


# The store's integers are 64-bit: no position, sequence or size reaches this.
_MAX_STORED = (1 << 63) - 1


def _check_limit(limit: int) -> int:
    # SQLite takes a negative LIMIT as none at all.
    if type(limit) is not int or limit < 0:
        raise InvalidEventError(f"limit {limit!r} must be an integer >= 0")
    return min(limit, _MAX_STORED)


def _position(value: int) -> int:
    """A lower bound on a position, within what the store can bind: nothing is stored
    before 0 or at the largest value."""
    return min(max(value, 0), _MAX_STORED)


class Records:
    """Reads of what the log recorded; receipts carry proofs from ``proofs``."""

    def __init__(self, store: EventStore, catalog: EventCatalog, proofs: Proofs) -> None:
        self._store = store
        self._catalog = catalog
        self._proofs = proofs
        self._event_reads = BatchedReads(store.events_by_id, "log-events-by-id")
        self._checkpoints: OrderedDict[int, SignedCheckpoint] = OrderedDict()

    async def checkpoint_at(self, tree_size: int) -> SignedCheckpoint:
        cached = self._checkpoints.get(tree_size)
        if cached is not None:
            return cached
        record = None
        if 0 < tree_size <= _MAX_STORED:
            record = await self._store.checkpoint(tree_size)
        if record is None:
            raise NotFoundError(f"no checkpoint was issued at tree size {tree_size}")
        checkpoint = SignedCheckpoint(record.tree_size, record.root, record.note)
        # Immutable once issued; receipts of one batch all ask for the same one.
        self._checkpoints[tree_size] = checkpoint
        if len(self._checkpoints) > 4096:
            self._checkpoints.popitem(last=False)
        return checkpoint

    def _recorded(self, row: StoredEvent) -> RecordedEvent:
        try:
            event = decode_leaf(row.leaf, self._catalog)
        except LedgerError as e:
            # Stored damage, not the caller's bad input.
            raise IntegrityError(
                f"leaf {row.leaf_index} does not decode: {e}", index=row.leaf_index
            ) from e
        _check_filed(row, event.event_id, event.tenant_id, event.stream_id)
        return RecordedEvent(event, row.leaf, row.leaf_index, uuid_str(row.event_id), row.tree_size)

    async def read_stream(
        self, tenant_id: str, stream_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        rows = await self._store.read_stream(
            tenant_id,
            stream_id,
            _position(after_seq),
            None if limit is None else _check_limit(limit),
        )
        return [self._recorded(r) for r in rows]

    async def read_log(self, from_index: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        rows = await self._store.read_log(_position(from_index), _check_limit(limit))
        return [self._recorded(r) for r in rows]

    async def _event_row(self, identifier: str, tenant_id: str | None) -> StoredEvent:
        event_id = event_id_bytes(identifier)
        # Concurrent lookups (receipt fetches) share one read (ledger/_batched_reads.py).
        row = (await self._event_reads.get((event_id,))).get(event_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFoundError(f"no event or receipt {identifier!r}")
        return row

    async def recorded(self, identifier: str, tenant_id: str | None = None) -> RecordedEvent:
        """The event for an event ULID or receipt UUID; another tenant's is not found."""
        return self._recorded(await self._event_row(identifier, tenant_id))

    async def stream_receipt(
        self, identifier: str, tenant_id: str | None = None
    ) -> tuple[str, Receipt]:
        """The receipt issued for an event, by receipt UUID or event ULID, with its
        event's stream id; of the leaf it decodes only the envelope, to check the
        columns it was found by."""
        row = await self._event_row(identifier, tenant_id)
        try:
            envelope = decode_leaf_envelope(row.leaf)
        except LedgerError as e:
            raise IntegrityError(
                f"leaf {row.leaf_index} does not decode: {e}", index=row.leaf_index
            ) from e
        _check_filed(row, envelope.event_id, envelope.tenant_id, envelope.stream_id)
        checkpoint = await self.checkpoint_at(row.tree_size)
        return row.stream_id, Receipt(
            receipt_id=uuid_str(row.event_id),
            event_id=ulid_str(row.event_id),
            leaf_index=row.leaf_index,
            leaf_hash=leaf_hash(row.leaf),
            tree_size=row.tree_size,
            inclusion_proof=await self._proofs.inclusion_proof(row.leaf_index, row.tree_size),
            checkpoint=checkpoint.note,
        )
