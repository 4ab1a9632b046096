"""Each summary store backend against the one contract (summary_store_contract.py), and
what only the SQLite file can suffer: damage, an older format."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from summary_store_contract import History, SummaryStoreContract, events_of, fields_of, oid_of

from ledger.errors import StorageUnavailableError
from ledger.events import Event
from ledger.orchestration.sqlite_summaries import SQLiteSummaryStore
from ledger.orchestration.summaries import Summaries
from ledger.orchestration.summary_store import (
    MemorySummaryStore,
    PageQuery,
    SummaryProgress,
    SummaryStore,
)


class TestMemorySummaryStore(SummaryStoreContract):
    def open_store(self, directory: Path) -> SummaryStore:
        return MemorySummaryStore()

    def reopen_store(self, store: SummaryStore, directory: Path) -> SummaryStore:
        return store  # memory outlives a close, not the process


class TestSQLiteSummaryStore(SummaryStoreContract):
    def open_store(self, directory: Path) -> SummaryStore:
        return SQLiteSummaryStore(directory / "summaries.db")

    def reopen_store(self, store: SummaryStore, directory: Path) -> SummaryStore:
        return SQLiteSummaryStore(directory / "summaries.db")


HISTORY: History = [("engine", "t1", ("agent-1",), [])] * 2


async def _written(path: Path) -> None:
    summaries = Summaries(SQLiteSummaryStore(path))
    await summaries.open()
    summaries.apply_all((e, i) for i, e in enumerate(events_of(HISTORY, 0)))
    await summaries.close()


async def test_a_damaged_file_is_set_aside_and_the_fold_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "summaries.db"
    path.write_bytes(b"not a database" * 512)
    store = SQLiteSummaryStore(path)
    assert await store.open() == SummaryProgress()
    assert await store.get("t1", oid_of(0)) is None
    await store.close()
    (aside,) = tmp_path.glob("summaries.db.damaged-*")
    assert aside.read_bytes() == b"not a database" * 512
    await _written(path)  # the new file works
    store = SQLiteSummaryStore(path)
    assert (await store.open()).count == 2
    await store.close()


async def test_a_file_of_another_format_is_emptied_and_the_fold_starts_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "summaries.db"
    await _written(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE progress SET format = 0")
    store = SQLiteSummaryStore(path)
    assert await store.open() == SummaryProgress()
    assert await store.get("t1", oid_of(0)) is None
    await store.close()


def _one_external_run() -> list[Event]:
    """An external run's creation and its end."""
    events = events_of([("external", "t1", ("agent-1",), ["orchestration.completed"])], 0)
    return [e for e in events if e.stream_id == oid_of(0)]


class _Refusing(MemorySummaryStore):
    """A backend whose writes fail while ``refuse`` is set, as a full disk would."""

    refuse = True
    writes = 0

    async def write(self, *args: object) -> None:  # type: ignore[override]
        self.writes += 1
        if self.refuse:
            raise OSError("no space left on device")
        await super().write(*args)  # type: ignore[arg-type]


async def test_a_refused_write_loses_nothing_and_is_tried_again() -> None:
    store = _Refusing()
    summaries = Summaries(store, write_after_changes=1)
    await summaries.open()
    events = _one_external_run()
    summaries.apply(events[0], 0)
    await asyncio.sleep(0.01)
    assert store.writes >= 1
    assert (await summaries.get("t1", oid_of(0))) is not None  # still held: not written
    summaries.apply(events[1], 1)
    store.refuse = False
    await summaries.flush()
    stored = await store.get("t1", oid_of(0))
    assert stored is not None
    assert stored.status == "completed"
    assert (await store.open()).upto == 2
    await summaries.close()


async def test_regression_a_refusing_store_is_not_asked_again_at_every_event() -> None:
    """After a refused write, the next waits for its retry: each event folded meanwhile
    started another write at once, hammering a store that had just said no."""
    store = _Refusing()
    summaries = Summaries(store, write_after_changes=1)
    await summaries.open()
    created, ended = _one_external_run()
    summaries.apply(created, 0)
    for i in range(50):
        await asyncio.sleep(0)
        summaries.apply(ended, i + 1)  # as many events as you like: none writes
    assert store.writes == 1
    assert summaries.write_failures == 1
    assert summaries.pending == 1  # one orchestration's summary, not written
    store.refuse = False
    await summaries.flush()  # asked for: written now, not at the retry
    assert store.writes == 2
    assert summaries.pending == 0
    stored = await store.get("t1", oid_of(0))
    assert stored is not None
    assert stored.status == "completed"
    assert (await store.open()).upto == 51
    await summaries.close()


async def test_regression_listings_do_not_ask_a_refusing_store_again() -> None:
    """A listing flushed before it read, and a flush starts a write at once: while the
    store refused writes, every listing made another failing write (and waited for it)."""
    store = _Refusing()
    summaries = Summaries(store, write_after_changes=1)
    await summaries.open()
    created, _ = _one_external_run()
    summaries.apply(created, 0)
    await asyncio.sleep(0)  # the first write, refused
    await asyncio.sleep(0)
    assert store.writes == 1
    for _ in range(5):
        await summaries.page("t1", PageQuery())
    assert store.writes == 1
    store.refuse = False
    await summaries.flush()
    assert (await summaries.page("t1", PageQuery()))[0][0].orchestration_id == oid_of(0)
    await summaries.close()


class _Held(MemorySummaryStore):
    """A backend whose next write waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: asyncio.Event | None = None
        self.writing = asyncio.Event()

    async def write(self, *args: object) -> None:  # type: ignore[override]
        if self.hold is not None:
            self.writing.set()
            await self.hold.wait()
        await super().write(*args)  # type: ignore[arg-type]


async def test_a_read_while_a_write_is_in_flight_sees_the_events_it_carries() -> None:
    """An external run, written and so no longer held in memory, then ended: until the
    write carrying its end is in the store, a read must still see the end."""
    store = _Held()
    summaries = Summaries(store, write_after_changes=1_000, write_after_seconds=3600)
    await summaries.open()
    created, ended = _one_external_run()
    summaries.apply(created, 0)
    await summaries.flush()
    assert summaries.held == 0  # written: read from the store from now on
    summaries.apply(ended, 1)
    store.hold = asyncio.Event()
    flushing = asyncio.create_task(summaries.flush())
    await store.writing.wait()
    during = await summaries.get("t1", oid_of(0))
    assert during is not None
    assert during.status == "completed"
    store.hold.set()
    await flushing
    after = await summaries.get("t1", oid_of(0))
    assert after == during
    await summaries.close()


async def test_regression_a_locked_file_is_not_set_aside_as_damaged(tmp_path: Path) -> None:
    """Any sqlite3.DatabaseError at open set the file aside as damaged, and its
    subclass OperationalError is also "database is locked", an I/O error or a full
    disk: a file another process held (busy for longer than the busy timeout) was
    renamed from under it and the summaries rebuilt. Now the open fails as storage."""
    path = tmp_path / "summaries.db"
    await _written(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's write, in progress
        store = SQLiteSummaryStore(path)
        with pytest.raises(StorageUnavailableError, match="locked"):
            await store.open()  # waits out its busy timeout first
        holder.execute("COMMIT")
    finally:
        holder.close()
    assert list(tmp_path.glob("summaries.db.damaged-*")) == []
    store = SQLiteSummaryStore(path)
    assert (await store.open()).count == 2  # nothing was lost
    await store.close()


async def test_regression_damage_found_in_use_sets_the_file_aside_at_the_next_open(
    tmp_path: Path,
) -> None:
    """Damage past the header (a malformed page) was found only by the reads that hit
    it, each a 503, and a restart did not repair it: the open checked only the header
    and the progress row. Now the first such read marks the file, and the next open
    sets it aside and starts the fold again."""
    path = tmp_path / "summaries.db"
    many: History = [("external", "t1", ("agent-1",), [])] * 3000
    summaries = Summaries(SQLiteSummaryStore(path))
    await summaries.open()
    summaries.apply_all((e, i) for i, e in enumerate(events_of(many, 0)))
    await summaries.close()
    size = path.stat().st_size
    with path.open("r+b") as f:  # garbage over the middle of the table's pages
        f.seek(size // 3)
        f.write(b"\xa5" * (size // 3))
    store = SQLiteSummaryStore(path)
    assert (await store.open()).count == 3000  # the header and progress row still read

    async def read_every_page() -> None:
        query, cursor = PageQuery(limit=500, examine=5000), None
        for _ in range(10):
            _, cursor = await store.page("t1", PageQuery(**{**fields_of(query), "cursor": cursor}))

    with pytest.raises(StorageUnavailableError):
        await read_every_page()
    await store.close()
    assert (tmp_path / "summaries.db.damaged").exists()
    store = SQLiteSummaryStore(path)
    assert await store.open() == SummaryProgress()  # set aside: the fold starts again
    await store.close()
    assert len(list(tmp_path.glob("summaries.db.damaged-*"))) == 1
    assert not (tmp_path / "summaries.db.damaged").exists()
