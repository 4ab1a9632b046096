"""A bounded cache of stored-hash rows, so proofs touch the store only on a miss.

Rows are immutable once committed, so caching them can never serve a stale hash. The
rows a new batch's receipts need (its own, and the left subtrees every new proof
shares) are touched on every batch and stay resident under LRU.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from ledger.store import HashRow

__all__ = ["HashCache", "hashes_from_rows"]


class HashCache:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._rows: OrderedDict[int, HashRow] = OrderedDict()
        self._starts: list[int] = []

    def add(self, rows: Iterable[HashRow]) -> None:
        for row in rows:
            if row.start in self._rows:
                self._rows.move_to_end(row.start)
                continue
            self._rows[row.start] = row
            bisect.insort(self._starts, row.start)
            self._bytes += len(row.hashes)
        while self._bytes > self._max_bytes and len(self._rows) > 1:
            start, old = self._rows.popitem(last=False)
            del self._starts[bisect.bisect_left(self._starts, start)]
            self._bytes -= len(old.hashes)

    def discard(self, start: int) -> None:
        row = self._rows.pop(start, None)
        if row is not None:
            del self._starts[bisect.bisect_left(self._starts, start)]
            self._bytes -= len(row.hashes)

    def lookup(self, indexes: Sequence[int]) -> list[bytes | None]:
        """The cached hash at each index, or None where its row is not cached."""
        # A proof's indexes cluster: the low levels' siblings share the leaf's row, so
        # the row found last is tried before searching again.
        rows, starts = self._rows, self._starts
        out: list[bytes | None] = []
        touched: list[int] = []
        lo = hi = 0
        hashes = b""
        for i in indexes:
            if not lo <= i < hi:
                pos = bisect.bisect_right(starts, i) - 1
                row = rows[starts[pos]] if pos >= 0 else None
                if row is None or i >= row.start + len(row.hashes) // 32:
                    out.append(None)
                    lo = hi = 0
                    continue
                lo, hashes = row.start, row.hashes
                hi = lo + len(hashes) // 32
                touched.append(lo)
            off = (i - lo) * 32
            out.append(hashes[off : off + 32])
        for start in touched:
            rows.move_to_end(start)
        return out


def hashes_from_rows(rows: Sequence[HashRow], indexes: Sequence[int]) -> list[bytes | None]:
    """The hash at each index from rows sorted by start, or None where none holds it."""
    starts = [r.start for r in rows]
    out: list[bytes | None] = []
    for index in indexes:
        pos = bisect.bisect_right(starts, index) - 1
        if pos < 0:
            out.append(None)
            continue
        row = rows[pos]
        off = (index - row.start) * 32
        out.append(row.hashes[off : off + 32] if off < len(row.hashes) else None)
    return out
