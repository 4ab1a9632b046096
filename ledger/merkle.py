"""Merkle tree hashing, proofs and proof verification (RFC 6962 §2.1, RFC 9162 §2.1).

These are the pure *reference* functions over a full list of leaf hashes. They define
what the log must produce; the log itself never calls the list-based builders on its
hot path (see :mod:`ledger.tlog`, which computes the same values from persisted
interior nodes in O(log n) reads).

Proof order is the RFC 6962 ``PATH``/``PROOF`` order (the leaf's sibling first), the
same as transparency-dev/merkle and Go's ``golang.org/x/mod/sumdb/tlog``.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency). The
verify functions return ``None`` or raise :class:`~ledger.errors.ProofError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ledger.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0)  (RFC 6962 §2.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)  (RFC 6962 §2.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves; SHA-256("") for the empty tree."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root_hash(leaf_hashes[:k]), root_hash(leaf_hashes[k:]))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 6962 §2.1.1), the leaf's sibling first."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ProofError(f"leaf index {index} is outside a tree of size {n}")
    return _path(index, leaf_hashes)


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), root_hash(d[k:])]
    return [*_path(m - k, d[k:]), root_hash(d[:k])]


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 6962 §2.1.2). Empty when ``old_size`` is 0 or ``n``."""
    n = len(leaf_hashes)
    if not 0 <= old_size <= n:
        raise ProofError(f"old size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []
    return _subproof(old_size, leaf_hashes, complete=True)


def _subproof(m: int, d: Sequence[bytes], *, complete: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if complete else [root_hash(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], complete=complete), root_hash(d[k:])]
    return [*_subproof(m - k, d[k:], complete=False), root_hash(d[:k])]


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for name, value in named:
        if len(value) != HASH_SIZE:
            raise ProofError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof hash {i} is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """RFC 9162 §2.1.3.2 steps 1-5: the root that ``proof`` implies for ``leaf``."""
    # 1. Bounds first: an index outside the tree has no proof.
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    _check_hashes(proof, ("leaf hash", leaf))
    # 2. fn = leaf_index, sn = tree_size - 1, r = leaf hash.
    fn, sn, r = index, tree_size - 1, leaf
    # 3. Fold each proof element in, left or right by the low bit of fn.
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 4. sn must have reached 0: a short proof cannot reach the root.
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: ``leaf`` is at ``index`` in the tree of ``tree_size`` and ``root``."""
    if len(root) != HASH_SIZE:
        raise ProofError(f"root is {len(root)} bytes, not {HASH_SIZE}")
    # 5. The computed root must equal the expected root.
    if root_from_inclusion_proof(leaf, index, tree_size, proof) != root:
        raise ProofError(f"inclusion proof for index {index} does not match the root")


def verify_consistency(
    old_size: int, old_root: bytes, new_size: int, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: the tree of ``new_size`` extends the tree of ``old_size``."""
    # Bounds and hash sizes first.
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} is not within 0..{new_size}")
    _check_hashes(proof, ("old root", old_root), ("new root", new_root))
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if old_size == 0:
        # Every tree extends the empty tree; RFC 9162 gives no proof for it.
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    # 1. If first is an exact power of two, prepend first_hash to the proof.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise ProofError("consistency proof is empty")
    # 2-3. fn = first - 1, sn = second - 1; shift both right while fn is odd.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 4. fr = sr = the first proof element.
    fr = sr = path[0]
    # 5. Fold the rest in.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 6. Both roots must match and sn must have reached 0.
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError(f"consistency proof does not match the old root at size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not match the new root at size {new_size}")
