"""RFC 6962 vectors (transparency-dev/merkle), a real CT log, and proof properties."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_testkit import b64, vectors

from ledger import merkle, tlog
from ledger.errors import ProofError

RFC = vectors("merkle-rfc6962.json")
LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in RFC["leaves"]]


def test_leaf_hashes_match_vectors() -> None:
    assert [h.hex() for h in LEAVES] == RFC["leaf_hashes"]


def test_roots_match_vectors_for_every_size() -> None:
    assert [merkle.root_hash(LEAVES[:n]).hex() for n in range(9)] == RFC["roots"]
    assert merkle.root_hash([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize(
    "case", RFC["inclusion"], ids=lambda c: f"{c['leaf_index']}@{c['tree_size']}"
)
def test_inclusion_proofs_match_vectors(case: dict[str, Any]) -> None:
    i, n = case["leaf_index"], case["tree_size"]
    proof = merkle.inclusion_proof(i, LEAVES[:n])
    assert [h.hex() for h in proof] == case["proof"]
    merkle.verify_inclusion(LEAVES[i], i, n, proof, bytes.fromhex(RFC["roots"][n]))


@pytest.mark.parametrize("case", RFC["consistency"], ids=lambda c: f"{c['first']}-{c['second']}")
def test_consistency_proofs_match_vectors(case: dict[str, Any]) -> None:
    m, n = case["first"], case["second"]
    proof = merkle.consistency_proof(m, LEAVES[:n])
    assert [h.hex() for h in proof] == case["proof"]
    roots = RFC["roots"]
    merkle.verify_consistency(m, bytes.fromhex(roots[m]), n, bytes.fromhex(roots[n]), proof)


def test_real_ct_log_inclusion_and_consistency_verify() -> None:
    argon = vectors("ct-argon2020.json")
    root = b64(argon["root"])
    proof = [b64(x) for x in argon["inclusion_proof"]]
    leaf = merkle.leaf_hash(b64(argon["leaf"]))
    merkle.verify_inclusion(leaf, argon["leaf_index"], argon["tree_size"], proof, root)
    cons = [b64(x) for x in argon["consistency_proof"]]
    merkle.verify_consistency(
        argon["old_tree_size"],
        b64(argon["old_root"]),
        argon["tree_size"],
        root,
        cons,
    )
    with pytest.raises(ProofError, match="does not match the root"):
        merkle.verify_inclusion(leaf, argon["leaf_index"] + 1, argon["tree_size"], proof, root)


def _tree(n: int) -> tuple[list[bytes], list[bytes]]:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    stored: list[bytes] = []
    frontier = tlog.Frontier()
    for h in leaves:
        stored.extend(frontier.append(h))
    return leaves, stored


sizes = st.integers(min_value=1, max_value=300)


@given(n=sizes, data=st.data())
def test_every_inclusion_proof_verifies_and_matches_stored_hashes(
    n: int, data: st.DataObject
) -> None:
    leaves, stored = _tree(n)
    # Several leaves from one plan, so later proofs reuse the upper paths earlier ones
    # kept; a small block count puts the split inside these small trees.
    plan = tlog.ProofPlan(n, blocks=data.draw(st.sampled_from([1, 2, 4, 16, 1024])))
    plan.set_edge([stored[x] for x in plan.edge_indexes()])
    for i in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6)):
        proof = merkle.inclusion_proof(i, leaves)
        assert plan.proof(i, [stored[x] for x in plan.indexes(i)]) == proof
        merkle.verify_inclusion(leaves[i], i, n, proof, merkle.root_hash(leaves))


@given(n=sizes, data=st.data())
def test_every_consistency_proof_verifies_and_matches_stored_hashes(
    n: int, data: st.DataObject
) -> None:
    leaves, stored = _tree(n)
    m = data.draw(st.integers(1, n))
    proof = merkle.consistency_proof(m, leaves)
    assert (
        tlog.consistency_proof(m, n, [stored[x] for x in tlog.consistency_indexes(m, n)]) == proof
    )
    merkle.verify_consistency(m, merkle.root_hash(leaves[:m]), n, merkle.root_hash(leaves), proof)


@given(n=st.integers(2, 200), data=st.data())
def test_inclusion_fails_for_flipped_bit_wrong_index_or_size(n: int, data: st.DataObject) -> None:
    leaves, _ = _tree(n)
    root = merkle.root_hash(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(i, leaves)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        bad[k] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[k]))
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaves[i], i, n, bad, root)
    other = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaves[i], other, n, proof, root)
    # The size is bound through the root: against the root of any other size, it fails.
    wrong_size = data.draw(st.integers(i + 1, 2 * n).filter(lambda x: x != n))
    bigger, _ = _tree(2 * n)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(
            leaves[i], i, wrong_size, proof, merkle.root_hash(bigger[:wrong_size])
        )


@given(n=st.integers(3, 200), data=st.data())
def test_consistency_fails_for_flipped_bit_or_wrong_sizes(n: int, data: st.DataObject) -> None:
    leaves, _ = _tree(n)
    m = data.draw(st.integers(1, n - 1))
    old, new = merkle.root_hash(leaves[:m]), merkle.root_hash(leaves)
    proof = merkle.consistency_proof(m, leaves)
    k = data.draw(st.integers(0, len(proof) - 1))
    bad = list(proof)
    bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
    with pytest.raises(ProofError):
        merkle.verify_consistency(m, old, n, new, bad)
    wrong_m = data.draw(st.integers(1, n - 1).filter(lambda x: x != m))
    with pytest.raises(ProofError):
        merkle.verify_consistency(wrong_m, merkle.root_hash(leaves[:wrong_m]), n, new, proof)
    bigger, _ = _tree(n + 1)
    with pytest.raises(ProofError):
        merkle.verify_consistency(m, old, n + 1, merkle.root_hash(bigger), proof)


def test_bounds_and_hash_sizes_are_checked_first() -> None:
    leaves, _ = _tree(8)
    root = merkle.root_hash(leaves)
    with pytest.raises(ProofError, match="outside a tree of size 8"):
        merkle.verify_inclusion(leaves[0], 8, 8, [], root)
    with pytest.raises(ProofError, match="proof hash 0 is 31 bytes"):
        merkle.verify_inclusion(leaves[0], 0, 8, [b"\x00" * 31] * 3, root)
    with pytest.raises(ProofError, match=r"not within 0\.\.4"):
        merkle.verify_consistency(5, root, 4, root, [])


def test_extend_matches_one_leaf_appends_and_the_reference_for_every_batch() -> None:
    """A batch appended at once: the same stored hashes, frontier and root as appending
    leaf by leaf, and every new leaf's proof equal to RFC 6962's PATH."""
    leaves, _ = _tree(77)
    for first in range(77):
        before = tlog.Frontier()
        for h in leaves[:first]:
            before.append(h)
        for size in range(first + 1, 78):
            one_by_one = before.copy()
            created: list[bytes] = []
            for h in leaves[first:size]:
                created.extend(one_by_one.append(h))
            ext = tlog.extend(before.copy(), leaves[first:size])
            assert ext.stored == b"".join(created)
            assert ext.root == merkle.root_hash(leaves[:size]) == one_by_one.root()
            assert ext.frontier.size == size
            assert ext.frontier.root() == ext.root
            expected = [merkle.inclusion_proof(i, leaves[:size]) for i in range(first, size)]
            assert ext.proofs == expected
