"""Replay: state is a pure fold over events, never stored as truth.

A :class:`Projection` turns an ordered sequence of events into a state value with
``apply``, which must be pure: the same events always give the same state. Folding a
stream or the whole log is the only way state is built.

Snapshots are an optimisation, not a source of truth: a snapshot records a
projection's state together with the log position it covers and the tree root at that
position, sealed by the log (:meth:`ledger.log.Log.seal`). It is used only if the seal
verifies and that root still matches the log, so a snapshot can never smuggle in history
the log does not hold, nor a state someone edited in the database; the fold then
continues from there. A snapshot that fails either check is ignored, and the fold
starts from the first event.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

import msgspec
import structlog

from ledger.errors import IntegrityError
from ledger.events import Event
from ledger.log import Log
from ledger.store import EventStore

__all__ = [
    "Projection",
    "SnapshotLog",
    "fold",
    "fold_log",
    "fold_stream",
    "load_snapshot",
    "save_snapshot",
]

S = TypeVar("S")

_log = structlog.get_logger()

_BATCH = 5000


class Projection(Protocol[S]):
    """A pure left fold. ``name`` identifies its snapshots; bump it when ``apply`` changes."""

    name: str

    def initial(self) -> S: ...

    def apply(self, state: S, event: Event) -> S: ...

    def encode(self, state: S) -> bytes | Iterator[bytes]:
        """The state's bytes, or an iterator of their parts: :func:`save_snapshot` then
        lets the event loop run between parts. The first part is taken at once, so the
        iterator must capture the state before yielding it (frozen values, copied
        containers); what it encodes later must not change meanwhile."""
        ...

    def decode(self, data: bytes) -> S: ...


def fold(events: Iterable[Event], projection: Projection[S], state: S | None = None) -> S:
    """Apply ``events`` in order, from ``state`` or the projection's initial state."""
    current = projection.initial() if state is None else state
    for event in events:
        current = projection.apply(current, event)
    return current


async def fold_stream(log: Log, tenant_id: str, stream_id: str, projection: Projection[S]) -> S:
    return fold((r.event for r in await log.read_stream(tenant_id, stream_id)), projection)


class SnapshotLog(Protocol):
    """What snapshots need of a log: its size, its roots and its store."""

    @property
    def size(self) -> int: ...
    @property
    def store(self) -> EventStore: ...
    async def root_at(self, tree_size: int) -> bytes: ...
    def seal(self, *parts: bytes | bytearray) -> bytes: ...


class _Snapshot(msgspec.Struct, frozen=True):
    log_size: int
    root: bytes
    state: bytes
    #: ``log.seal`` of :func:`_sealed`.
    seal: bytes


class _SnapshotHead(msgspec.Struct, frozen=True):
    """:class:`_Snapshot`'s fields before ``state``, in its order."""

    log_size: int
    root: bytes


_STATE_KEY = msgspec.msgpack.encode("state")
_SEAL_KEY = msgspec.msgpack.encode("seal")


def _bin_header(length: int) -> bytes:
    """The MessagePack ``bin`` header of ``length`` bytes, in its shortest form."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def _snapshot_parts(snapshot: _Snapshot, state: bytes | bytearray) -> list[bytes | bytearray]:
    """``msgspec.msgpack.encode(snapshot)`` with ``state`` in place of its (empty)
    ``state``, as three parts whose join is exactly that encoding, so stored snapshots
    read back as they always did. A Struct encodes as a map of its fields in order."""
    head = msgspec.msgpack.encode(_SnapshotHead(snapshot.log_size, snapshot.root))
    assert head[0] == 0x82  # a fixmap of two: the whole snapshot is a fixmap of four
    return [
        b"\x84" + head[1:] + _STATE_KEY + _bin_header(len(state)),
        state,
        _SEAL_KEY + msgspec.msgpack.encode(snapshot.seal),
    ]


def _sealed(
    name: str, log_size: int, root: bytes, state: bytes | bytearray
) -> list[bytes | bytearray]:
    """What a snapshot's seal covers, in parts: a domain tag, then each field
    length-prefixed, so no two snapshots (and nothing else ``Log.seal`` may ever cover)
    share bytes. Parts, so a large state is not copied to be sealed."""
    parts: list[bytes | bytearray] = [b"maip-ledger snapshot\n"]
    for field in (name.encode(), str(log_size).encode(), root, state):
        parts += (len(field).to_bytes(8, "big"), field)
    return parts


async def load_snapshot(
    log: SnapshotLog, projection: Projection[S], *, upto: int | None = None
) -> tuple[S, int] | None:
    """The projection's saved state and the log size it covers, if it is still valid:
    it covers at most ``upto`` leaves (default: the whole log), its seal verifies, the
    log's root at that size is the one it recorded, and its state decodes. ``None``
    otherwise: fold from the start.
    """
    name = projection.name
    try:
        saved = await log.store.load_snapshot(name)
    except IntegrityError as e:  # a row edited to another type, or to text not UTF-8
        _log.warning("replay.snapshot_ignored", projection=name, reason=f"unreadable: {e}")
        return None
    if saved is None:
        return None
    try:
        snapshot = msgspec.msgpack.decode(saved[1], type=_Snapshot)
    except msgspec.DecodeError as e:  # an older format, or a damaged row
        _log.warning("replay.snapshot_ignored", projection=name, reason=f"unreadable: {e}")
        return None
    limit = log.size if upto is None else min(upto, log.size)
    if not 0 < snapshot.log_size <= limit:
        return None
    expected = log.seal(*_sealed(name, snapshot.log_size, snapshot.root, snapshot.state))
    if not hmac.compare_digest(expected, snapshot.seal):
        _log.warning("replay.snapshot_ignored", projection=name, reason="seal does not verify")
        return None
    if await log.root_at(snapshot.log_size) != snapshot.root:
        _log.warning("replay.snapshot_ignored", projection=name, reason="not of this log")
        return None
    try:
        state = projection.decode(snapshot.state)
    except Exception as e:  # noqa: BLE001 — a state this code cannot read is no snapshot
        # Sealed by this key, so written by some version of this code: one whose state
        # had another shape under the same name. Folding from the start is always right.
        _log.warning("replay.snapshot_ignored", projection=name, reason=f"state: {e}")
        return None
    return state, snapshot.log_size


async def fold_log(log: Log, projection: Projection[S], *, use_snapshot: bool = True) -> S:
    """Fold the whole log, starting from a still-valid snapshot if there is one."""
    state = projection.initial()
    index = 0
    if use_snapshot and (loaded := await load_snapshot(log, projection)) is not None:
        state, index = loaded
    while batch := await log.read_log(index, _BATCH):
        for recorded in batch:
            state = projection.apply(state, recorded.event)
        index = batch[-1].leaf_index + 1
    return state


async def save_snapshot(
    log: SnapshotLog, projection: Projection[S], state: S, log_size: int
) -> None:
    """Remember ``state`` as the fold of the first ``log_size`` leaves.

    The state is captured before anything is awaited: a live projection may fold newer
    events meanwhile, and its snapshot must hold exactly the first ``log_size``. A large
    state is encoded part by part between turns of the event loop, sealed in a thread
    (hashing releases the interpreter lock) and handed to the store in parts, never
    copied whole, so none of it stalls the loop for long.
    """
    encoded = projection.encode(state)
    data: bytes | bytearray
    if isinstance(encoded, bytes):
        data = encoded
    else:
        # Grown in place part by part: joining tens of MiB at once held the loop.
        data = bytearray(next(encoded, b""))  # captures the state, before the first await
        while True:
            await asyncio.sleep(0)
            part = next(encoded, None)
            if part is None:
                break
            data += part
    root = await log.root_at(log_size)
    seal = await asyncio.to_thread(log.seal, *_sealed(projection.name, log_size, root, data))
    # Stored as the parts of its encoding, the state never copied into one: a copy of
    # tens of MiB holds the interpreter lock throughout, and the store writes the parts
    # a piece at a time.
    await log.store.save_snapshot(
        projection.name, log_size, _snapshot_parts(_Snapshot(log_size, root, b"", seal), data)
    )
