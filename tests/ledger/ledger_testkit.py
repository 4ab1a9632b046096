"""Shared pieces for the ledger tests: a tiny event catalog, fixed keys, a log factory."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.errors import StorageUnavailableError
from ledger.events import EventCatalog, NewEvent
from ledger.fsck import FsckReport, fsck
from ledger.log import Log
from ledger.note import NoteSigner
from ledger.sqlite_store import SQLiteEventStore
from ledger.store import Batch

VECTORS = Path(__file__).resolve().parents[2] / "specs" / "vectors"
ORIGIN = "test.maip.local/log"
FIXED_TIME = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


class Note(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str


class Count(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    n: int


CATALOG = EventCatalog({"note.added": Note, "count.added": Count})


def signer(seed: int = 1, origin: str = ORIGIN) -> NoteSigner:
    return NoteSigner(origin, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def b64(text: str) -> bytes:
    return base64.b64decode(text)


async def open_log(path: Path, **options: object) -> Log:
    return await Log.open(SQLiteEventStore(path), signer(), CATALOG, **options)


async def fsck_path(path: Path) -> FsckReport:
    """fsck as the CLI runs it: read-only, beside any writer."""
    store = SQLiteEventStore(path, read_only=True)
    await store.open()
    try:
        return await fsck(store, signer().verifier)
    finally:
        await store.close()


class GatedStore(SQLiteEventStore):
    """The real store, with commits and stream-head reads a test lets through one by
    one: each commit planned in ``plan`` waits for its event, then fails (as a full
    disk) or writes. While ``head_gate`` is not None, a head read is made at once but
    its answer is held (and ``head_held`` set) until the gate is set: a read that
    reaches the database before a commit and returns after it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.plan: list[tuple[asyncio.Event, bool]] = []
        self.head_gate: asyncio.Event | None = None
        self.head_held = asyncio.Event()

    def commit(self, batch: Batch) -> Awaitable[None]:
        if not self.plan:
            return super().commit(batch)
        gate, fail = self.plan.pop(0)
        real = super().commit

        async def run() -> None:
            await gate.wait()
            if fail:
                raise StorageUnavailableError("storage cannot write: disk full (injected)")
            await real(batch)

        return asyncio.ensure_future(run())

    async def stream_heads(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        heads = await super().stream_heads(keys)
        gate = self.head_gate
        if gate is not None:
            self.head_held.set()
            await gate.wait()
        return heads


async def spin(turns: int = 20) -> None:
    """Let every task that can run without a thread's answer run."""
    for _ in range(turns):
        await asyncio.sleep(0)


@asynccontextmanager
async def writing_beside(path: Path, start: int = 20) -> AsyncIterator[None]:
    """A log at ``path`` with ``start`` events, appending one batch after another for as
    long as the block runs, as a live server would beside a read-only reader."""
    log = await open_log(path)
    for seq in range(start):
        await log.append("t1", "s", seq, [NewEvent("note.added", Note(f"{seq}"))])
    stop = asyncio.Event()

    async def writer() -> None:
        seq = start
        while not stop.is_set():
            await log.append("t1", "s", seq, [NewEvent("note.added", Note(f"{seq}"))])
            seq += 1

    task = asyncio.create_task(writer())
    try:
        yield
    finally:
        stop.set()
        await task
        await log.close()
