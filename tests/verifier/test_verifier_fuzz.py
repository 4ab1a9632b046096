"""Hypothesis: the verifier never crashes on hostile bytes (any error is a clean
VerificationError), and the PathMemo fast path agrees with full RFC 9162 verification."""

from __future__ import annotations

import base64
import contextlib
import copy

import msgspec
import pytest
import verifier_testkit as kit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier import (
    ProofInvalid,
    VerificationError,
    open_note,
    parse_vkey,
    verify_bundle,
    verify_checkpoint,
    verify_inclusion,
    verify_receipt,
)
from verifier._jsonstream import STREAMED, parse_stream
from verifier._merkle import PathMemo

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = kit.build_bundle(kit.scenario(n_steps=2, extra_per_step=1), batch=3)
GOOD_BYTES = GOOD.encode()
VKEY = GOOD.vkey
NOTE = GOOD.lines[0]["checkpoint"]
RECEIPT = msgspec.json.encode(GOOD.receipts[1])


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, pos, value in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] = value
        elif kind == 1:
            del out[i]
        else:
            out.insert(i, value)
    return bytes(out)


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=4
)


@FUZZ
@given(EDITS)
def test_mutated_bundle_never_crashes(edits: list[tuple[int, int, int]]) -> None:
    data = _mutate(GOOD_BYTES, edits)
    with contextlib.suppress(VerificationError):
        verify_bundle(data, VKEY)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bundle_bytes_never_crash(data: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_bundle(data, VKEY)


@FUZZ
@given(st.lists(st.sampled_from(GOOD_BYTES.splitlines(keepends=True)), max_size=30))
def test_reordered_bundle_lines_never_crash(lines: list[bytes]) -> None:
    data = b"".join(lines)
    try:
        verify_bundle(data, VKEY)
    except VerificationError:
        return
    # Only the original order can verify.
    assert data == GOOD_BYTES


@FUZZ
@given(EDITS)
def test_mutated_receipt_never_crashes(edits: list[tuple[int, int, int]]) -> None:
    with contextlib.suppress(VerificationError):
        verify_receipt(_mutate(RECEIPT, edits), GOOD.leaves[1], VKEY)


@FUZZ
@given(EDITS, st.binary(max_size=300))
def test_mutated_receipt_leaf_never_crashes(edits: list[tuple[int, int, int]], leaf: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_receipt(RECEIPT, _mutate(GOOD.leaves[1], edits) + leaf + b"x", VKEY)


@FUZZ
@given(EDITS)
def test_mutated_note_never_crashes(edits: list[tuple[int, int, int]]) -> None:
    data = _mutate(NOTE.encode(), edits)
    with contextlib.suppress(VerificationError):
        verify_checkpoint(data, VKEY)


@FUZZ
@given(st.text(max_size=400))
def test_random_note_text_never_crashes(text: str) -> None:
    with pytest.raises(VerificationError):
        open_note(text, parse_vkey(VKEY))


@FUZZ
@given(st.text(max_size=120))
def test_random_vkey_never_crashes(text: str) -> None:
    with contextlib.suppress(VerificationError):
        parse_vkey(text)


# ---- the memo is exactly as strong as a full fold ------------------------------------


@FUZZ
@given(
    st.integers(1, 300),
    st.lists(st.tuples(st.integers(0, 299), st.integers(-1, 12), st.integers(0, 31)), max_size=40),
)
def test_memo_agrees_with_full_verification(size: int, checks: list[tuple[int, int, int]]) -> None:
    """Sequences of proofs, some corrupted (a flipped byte at a position, or a wrong
    index): the memo accepts exactly what verify_inclusion accepts."""
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(size)])
    root = tree.root(size)
    memo = PathMemo(size, root)
    for raw_index, corrupt_at, bit in checks:
        index = raw_index % size
        proof = tree.inclusion(index, size)
        claimed = index
        if corrupt_at >= len(proof):
            claimed = (index + 1 + bit) % size  # a proof for another index
        elif corrupt_at >= 0:
            h = proof[corrupt_at]
            proof[corrupt_at] = h[:bit] + bytes([h[bit] ^ 1]) + h[bit + 1 :]
        raw = msgspec.json.encode([base64.b64encode(h).decode() for h in proof])
        try:
            verify_inclusion(tree.leaves[index], claimed, size, proof, root)
            expected = None
        except ProofInvalid as e:
            expected = str(e)
        try:
            memo.verify(tree.leaves[index], claimed, raw)
            got = None
        except ProofInvalid as e:
            got = str(e)
        assert got == expected


def test_memo_accepts_non_compact_proof_json() -> None:
    """Regression: the fast path reads msgspec's compact layout; pretty-printed JSON must
    still verify (through the strict slow path), and the memo keep working after it."""
    tree = kit.Tree([kit.leaf_hash(bytes([i])) for i in range(13)])
    memo = PathMemo(13, tree.root(13))
    for index in (4, 5, 6):
        proof = [base64.b64encode(h).decode() for h in tree.inclusion(index, 13)]
        memo.verify(
            tree.leaves[index], index, ("[ " + ", ".join(f'"{p}"' for p in proof) + " ]").encode()
        )
        memo.verify(tree.leaves[index], index, msgspec.json.encode(proof))


# ---- the streaming trailer parser ---------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(JSON, st.lists(st.text(max_size=12), max_size=20), st.integers(1, 64))
def test_stream_parser_matches_msgspec(value: object, receipts: list[str], chunk: int) -> None:
    doc = {"kind": "state", "state": {"x": value, "receipts": receipts}}
    data = msgspec.json.encode(doc)
    items: list[object] = []
    chunks = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
    got = parse_stream(
        chunks, ("state", "receipts"), items.append, lambda b: items.extend(x.decode() for x in b)
    )
    assert items == receipts
    expected = copy.deepcopy(msgspec.json.decode(data))
    expected["state"]["receipts"] = STREAMED
    assert got == expected


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 32))
def test_stream_parser_rejects_garbage_cleanly(data: bytes, chunk: int) -> None:
    chunks = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
    with contextlib.suppress(VerificationError):
        parse_stream(chunks, ("state", "receipts"), lambda _x: None, lambda _b: None)


@FUZZ
@given(
    st.integers(2, 300),
    st.integers(1, 300),
    st.lists(st.tuples(st.integers(0, 299), st.integers(-1, 12), st.integers(0, 31)), max_size=40),
)
def test_shared_receipt_memo_agrees_with_full_verification(
    size: int, batch_size: int, checks: list[tuple[int, int, int]]
) -> None:
    """verify_sharing (a receipt proof after the header proof of the same leaf) accepts
    exactly what verify_inclusion accepts for the receipt proof."""
    small = min(batch_size, size)
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(size)])
    head = PathMemo(size, tree.root(size))
    memo = PathMemo(small, tree.root(small))

    def enc(proof: list[bytes]) -> bytes:
        return msgspec.json.encode([base64.b64encode(h).decode() for h in proof])

    for raw_index, corrupt_at, bit in checks:
        index = raw_index % small
        head_raw = enc(tree.inclusion(index, size))
        head.verify(tree.leaves[index], index, head_raw)
        proof = tree.inclusion(index, small)
        if 0 <= corrupt_at < len(proof):
            h = proof[corrupt_at]
            proof[corrupt_at] = h[:bit] + bytes([h[bit] ^ 1]) + h[bit + 1 :]
        elif corrupt_at >= len(proof):
            proof = tree.inclusion(index, size)  # the header's proof, for another size
        try:
            verify_inclusion(tree.leaves[index], index, small, proof, tree.root(small))
            expected = None
        except ProofInvalid as e:
            expected = str(e)
        try:
            memo.verify_sharing(tree.leaves[index], index, enc(proof), head, head_raw)
            got = None
        except ProofInvalid as e:
            got = str(e)
        assert got == expected
