"""The tree's persisted interior nodes: the "stored hashes" layout of Go's sumdb/tlog.

Every node of the Merkle tree that is the root of a *complete* subtree is stored once,
in the order it comes into being. Appending leaf ``n`` stores its leaf hash followed by
the hash of every subtree that leaf completes, so the stored-hash sequence only ever
grows at its end. Its position for (level, n) is :func:`stored_hash_index`.

With this layout (Russ Cox, "Transparent Logs for Skeptical Clients"):

- an append costs O(1) amortised node hashes;
- a tree hash, inclusion proof or consistency proof needs O(log n) stored hashes.

Each query here is split into a pure ``*_indexes`` function, which names the stored
hashes it needs, and a pure builder, which consumes those hashes in the same order.
That lets the caller fetch every missing hash in one round trip, and keeps this module
free of I/O. Hashing is RFC 6962 (:mod:`ledger.merkle`); proof order is RFC 6962's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ledger.errors import ProofError
from ledger.merkle import EMPTY_ROOT, node_hash

__all__ = [
    "Extension",
    "Frontier",
    "ProofPlan",
    "consistency_indexes",
    "consistency_proof",
    "extend",
    "stored_hash_count",
    "stored_hash_index",
    "tree_hash",
    "tree_hash_indexes",
]


def stored_hash_index(level: int, n: int) -> int:
    """Position in the stored-hash sequence of the ``n``-th node at ``level``."""
    # The node is stored right after the last leaf it covers, m = ((n+1) << level) - 1,
    # and the ``level`` hashes that leaf completes below it. Leaf m's own hash sits at
    # m + m/2 + m/4 + ... = 2m - popcount(m).
    m = ((n + 1) << level) - 1
    return 2 * m - m.bit_count() + level


def stored_hash_count(n: int) -> int:
    """How many hashes a tree of ``n`` leaves stores."""
    if n == 0:
        return 0
    count = stored_hash_index(0, n - 1) + 1
    m = n - 1
    while m & 1:
        count += 1
        m >>= 1
    return count


def _maxpow2(n: int) -> tuple[int, int]:
    """The largest power of two ``k < n`` (n > 1) and its log2."""
    level = (n - 1).bit_length() - 1
    return 1 << level, level


def _subtrees(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Decompose [lo, hi) into maximal complete subtrees, left to right, as (level, n)."""
    while lo < hi:
        k, level = _maxpow2(hi - lo + 1)
        yield level, lo >> level
        lo += k


def _subtree_indexes(lo: int, hi: int, need: list[int]) -> None:
    need.extend(stored_hash_index(level, n) for level, n in _subtrees(lo, hi))


def _subtree_hash(lo: int, hi: int, hashes: Iterator[bytes]) -> bytes:
    parts = [next(hashes) for _ in _subtrees(lo, hi)]
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def tree_hash_indexes(n: int) -> list[int]:
    """Stored hashes :func:`tree_hash` needs for a tree of ``n`` leaves."""
    need: list[int] = []
    _subtree_indexes(0, n, need)
    return need


def tree_hash(n: int, hashes: Sequence[bytes]) -> bytes:
    """The root of a tree of ``n`` leaves, from the hashes named by :func:`tree_hash_indexes`."""
    if n == 0:
        return EMPTY_ROOT
    return _subtree_hash(0, n, iter(hashes))


def _check_leaf(index: int, tree_size: int) -> None:
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")


def _consistency_steps(old_size: int, tree_size: int) -> list[tuple[int, int]]:
    if not 0 < old_size <= tree_size:
        raise ProofError(f"old size {old_size} is not within 1..{tree_size}")
    steps: list[tuple[int, int]] = []
    lo, hi = 0, tree_size
    while old_size != hi:
        k, _ = _maxpow2(hi - lo)
        if old_size <= lo + k:
            steps.append((lo + k, hi))
            hi = lo + k
        else:
            steps.append((lo, lo + k))
            lo = lo + k
    if lo != 0:
        # The old tree's boundary lies inside a subtree the verifier cannot rebuild.
        steps.append((lo, hi))
    return list(reversed(steps))


def consistency_indexes(old_size: int, tree_size: int) -> list[int]:
    """Stored hashes :func:`consistency_proof` needs (none when the sizes are equal)."""
    if old_size == tree_size:
        return []
    need: list[int] = []
    for a, b in _consistency_steps(old_size, tree_size):
        _subtree_indexes(a, b, need)
    return need


def consistency_proof(old_size: int, tree_size: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[tree_size]) from the hashes named by :func:`consistency_indexes`."""
    if old_size == tree_size:
        return []
    it = iter(hashes)
    return [_subtree_hash(a, b, it) for a, b in _consistency_steps(old_size, tree_size)]


class Frontier:
    """The right edge of the tree: the roots of its maximal complete subtrees.

    It is all an appender needs. Adding a leaf yields exactly the hashes the stored-hash
    layout appends for it, and folding the frontier gives the root, without reading the
    store.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ProofError(f"a frontier of size {size} has {size.bit_count()} subtrees")
        self.size = size
        self._hashes = list(hashes)

    @classmethod
    def indexes(cls, size: int) -> list[int]:
        """Stored hashes needed to rebuild the frontier of a tree of ``size`` leaves."""
        return tree_hash_indexes(size)

    def copy(self) -> Frontier:
        return Frontier(self.size, self._hashes)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add one leaf hash; return the stored hashes it creates, leaf hash first."""
        out = [leaf]
        h = leaf
        n = self.size
        while n & 1:
            h = node_hash(self._hashes.pop(), h)
            out.append(h)
            n >>= 1
        self._hashes.append(h)
        self.size += 1
        return out

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        h = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            h = node_hash(left, h)
        return h


class Extension:
    """What appending a batch of leaves to a tree produces (see :func:`extend`)."""

    __slots__ = ("frontier", "proofs", "root", "stored")

    def __init__(
        self, frontier: Frontier, stored: bytes, root: bytes, proofs: list[list[bytes]]
    ) -> None:
        self.frontier = frontier
        self.stored = stored
        self.root = root
        self.proofs = proofs


def extend(frontier: Frontier, leaves: Sequence[bytes]) -> Extension:
    """Append ``leaves`` (leaf hashes) to the tree whose right edge is ``frontier``.

    Returns the new frontier and root, the stored hashes the batch creates (Go tlog
    order, concatenated), and PATH(i, D[new size]) for every new leaf i (RFC 6962
    §2.1.1). The batch is hashed once, level by level: at each level the nodes over the
    batch's range are paired up, a left neighbour that lies before the batch is a
    complete subtree the frontier already holds, and a last node without a sibling (the
    tree's ragged right edge) moves up unchanged, which is exactly RFC 6962's split at
    the largest power of two. O(k + log n) hashes, no store reads.
    """
    first = frontier.size
    size = first + len(leaves)
    if size == first:
        raise ProofError("a batch needs at least one leaf")
    # The frontier's subtrees by level: one per set bit of its size, largest first.
    old = dict(zip(_set_bits_desc(first), frontier._hashes, strict=True))
    # levels[L] = (index of the first node held, node hashes) over the batch's range.
    levels: list[tuple[int, list[bytes]]] = []
    nodes = list(leaves)
    lo = first
    level = 0
    while (size - 1) >> level:
        if lo & 1:
            nodes.insert(0, old[level])
            lo -= 1
        levels.append((lo, nodes))
        n = len(nodes)
        up = [node_hash(nodes[k], nodes[k + 1]) for k in range(0, n - 1, 2)]
        if n & 1:
            up.append(nodes[-1])
        nodes = up
        lo >>= 1
        level += 1
    root = nodes[0]
    levels.append((lo, nodes))
    top = len(levels) - 1

    # Stored hashes: each leaf, then every subtree it completes, bottom up.
    stored: list[bytes] = []
    for i in range(first, size):
        stored.append(leaves[i - first])
        m, level = i + 1, 1
        while not m & 1:
            base, held = levels[level]
            stored.append(held[(m >> 1) - 1 - base])
            m >>= 1
            level += 1

    # The new frontier: the complete subtree for each set bit of the new size.
    right = []
    for level in _set_bits_desc(size):
        j = (size >> level) - 1
        if level > top or j < levels[level][0]:
            right.append(old[level])
        else:
            base, held = levels[level]
            right.append(held[j - base])

    # Proofs top-down: a node's path is its sibling followed by its parent's path, so
    # the levels every new leaf shares are built once and each level below costs one
    # short list per node.
    paths: list[list[bytes]] = [[]]
    for level in range(top - 1, -1, -1):
        base, held = levels[level]
        last = (size - 1) >> level
        lo = first >> level  # paths[] covers nodes lo.. here and lo >> 1.. one level up
        below: list[list[bytes]] = []
        for j in range(lo, last + 1):
            parent = paths[(j >> 1) - (lo >> 1)]
            sibling = j ^ 1
            below.append([held[sibling - base], *parent] if sibling <= last else parent)
        paths = below
    return Extension(Frontier(size, right), b"".join(stored), root, paths)


def _set_bits_desc(n: int) -> list[int]:
    return [level for level in range(n.bit_length() - 1, -1, -1) if n >> level & 1]


class ProofPlan:
    """Inclusion proofs at one tree size, level by level (equal to :func:`inclusion_proof`).

    At each level a leaf's sibling is either a complete subtree — one stored hash — or
    the ragged node on the tree's right edge. Ragged nodes depend only on the tree size,
    so a plan computes them once (:meth:`edge_indexes`, :meth:`set_edge`) and every
    proof after that is one stored-hash lookup per level.

    Above level ``split`` a sibling depends only on which of at most ``blocks`` aligned
    blocks of leaves holds the leaf, so each block's upper path is kept once found: a
    proof then looks up only its ``split`` lowest levels.
    """

    __slots__ = ("_edge", "_upper", "size", "split")

    def __init__(self, size: int, blocks: int = 1024) -> None:
        if size < 1:
            raise ProofError(f"tree size {size} has no leaves")
        self.size = size
        self.split = max(0, (size - 1).bit_length() - max(0, blocks.bit_length() - 1))
        self._edge: dict[int, bytes] | None = None
        self._upper: dict[int, list[bytes]] = {}

    def _ragged_levels(self) -> list[tuple[int, int]]:
        t, out, level = self.size, [], 0
        while (t - 1) >> level:
            last = (t - 1) >> level
            if (last + 1) << level > t:
                out.append((level, last))
            level += 1
        return out

    def edge_indexes(self) -> list[int]:
        """Stored hashes the right-edge nodes need (empty once :meth:`set_edge` ran):
        the complete subtrees the tree decomposes into, one per set bit of its size, as
        :func:`tree_hash_indexes` names them, but for the largest, which is left of
        every ragged node (and all of a tree whose size is a power of two)."""
        if self._edge is not None:
            return []
        return tree_hash_indexes(self.size)[1:]

    def set_edge(self, hashes: Sequence[bytes]) -> None:
        # The ragged node at level L covers [size with its low L bits cleared, size):
        # exactly the decomposition's subtrees below level L. So every ragged node is
        # a prefix of one right-to-left fold over them, each subtree joining as L
        # passes its level: one hash per subtree, not one decomposition per level.
        size = self.size
        parts = [level for level in range(size.bit_length() - 1) if size >> level & 1]
        by_level = list(reversed(hashes))  # ascending level, as ``parts``
        if len(by_level) != len(parts):
            raise ProofError(f"a tree of size {size} has {len(parts)} edge subtrees")
        edge: dict[int, bytes] = {}
        acc = b""
        j = 0
        # Every ragged level lies above the lowest set bit, so the first pass of the
        # inner loop always takes parts[0].
        for level, _ in self._ragged_levels():
            while j < len(parts) and parts[j] < level:
                acc = by_level[0] if j == 0 else node_hash(by_level[j], acc)
                j += 1
            edge[level] = acc
        self._edge = edge

    def indexes(self, index: int) -> list[int]:
        """Stored hashes the proof for ``index`` needs, leaf end first."""
        t = self.size
        _check_leaf(index, t)
        top = self.split if index >> self.split in self._upper else t.bit_length()
        need = []
        level = 0
        while (t - 1) >> level and level < top:
            s = (index >> level) ^ 1
            if s <= (t - 1) >> level and (s + 1) << level <= t:
                m = ((s + 1) << level) - 1
                need.append(2 * m - m.bit_count() + level)
            level += 1
        return need

    def proof(self, index: int, hashes: Sequence[bytes]) -> list[bytes]:
        """PATH(index, D[size]) from the hashes named by :meth:`indexes`."""
        edge = self._edge
        if edge is None:
            raise ProofError("set_edge() must run before proofs")
        t = self.size
        split = self.split
        upper = self._upper.get(index >> split)
        out: list[bytes] = []
        it = iter(hashes)
        level = 0
        while (t - 1) >> level:
            if level == split:
                if upper is not None:
                    return out + upper
                upper_start = len(out)
            s = (index >> level) ^ 1
            if s <= (t - 1) >> level:
                out.append(next(it) if (s + 1) << level <= t else edge[level])
            level += 1
        if split < level:
            self._upper[index >> split] = out[upper_start:]
        return out
