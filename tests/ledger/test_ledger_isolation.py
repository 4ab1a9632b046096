"""One tenant never reads another's events, even through a stored index or column that
was edited behind the store's back: reads check what they found against the request,
and the leaf bytes against the columns they were found by."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from ledger_testkit import Note, open_log

from ledger.errors import IntegrityError
from ledger.events import NewEvent
from ledger.sqlite_store import SQLiteEventStore

SECRET = "tenant-b-secret-0001"


async def _two_tenants(path: Path) -> tuple[int, str]:
    """Tenant a's stream x holds one event; tenant b's stream y holds the secret.
    Returns the secret's leaf index and event id."""
    log = await open_log(path)
    await log.append("a", "x", 0, [NewEvent("note.added", Note("a's own note"))])
    (receipt,) = await log.append("b", "y", 0, [NewEvent("note.added", Note(SECRET))])
    await log.close()
    # Open once more, so the stream index covers every event (it is built after commits).
    await (await open_log(path)).close()
    return receipt.leaf_index, receipt.event_id


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _refile(path: Path, leaf: int, columns: str) -> None:
    """Edit a stored event's columns (``columns``: an SQL SET list), past its trigger."""
    _sql(
        path,
        "DROP TRIGGER events_no_update",
        f"UPDATE events SET {columns} WHERE leaf_index = {leaf}",
    )


def _forge_index_row(path: Path, leaf: int) -> None:
    # Inserts are how the index grows, so no trigger stops this one: a row filing the
    # secret as seq 2 of tenant a's stream.
    _sql(
        path,
        "INSERT INTO stream_index(tenant_id, stream_id, stream_seq, leaf_index) "
        f"VALUES ('a', 'x', 2, {leaf})",
    )


async def test_regression_a_forged_stream_index_row_does_not_leak_another_tenants_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    secret_leaf, _ = await _two_tenants(path)
    _forge_index_row(path, secret_leaf)
    log = await open_log(path)
    try:
        events = await log.read_stream("a", "x")
        assert [e.event.payload for e in events] == [Note("a's own note")]
    finally:
        await log.close()
    # The same through a read-only opener (export), which reads by another query.
    reader = SQLiteEventStore(path, read_only=True)
    await reader.open()
    try:
        rows = await reader.read_stream("a", "x", 0, None)
        assert [r.tenant_id for r in rows] == ["a"]
        assert all(SECRET.encode() not in r.leaf for r in rows)
    finally:
        await reader.close()


async def test_regression_an_event_filed_under_another_tenant_is_refused_not_served(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    secret_leaf, secret_id = await _two_tenants(path)
    # Columns and index both edited to file the secret under tenant a's stream: only
    # the leaf bytes, which the signed tree covers, still say whose it is.
    _refile(path, secret_leaf, "tenant_id = 'a', stream_id = 'x', stream_seq = 2")
    _forge_index_row(path, secret_leaf)
    log = await open_log(path)
    try:
        with pytest.raises(IntegrityError, match=f"leaf {secret_leaf} is stored under tenant 'a'"):
            await log.read_stream("a", "x")
        with pytest.raises(IntegrityError, match="its bytes name another"):
            await log.recorded(secret_id, "a")
    finally:
        await log.close()


async def test_regression_a_receipt_is_not_served_under_an_edited_tenant_column(
    tmp_path: Path,
) -> None:
    """Receipt lookups selected by the tenant column alone and never read the leaf: with
    that one column edited, tenant a was served tenant b's receipt and stream id."""
    path = tmp_path / "l.db"
    secret_leaf, secret_id = await _two_tenants(path)
    _refile(path, secret_leaf, "tenant_id = 'a'")
    log = await open_log(path)
    try:
        with pytest.raises(IntegrityError, match="its bytes name another"):
            await log.stream_receipt(secret_id, "a")
    finally:
        await log.close()


async def test_regression_a_forged_index_row_neither_shortens_a_page_nor_moves_a_head(
    tmp_path: Path,
) -> None:
    """The page limit was applied to index rows before they were checked, so a forged
    row took a place and a full stream read as ended early; a stream's head was the
    highest index row, forged or not."""
    path = tmp_path / "l.db"
    log = await open_log(path)
    await log.append("a", "x", 0, [NewEvent("note.added", Note(f"{i}")) for i in range(3)])
    (secret,) = await log.append("b", "y", 0, [NewEvent("note.added", Note(SECRET))])
    await log.close()
    await (await open_log(path)).close()  # the stream index now covers every event
    _sql(
        path,
        "INSERT INTO stream_index(tenant_id, stream_id, stream_seq, leaf_index) "
        f"VALUES ('a', 'x', 0, {secret.leaf_index}), ('a', 'x', 9, {secret.leaf_index})",
    )
    log = await open_log(path)
    try:
        page = await log.read_stream("a", "x", after_seq=-1, limit=2)
        assert [e.event.stream_seq for e in page] == [1, 2]
        assert await log.stream_head("a", "x") == 3
    finally:
        await log.close()
    reader = SQLiteEventStore(path, read_only=True)
    await reader.open()
    try:
        assert [r.stream_seq for r in await reader.read_stream("a", "x", -1, 2)] == [1, 2]
        assert await reader.stream_heads([("a", "x")]) == {("a", "x"): 3}
    finally:
        await reader.close()


async def test_an_edited_event_id_column_is_refused_not_served(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    secret_leaf, secret_id = await _two_tenants(path)
    _refile(path, secret_leaf, f"event_id = x'{'00' * 15}01'")
    log = await open_log(path)
    try:
        with pytest.raises(IntegrityError, match=f"leaf {secret_leaf} is stored as event"):
            await log.read_stream("b", "y")
        with pytest.raises(IntegrityError, match=f"but its bytes say {secret_id}"):
            await log.stream_receipt("00000000000000000000000001", "b")
    finally:
        await log.close()
