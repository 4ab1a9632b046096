"""The SQLite store's derived stream index: the passes that copy committed events into
``stream_index``, the in-memory tail of what they have not reached yet, and the check
that the index says what the events say (``ledger/sqlite_store.py`` explains why the
index trails the commits)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = [
    "Tail",
    "TailOrder",
    "forget_tail",
    "index_all",
    "index_pass",
    "index_problems",
    "pass_end",
]

_Stream = tuple[str, str]
#: Committed but not yet indexed, per stream: (stream_seq, leaf_index), in order.
Tail = dict[_Stream, deque[tuple[int, int]]]
#: Per committed batch: its first leaf index and each event's stream, in order.
TailOrder = deque[tuple[int, list[_Stream]]]

_INDEX_PASS_ROWS = 512
# Streams an index pass may touch: about one index page each (see pass_end).
_INDEX_PASS_STREAMS = 128


def pass_end(order: TailOrder, lo: int, target: int) -> int:
    """Where an index pass from ``lo`` ends: after at most ``_INDEX_PASS_ROWS`` rows
    of at most ``_INDEX_PASS_STREAMS`` streams. A pass costs about one index page
    per stream it touches, so rows of a few busy streams go in large passes and
    rows of many streams in small ones, and no pass holds the writer for long."""
    hi = min(target, lo + _INDEX_PASS_ROWS)
    streams: set[_Stream] = set()
    for first, keys in order:
        if first >= hi:
            break
        for i in range(max(lo, first), min(hi, first + len(keys))):
            streams.add(keys[i - first])
            if len(streams) > _INDEX_PASS_STREAMS:
                return max(i, lo + 1)
    return hi


def forget_tail(tail: Tail, order: TailOrder, upto: int) -> None:
    """Drop from the tail every event below ``upto``, which an index pass now covers."""
    while order and order[0][0] < upto:
        first, keys = order.popleft()
        done = min(len(keys), upto - first)
        for key in keys[:done]:
            entries = tail[key]
            entries.popleft()
            if not entries:
                del tail[key]
        if done < len(keys):  # an index pass ended inside this batch
            order.appendleft((upto, keys[done:]))
            return


def index_pass(w: sqlite3.Connection, lo: int, hi: int) -> None:
    """Index the events from leaf ``lo`` up to ``hi``, and record that it got there."""
    # Synced like any commit, though the index is derived: a pass that committed
    # unsynced and then failed to reach the device would leave a hole in the WAL
    # that every later (synced, acknowledged) commit sits behind, and WAL recovery
    # stops at the hole.
    w.execute("BEGIN IMMEDIATE")
    try:
        w.execute(
            "INSERT INTO stream_index(tenant_id, stream_id, stream_seq, leaf_index) "
            "SELECT tenant_id, stream_id, stream_seq, leaf_index FROM events "
            "WHERE leaf_index >= ? AND leaf_index < ?",
            (lo, hi),
        )
        w.execute("UPDATE index_progress SET upto = ?", (hi,))
        w.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            w.execute("ROLLBACK")
        raise


def index_all(conn: sqlite3.Connection, committed: int) -> None:
    """Index every event not yet indexed; ``committed`` is one past the last."""
    # A previous process's unindexed tail is indexed now, so the in-memory tail only
    # ever holds what this process committed.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO stream_index(tenant_id, stream_id, stream_seq, leaf_index) "
        "SELECT tenant_id, stream_id, stream_seq, leaf_index FROM events "
        "WHERE leaf_index >= (SELECT upto FROM index_progress)"
    )
    conn.execute("UPDATE index_progress SET upto = ?", (committed,))
    conn.execute("COMMIT")


async def index_problems(
    query: Callable[[str, Sequence[Any]], Awaitable[list[Any]]], limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` (leaf, problem) of the index, read through ``query`` (the
    reader's run-and-fetch-all)."""
    # Every index row must name an event of its own stream and sequence, and every
    # event the index claims to cover must have its row (ledger/fsck.py step 4).
    wrong = await query(
        "SELECT s.leaf_index, s.tenant_id, s.stream_id, s.stream_seq, e.leaf_index "
        "FROM stream_index s LEFT JOIN events e ON e.leaf_index = s.leaf_index "
        "WHERE e.leaf_index IS NULL OR e.tenant_id != s.tenant_id "
        "OR e.stream_id != s.stream_id OR e.stream_seq != s.stream_seq "
        "ORDER BY s.leaf_index LIMIT ?",
        (limit,),
    )
    problems = [
        (
            leaf,
            f"the stream index names leaf {leaf} as seq {seq} of stream {stream!r} "
            f"(tenant {tenant!r}), "
            + ("which is not stored" if found is None else "which is another event"),
        )
        for leaf, tenant, stream, seq, found in wrong
    ]
    unindexed = await query(
        "SELECT e.leaf_index FROM events e "
        "WHERE e.leaf_index < (SELECT upto FROM index_progress) AND NOT EXISTS ("
        "SELECT 1 FROM stream_index s WHERE s.tenant_id = e.tenant_id "
        "AND s.stream_id = e.stream_id AND s.stream_seq = e.stream_seq "
        "AND s.leaf_index = e.leaf_index) ORDER BY e.leaf_index LIMIT ?",
        (limit,),
    )
    problems += [(leaf, f"leaf {leaf} is missing from the stream index") for (leaf,) in unindexed]
    return sorted(problems)[:limit]
