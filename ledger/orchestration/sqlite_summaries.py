"""Orchestration summaries in a SQLite file of their own, beside the ledger's.

A :class:`~ledger.orchestration.summary_store.SummaryStore`. The file is derived data:
WAL with ``synchronous=NORMAL``, so a commit costs no fsync; a power cut may take the
last writes back, and with them the progress row written in the same transaction, so
the next start folds those events again. A file that is not a database is moved aside
and the summaries rebuilt from the log, and so is one that a read or write found damaged
while in use (it is marked ``<file>.damaged`` then, for the next open); one of an older
format is emptied and rebuilt. Nothing in it is ever the only copy of anything. A
separate file, not tables in the ledger's: its writes would otherwise queue behind, and
wait on, the ledger's durable commits.

Writes run on one thread, reads on another with their own connection, so a listing
never waits for a write.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from ledger._writer_thread import WriterThread
from ledger.errors import StorageUnavailableError
from ledger.orchestration.summary import UNFINISHED, OrchestrationSummary, SummaryPatch
from ledger.orchestration.summary_store import PageQuery, SummaryKey, SummaryProgress

__all__ = ["SQLiteSummaryStore"]

_log = structlog.get_logger()
_T = TypeVar("_T")

# Bump when the table's meaning changes: an older file is then rebuilt from the log.
_FORMAT = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS progress(
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    format        INTEGER NOT NULL,
    upto          INTEGER NOT NULL,
    last_event_id TEXT,
    count         INTEGER NOT NULL
);
INSERT OR IGNORE INTO progress(id, format, upto, last_event_id, count)
    VALUES (1, {_FORMAT}, 0, NULL, 0);
CREATE TABLE IF NOT EXISTS summaries(
    tenant_id        TEXT NOT NULL,
    orchestration_id TEXT NOT NULL,
    executor         TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    agent_id         TEXT,
    agents           TEXT NOT NULL,
    workflow_id      TEXT,
    workflow_version INTEGER,
    created_at       TEXT NOT NULL,
    completed_at     TEXT,
    seq              INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, orchestration_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS summaries_unfinished ON summaries(orchestration_id)
    WHERE executor = 'engine' AND status IN ('pending', 'running');
"""

_COLUMNS = (
    "orchestration_id, tenant_id, executor, status, reason, agent_id, agents, "
    "workflow_id, workflow_version, created_at, completed_at, seq"
)
_UPSERT = f"INSERT OR REPLACE INTO summaries({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
# One statement per patch: the status, and the end, are set only when the patch has one.
_PATCH = (
    "UPDATE summaries SET seq = ?, status = coalesce(?, status), "
    "reason = CASE WHEN ? THEN ? ELSE reason END, "
    "completed_at = CASE WHEN ? THEN ? ELSE completed_at END "
    "WHERE tenant_id = ? AND orchestration_id = ?"
)
_FILTERS = (
    "(?1 IS NULL OR status = ?1) "
    "AND (?2 IS NULL OR agent_id = ?2 OR EXISTS (SELECT 1 FROM json_each(agents) "
    "WHERE json_each.value = ?2)) "
    "AND (?3 IS NULL OR workflow_id = ?3)"
)
_WINDOW = (
    f"SELECT {_COLUMNS} FROM summaries WHERE tenant_id = ?4 AND orchestration_id < ?5 "
    "ORDER BY orchestration_id DESC LIMIT ?6"
)
_PAGE = f"WITH w AS ({_WINDOW}) SELECT * FROM w WHERE {_FILTERS} LIMIT ?7"
_WINDOW_END = f"WITH w AS ({_WINDOW}) SELECT count(*), min(orchestration_id) FROM w"
_OLDER = "SELECT 1 FROM summaries WHERE tenant_id = ? AND orchestration_id < ? LIMIT 1"
# Above every id: an orchestration id is a UUID, and "~" sorts after its characters.
_TOP = "~"

_AGENTS = msgspec.json.Encoder()
_AGENTS_OF = msgspec.json.Decoder(tuple[str, ...])


def _row(summary: OrchestrationSummary) -> tuple[Any, ...]:
    return (
        summary.orchestration_id,
        summary.tenant_id,
        summary.executor,
        summary.status,
        summary.reason,
        summary.agent_id,
        _AGENTS.encode(summary.agents).decode(),
        summary.workflow_id,
        summary.workflow_version,
        summary.created_at,
        summary.completed_at,
        summary.seq,
    )


def _summary(row: Any) -> OrchestrationSummary:
    return OrchestrationSummary(
        orchestration_id=row[0],
        tenant_id=row[1],
        executor=row[2],
        status=row[3],
        reason=row[4],
        agent_id=row[5],
        agents=_AGENTS_OF.decode(row[6]),
        workflow_id=row[7],
        workflow_version=row[8],
        created_at=row[9],
        completed_at=row[10],
        seq=row[11],
    )


class SQLiteSummaryStore:
    """A :class:`~ledger.orchestration.summary_store.SummaryStore` in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_thread: WriterThread | None = None
        self._read_thread: WriterThread | None = None

    async def open(self) -> SummaryProgress:
        if self._write_thread is not None:
            raise StorageUnavailableError(f"{self.path} is already open")
        self._write_thread = WriterThread("summaries-writer")
        self._read_thread = WriterThread("summaries-reader")
        try:
            progress = await self._write_thread.submit(self._open_writer)
            await self._read_thread.submit(self._open_reader)
        except sqlite3.Error as e:
            await self.close()
            raise StorageUnavailableError(f"cannot open {self.path}: {e}") from e
        except BaseException:
            await self.close()
            raise
        return progress

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _set_aside(self, why: str) -> sqlite3.Connection:
        """Derived data only: move the damaged file aside (for a post-mortem) and start
        an empty one; returns its connection."""
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.time_ns()}")
        _log.warning("summaries.file_set_aside", path=str(self.path), error=why)
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._damage_mark.unlink(missing_ok=True)
        conn = self._connect()
        conn.executescript(_SCHEMA)
        return conn

    @property
    def _damage_mark(self) -> Path:
        return self.path.with_name(self.path.name + ".damaged")

    def _open_writer(self) -> SummaryProgress:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._damage_mark.exists():
            # A read or write found damage past the header while the file was in use.
            conn = self._set_aside(f"marked damaged: {self._damage_mark.read_text().strip()}")
            fmt, upto, last, count = _FORMAT, 0, None, 0
        else:
            try:
                conn = self._connect()
                conn.executescript(_SCHEMA)
                fmt, upto, last, count = conn.execute(
                    "SELECT format, upto, last_event_id, count FROM progress"
                ).fetchone()
            except sqlite3.DatabaseError as e:
                if "conn" in locals():
                    conn.close()
                if isinstance(e, sqlite3.OperationalError):
                    # Locked (another process holds it), I/O error, no space, read-only:
                    # the file is not damaged, and setting it aside from under its other
                    # user would not be; the start fails as storage, as the ledger's would.
                    raise
                conn = self._set_aside(str(e))
                fmt, upto, last, count = _FORMAT, 0, None, 0
        self._writer = conn
        if fmt != _FORMAT:
            self._reset()
            return SummaryProgress()
        return SummaryProgress(upto=upto, last_event_id=last, count=count)

    def _open_reader(self) -> None:
        self._reader = self._connect()
        self._reader.execute("PRAGMA query_only=1")

    async def close(self) -> None:
        for thread, conn_name in (
            (self._write_thread, "_writer"),
            (self._read_thread, "_reader"),
        ):
            if thread is None:
                continue

            def closing(name: str = conn_name) -> None:
                conn = getattr(self, name)
                if conn is not None:
                    conn.close()
                    setattr(self, name, None)

            try:
                await thread.submit(closing)
            finally:
                thread.shutdown()
        self._write_thread = self._read_thread = None

    async def _on(self, thread: WriterThread | None, fn: Callable[..., _T], *args: Any) -> _T:
        if thread is None:
            raise StorageUnavailableError(f"{self.path} is not open")
        try:
            return await thread.submit(fn, *args)
        except sqlite3.Error as e:
            if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
                # Damage past what the open checks (a malformed page): the file is set
                # aside and rebuilt at the next start; until then reads of summaries
                # not held in memory fail as storage.
                _log.error("summaries.file_damaged", path=str(self.path), error=str(e))
                with contextlib.suppress(OSError):
                    self._damage_mark.write_text(f"{type(e).__name__}: {e}\n")
            raise StorageUnavailableError(f"summaries at {self.path}: {e}") from e

    # -- writes ----------------------------------------------------------------------

    async def reset(self) -> None:
        await self._on(self._write_thread, self._reset)

    def _reset(self) -> None:
        conn = self._conn(self._writer)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM summaries")
            conn.execute(
                "UPDATE progress SET format = ?, upto = 0, last_event_id = NULL, count = 0",
                (_FORMAT,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def write(
        self,
        summaries: Sequence[OrchestrationSummary],
        patches: Mapping[SummaryKey, SummaryPatch],
        progress: SummaryProgress,
    ) -> None:
        rows = [_row(s) for s in summaries]
        updates = [
            (
                p.seq,
                p.status,
                p.ended is not None,
                p.ended[0] if p.ended is not None else None,
                p.ended is not None,
                p.ended[1] if p.ended is not None else None,
                tenant_id,
                orchestration_id,
            )
            for (tenant_id, orchestration_id), p in patches.items()
        ]
        await self._on(self._write_thread, self._write, rows, updates, progress)

    def _write(
        self, rows: list[tuple[Any, ...]], updates: list[tuple[Any, ...]], progress: SummaryProgress
    ) -> None:
        conn = self._conn(self._writer)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, rows)
            conn.executemany(_PATCH, updates)
            conn.execute(
                "UPDATE progress SET upto = ?, last_event_id = ?, count = ?",
                (progress.upto, progress.last_event_id, progress.count),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- reads -----------------------------------------------------------------------

    def _conn(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise StorageUnavailableError(f"{self.path} is not open")
        return conn

    async def get(self, tenant_id: str, orchestration_id: str) -> OrchestrationSummary | None:
        return await self._on(self._read_thread, self._get, tenant_id, orchestration_id)

    def _get(self, tenant_id: str, orchestration_id: str) -> OrchestrationSummary | None:
        row = (
            self._conn(self._reader)
            .execute(
                f"SELECT {_COLUMNS} FROM summaries WHERE tenant_id = ? AND orchestration_id = ?",
                (tenant_id, orchestration_id),
            )
            .fetchone()
        )
        return _summary(row) if row is not None else None

    async def page(
        self, tenant_id: str, query: PageQuery
    ) -> tuple[list[OrchestrationSummary], str | None]:
        return await self._on(self._read_thread, self._page, tenant_id, query)

    def _page(
        self, tenant_id: str, query: PageQuery
    ) -> tuple[list[OrchestrationSummary], str | None]:
        conn = self._conn(self._reader)
        window = max(query.limit, query.examine)
        below = query.cursor if query.cursor is not None else _TOP
        args = (query.status, query.agent_id, query.workflow_id, tenant_id, below, window)
        # One read transaction: the page and its cursor see the same rows.
        conn.execute("BEGIN")
        try:
            page = [_summary(r) for r in conn.execute(_PAGE, (*args, query.limit))]
            if len(page) == query.limit:
                last: str | None = page[-1].orchestration_id
            else:
                examined, oldest = conn.execute(_WINDOW_END, args).fetchone()
                last = oldest if examined == window else None
            more = last is not None and conn.execute(_OLDER, (tenant_id, last)).fetchone()
        finally:
            conn.execute("COMMIT")
        return page, (last if more else None)

    async def unfinished(self) -> list[OrchestrationSummary]:
        return await self._on(self._read_thread, self._unfinished)

    def _unfinished(self) -> list[OrchestrationSummary]:
        rows = self._conn(self._reader).execute(
            f"SELECT {_COLUMNS} FROM summaries WHERE executor = 'engine' "
            f"AND status IN {UNFINISHED!r} ORDER BY orchestration_id"
        )
        return [_summary(r) for r in rows]
