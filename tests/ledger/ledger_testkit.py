"""Shared pieces for the ledger tests: a tiny event catalog, fixed keys, a log factory."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.events import EventCatalog
from ledger.fsck import FsckReport, fsck
from ledger.log import Log
from ledger.note import NoteSigner
from ledger.sqlite_store import SQLiteEventStore

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
