"""Snapshots in the SQLite store: a named state and the log index it was taken at, kept
in rows of a MiB (``snapshot_pieces``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from ledger.errors import IntegrityError

__all__ = ["read_snapshot", "write_snapshot"]

#: Bytes of a snapshot stored a row (see ``write_snapshot``).
_SNAPSHOT_PIECE = 1 << 20


def _pieces(name: str, parts: list[bytes | bytearray]) -> Iterator[tuple[str, int, memoryview]]:
    """``snapshot_pieces`` rows of a state given in ``parts``: views, not copies."""
    n = 0
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), _SNAPSHOT_PIECE):
            yield name, n, view[start : start + _SNAPSHOT_PIECE]
            n += 1


def write_snapshot(
    w: sqlite3.Connection, name: str, log_index: int, parts: list[bytes | bytearray]
) -> None:
    # In rows of a MiB (snapshot_pieces), never one blob: SQLite copies a blob it
    # binds while the interpreter lock is held (~40 ms of a stalled event loop for
    # 100,000 orchestrations' registry), and refuses one over a GB (about 2.5
    # million orchestrations' registry), which would leave every restart to fold
    # the whole log. ``snapshots.state`` is empty then; a row from before pieces
    # keeps its state there, and is read as it was.
    w.execute("BEGIN IMMEDIATE")
    try:
        w.execute(
            "INSERT INTO snapshots(name, log_index, state) VALUES (?, ?, x'') "
            "ON CONFLICT(name) DO UPDATE SET log_index = excluded.log_index, state = x''",
            (name, log_index),
        )
        w.execute("DELETE FROM snapshot_pieces WHERE name = ?", (name,))
        w.executemany(
            "INSERT INTO snapshot_pieces(name, piece, bytes) VALUES (?, ?, ?)",
            _pieces(name, parts),
        )
        w.execute("COMMIT")
    except BaseException:
        if w.in_transaction:
            w.execute("ROLLBACK")
        raise


async def read_snapshot(
    query: Callable[[str, Sequence[Any]], Awaitable[list[Any]]], name: str
) -> tuple[int, bytes] | None:
    """The snapshot ``name`` as (log index, state), read through ``query`` (the reader's
    run-and-fetch-all), or None if there is none."""
    # One statement, so the row and its pieces are read from one state of the file.
    # A read-only open creates no table: a database from before pieces has none, and
    # its rows keep their whole state in ``snapshots.state``.
    has_pieces = await query(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshot_pieces'", ()
    )
    rows = await query(
        "SELECT s.log_index, s.state, p.bytes FROM snapshots AS s "
        "LEFT JOIN snapshot_pieces AS p ON p.name = s.name "
        "WHERE s.name = ? ORDER BY p.piece"
        if has_pieces
        else "SELECT log_index, state, NULL FROM snapshots WHERE name = ?",
        (name,),
    )
    if not rows:
        return None
    log_index, state = rows[0][0], rows[0][1]
    pieces = [row[2] for row in rows if row[2] is not None]
    if (
        not isinstance(log_index, int)
        or not isinstance(state, bytes)
        or not all(isinstance(piece, bytes) for piece in pieces)
    ):
        raise IntegrityError(
            f"snapshot {name!r} is stored as {type(log_index).__name__} and "
            f"{type(state).__name__}, or has a piece that is not bytes"
        )
    return log_index, state + b"".join(pieces)
