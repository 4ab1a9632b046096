"""Merkle proof verification: RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency).

Hashing is RFC 6962 §2.1 (``specs/log-format.md`` §1): a leaf hash is
``SHA-256(0x00 || leaf)``, an interior node ``SHA-256(0x01 || left || right)``. Proofs list
the hash nearest the leaf first. Every routine checks bounds and hash sizes *before* it
hashes anything, then checks that the proof has exactly the length the tree shape needs
(so a proof for another tree size is named as such), then folds.

:class:`PathMemo` is the bundle verifier's fast path for many inclusion proofs against
one root: it remembers the authenticated nodes of earlier verified paths and stops
folding a new proof at the first of them (see its docstring for why that is sound).
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence

import msgspec

from verifier._errors import MalformedInput, ProofInvalid

__all__ = [
    "HASH_SIZE",
    "PathMemo",
    "decode_proof",
    "inclusion_proof_length",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)`` (RFC 6962 §2.1)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)`` (RFC 6962 §2.1)."""
    return _sha256(b"\x01" + left + right).digest()


def _decompose(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below and on the tree's right border for ``index``."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def inclusion_proof_length(index: int, tree_size: int) -> int:
    """How many hashes ``PATH(index, D[tree_size])`` has (0 <= index < tree_size)."""
    inner, border = _decompose(index, tree_size)
    return inner + border


def _check_size(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofInvalid(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof_hashes(kind: str, proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofInvalid(f"{kind} proof hash {i} is {len(h)} bytes, not {HASH_SIZE}")


def _check_inclusion_shape(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes | None
) -> None:
    # Bounds first: an index outside the tree has no proof.
    if not 0 <= index < tree_size:
        raise ProofInvalid(f"leaf index {index} is outside a tree of size {tree_size}")
    _check_size("leaf hash", leaf)
    if root is not None:
        _check_size("root hash", root)
    _check_proof_hashes("inclusion", proof)
    expected = inclusion_proof_length(index, tree_size)
    if len(proof) != expected:
        raise ProofInvalid(
            f"inclusion proof has {len(proof)} hashes, but index {index} in a tree of size "
            f"{tree_size} needs {expected} (a proof for another tree size?)"
        )


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: ``leaf_hash`` is at ``index`` in the tree of ``tree_size``, ``root``.

    Returns ``None`` or raises :class:`ProofInvalid`.
    """
    # 1. Compare leaf_index against tree_size; check every hash is 32 bytes and the
    #    proof has the length this tree shape needs.
    _check_inclusion_shape(leaf_hash, index, tree_size, proof, root)
    # 2. fn = leaf_index, sn = tree_size - 1, r = leaf hash.
    fn, sn, r = index, tree_size - 1, leaf_hash
    # 3. For each p in the proof:
    for p in proof:
        # a. if sn is 0, stop and fail (cannot happen after the length check).
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofInvalid("inclusion proof is longer than the tree is deep")
        # b. if LSB(fn) is set or fn == sn: r = HASH(0x01 || p || r), then, if LSB(fn)
        #    is not set, right-shift fn and sn until LSB(fn) is set or fn is 0;
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        #    otherwise r = HASH(0x01 || r || p).
        else:
            r = node_hash(r, p)
        # c. right-shift fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 4. sn must be 0 and r must equal the root.
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofInvalid("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofInvalid(
            f"inclusion proof for index {index} does not lead to the root of the tree of "
            f"size {tree_size}"
        )


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """How many hashes ``PROOF(old_size, D[new_size])`` has (0 < old_size < new_size)."""
    inner, border = _decompose(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1
    inner -= shift
    start = 0 if old_size == 1 << shift else 1
    return start + inner + border


def verify_consistency(
    old_size: int, old_root: bytes, new_size: int, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: the tree of ``new_size`` extends the tree of ``old_size``.

    Returns ``None`` or raises :class:`ProofInvalid`.
    """
    # Bounds and hash sizes first.
    if not 0 <= old_size <= new_size:
        raise ProofInvalid(f"old size {old_size} is not within 0..{new_size}")
    _check_size("old root hash", old_root)
    _check_size("new root hash", new_root)
    _check_proof_hashes("consistency", proof)
    if old_size == new_size:
        if proof:
            raise ProofInvalid("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofInvalid(f"two different roots for the same tree size {old_size}")
        return
    if old_size == 0:
        # Every tree extends the empty tree; there is no proof to check.
        if proof:
            raise ProofInvalid("a consistency proof from the empty tree must be empty")
        return
    expected = consistency_proof_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofInvalid(
            f"consistency proof has {len(proof)} hashes, but sizes {old_size} -> {new_size} "
            f"need {expected}"
        )
    # 1. If first is an exact power of 2, prepend first_hash to the proof.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 2. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 3. If LSB(fn) is set, right-shift fn and sn until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 4. fr = sr = the first value in the path.
    fr = sr = path[0]
    # 5. For each subsequent value c in the path:
    for c in path[1:]:
        # a. if sn is 0, stop and fail (cannot happen after the length check).
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofInvalid("consistency proof is longer than needed")
        # b. if LSB(fn) is set or fn == sn: fr = HASH(c || fr), sr = HASH(c || sr), and
        #    if LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0;
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        #    otherwise sr = HASH(sr || c).
        else:
            sr = node_hash(sr, c)
        # c. right-shift fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 6. fr must equal first_hash, sr must equal second_hash, and sn must be 0.
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofInvalid("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofInvalid(f"consistency proof does not lead to the old root at size {old_size}")
    if sr != new_root:
        raise ProofInvalid(f"consistency proof does not lead to the new root at size {new_size}")


_MAX_LEVELS = 65
_NO_NODE: tuple[int, bytes, bytes, int] = (-1, b"", b"", 0)
_STRIDE = 47  # len('"' + 44 base64 chars + '",')
_PROOF = msgspec.json.Decoder(tuple[bytes, ...])


def decode_proof(raw: bytes | msgspec.Raw, what: str) -> tuple[bytes, ...]:
    """A JSON array of base64 hashes, as :class:`MalformedInput` if it is not one."""
    try:
        return _PROOF.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        raise MalformedInput(f"{what} is not a list of base64 hashes: {e}") from e


class PathMemo:
    """Many RFC 9162 §2.1.3.2 inclusion checks against one ``(tree_size, root)``.

    A node is named by ``(shift, fn)``: after the fold has consumed some proof hashes,
    ``r`` is the hash of the subtree covering leaves ``[fn << shift, (fn + 1) << shift)``
    (clipped to the tree), so one name always denotes one subtree. Once a proof has been
    folded all the way to the verified root, every node on its path is authenticated,
    and so is the rest of the proof from each node up (the siblings of the nodes above
    it). A later proof may therefore stop at the first node it shares with an earlier
    verified path: its running hash must equal the remembered one and its remaining
    hashes must equal the remembered path's remaining hashes. That is exactly as strong
    as folding to the root, at ~2 hashes per leaf for consecutive leaves instead of
    ~log2(n).

    Proofs arrive as the raw JSON array text of a bundle line. The hot path reads the
    compact layout msgspec writes (hash i's base64 at a fixed offset) and decodes only
    the hashes it folds; the remaining text is compared as bytes with the text of an
    already-authenticated path from the same node up. Anything unusual (whitespace,
    escapes, a wrong size, a mismatch) falls back to :meth:`_slow`: a strict decode and
    a full :func:`verify_inclusion`, which also gives the precise error.

    The memo keeps one node per level (the most recently authenticated), so it is
    bounded: at most 65 entries whatever the number of proofs.
    """

    __slots__ = ("_nodes", "root", "tree_size")

    def __init__(self, tree_size: int, root: bytes) -> None:
        _check_size("root hash", root)
        if not 0 <= tree_size < 1 << 64:
            raise ProofInvalid(f"tree size {tree_size} does not fit in 64 bits")
        self.tree_size = tree_size
        self.root = root
        # Per level (shift): (fn, hash, proof tokens, hashes consumed) of the last
        # authenticated node there.
        self._nodes: list[tuple[int, bytes, bytes, int]] = [_NO_NODE] * _MAX_LEVELS

    def verify(self, leaf: bytes, index: int, raw_proof: bytes | msgspec.Raw) -> None:
        """:func:`verify_inclusion` of ``leaf`` at ``index`` against this memo's root,
        with the proof given as its JSON array text. Returns None or raises.

        Only the hashes folded are decoded (strict base64, 32 bytes). The fold is a proof
        of inclusion whatever the surrounding JSON says, so it needs no other parsing;
        a remaining token that equals an authenticated one is authenticated. Anything
        else goes to :meth:`_slow`, which parses strictly and names the fault.
        """
        tree_size = self.tree_size
        # 1. Bounds first.
        if not 0 <= index < tree_size:
            raise ProofInvalid(f"leaf index {index} is outside a tree of size {tree_size}")
        raw = raw_proof if type(raw_proof) is bytes else bytes(raw_proof)
        # A compact array of n base64 hashes: '["' + 44 chars + '"' per hash, joined by
        # commas, then ']'. Hash i's base64 is raw[2 + 47i : 46 + 47i].
        n, extra = divmod(len(raw) - 1, _STRIDE)
        if extra or (n == 0 and raw != b"[]"):
            self._slow(leaf, index, raw)
            return
        nodes = self._nodes
        a2b, sha256 = binascii.a2b_base64, _sha256
        # 2. fn = leaf_index, sn = tree_size - 1, r = leaf hash. Nodes are recorded as they
        #    are computed; if the proof then fails, _slow resets the memo before raising.
        fn, sn, r, shift, k = index, tree_size - 1, leaf, 0, 0
        while True:
            node = nodes[shift]
            if node[0] == fn:
                # An authenticated node: the rest must agree with the verified path.
                if node[1] != r or raw[_STRIDE * k :] != node[2][_STRIDE * node[3] :]:
                    self._slow(leaf, index, raw)
                return
            if k:
                nodes[shift] = (fn, r, raw, k)
            if k == n:
                # 4. sn must be 0 and r must equal the root.
                if sn != 0 or r != self.root:
                    self._slow(leaf, index, raw)
                return
            # 3a. A proof longer than the tree is deep fails; each hash is 32 bytes.
            at = 2 + _STRIDE * k
            try:
                p = a2b(raw[at : at + 44], strict_mode=True)
            except binascii.Error:
                p = b""
            if sn == 0 or len(p) != HASH_SIZE:
                self._slow(leaf, index, raw)
                return
            # 3b-c. Fold the next proof hash in.
            k += 1
            if fn & 1 or fn == sn:
                r = sha256(b"\x01" + p + r).digest()
                if not fn & 1:
                    while fn and not fn & 1:
                        fn >>= 1
                        sn >>= 1
                        shift += 1
            else:
                r = sha256(b"\x01" + r + p).digest()
            fn >>= 1
            sn >>= 1
            shift += 1

    def verify_sharing(
        self,
        leaf: bytes,
        index: int,
        raw_proof: bytes | msgspec.Raw,
        other: PathMemo,
        other_raw: bytes | msgspec.Raw,
    ) -> None:
        """:meth:`verify`, reusing ``other``'s verification of the same leaf at the same
        index (a receipt's proof after the header checkpoint's proof of one event).

        Below the level where the two trees differ, both proofs hold the same complete
        subtrees. If this proof's first ``j`` hashes are byte-equal to ``other``'s, and
        the subtree at level ``j`` over ``index`` is complete in this tree, then folding
        them gives that subtree's hash, which ``other`` has already authenticated: so
        this fold can start at level ``j`` with ``other``'s hash there, and stop at once
        if this memo holds the same node (the usual case). Otherwise: :meth:`verify`.
        """
        raw = raw_proof if type(raw_proof) is bytes else bytes(raw_proof)
        other_bytes = other_raw if type(other_raw) is bytes else bytes(other_raw)
        nodes, theirs, size = self._nodes, other._nodes, self.tree_size
        if 0 <= index < size and len(raw) == len(raw) // _STRIDE * _STRIDE + 1:
            for j in range(1, len(raw) // _STRIDE + 1):
                fn = index >> j
                if (fn + 1) << j > size:
                    break  # the subtree at level j is not complete in this tree
                node = nodes[j]
                if node[0] != fn:
                    continue
                their = theirs[j]
                if (
                    their[0] == fn
                    and their[1] == node[1]
                    and raw[: _STRIDE * j] == other_bytes[: _STRIDE * j]
                    and raw[_STRIDE * j :] == node[2][_STRIDE * node[3] :]
                ):
                    return
                break
        self.verify(leaf, index, raw)

    def _reset(self) -> None:
        self._nodes[:] = [_NO_NODE] * _MAX_LEVELS

    def _slow(self, leaf: bytes, index: int, raw_proof: bytes) -> None:
        """Full decode and full RFC 9162 fold; raises with the precise fault, if any.

        Whatever the fast path recorded for this proof is authenticated only if this
        succeeds; on failure the memo is reset, so nothing unverified is ever trusted.
        """
        try:
            proof = decode_proof(raw_proof, "inclusion proof")
            verify_inclusion(leaf, index, self.tree_size, proof, self.root)
        except BaseException:
            self._reset()
            raise
        # Verified in full: the fast path's records for this proof are authenticated,
        # but they may hold non-canonical tokens; start over rather than reason about it.
        self._reset()
