"""The published vectors in specs/vectors/ are accepted, and near-misses rejected."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from verifier import (
    MalformedInput,
    ProofInvalid,
    SignatureInvalid,
    open_note,
    parse_vkey,
    verify_consistency,
    verify_inclusion,
)
from verifier._merkle import leaf_hash

VECTORS = Path(__file__).resolve().parents[2] / "specs" / "vectors"


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())  # type: ignore[no-any-return]


MERKLE = _load("merkle-rfc6962.json")
NOTES = _load("signed-note.json")
ARGON = _load("ct-argon2020.json")


def _hx(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_leaf_hashes_match_rfc6962_vectors() -> None:
    for leaf, expected in zip(MERKLE["leaves"], MERKLE["leaf_hashes"], strict=True):
        assert leaf_hash(bytes.fromhex(leaf)).hex() == expected


@pytest.mark.parametrize(
    "case", MERKLE["inclusion"], ids=lambda c: f"{c['leaf_index']}@{c['tree_size']}"
)
def test_inclusion_vectors_verify(case: dict[str, Any]) -> None:
    index, size = case["leaf_index"], case["tree_size"]
    leaf = bytes.fromhex(MERKLE["leaf_hashes"][index])
    root = bytes.fromhex(MERKLE["roots"][size])
    assert verify_inclusion(leaf, index, size, _hx(case["proof"]), root) is None


@pytest.mark.parametrize(
    "case", MERKLE["inclusion"], ids=lambda c: f"{c['leaf_index']}@{c['tree_size']}"
)
def test_inclusion_vectors_reject_a_wrong_leaf(case: dict[str, Any]) -> None:
    index, size = case["leaf_index"], case["tree_size"]
    other = bytes.fromhex(MERKLE["leaf_hashes"][(index + 1) % 8])
    root = bytes.fromhex(MERKLE["roots"][size])
    with pytest.raises(ProofInvalid, match="does not lead to the root"):
        verify_inclusion(other, index, size, _hx(case["proof"]), root)


@pytest.mark.parametrize("case", MERKLE["consistency"], ids=lambda c: f"{c['first']}-{c['second']}")
def test_consistency_vectors_verify(case: dict[str, Any]) -> None:
    m, n = case["first"], case["second"]
    old, new = bytes.fromhex(MERKLE["roots"][m]), bytes.fromhex(MERKLE["roots"][n])
    assert verify_consistency(m, old, n, new, _hx(case["proof"])) is None


@pytest.mark.parametrize(
    "case",
    [c for c in MERKLE["consistency"] if c["proof"]],
    ids=lambda c: f"{c['first']}-{c['second']}",
)
def test_consistency_vectors_reject_a_flipped_hash(case: dict[str, Any]) -> None:
    m, n = case["first"], case["second"]
    old, new = bytes.fromhex(MERKLE["roots"][m]), bytes.fromhex(MERKLE["roots"][n])
    proof = _hx(case["proof"])
    proof[-1] = bytes([proof[-1][0] ^ 1]) + proof[-1][1:]
    with pytest.raises(ProofInvalid, match="does not lead to the"):
        verify_consistency(m, old, n, new, proof)


def test_every_prefix_is_consistent_with_every_larger_tree_via_ledger() -> None:
    """Cross-check against the writer's proof builder for all sizes of the 8-leaf tree."""
    from ledger.merkle import consistency_proof, inclusion_proof

    leaves = _hx(MERKLE["leaf_hashes"])
    roots = _hx(MERKLE["roots"])
    for n in range(1, 9):
        for i in range(n):
            verify_inclusion(leaves[i], i, n, inclusion_proof(i, leaves[:n]), roots[n])
        for m in range(n + 1):
            verify_consistency(m, roots[m], n, roots[n], consistency_proof(m, leaves[:n]))


def test_argon2020_inclusion_proof_verifies() -> None:
    leaf = base64.b64decode(ARGON["leaf"])
    proof = [base64.b64decode(h) for h in ARGON["inclusion_proof"]]
    root = base64.b64decode(ARGON["root"])
    verify_inclusion(leaf_hash(leaf), ARGON["leaf_index"], ARGON["tree_size"], proof, root)


def test_argon2020_consistency_proof_verifies() -> None:
    proof = [base64.b64decode(h) for h in ARGON["consistency_proof"]]
    verify_consistency(
        ARGON["old_tree_size"],
        base64.b64decode(ARGON["old_root"]),
        ARGON["tree_size"],
        base64.b64decode(ARGON["root"]),
        proof,
    )


def test_argon2020_inclusion_rejects_the_neighbouring_index() -> None:
    leaf = base64.b64decode(ARGON["leaf"])
    proof = [base64.b64decode(h) for h in ARGON["inclusion_proof"]]
    root = base64.b64decode(ARGON["root"])
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaf_hash(leaf), ARGON["leaf_index"] + 1, ARGON["tree_size"], proof, root)


@pytest.mark.parametrize("note", NOTES["notes"], ids=lambda n: n["vkey"].split("+")[0])
def test_signed_note_examples_open(note: dict[str, str]) -> None:
    assert open_note(note["note"], parse_vkey(note["vkey"])) == note["text"]


def test_signed_note_with_an_edited_text_is_rejected() -> None:
    note = NOTES["notes"][0]
    forged = note["note"].replace("example message", "example massage")
    with pytest.raises(SignatureInvalid, match="does not verify"):
        open_note(forged, parse_vkey(note["vkey"]))


def test_signed_note_by_another_key_is_rejected_as_unsigned() -> None:
    a, b = NOTES["notes"]
    with pytest.raises(SignatureInvalid, match="no signature by the trusted key PeterNeumann"):
        open_note(a["note"], parse_vkey(b["vkey"]))


def test_unknown_signatures_are_ignored() -> None:
    a, b = NOTES["notes"]
    # Add the PeterNeumann signature line to the C2SP note: an unknown key for example.com.
    extra = b["note"].rsplit("\n\n", 1)[1]
    both = a["note"] + extra
    assert open_note(both, parse_vkey(a["vkey"])) == a["text"]


def test_vkey_with_a_wrong_key_id_is_malformed() -> None:
    vkey = NOTES["notes"][0]["vkey"].replace("+530d903a+", "+530d903b+")
    with pytest.raises(MalformedInput, match="does not match its key"):
        parse_vkey(vkey)
