"""Where the log keeps its witnesses' cosignatures (``specs/log-format.md`` §9.6): the
port, and its SQLite backend in a file of its own beside the ledger's.

Each row is one witness's verified cosignature line on the log's checkpoint of one tree
size; the largest size a witness cosigned is where the next submission's consistency
proof starts. Rows are evidence, so the table is append-only like the ledger's (triggers
refuse UPDATE and DELETE) and written with ``synchronous=FULL``.

A separate file, not a table behind :class:`~ledger.store.EventStore`: its writes would
otherwise queue on the ledger's one writer thread, between (and behind) the durable
commits appends wait for, and every event-store backend would have to grow for data the
log's integrity does not rest on. Lost, it costs the published cosignatures, never the
log: a witness's next answer (409 with its size) puts the submitter back in step.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ledger._writer_thread import WriterThread
from ledger.errors import IntegrityError, StorageUnavailableError

__all__ = ["CosignatureStore", "SQLiteCosignatureStore"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosignatures(
    tree_size INTEGER NOT NULL,
    witness   TEXT NOT NULL,
    line      TEXT NOT NULL,
    PRIMARY KEY (tree_size, witness)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cosignatures_by_witness ON cosignatures(witness, tree_size);
CREATE TRIGGER IF NOT EXISTS cosignatures_no_update BEFORE UPDATE ON cosignatures
    BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
CREATE TRIGGER IF NOT EXISTS cosignatures_no_delete BEFORE DELETE ON cosignatures
    BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
"""


class CosignatureStore(Protocol):
    async def open(self) -> None:
        """Create or open the storage."""

    async def close(self) -> None: ...

    async def add(self, witness: str, tree_size: int, line: str) -> None:
        """Keep ``witness``'s (its vkey) cosignature ``line`` on the checkpoint of
        ``tree_size``, durably. A second line for the same witness and size is dropped:
        the first stays (append-only)."""

    async def cosigned_sizes(self) -> dict[str, int]:
        """The largest tree size each witness (by vkey) has a stored cosignature for."""

    async def newest(
        self, witnesses: Sequence[str], at_least: int, *, below: int | None = None
    ) -> tuple[int, dict[str, str]] | None:
        """The largest tree size (under ``below``, if given) cosigned by at least
        ``at_least`` of ``witnesses``, with those witnesses' lines on it; None if there
        is none."""


class SQLiteCosignatureStore:
    """A :class:`CosignatureStore` in one SQLite file, its reads and writes on one thread
    (the table is small and rarely read: answers are cached by the caller)."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._conn: sqlite3.Connection | None = None
        self._thread: WriterThread | None = None

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._thread = WriterThread("cosignatures")
        try:
            await self._on(self._open)
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        if self.read_only:
            if not self.path.exists():
                # No witness ever cosigned: an empty store, not an error.
                self._conn = sqlite3.connect(":memory:", isolation_level=None)
                self._conn.executescript(_SCHEMA)
                return
            uri = f"file:{self.path}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def closing() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await thread.submit(closing)
        finally:
            thread.shutdown()

    async def _on(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._thread is None:
            raise StorageUnavailableError(f"the cosignature store {self.path} is not open")
        try:
            return await self._thread.submit(fn, *args)
        except sqlite3.Error as e:
            raise StorageUnavailableError(f"cosignatures at {self.path}: {e}") from e

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageUnavailableError(f"the cosignature store {self.path} is not open")
        return self._conn

    async def add(self, witness: str, tree_size: int, line: str) -> None:
        if self.read_only:
            raise StorageUnavailableError(f"the cosignature store {self.path} is read-only")
        await self._on(self._add, witness, tree_size, line)

    def _add(self, witness: str, tree_size: int, line: str) -> None:
        self._db().execute(
            "INSERT OR IGNORE INTO cosignatures(tree_size, witness, line) VALUES (?, ?, ?)",
            (tree_size, witness, line),
        )

    async def cosigned_sizes(self) -> dict[str, int]:
        rows = await self._on(
            lambda: (
                self._db()
                .execute("SELECT witness, max(tree_size) FROM cosignatures GROUP BY witness")
                .fetchall()
            )
        )
        return {_text(w): _size(s) for w, s in rows}

    async def newest(
        self, witnesses: Sequence[str], at_least: int, *, below: int | None = None
    ) -> tuple[int, dict[str, str]] | None:
        if not witnesses or at_least < 1:
            return None
        limit = below if below is not None else _ABOVE_ALL
        return await self._on(self._newest, list(dict.fromkeys(witnesses)), at_least, limit)

    def _newest(
        self, witnesses: list[str], at_least: int, below: int
    ) -> tuple[int, dict[str, str]] | None:
        marks = ",".join("?" * len(witnesses))
        db = self._db()
        # One read transaction, so the size and its lines come from one state of the file.
        db.execute("BEGIN")
        try:
            row = db.execute(
                f"SELECT tree_size FROM cosignatures WHERE witness IN ({marks}) "
                "AND tree_size < ? "
                "GROUP BY tree_size HAVING count(*) >= ? ORDER BY tree_size DESC LIMIT 1",
                (*witnesses, below, at_least),
            ).fetchone()
            if row is None:
                return None
            size = _size(row[0])
            lines = db.execute(
                f"SELECT witness, line FROM cosignatures WHERE tree_size = ? "
                f"AND witness IN ({marks})",
                (size, *witnesses),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        return size, {_text(w): _text(line) for w, line in lines}


# SQLite's integers stop at 2^63 - 1: "below" this is every size.
_ABOVE_ALL = (1 << 63) - 1


def _size(value: object) -> int:
    if type(value) is not int or value < 1:
        raise IntegrityError(f"a stored cosignature's tree size is {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise IntegrityError(f"a stored cosignature field is {type(value).__name__}, not text")
    return value
