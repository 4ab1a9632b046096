"""fsck finds tampering anywhere: event bytes, tree hashes, checkpoints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ledger_testkit import Note, fsck_path, open_log, writing_beside

from ledger import merkle
from ledger.events import NewEvent
from ledger.fsck import FsckReport


async def _build(path: Path, n: int = 40) -> None:
    log = await open_log(path)
    for i in range(n):
        # Several batches of different sizes, so checkpoints land at many sizes.
        await log.append(
            "t1", f"s{i % 3}", i // 3, [NewEvent("note.added", Note(f"value-{i:04d}"))]
        )
    await log.close()


def _checkpointed(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.read_bytes()


async def test_a_clean_log_passes(tmp_path: Path) -> None:
    await _build(tmp_path / "l.db")
    report = await fsck_path(tmp_path / "l.db")
    assert report.ok, report.problems
    assert (report.events, report.tree_size, report.first_bad_index) == (40, 40, None)
    assert report.checkpoints == 40


async def test_one_changed_byte_in_an_event_is_reported_at_its_index(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    await _build(path)
    data = _checkpointed(path)
    assert data.count(b"value-0017") == 1
    path.write_bytes(data.replace(b"value-0017", b"value-0018"))
    report = await fsck_path(path)
    assert not report.ok
    assert report.first_bad_index == 17
    assert any("leaf 17 does not match its stored tree hashes" in p for p in report.problems)


async def test_a_forged_checkpoint_note_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    await _build(path, 5)
    data = _checkpointed(path)
    # Each note is "<origin>\n<size>\n<root>"; change size 3's note to claim size 8.
    marker = b"test.maip.local/log\n3\n"
    assert data.count(marker) == 1
    path.write_bytes(data.replace(marker, b"test.maip.local/log\n8\n"))
    report = await fsck_path(path)
    assert not report.ok
    assert any("checkpoint at size 3 does not verify" in p for p in report.problems)
    assert report.first_bad_index == 2


async def test_a_stream_index_row_naming_another_event_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    await _build(path, 9)
    await (await open_log(path)).close()  # the stream index now covers every event
    assert (await fsck_path(path)).ok
    conn = sqlite3.connect(path)
    # Leaf 4 is seq 2 of stream s1; file it as seq 7 of s0 too.
    conn.execute("INSERT INTO stream_index VALUES ('t1', 's0', 7, 4)")
    conn.commit()
    conn.close()
    report = await fsck_path(path)
    assert not report.ok
    assert report.first_bad_index == 4
    assert report.problems == [
        "the stream index names leaf 4 as seq 7 of stream 's0' (tenant 't1'), "
        "which is another event"
    ]


async def test_an_event_missing_from_the_stream_index_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    await _build(path, 9)
    await (await open_log(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER stream_index_no_delete")
    conn.execute("DELETE FROM stream_index WHERE leaf_index = 5")
    conn.commit()
    conn.close()
    report = await fsck_path(path)
    assert report.problems == ["leaf 5 is missing from the stream index"]
    assert report.first_bad_index == 5


def _tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


async def _fsck_tampered(path: Path, events: int, *statements: str) -> FsckReport:
    """fsck of a ledger of ``events`` one-event batches, after ``statements`` edited its
    file behind the store's back; the report must say it is not ok."""
    await _build(path, events)
    _tamper(path, *statements)
    report = await fsck_path(path)
    assert not report.ok
    return report


async def test_regression_a_tree_hash_row_rewritten_as_text_is_reported(tmp_path: Path) -> None:
    # The row's value is TEXT, not BLOB: hashing went on with it and crashed.
    report = await _fsck_tampered(
        tmp_path / "l.db",
        5,
        "DROP TRIGGER tree_hashes_no_update",
        "UPDATE tree_hashes SET hashes = hex(hashes) WHERE start = 0",
    )
    assert report.first_bad_index == 0
    assert report.problems == ["tree hash row 0 is stored as str, not bytes"]


async def test_regression_a_leaf_rewritten_as_text_is_reported(tmp_path: Path) -> None:
    report = await _fsck_tampered(
        tmp_path / "l.db",
        5,
        "DROP TRIGGER events_no_update",
        "UPDATE events SET leaf = CAST(leaf AS TEXT) WHERE leaf_index = 2",
        "UPDATE events SET event_id = hex(event_id) WHERE leaf_index = 3",
    )
    assert report.first_bad_index == 2
    assert any("leaf 2 is stored as str, not bytes" in p for p in report.problems)
    assert any("leaf 3's event id is stored as str, not bytes" in p for p in report.problems)


async def test_regression_a_column_of_text_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    # SQLite cannot hand such a value to Python as text: the read itself fails, which
    # was taken for storage that cannot write rather than for damage.
    report = await _fsck_tampered(
        tmp_path / "l.db",
        5,
        "DROP TRIGGER events_no_update",
        "UPDATE events SET leaf = CAST(leaf || x'ff' AS TEXT) WHERE leaf_index = 3",
    )
    assert report.first_bad_index == 3
    assert any("leaf 3 cannot be read" in p for p in report.problems), report.problems


async def test_regression_an_edited_receipt_tree_size_is_reported(tmp_path: Path) -> None:
    # An event's tree_size picks the checkpoint and proof size of its receipt; fsck did
    # not read it, so a receipt that could no longer be served passed as ok.
    report = await _fsck_tampered(
        tmp_path / "l.db",
        6,  # one batch per event: checkpoints at 1, 2, ... 6
        "DROP TRIGGER events_no_update",
        "UPDATE events SET tree_size = 999 WHERE leaf_index = 2",
        "UPDATE events SET tree_size = 6 WHERE leaf_index = 3",
        "UPDATE events SET tree_size = 'x' WHERE leaf_index = 4",
    )
    assert report.first_bad_index == 2
    assert report.problems == [
        "leaf 2 says its receipt was issued at tree size 999, but its batch ends at 3",
        "leaf 3 says its receipt was issued at tree size 6, but its batch ends at 4",
        "leaf 4 says its receipt was issued at tree size 'x', but its batch ends at 5",
    ]


async def test_regression_fsck_beside_a_live_writer_does_not_report_tampering(
    tmp_path: Path,
) -> None:
    # fsck read the checkpoints, then the events in later reads: a batch committed in
    # between looked like events stored beyond the last checkpoint.
    path = tmp_path / "l.db"
    async with writing_beside(path):
        reports = [await fsck_path(path) for _ in range(10)]
    bad = [r for r in reports if not r.ok]
    assert not bad, bad[0].problems


async def test_events_beyond_the_last_checkpoint_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    await _build(path, 5)
    _tamper(
        path, "DROP TRIGGER checkpoints_no_delete", "DELETE FROM checkpoints WHERE tree_size = 5"
    )
    report = await fsck_path(path)
    assert report.problems == ["5 events are stored but the last checkpoint covers 4"]
    assert report.first_bad_index == 4


async def test_regression_a_tree_hash_row_inserted_inside_another_is_reported(
    tmp_path: Path,
) -> None:
    # The store reads each stored hash from the row that starts last at or before it, but
    # fsck went on reading a row it had fetched to that row's end: a row inserted inside
    # another (no trigger stops an INSERT) changed the proofs the log serves, and fsck
    # said ok. Row 4 holds what leaf 3 made: its leaf hash (4), the node over leaves 2-3
    # (5) and over 0-3 (6); the new row zeroes 5 and keeps 6, so the log still opens.
    path = tmp_path / "l.db"
    await _build(path, 5)
    _tamper(
        path,
        "INSERT INTO tree_hashes(start, hashes) SELECT 5, "
        "CAST(zeroblob(32) || substr(hashes, 65, 32) AS BLOB) FROM tree_hashes WHERE start = 4",
    )
    log = await open_log(path)
    try:
        proof = await log.inclusion_proof(0, 4)
        leaves = [merkle.leaf_hash(r.leaf) for r in await log.read_log(0, 4)]
    finally:
        await log.close()
    assert proof != merkle.inclusion_proof(0, leaves)
    report = await fsck_path(path)
    assert not report.ok
    assert report.first_bad_index == 3
    assert report.problems == [
        "tree hash row 5 starts inside row 4",
        "leaf 3 does not match its stored tree hashes",
    ]


async def test_regression_a_tree_hash_row_running_into_the_next_is_reported(
    tmp_path: Path,
) -> None:
    # Row 1 lengthened by a good copy of row 3's hash, and row 3 zeroed: the store reads
    # stored hash 3 from row 3, fsck read it from row 1 and said ok.
    report = await _fsck_tampered(
        tmp_path / "l.db",
        5,
        "DROP TRIGGER tree_hashes_no_update",
        "UPDATE tree_hashes SET hashes = CAST(hashes || "
        "(SELECT hashes FROM tree_hashes WHERE start = 3) AS BLOB) WHERE start = 1",
        "UPDATE tree_hashes SET hashes = zeroblob(32) WHERE start = 3",
    )
    assert report.first_bad_index == 2
    assert report.problems == [
        "tree hash row 3 starts inside row 1",
        "leaf 2 does not match its stored tree hashes",
    ]


async def test_regression_a_checkpoint_row_below_size_1_is_reported(tmp_path: Path) -> None:
    # fsck read checkpoints after size 0, so a row at size 0 or below (no trigger stops
    # an INSERT) was never looked at, though every stored checkpoint is to be checked.
    report = await _fsck_tampered(
        tmp_path / "l.db",
        4,
        "INSERT INTO checkpoints SELECT 0, root, note FROM checkpoints WHERE tree_size = 3",
        "INSERT INTO checkpoints SELECT -7, root, note FROM checkpoints WHERE tree_size = 2",
    )
    assert report.first_bad_index == 0
    assert report.problems == [
        "checkpoint at size -7 is stored, but the log issues none below 1",
        "checkpoint at size 0 is stored, but the log issues none below 1",
    ]
    assert report.checkpoints == 4


async def test_regression_an_append_only_trigger_replaced_by_a_no_op_is_reported(
    tmp_path: Path,
) -> None:
    # The store creates its triggers IF NOT EXISTS, so one re-created under its name
    # with a body that lets the edit through stays in place for good, and fsck, which
    # checks only the data, passed it.
    path = tmp_path / "l.db"
    await _build(path, 6)
    _tamper(
        path,
        "DROP TRIGGER events_no_update",
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT 1; END",
        "UPDATE events SET type = type WHERE leaf_index = 2",  # now let through
    )
    await (await open_log(path)).close()  # a writer's open does not restore it
    report = await fsck_path(path)
    assert not report.ok
    assert report.problems == [
        "trigger events_no_update is not the one the store creates: it was replaced"
    ]
    assert report.first_bad_index is None


async def test_a_trigger_recreated_with_only_its_whitespace_changed_is_not_reported(
    tmp_path: Path,
) -> None:
    # Whitespace is not what makes a trigger: only a changed statement is reported.
    path = tmp_path / "l.db"
    await _build(path, 3)
    _tamper(
        path,
        "DROP TRIGGER checkpoints_no_delete",
        "CREATE TRIGGER checkpoints_no_delete\n  BEFORE DELETE ON checkpoints\n"
        "BEGIN\n    SELECT RAISE(ABORT, 'checkpoints are append-only');\nEND",
    )
    report = await fsck_path(path)
    assert report.ok, report.problems
