"""The SQLite backend against the shared store contract, plus its own guarantees."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from ledger_testkit import CATALOG, Note, fsck_path, open_log, signer
from store_contract import EventStoreContract, _batch, _event

from ledger._sqlite_stream_index import pass_end
from ledger._writer_thread import WriterThread
from ledger.errors import StorageUnavailableError
from ledger.events import NewEvent
from ledger.log import Log
from ledger.sqlite_store import SQLiteEventStore


class TestSQLiteEventStore(EventStoreContract):
    async def make_store(self, path: Path) -> SQLiteEventStore:
        # A small index pass size, so the contract crosses many derived-index passes.
        store = SQLiteEventStore(path / "ledger.db", index_every=64)
        await store.open()
        return store

    async def try_rewrite(self, path: Path, statement: str) -> None:
        conn = sqlite3.connect(path / "ledger.db")
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()


async def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    first = SQLiteEventStore(tmp_path / "ledger.db")
    await first.open()
    with pytest.raises(StorageUnavailableError, match="another process is writing"):
        await SQLiteEventStore(tmp_path / "ledger.db").open()
    reader = SQLiteEventStore(tmp_path / "ledger.db", read_only=True)
    await reader.open()
    assert await reader.event_count() == 0
    await reader.close()
    await first.close()


async def test_read_only_open_of_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailableError, match="no ledger database"):
        await SQLiteEventStore(tmp_path / "missing.db", read_only=True).open()


async def test_probe_is_a_durable_write_and_fails_where_writes_would(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    try:
        await store.probe()
        await store.probe()
        # Committed, so another connection sees it; and it is no event.
        conn = sqlite3.connect(tmp_path / "ledger.db")
        try:
            (value,) = conn.execute("SELECT value FROM meta WHERE key = 'storage_probe'").fetchone()
        finally:
            conn.close()
        assert int(value) > 0
        assert await store.event_count() == 0
        reader = SQLiteEventStore(tmp_path / "ledger.db", read_only=True)
        await reader.open()
        try:
            with pytest.raises(StorageUnavailableError):
                await reader.probe()
        finally:
            await reader.close()
    finally:
        await store.close()


async def test_background_checkpoints_keep_the_wal_small(tmp_path: Path) -> None:
    """Commits never checkpoint themselves (the backstop is 64 MiB of WAL); the store's
    own checkpoints must keep the WAL far below that.

    Regression: the restart used to run on the checkpointer's own connection, whose busy
    handler starved against a writer committing back to back, and pokes that came while
    it waited were dropped; the WAL reached 15-42 MiB here, at random."""
    path = tmp_path / "l.db"
    log = await open_log(path)
    text = "x" * 1000
    wal = path.with_name(path.name + "-wal")
    largest = 0
    for i in range(48):
        await log.append("t1", "s", i * 1000, [NewEvent("note.added", Note(text))] * 1000)
        largest = max(largest, wal.stat().st_size)
    # 48,000 events of ~1.2 KiB went through the WAL: without background checkpoints it
    # would hold all of them (~65 MiB, where the backstop finally checkpoints). With them it
    # restarts every thousand events or so, each append being ~1.5 MiB of frames.
    assert largest < 8 * 2**20
    await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


def test_a_write_that_ends_after_its_loop_closed_leaves_the_thread_quiet() -> None:
    """Regression: a checkpoint finishing after its owner's loop closed raised
    'Event loop is closed' in the writer thread (seen as an unhandled-thread warning)."""
    writer = WriterThread("test-writer")
    gate = threading.Event()
    loop = asyncio.new_event_loop()

    async def submit() -> None:
        writer.submit(gate.wait)

    loop.run_until_complete(submit())
    loop.close()
    errors: list[threading.ExceptHookArgs] = []
    before = threading.excepthook
    threading.excepthook = errors.append
    try:
        gate.set()
        writer.shutdown()
    finally:
        threading.excepthook = before
    assert errors == []


async def test_a_reader_beside_the_writer_sees_heads_indexed_or_not(tmp_path: Path) -> None:
    """A read-only store cannot see the writer's in-memory tail, so its stream_heads
    reads both the stream index and the events past the index's progress."""
    path = tmp_path / "l.db"
    log = await Log.open(SQLiteEventStore(path, index_every=1), signer(), CATALOG)
    await log.append("t1", "a", 0, [NewEvent("note.added", Note("x"))] * 3)
    await log.append("t1", "b", 0, [NewEvent("note.added", Note("x"))] * 2)
    await log.close()
    log = await Log.open(SQLiteEventStore(path, index_every=10**9), signer(), CATALOG)
    await log.append("t1", "a", 3, [NewEvent("note.added", Note("x"))] * 2)  # not indexed
    await log.append("t1", "c", 0, [NewEvent("note.added", Note("x"))])
    reader = SQLiteEventStore(path, read_only=True)
    await reader.open()
    try:
        keys = [("t1", "a"), ("t1", "b"), ("t1", "c"), ("t1", "d"), ("t2", "a")]
        assert await reader.stream_heads(keys) == dict(zip(keys, [5, 2, 1, 0, 0], strict=True))
    finally:
        await reader.close()
        await log.close()


async def test_regression_an_index_pass_does_not_chase_the_tip(tmp_path: Path) -> None:
    """The stream index is brought up to where the log stood when its backlog reached
    ``index_every``, then waits for the next backlog. It used to chase the tip in a pass
    after every commit, each pass dirtying as many index pages as a large one."""
    path = tmp_path / "l.db"
    log = await Log.open(SQLiteEventStore(path, index_every=256), signer(), CATALOG)
    watch = sqlite3.connect(path)
    progress: list[int] = []

    async def writer(w: int) -> None:
        for seq in range(30):
            await log.append("t1", f"s{w}", seq, [NewEvent("note.added", Note("x"))])
            (upto,) = watch.execute("SELECT upto FROM index_progress").fetchone()
            if not progress or upto != progress[-1]:
                progress.append(upto)

    try:
        await asyncio.gather(*(writer(w) for w in range(64)))
    finally:
        watch.close()
        await log.close()
    steps = [b - a for a, b in zip([0, *progress], progress, strict=False) if b != a]
    assert steps, "the index never moved"
    # Every pass covers a whole backlog, but for the remainder after a full 512-row pass.
    short = [b for a, b in zip([None, *steps], steps, strict=False) if b < 256 and a != 512]
    assert not short, steps


async def test_commits_go_before_upkeep_and_upkeep_still_gets_its_turn() -> None:
    """Background jobs (index passes, WAL restarts) wait for a gap between foreground
    ones (commits), or for four of them to pass; shutdown still runs everything."""
    writer = WriterThread("test-writer")
    gate = threading.Event()
    holding = threading.Event()
    ran: list[str] = []

    def job(name: str) -> None:
        ran.append(name)

    def hold() -> None:
        holding.set()
        gate.wait()

    async def hold_the_thread() -> asyncio.Future[None]:
        """A job that runs until ``gate`` opens, taken before anything else is queued."""
        holding.clear()
        held = writer.submit(hold)
        await asyncio.to_thread(holding.wait)
        return held

    blocker = await hold_the_thread()
    jobs = [writer.submit(job, "upkeep-1", background=True)]
    jobs += [writer.submit(job, f"commit-{i}") for i in range(1, 7)]
    jobs.append(writer.submit(job, "upkeep-2", background=True))
    gate.set()
    await asyncio.gather(blocker, *jobs)
    expected = ["commit-1", "commit-2", "commit-3", "commit-4", "upkeep-1"]
    assert ran == [*expected, "commit-5", "commit-6", "upkeep-2"]

    ran.clear()
    gate.clear()
    blocker = await hold_the_thread()
    late = [writer.submit(job, "upkeep-3", background=True), writer.submit(job, "commit-7")]
    gate.set()
    await asyncio.gather(blocker, *late)
    assert ran == ["commit-7", "upkeep-3"]
    last = writer.submit(job, "upkeep-4", background=True)
    await asyncio.to_thread(writer.shutdown)
    assert ran[-1] == "upkeep-4"
    assert last.done()


async def test_an_index_pass_ends_after_128_streams_or_512_rows(tmp_path: Path) -> None:
    """A pass costs about one index page per stream it touches: the rows of many streams
    go in passes of 128 streams, so no pass holds commits up for long, and the rows of
    a few busy streams in passes of 512 rows."""
    store = SQLiteEventStore(tmp_path / "l.db", index_every=10**9)
    log = await Log.open(store, signer(), CATALOG)
    try:
        for i in range(300):
            await log.append("t1", f"many-{i}", 0, [NewEvent("note.added", Note("x"))])
        for seq in range(0, 600, 100):
            await log.append("t1", "busy", seq, [NewEvent("note.added", Note("x"))] * 100)
        assert pass_end(store._tail_order, 0, 300) == 128
        assert pass_end(store._tail_order, 128, 300) == 256
        assert pass_end(store._tail_order, 256, 300) == 300
        assert pass_end(store._tail_order, 250, 900) == 762  # 51 streams: the row bound ends it
        assert pass_end(store._tail_order, 300, 900) == 812
        assert pass_end(store._tail_order, 812, 900) == 900
    finally:
        await log.close()


async def test_regression_a_burst_leaves_less_than_one_backlog_unindexed(
    tmp_path: Path,
) -> None:
    """Commits that land while the index is being brought up to date start no run of
    their own; the running one used to stop at the end it first saw and leave them
    behind — thousands of rows after a burst over many streams, for every later read
    by another process to scan and the next start to index in one go."""
    path = tmp_path / "l.db"
    log = await Log.open(SQLiteEventStore(path, index_every=256), signer(), CATALOG)

    async def writer(w: int) -> None:
        for seq in range(0, 40, 4):
            await log.append("t1", f"s{w}", seq, [NewEvent("note.added", Note("x"))] * 4)

    await asyncio.gather(*(writer(w) for w in range(200)))
    await log.close()  # waits for the index run in progress
    conn = sqlite3.connect(path)
    try:
        (upto,) = conn.execute("SELECT upto FROM index_progress").fetchone()
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    finally:
        conn.close()
    assert count == 8000
    assert count - upto < 256, f"{count - upto} rows left unindexed"


async def test_a_failing_background_job_reports_to_its_caller_and_the_thread_goes_on() -> None:
    writer = WriterThread("test-writer")

    def fail() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    failed = writer.submit(fail, background=True)
    later = writer.submit(lambda: "after", background=True)
    first = writer.submit(lambda: "foreground")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await failed
    assert await first == "foreground"
    assert await later == "after"
    await asyncio.to_thread(writer.shutdown)


async def test_regression_a_snapshot_queued_before_close_is_written(tmp_path: Path) -> None:
    """Closing the writer went ahead of upkeep still queued: a snapshot saved just
    before close() (the engine's last) failed with 'the store's writer is closed'."""
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    events = [_event(i, f"s{i % 50}", i // 50 + 1) for i in range(3000)]
    # A large commit holds the writer thread while the snapshot and the close queue.
    committing = store.commit(_batch(events, 0, len(events)))
    saving = asyncio.create_task(store.save_snapshot("registry", 3000, b"state"))
    await asyncio.sleep(0)
    await store.close()
    await committing
    await saving
    reopened = SQLiteEventStore(tmp_path / "ledger.db", read_only=True)
    await reopened.open()
    try:
        assert await reopened.load_snapshot("registry") == (3000, b"state")
    finally:
        await reopened.close()


async def test_a_snapshot_is_stored_in_pieces_of_a_mib_never_one_blob(tmp_path: Path) -> None:
    """A snapshot bound as one blob was copied by SQLite under the interpreter lock (the
    event loop stalled for all of it) and refused past SQLite's blob limit (~1 GB: the
    registry of ~2.5 million orchestrations), after which every restart folded the
    whole log. Pieces of at most a MiB, views of the parts, never one blob."""
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    big = bytes(range(256)) * (10 << 12)  # 2.5 MiB
    await store.save_snapshot("registry", 7, [b"head", bytearray(big), b"tail"])
    await store.save_snapshot("other", 1, b"x")
    await store.close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        assert db.execute(
            "SELECT length(state) FROM snapshots WHERE name = 'registry'"
        ).fetchall() == [(0,)]
        sizes = db.execute(
            "SELECT length(bytes) FROM snapshot_pieces WHERE name = 'registry' ORDER BY piece"
        ).fetchall()
    finally:
        db.close()
    assert len(sizes) >= 3
    assert max(size for (size,) in sizes) <= 1 << 20
    assert sum(size for (size,) in sizes) == len(big) + 8
    reopened = SQLiteEventStore(tmp_path / "ledger.db", read_only=True)
    await reopened.open()
    try:
        assert await reopened.load_snapshot("registry") == (7, b"head" + big + b"tail")
        assert await reopened.load_snapshot("other") == (1, b"x")
    finally:
        await reopened.close()


async def test_a_snapshot_row_from_before_pieces_still_loads(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    await store.close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("INSERT INTO snapshots(name, log_index, state) VALUES ('old', 5, x'0102')")
    db.commit()
    db.close()
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    try:
        assert await store.load_snapshot("old") == (5, b"\x01\x02")
        await store.save_snapshot("old", 6, b"new")  # replaced whole, not appended to
        assert await store.load_snapshot("old") == (6, b"new")
    finally:
        await store.close()


async def test_regression_a_database_from_before_pieces_loads_its_snapshot_read_only(
    tmp_path: Path,
) -> None:
    """A read-only open creates no table, so a database last written by a version before
    snapshot_pieces has none: reading a snapshot joined the missing table and raised
    StorageUnavailableError ("no such table"), where it returned the row before."""
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    await store.close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("DROP TABLE snapshot_pieces")  # as an older version left it
    db.execute("INSERT INTO snapshots(name, log_index, state) VALUES ('old', 5, x'0102')")
    db.commit()
    db.close()
    reopened = SQLiteEventStore(tmp_path / "ledger.db", read_only=True)
    await reopened.open()
    try:
        assert await reopened.load_snapshot("old") == (5, b"\x01\x02")
        assert await reopened.load_snapshot("missing") is None
    finally:
        await reopened.close()
