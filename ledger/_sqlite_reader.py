"""The SQLite store's reads: streams, the log, stream heads, hash rows, checkpoints.

They use their own connection (aiosqlite), so they never queue behind a commit's fsync.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import aiosqlite

from ledger._sqlite_errors import storage_error
from ledger._sqlite_stream_index import Tail
from ledger.errors import StorageUnavailableError
from ledger.store import CheckpointRecord, HashRow, StoredEvent

__all__ = ["Reader"]

# Streams per head read: two bound parameters each, well under SQLite's limit.
_HEADS_PER_READ = 256
_EVENTS_PER_READ = 512

_TAIL = "leaf_index >= (SELECT upto FROM index_progress)"
# The stream index is derived, and rows can be inserted behind the store's back: a row
# naming another stream's event (another tenant's) must not put that event in an answer,
# nor take a place in a page or a head, so every read through the index joins the events
# it names and keeps only those of the stream and sequence the row claims.
_INDEXED = (
    "FROM stream_index s JOIN events e ON e.leaf_index = s.leaf_index "
    "AND e.tenant_id = s.tenant_id AND e.stream_id = s.stream_id "
    "AND e.stream_seq = s.stream_seq "
)

_EVENT_COLUMNS = "leaf_index, event_id, tenant_id, stream_id, stream_seq, type, tree_size, leaf"
_HEAD = (
    f"SELECT s.stream_seq {_INDEXED} WHERE s.tenant_id = q.t AND s.stream_id = q.s "
    "ORDER BY s.stream_seq DESC LIMIT 1"
)
_E_COLUMNS = ", ".join("e." + c for c in _EVENT_COLUMNS.split(", "))


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        leaf_index=row[0],
        event_id=row[1],
        tenant_id=row[2],
        stream_id=row[3],
        stream_seq=row[4],
        type=row[5],
        tree_size=row[6],
        leaf=row[7],
    )


def _daemon_reader(connection: aiosqlite.Connection) -> aiosqlite.Connection:
    """``connection``, its worker thread made a daemon before it starts.

    aiosqlite's thread is not a daemon, so a process that ended its event loop without
    closing the store hung at exit for ever, waiting for a thread that waits for work.
    The reader holds no write state, so abandoning it at exit is as safe as a crash; the
    writer thread is a daemon for the same reason (ledger/_writer_thread.py). If a
    later aiosqlite keeps its thread elsewhere, nothing changes here but that fix.
    """
    thread = getattr(connection, "_thread", None)
    if isinstance(thread, threading.Thread) and thread.ident is None:
        thread.daemon = True
    return connection


class Reader:
    """The store's read connection and the queries it answers; a query before ``open``
    or after ``close`` raises :class:`StorageUnavailableError`.

    Reads of streams and heads take the writing process's unindexed ``tail``
    (ledger/_sqlite_stream_index.py) and ``writes_here``: whether this process is the
    writer, and so knows its tail; if not, the reads scan the unindexed events instead.
    """

    def __init__(self) -> None:
        self._connection: aiosqlite.Connection | None = None

    @property
    def opened(self) -> bool:
        return self._connection is not None

    async def open(self, path: str | os.PathLike[str], *, read_only: bool) -> None:
        uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
        connection = await _daemon_reader(aiosqlite.connect(uri, uri=True, isolation_level=None))
        try:
            await connection.execute("PRAGMA busy_timeout=5000")
            await connection.execute("PRAGMA cache_size=-65536")
            await connection.execute("PRAGMA query_only=1")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await connection.close()
            raise
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._connection.close()
            self._connection = None

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._connection is None:
            raise StorageUnavailableError("the store is not open")
        # One hop that runs and finishes the statement, so no open statement keeps an
        # old read snapshot alive for the next query on this shared connection.
        try:
            return list(await self._connection.execute_fetchall(sql, params))
        except sqlite3.Error as e:
            raise storage_error(e) from e

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        row = await self._one(
            "SELECT tree_size, root, note FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
        )
        return CheckpointRecord(*row) if row else None

    async def checkpoint(self, tree_size: int) -> CheckpointRecord | None:
        row = await self._one(
            "SELECT tree_size, root, note FROM checkpoints WHERE tree_size = ?", (tree_size,)
        )
        return CheckpointRecord(*row) if row else None

    async def checkpoints(self, after_size: int, limit: int) -> list[CheckpointRecord]:
        rows = await self.all(
            "SELECT tree_size, root, note FROM checkpoints WHERE tree_size > ? "
            "ORDER BY tree_size LIMIT ?",
            (after_size, limit),
        )
        return [CheckpointRecord(*r) for r in rows]

    async def hash_rows(self, indexes: Sequence[int]) -> list[HashRow]:
        if not indexes:
            return []
        wanted = sorted(set(indexes))
        values = ",".join("(?)" for _ in wanted)
        rows = await self.all(
            f"WITH q(i) AS (VALUES {values}) "
            "SELECT start, hashes FROM tree_hashes WHERE start IN "
            "(SELECT (SELECT max(start) FROM tree_hashes WHERE start <= q.i) FROM q)",
            wanted,
        )
        return [HashRow(start, hashes) for start, hashes in rows]

    async def stream_heads(
        self, keys: Sequence[tuple[str, str]], tail: Tail, *, writes_here: bool
    ) -> dict[tuple[str, str], int]:
        wanted = list(dict.fromkeys(keys))
        heads: dict[tuple[str, str], int] = {}
        for lo in range(0, len(wanted), _HEADS_PER_READ):
            chunk = wanted[lo : lo + _HEADS_PER_READ]
            values = ",".join(["(?,?)"] * len(chunk))
            params = [part for key in chunk for part in key]
            if not writes_here:  # another process writes: scan its unindexed tail too
                sql = (
                    f"WITH q(t, s) AS (VALUES {values}) SELECT t, s, max("
                    f"coalesce(({_HEAD}), 0), "
                    f"coalesce((SELECT max(stream_seq) FROM events WHERE {_TAIL} "
                    "AND tenant_id = t AND stream_id = s), 0)) FROM q"
                )
            else:
                sql = f"WITH q(t, s) AS (VALUES {values}) SELECT t, s, ({_HEAD}) FROM q"
            # Taken before the read: an entry leaves the tail only after its index pass
            # committed, so it is in one or the other.
            for key in chunk:
                entries = tail.get(key)
                heads[key] = entries[-1][0] if entries else 0
            for t, s, indexed in await self.all(sql, params):
                heads[(t, s)] = max(heads[(t, s)], int(indexed or 0))
        return heads

    async def read_stream(
        self,
        tenant_id: str,
        stream_id: str,
        after_seq: int,
        limit: int | None,
        tail: Tail,
        *,
        writes_here: bool,
    ) -> list[StoredEvent]:
        if not writes_here:  # another process writes: one statement, one snapshot
            rows = await self.all(
                f"SELECT {_E_COLUMNS} {_INDEXED} WHERE s.tenant_id = ?1 AND s.stream_id = ?2 "
                "AND s.stream_seq > ?3 AND s.leaf_index < (SELECT upto FROM index_progress) "
                f"UNION ALL SELECT {_EVENT_COLUMNS} FROM events WHERE {_TAIL} "
                "AND tenant_id = ?1 AND stream_id = ?2 AND stream_seq > ?3 "
                "ORDER BY stream_seq LIMIT ?4",
                (tenant_id, stream_id, after_seq, -1 if limit is None else limit),
            )
            return [_stored(r) for r in rows]
        unindexed = [i for seq, i in tail.get((tenant_id, stream_id), ()) if seq > after_seq]
        rows = await self.all(
            f"SELECT {_E_COLUMNS} {_INDEXED} WHERE s.tenant_id = ?1 AND s.stream_id = ?2 "
            "AND s.stream_seq > ?3 ORDER BY s.stream_seq LIMIT ?4",
            (tenant_id, stream_id, after_seq, -1 if limit is None else limit),
        )
        if unindexed and (limit is None or len(rows) < limit):
            seen = {r[0] for r in rows}
            wanted = [i for i in unindexed if i not in seen]
            if wanted:
                marks = ",".join("?" * len(wanted))
                rows += await self.all(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE leaf_index IN ({marks})", wanted
                )
        events = sorted((_stored(r) for r in rows), key=lambda e: e.stream_seq)
        return events if limit is None else events[:limit]

    async def read_log(self, from_index: int, limit: int) -> list[StoredEvent]:
        rows = await self.all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE leaf_index >= ? "
            "ORDER BY leaf_index LIMIT ?",
            (from_index, limit),
        )
        return [_stored(r) for r in rows]

    async def events_by_id(self, event_ids: Sequence[bytes]) -> dict[bytes, StoredEvent]:
        wanted = list(dict.fromkeys(event_ids))
        found: dict[bytes, StoredEvent] = {}
        for lo in range(0, len(wanted), _EVENTS_PER_READ):
            chunk = wanted[lo : lo + _EVENTS_PER_READ]
            rows = await self.all(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id IN "
                f"({','.join(['?'] * len(chunk))})",
                chunk,
            )
            for row in rows:
                event = _stored(row)
                found[event.event_id] = event
        return found

    async def event_count(self) -> int:
        row = await self._one("SELECT coalesce(max(leaf_index) + 1, 0) FROM events")
        return int(row[0])
