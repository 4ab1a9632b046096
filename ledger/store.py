"""The storage port: what the log needs from a backend, and nothing about SQL.

Backends keep SQL, transactions and locking to themselves. Every backend passes the
shared contract tests in ``tests/ledger/store_contract.py``. Tables are append-only:
a backend must refuse to update or delete events, tree hashes and checkpoints.

Tree hashes are stored one row per committed batch: the stored hashes (Go tlog order,
see :mod:`ledger.tlog`) that the batch created, concatenated, keyed by the stored
index of the first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

import msgspec

__all__ = ["Batch", "CheckpointRecord", "EventStore", "HashRow", "StoredEvent"]


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as stored: its exact leaf bytes plus the columns it is found by."""

    leaf_index: int
    event_id: bytes  # the ULID's 16 bytes
    tenant_id: str
    stream_id: str
    stream_seq: int
    type: str
    tree_size: int  # the size of the checkpoint its receipt was issued against
    leaf: bytes


class CheckpointRecord(msgspec.Struct, frozen=True):
    tree_size: int
    root: bytes
    note: str


class HashRow(msgspec.Struct, frozen=True):
    start: int  # stored index of the first hash in ``hashes``
    hashes: bytes  # 32 bytes per stored hash

    @property
    def end(self) -> int:
        return self.start + len(self.hashes) // 32


class Batch(msgspec.Struct, frozen=True):
    """One group commit: all of it becomes durable together, or none of it."""

    events: Sequence[StoredEvent]
    hashes: HashRow
    checkpoint: CheckpointRecord


class EventStore(Protocol):
    async def open(self) -> None:
        """Create or open the storage; idempotent."""

    async def close(self) -> None: ...

    def commit(self, batch: Batch) -> Awaitable[None]:
        """Queue the whole batch to be written durably in one transaction.

        Batches are written in the order ``commit`` is called, so a caller may queue the
        next batch before the last one has finished. A batch must continue exactly
        where the log's stored events end: one queued behind a batch that failed is
        refused (:class:`IntegrityError`) rather than written with a gap before it.
        The awaitable raises :class:`StorageUnavailableError` when the medium cannot
        take writes; nothing of a failed batch is then visible.
        """

    async def latest_checkpoint(self) -> CheckpointRecord | None: ...

    async def checkpoint(self, tree_size: int) -> CheckpointRecord | None: ...

    async def checkpoints(self, after_size: int, limit: int) -> list[CheckpointRecord]: ...

    async def hash_rows(self, indexes: Sequence[int]) -> list[HashRow]:
        """The rows that hold each stored index (deduplicated; order unspecified)."""

    async def stream_heads(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The last ``stream_seq`` of each ``(tenant_id, stream_id)``, 0 for a stream with
        no events; one read for them all."""

    async def read_stream(
        self, tenant_id: str, stream_id: str, after_seq: int, limit: int | None
    ) -> list[StoredEvent]: ...

    async def read_log(self, from_index: int, limit: int) -> list[StoredEvent]: ...

    async def index_problems(self, limit: int) -> list[tuple[int, str]]:
        """Check the lookup structures the backend derives from the events itself (the
        SQLite backend's stream index) against the events: at most ``limit`` problems,
        each with the leaf index it concerns. ``[]`` for a backend whose indexes its
        database keeps."""

    async def guard_problems(self) -> list[str]:
        """Check the guards the backend keeps its tables append-only with (the SQLite
        backend's triggers) are its own: one problem per guard replaced by another.
        ``[]`` for a backend whose database enforces append-only itself."""

    async def events_by_id(self, event_ids: Sequence[bytes]) -> dict[bytes, StoredEvent]:
        """The events with these ids; an unknown id is absent from the answer."""

    async def event_count(self) -> int: ...

    async def save_snapshot(
        self, name: str, log_index: int, state: bytes | Sequence[bytes | bytearray]
    ) -> None:
        """Remember a projection's state as of ``log_index`` (exclusive). Overwrites.

        ``state`` may come in parts, stored as their join: a backend should write them
        without joining them, since a copy of a large state holds the interpreter lock
        (and so the event loop) for as long as it takes."""

    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None: ...

    async def probe(self) -> None:
        """One small durable write that stores nothing of the log, to learn whether the
        medium takes writes again after a failed commit. Raises
        :class:`StorageUnavailableError` while it does not."""
