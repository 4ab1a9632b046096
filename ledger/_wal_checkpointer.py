"""Background WAL checkpoints, so no commit ever pays for one.

SQLite copies the write-ahead log back into the database file (a *checkpoint*) when
the WAL passes ``wal_autocheckpoint`` pages — inside whichever commit crossed the
line, which then takes tens of milliseconds and delays every batch queued behind it.
Here a second connection on its own thread checkpoints every thousand or so events
instead: first ``PASSIVE``, which never blocks the writer or readers (SQLite
wal.html, "Checkpointing"), then ``RESTART`` for the few frames committed meanwhile,
which lets the next commit start the WAL again from its beginning. A passive
checkpoint alone would never catch up with a busy writer, so the WAL would grow
without bound. The writer keeps a high ``wal_autocheckpoint`` as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import structlog

from ledger._writer_thread import WriterThread
from ledger.pagecache import forget_cached_pages

__all__ = ["WalCheckpointer"]

_log = structlog.get_logger()


class WalCheckpointer:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = WriterThread("ledger-sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._running: asyncio.Future[None] | None = None

    async def open(self) -> None:
        await self._thread.submit(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # FULL: the checkpoint syncs the WAL before copying and the database after.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=1000")
        self._conn = conn

    def poke(self) -> None:
        """Start a passive checkpoint unless one is already running."""
        if self._conn is None or (self._running is not None and not self._running.done()):
            return
        self._running = self._thread.submit(self._checkpoint)
        self._running.add_done_callback(_report)

    def _checkpoint(self) -> None:
        if self._conn is None:
            return
        # Copy the bulk without blocking anyone, then restart the WAL: that must wait
        # for the writer's current commit and copies only the frames committed
        # meanwhile, so the writer is held up for about one commit's worth of frames.
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.Error:
            # What it wrote may sit in the page cache without being on the device; the
            # next checkpoint must not write the same pages through that cache, or they
            # are lost although its fsync succeeds (ledger/pagecache.py).
            forget_cached_pages([self._path])
            raise

    async def close(self) -> None:
        if self._running is not None:
            with contextlib.suppress(Exception):
                await self._running
        with contextlib.suppress(sqlite3.Error):
            await self._thread.submit(self._close)
        self._thread.shutdown()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _report(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        # Nothing is lost: the frames stay in the WAL and the next checkpoint (or the
        # writer's own backstop) copies them.
        _log.warning("store.checkpoint_failed", error=str(error))
