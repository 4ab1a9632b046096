"""The SQLite store's tables, its append-only triggers, and the view a batch is written
through (``ledger/sqlite_store.py``)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable
from typing import Any

__all__ = ["batch_insert", "create_schema", "replaced_triggers"]

_SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    leaf_index INTEGER PRIMARY KEY,
    event_id   BLOB NOT NULL UNIQUE,
    tenant_id  TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    stream_seq INTEGER NOT NULL,
    type       TEXT NOT NULL,
    tree_size  INTEGER NOT NULL,
    leaf       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_index(
    tenant_id  TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    stream_seq INTEGER NOT NULL,
    leaf_index INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, stream_id, stream_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_progress(
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);
INSERT OR IGNORE INTO index_progress(id, upto) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS tree_hashes(start INTEGER PRIMARY KEY, hashes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints(
    tree_size INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    note      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots(
    name      TEXT PRIMARY KEY,
    log_index INTEGER NOT NULL,
    state     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_pieces(
    name  TEXT NOT NULL,
    piece INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (name, piece)
);
"""

# A whole batch is one INSERT into this view: the trigger routes each row to its
# table. One statement is one sqlite3_step, so the writer thread gives up the GIL once
# for the whole transaction (fsync included) instead of once per statement, and never
# waits a switch interval to get it back in the middle of a commit.
_BATCH_VIEW = """
CREATE VIEW IF NOT EXISTS batch_rows(kind, a, b, c, d, e, f, g, h) AS
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
CREATE TRIGGER IF NOT EXISTS batch_rows_insert INSTEAD OF INSERT ON batch_rows BEGIN
    INSERT INTO events(leaf_index, event_id, tenant_id, stream_id, stream_seq, type,
                       tree_size, leaf)
        SELECT NEW.a, NEW.b, NEW.c, NEW.d, NEW.e, NEW.f, NEW.g, NEW.h WHERE NEW.kind = 'e';
    INSERT INTO tree_hashes(start, hashes) SELECT NEW.a, NEW.b WHERE NEW.kind = 'h';
    INSERT INTO checkpoints(tree_size, root, note)
        SELECT NEW.a, NEW.b, NEW.c WHERE NEW.kind = 'c';
END;
"""


@functools.lru_cache(maxsize=512)
def batch_insert(rows: int) -> str:
    return "INSERT INTO batch_rows VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * rows)


_APPEND_ONLY = ("events", "tree_hashes", "checkpoints", "stream_index")


def _triggers() -> str:
    parts = []
    for table in _APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            parts.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END;"
            )
    return "\n".join(parts)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing: tables, triggers, the batch view, the schema version."""
    conn.executescript(_SCHEMA + _triggers() + _BATCH_VIEW)
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
        (_SCHEMA_VERSION,),
    )


def _words(sql: str) -> str:
    return " ".join(sql.split())


@functools.cache
def _trigger_sql() -> dict[str, str]:
    """Each trigger the store creates, by name, as SQLite records it in sqlite_master (it
    drops IF NOT EXISTS and the final semicolon), whitespace collapsed."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA + _triggers() + _BATCH_VIEW)
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        return {name: _words(sql) for name, sql in rows}
    finally:
        conn.close()


def replaced_triggers(rows: Iterable[Any]) -> list[str]:
    """A problem for each of the store's triggers among ``rows`` (name, sql from
    sqlite_master) that is not the one the store creates."""
    # Only a replaced trigger: a missing one is re-created at the writer's next open,
    # and a file no writer of this version has opened lacks the later tables' ones.
    expected = _trigger_sql()
    return [
        f"trigger {name} is not the one the store creates: it was replaced"
        for name, sql in rows
        if name in expected and (not isinstance(sql, str) or _words(sql) != expected[name])
    ]
