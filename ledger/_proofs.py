"""Proofs from the stored tree (``specs/log-format.md`` §1, §4, §5): inclusion and
consistency proofs, tree roots at past sizes and hash tiles, built from the stored
tree hashes, which are read through the log's in-memory :class:`HashCache`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from ledger import tlog
from ledger._batched_reads import BatchedReads
from ledger._hash_cache import HashCache, hashes_from_rows
from ledger.errors import IntegrityError, NotFoundError, ProofError
from ledger.store import EventStore, HashRow
from ledger.tiles import Tile, available_width

__all__ = ["Proofs"]


class Proofs:
    """Proofs for any tree size up to ``size()``, the log's committed size.

    ``hashes`` is shared with the log, which adds each batch's new hashes to it (and
    takes them out again if the batch's commit fails)."""

    def __init__(self, store: EventStore, hashes: HashCache, size: Callable[[], int]) -> None:
        self._store = store
        self._hashes = hashes
        self._size = size
        self._row_reads = BatchedReads(self._read_rows, "log-hash-rows")
        self._plans: OrderedDict[int, tlog.ProofPlan] = OrderedDict()

    async def hashes(self, indexes: Sequence[int]) -> list[bytes]:
        """The stored tree hashes at ``indexes``, from the cache or else the store."""
        found = self._hashes.lookup(indexes)
        missing = [i for i, h in zip(indexes, found, strict=True) if h is None]
        if not missing:
            return found  # type: ignore[return-value]  # no None left
        # Resolve from the fetched rows themselves: while this read awaited, another
        # reader's rows may have evicted them (or others) from the cache.
        fetched = iter(hashes_from_rows(await self._row_reads.get(missing), missing))
        out = []
        for i, cached in zip(indexes, found, strict=True):
            h = cached if cached is not None else next(fetched)
            if h is None:
                raise IntegrityError(f"stored tree hash {i} is missing")
            out.append(h)
        return out

    async def _read_rows(self, indexes: list[int]) -> list[HashRow]:
        rows = sorted(await self._store.hash_rows(indexes), key=lambda r: r.start)
        for row in rows:
            # Sliced as it is, a row rewritten to TEXT would hand out str as hashes.
            if not isinstance(row.hashes, bytes):
                raise IntegrityError(
                    f"stored tree hash row {row.start} is {type(row.hashes).__name__}, not bytes"
                )
        self._hashes.add(rows)
        return rows

    def _check_size(self, tree_size: int) -> None:
        if not 0 < tree_size <= self._size():
            raise ProofError(f"tree size {tree_size} is outside 1..{self._size()}")

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """PATH(index, D[tree_size]) for any size up to the current tree."""
        self._check_size(tree_size)
        plan = self._plans.get(tree_size)
        if plan is None:
            plan = tlog.ProofPlan(tree_size)
            plan.set_edge(await self.hashes(plan.edge_indexes()))
            self._plans[tree_size] = plan
            while len(self._plans) > 256:
                self._plans.popitem(last=False)
        return plan.proof(index, await self.hashes(plan.indexes(index)))

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]) for 1 <= old_size <= new_size <= current size."""
        self._check_size(new_size)
        if not 0 < old_size <= new_size:
            raise ProofError(f"old size {old_size} is outside 1..{new_size}")
        return tlog.consistency_proof(
            old_size,
            new_size,
            await self.hashes(tlog.consistency_indexes(old_size, new_size)),
        )

    async def tile(self, tile: Tile, size: int) -> bytes:
        """A C2SP tlog-tiles hash tile (:mod:`ledger.tiles`) of the tree of ``size``;
        NotFoundError if that tree does not hold all of its hashes yet."""
        have = available_width(tile.level, tile.index, size)
        if tile.width > have:
            raise NotFoundError(
                f"{tile.path} is not in the tree of size {size}, which holds "
                f"{have} of that tile's hashes"
            )
        return b"".join(await self.hashes(tile.hash_indexes()))

    async def root_at(self, tree_size: int) -> bytes:
        self._check_size(tree_size)
        return tlog.tree_hash(tree_size, await self.hashes(tlog.tree_hash_indexes(tree_size)))
