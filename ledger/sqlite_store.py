"""The SQLite backend of :class:`~ledger.store.EventStore` (aiosqlite, WAL).

Durability: WAL with ``synchronous=FULL``, so a commit is on disk when it returns.
After a write error the writer drops the files' cached pages before writing again, or
a later commit could be written through pages the device never took and be lost at the
next crash despite a successful fsync (``ledger/pagecache.py``).
Append-only: triggers abort any UPDATE or DELETE on events, tree hashes and
checkpoints. One writer: an exclusive ``flock`` on ``<db>.lock`` keeps a second writer
process out; read-only openers (``fsck``, ``export``) do not take it. Reads use their
own connection (aiosqlite) so they never queue behind a commit's fsync; writes run
on one dedicated thread in the order they were queued, each batch one INSERT into the
``batch_rows`` view whose trigger routes rows to their tables — one statement, so one
transaction and one release of the interpreter lock per commit.

Stream index: finding a stream's events needs an index keyed by (tenant, stream,
seq), and inserting into it lands at a random B-tree position per stream — the
costliest part of a commit. So the index is *derived*: once a few thousand events are
unindexed, background passes copy them into ``stream_index``, each at most 512 rows of
at most 128 streams (about a page each) and recording how far it got in the same
transaction; commits go ahead of waiting passes (``ledger/_writer_thread.py``). The
writing process remembers its unindexed tail in memory; a read-only process scans it.
Either way reads see every committed event. Losing an index pass in a crash loses
nothing: it is rebuilt from the events.

Here: opening, the writer (its thread, the flock, commits, recovery after write
errors) and scheduling the index passes. The schema is in ``ledger/_sqlite_schema.py``,
the reads in ``ledger/_sqlite_reader.py``, the index passes in
``ledger/_sqlite_stream_index.py``, snapshots in ``ledger/_sqlite_snapshots.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from ledger._sqlite_errors import storage_error
from ledger._sqlite_reader import Reader
from ledger._sqlite_schema import batch_insert, create_schema, replaced_triggers
from ledger._sqlite_snapshots import read_snapshot, write_snapshot
from ledger._sqlite_stream_index import (
    Tail,
    TailOrder,
    forget_tail,
    index_all,
    index_pass,
    index_problems,
    pass_end,
)
from ledger._wal_checkpointer import WalCheckpointer
from ledger._writer_thread import WriterThread
from ledger.errors import IntegrityError, StorageUnavailableError
from ledger.pagecache import WritebackWatch, forget_cached_pages
from ledger.store import Batch, CheckpointRecord, HashRow, StoredEvent

__all__ = ["SQLiteEventStore"]

_logger = structlog.get_logger()
_T = TypeVar("_T")

# Events between background WAL checkpoints: about 1-2 MiB of WAL.
_CHECKPOINT_EVERY = 1024


class SQLiteEventStore:
    """An :class:`~ledger.store.EventStore` in one SQLite file."""

    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, index_every: int = 4096
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._index_every = index_every
        self._indexed_upto = 0
        self._committed_upto = 0
        self._indexer: asyncio.Task[None] | None = None
        # Committed but not yet indexed (ledger/_sqlite_stream_index.py).
        self._tail: Tail = {}
        self._tail_order: TailOrder = deque()
        self._writer: sqlite3.Connection | None = None
        self._thread: WriterThread | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._since_checkpoint = 0
        self._rows_per_insert = 1
        self._writer_end = 0  # one past the last committed leaf; the writer thread's own
        self._reader = Reader()
        self._lock_fd: int | None = None
        self._db_watch: WritebackWatch | None = None

    async def open(self) -> None:
        if self._reader.opened:
            return
        try:
            if self.read_only:
                if not self.path.exists():
                    raise StorageUnavailableError(f"no ledger database at {self.path}")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._take_lock()
                self._thread = WriterThread("ledger-sqlite-writer")
                self._indexed_upto, self._committed_upto = await self._write(self._open_writer)
                self._checkpointer = WalCheckpointer(
                    self.path, lambda: self._write(self._restart_wal, background=True)
                )
                await self._checkpointer.open()
            await self._reader.open(self.path, read_only=self.read_only)
        except sqlite3.Error as e:
            await self.close()
            raise StorageUnavailableError(f"cannot open {self.path}: {e}") from e

    async def _write(self, fn: Callable[..., _T], *args: Any, background: bool = False) -> _T:
        """Run ``fn`` on the writer thread; ``background`` for upkeep that may wait for
        a gap between commits (ledger/_writer_thread.py)."""
        if self._thread is None:
            raise self._not_writable()
        return await self._thread.submit(self._in_writer, fn, *args, background=background)

    def _not_writable(self) -> StorageUnavailableError:
        return StorageUnavailableError(
            "the store is open read-only" if self.read_only else "the store is not open"
        )

    # -- after a write error (see ledger/pagecache.py) -----------------------------------

    def _files(self) -> list[Path]:
        return [self.path, self.path.with_name(self.path.name + "-wal")]

    def _in_writer(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` on the writer thread; after a failed write, or a checkpoint SQLite
        ran and failed silently, drop the files' cached pages before anything is
        written again, so no later commit is written through them."""
        try:
            result = fn(*args)
        except sqlite3.Error as e:
            if isinstance(storage_error(e), StorageUnavailableError):
                _logger.warning("store.write_failed_dropping_cache", error=str(e))
                forget_cached_pages(self._files())
            raise
        if self._db_watch is not None and self._db_watch.failed():
            _logger.warning("store.writeback_failed_dropping_cache", file=str(self.path))
            forget_cached_pages(self._files())
        return result

    def _open_writer(self) -> tuple[int, int]:
        # A previous process may have died between a failed write and dropping the pages.
        forget_cached_pages(self._files())
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._writer = conn
        # 9 bound values a row; builds differ (999 before SQLite 3.32, 32,766 after).
        self._rows_per_insert = max(
            3, min(4096, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 9)
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA cache_size=-65536")
        # Checkpoints run in the background (ledger._wal_checkpointer); this is only the
        # backstop should that fall behind: 64 MiB of WAL.
        conn.execute("PRAGMA wal_autocheckpoint=16384")
        create_schema(conn)
        (committed,) = conn.execute(
            "SELECT coalesce(max(leaf_index) + 1, 0) FROM events"
        ).fetchone()
        index_all(conn, committed)
        self._writer_end = int(committed)
        self._db_watch = WritebackWatch(self.path)
        return int(committed), int(committed)

    def _restart_wal(self) -> None:
        w = self._conn()
        # Between two commits, after a passive checkpoint copied the bulk: this copies
        # the frames committed since and restarts the WAL (ledger/_wal_checkpointer.py).
        # A reader still on old frames makes it return busy at once instead of holding
        # up every commit behind it; the next checkpoint tries again.
        w.execute("PRAGMA busy_timeout=0")
        try:
            w.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            w.execute("PRAGMA busy_timeout=5000")

    def _conn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StorageUnavailableError("the store's writer is closed")
        return self._writer

    def _with_writer(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(connection, *args)`` with the writer's connection, on the writer thread."""
        return fn(self._conn(), *args)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()  # the last connection checkpoints: watch that too
            self._writer = None
        if self._db_watch is not None:
            if self._db_watch.failed():
                forget_cached_pages(self._files())
            self._db_watch.close()
            self._db_watch = None

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise StorageUnavailableError(
                f"another process is writing to {self.path} (lock {lock_path} is held)"
            ) from e
        self._lock_fd = fd

    async def close(self) -> None:
        if self._indexer is not None:
            with contextlib.suppress(Exception):
                await self._indexer
            self._indexer = None
        if self._checkpointer is not None:
            await self._checkpointer.close()
            self._checkpointer = None
        if self._thread is not None:
            with contextlib.suppress(sqlite3.Error):
                # Behind any upkeep still queued (a snapshot), which would else fail.
                await self._write(self._close_writer, background=True)
            self._thread.shutdown()
            self._thread = None
        await self._reader.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def commit(self, batch: Batch) -> Awaitable[None]:
        # Queued on the writer thread now, in call order: a batch queued behind another
        # starts the moment that one ends, without a trip through the event loop. The
        # rows are built here, on the loop's thread, which holds the interpreter lock
        # anyway; the writer thread then needs it only to bind them.
        loop = asyncio.get_running_loop()
        if self._thread is None:
            return self._refuse(loop)
        events = batch.events
        cp = batch.checkpoint
        astuple = msgspec.structs.astuple
        rows: list[Any] = []
        for event in events:
            rows.append("e")
            rows += astuple(event)
        rows += ("h", batch.hashes.start, batch.hashes.hashes, None, None, None, None, None, None)
        rows += ("c", cp.tree_size, cp.root, cp.note, None, None, None, None, None)
        first = events[0].leaf_index if events else None
        written = self._thread.submit(self._in_writer, self._commit_sync, first, len(events), rows)
        return loop.create_task(self._committed(written, events))

    def _refuse(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        refused: asyncio.Future[None] = loop.create_future()
        refused.set_exception(self._not_writable())
        return refused

    async def _committed(self, written: Awaitable[None], events: Sequence[StoredEvent]) -> None:
        try:
            await written
        except sqlite3.Error as e:
            raise storage_error(e) from e
        if not events:
            return
        self._committed_upto = max(self._committed_upto, events[-1].leaf_index + 1)
        tail = self._tail
        keys = []
        for event in events:
            key = (event.tenant_id, event.stream_id)
            entries = tail.get(key)
            if entries is None:
                entries = tail[key] = deque()
            entries.append((event.stream_seq, event.leaf_index))
            keys.append(key)
        self._tail_order.append((events[0].leaf_index, keys))
        self._since_checkpoint += len(events)
        if self._since_checkpoint >= _CHECKPOINT_EVERY and self._checkpointer is not None:
            self._since_checkpoint = 0
            self._checkpointer.poke()
        if self._committed_upto - self._indexed_upto >= self._index_every and (
            self._indexer is None or self._indexer.done()
        ):
            self._indexer = asyncio.create_task(self._index_tail(), name="ledger-stream-index")

    def _commit_sync(self, first: int | None, count: int, rows: list[Any]) -> None:
        w = self._conn()
        if first is not None and first != self._writer_end:
            raise IntegrityError(
                f"a batch starting at leaf {first} does not continue the log, which ends "
                f"at {self._writer_end}",
                index=first,
            )
        total = len(rows) // 9
        step = self._rows_per_insert
        if total <= step:
            # Autocommit: the one statement is the whole transaction.
            w.execute(batch_insert(total), rows)
        else:
            w.execute("BEGIN IMMEDIATE")
            try:
                for lo in range(0, total, step):
                    n = min(step, total - lo)
                    w.execute(batch_insert(n), rows[lo * 9 : (lo + n) * 9])
                w.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    w.execute("ROLLBACK")
                raise
        self._writer_end += count

    async def _index_tail(self) -> None:
        """Copy the backlog committed so far into the stream index, a bounded pass at a time.

        Up to where the log stood when the backlog was found, then again only while
        what was committed meanwhile is a whole backlog (``index_every``): chasing the
        tip would turn one large pass into a small one after every commit, each dirtying
        as many index pages as a large one and holding the writer thread as long.
        """
        target = self._committed_upto
        while True:
            if target <= self._indexed_upto:
                # Commits during this run found it busy and started none of their own.
                if self._committed_upto - self._indexed_upto < self._index_every:
                    return
                target = self._committed_upto
            # Bounded passes: each holds the writer thread, so commits queued meanwhile
            # wait for at most one pass, not for the whole backlog.
            upto = pass_end(self._tail_order, self._indexed_upto, target)
            try:
                await self._write(
                    self._with_writer, index_pass, self._indexed_upto, upto, background=True
                )
            except (sqlite3.Error, StorageUnavailableError) as e:
                # The tail stays readable unindexed; the next commit tries again.
                _logger.warning("store.index_pass_failed", error=str(e))
                return
            self._indexed_upto = upto
            forget_tail(self._tail, self._tail_order, upto)

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        return await self._reader.latest_checkpoint()

    async def checkpoint(self, tree_size: int) -> CheckpointRecord | None:
        return await self._reader.checkpoint(tree_size)

    async def checkpoints(self, after_size: int, limit: int) -> list[CheckpointRecord]:
        return await self._reader.checkpoints(after_size, limit)

    async def hash_rows(self, indexes: Sequence[int]) -> list[HashRow]:
        return await self._reader.hash_rows(indexes)

    async def stream_heads(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return await self._reader.stream_heads(
            keys, self._tail, writes_here=self._thread is not None
        )

    async def read_stream(
        self, tenant_id: str, stream_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        return await self._reader.read_stream(
            tenant_id, stream_id, after_seq, limit, self._tail, writes_here=self._thread is not None
        )

    async def index_problems(self, limit: int) -> list[tuple[int, str]]:
        return await index_problems(self._reader.all, limit)

    async def guard_problems(self) -> list[str]:
        return replaced_triggers(
            await self._reader.all(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
            )
        )

    async def read_log(self, from_index: int, limit: int) -> list[StoredEvent]:
        return await self._reader.read_log(from_index, limit)

    async def events_by_id(self, event_ids: Sequence[bytes]) -> dict[bytes, StoredEvent]:
        return await self._reader.events_by_id(event_ids)

    async def event_count(self) -> int:
        return await self._reader.event_count()

    async def save_snapshot(
        self, name: str, log_index: int, state: bytes | Sequence[bytes | bytearray]
    ) -> None:
        parts = [state] if isinstance(state, bytes) else list(state)
        try:
            # Upkeep, like an index pass: a snapshot can be tens of MiB, and commits
            # queued meanwhile go first (ledger/_writer_thread.py).
            await self._write(
                self._with_writer, write_snapshot, name, log_index, parts, background=True
            )
        except sqlite3.Error as e:
            raise storage_error(e) from e

    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None:
        return await read_snapshot(self._reader.all, name)

    # -- storage probe -------------------------------------------------------------------

    async def probe(self) -> None:
        """One small durable write (the ``meta`` row ``storage_probe``): does the medium
        take writes again? Raises :class:`StorageUnavailableError` while it does not."""
        try:
            await self._write(self._probe_sync)
        except sqlite3.Error as e:
            raise storage_error(e) from e

    def _probe_sync(self) -> None:
        w = self._conn()
        w.execute("BEGIN IMMEDIATE")
        try:
            # A changing value, so the commit really writes (and fsyncs) a WAL frame.
            w.execute(
                "INSERT INTO meta(key, value) VALUES ('storage_probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(time.time_ns()),),
            )
            w.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                w.execute("ROLLBACK")
            raise
