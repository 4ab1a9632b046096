"""Background WAL checkpoints, so no commit waits for the bulk of one.

SQLite copies the write-ahead log back into the database file (a *checkpoint*) when
the WAL passes ``wal_autocheckpoint`` pages — inside whichever commit crossed the
line, which then takes tens of milliseconds and delays every batch queued behind it.
Here, every thousand or so events, a second connection on its own thread first runs a
``PASSIVE`` checkpoint, which never blocks the writer or readers (SQLite wal.html,
"Checkpointing"), and copies the bulk. Then the writer itself runs ``RESTART`` between
two of its commits, which copies only the few frames committed meanwhile and lets the
next commit start the WAL again from its beginning.

Why the writer runs the restart: a ``RESTART`` from another connection must take the
write lock, and against a writer that commits back to back its busy handler keeps
waking up to find the lock taken again — it starved for hundreds of milliseconds
while the WAL grew by tens of megabytes. A passive checkpoint alone would never catch
up with a busy writer either. The writer keeps a high ``wal_autocheckpoint`` as a
backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from ledger._writer_thread import WriterThread
from ledger.pagecache import forget_cached_pages

__all__ = ["WalCheckpointer"]

_log = structlog.get_logger()


class WalCheckpointer:
    """``restart`` runs ``PRAGMA wal_checkpoint(RESTART)`` on the writer's connection,
    between two of its commits (in the writer thread's background lane), and must not
    wait for readers (busy timeout 0)."""

    def __init__(self, path: Path, restart: Callable[[], Awaitable[object]]) -> None:
        self._path = path
        self._restart = restart
        self._thread = WriterThread("ledger-sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        # A poke that arrives while a checkpoint runs is remembered, not dropped: one
        # checkpoint can span several pokes, and dropping them let the WAL grow by that
        # many commits before the next restart.
        self._again = False
        self._closing = False

    async def open(self) -> None:
        await self._thread.submit(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # FULL: the checkpoint syncs the WAL before copying and the database after.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=1000")
        self._conn = conn

    def poke(self) -> None:
        """Checkpoint now, or again as soon as the running checkpoint ends."""
        if self._conn is None or self._closing:
            return
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ledger-wal-checkpoint")

    async def _run(self) -> None:
        while self._again and not self._closing:
            self._again = False
            try:
                await self._thread.submit(self._passive)
                # If a reader still needs old frames the restart gives up at once; the
                # next poke tries again, when that reader has most likely finished.
                await self._restart()
            except Exception as e:  # noqa: BLE001 — logged; the next poke tries again
                # Nothing is lost: the frames stay in the WAL and the next checkpoint (or
                # the writer's own backstop) copies them.
                _log.warning("store.checkpoint_failed", error=str(e))

    def _passive(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            # What it wrote may sit in the page cache without being on the device; the
            # next checkpoint must not write the same pages through that cache, or they
            # are lost although its fsync succeeds (ledger/pagecache.py).
            forget_cached_pages([self._path])
            raise

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        with contextlib.suppress(sqlite3.Error):
            await self._thread.submit(self._close)
        self._thread.shutdown()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
