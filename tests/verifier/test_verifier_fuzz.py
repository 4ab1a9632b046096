"""Hypothesis: the verifier never crashes on hostile bytes (any error is a clean
VerificationError), and the bundle loop's shortcuts agree with what they replace: the
PathCursor fast path with full RFC 9162 verification, the line reader with bytes.split,
the receipt id check with receipt_id_for."""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import io
from collections.abc import Callable, Iterable
from unittest import mock

import msgspec
import pytest
import verifier_testkit as kit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import verifier._bundle_lines as lines_mod
from verifier import (
    MalformedInput,
    ProofInvalid,
    VerificationError,
    open_note,
    parse_vkey,
    verify_bundle,
    verify_checkpoint,
    verify_inclusion,
    verify_receipt,
)
from verifier._ids import receipt_id_for, receipt_id_matches
from verifier._jsonstream import STREAMED, parse_stream
from verifier._merkle import PathCursor, decode_proof

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


# ---- the cursor is exactly as strong as a full fold ----------------------------------


def _enc(proof: list[bytes]) -> bytes:
    return msgspec.json.encode([base64.b64encode(h).decode() for h in proof])


def _walk(
    head: PathCursor,
    head_tree: kit.Tree,
    cursor: PathCursor,
    tree: kit.Tree,
    indexes: Iterable[int],
) -> None:
    """Verify ``indexes`` in order, each against the header tree and its receipt tree,
    as a bundle's events are."""
    for index in indexes:
        head.verify_with_receipt(
            tree.leaves[index],
            index,
            _enc(head_tree.inclusion(index, head.tree_size)),
            cursor,
            _enc(tree.inclusion(index, cursor.tree_size)),
        )


def _full(leaf: bytes, index: int, size: int, raw: bytes, root: bytes) -> str | None:
    """What a strict decode and verify_inclusion say about one proof text."""
    try:
        verify_inclusion(leaf, index, size, decode_proof(raw, "inclusion proof"), root)
    except VerificationError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _outcome(verify: Callable[..., None], *args: object) -> str | None:
    try:
        verify(*args)
    except VerificationError as e:
        return f"{type(e).__name__}: {e}"
    return None


# (kind, position, value): how one proof text is damaged; kinds 0 and 9-15 leave it
# alone, so that runs of good proofs keep the fast path going between damaged ones.
DAMAGE = st.tuples(st.integers(0, 15), st.integers(0, 10**6), st.integers(0, 255))
# The step to the next leaf: mostly the next few leaves, as in a bundle; 40: back to 0.
GAP = st.integers(0, 3) | st.integers(0, 40)


def _damage(tree: kit.Tree, index: int, size: int, how: tuple[int, int, int]) -> tuple[int, bytes]:
    """(claimed index, proof text) for the leaf at ``index``, damaged as ``how`` says."""
    kind, pos, value = how
    proof = tree.inclusion(index, size)
    raw = _enc(proof)
    if kind == 1 and proof:  # one bit of one hash
        k = pos % len(proof)
        h = proof[k]
        proof[k] = h[: value % 32] + bytes([h[value % 32] ^ 1 << value % 8]) + h[value % 32 + 1 :]
        raw = _enc(proof)
    elif kind == 2:  # a proof for another index
        return (index + 1 + value) % size, raw
    elif kind == 3:  # a proof for another tree size
        raw = _enc(tree.inclusion(index, len(tree.leaves)))
    elif kind == 4:  # any one byte of the text (separators, brackets, base64)
        i = pos % len(raw)
        raw = raw[:i] + bytes([value]) + raw[i + 1 :]
    elif kind == 5 and proof:  # the same hashes, not in the compact layout
        raw = ("[ " + ", ".join(f'"{kit.b64(h)}"' for h in proof) + " ]").encode()
    elif kind == 6 and proof:  # last base64 digit: often non-zero padding bits, same hash
        k = pos % len(proof)
        at = 2 + 47 * k + 42
        raw = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :]
    elif kind == 7 and proof:  # one hash dropped, or one repeated
        raw = _enc(proof[:-1] if value % 2 else [*proof, proof[-1]])
    elif kind == 8 and len(proof) > 1:  # two hashes joined into one JSON string
        k = pos % (len(proof) - 1)
        at = 46 + 47 * k
        raw = raw[:at] + b"xyz" + raw[at + 3 :]
    return index, raw


@FUZZ
@given(
    st.integers(1, 300),
    st.integers(0, 300),
    st.lists(st.tuples(GAP, DAMAGE), max_size=60),
)
def test_cursor_agrees_with_full_verification(
    size: int, start: int, steps: list[tuple[int, tuple[int, int, int]]]
) -> None:
    """Leaves in increasing order (as in a bundle, with gaps; sometimes back to the
    start), each proof possibly damaged: the cursor accepts exactly what a strict decode
    and verify_inclusion accept, and fails with the same error."""
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(size + 64)])
    root = tree.root(size)
    cursor = PathCursor(size, root)
    index = start % size
    for gap, how in steps:
        index = (index + gap) % size if gap < 40 else 0
        claimed, raw = _damage(tree, index, size, how)
        leaf = tree.leaves[index]
        expected = _full(leaf, claimed, size, raw, root)
        assert _outcome(cursor.verify, leaf, claimed, raw) == expected


@FUZZ
@given(
    st.integers(2, 300),
    st.integers(1, 300),
    st.integers(0, 300),
    st.none() | st.integers(0, 300),
    st.lists(st.tuples(GAP, DAMAGE, st.booleans()), max_size=60),
)
def test_shared_receipt_cursor_agrees_with_full_verification(
    size: int,
    batch: int,
    start: int,
    fork: int | None,
    steps: list[tuple[int, tuple[int, int, int], bool]],
) -> None:
    """verify_with_receipt (the header checkpoint's proof of a leaf, then a receipt's
    proof of it in a smaller tree, either possibly damaged, or from a header tree that
    forked from the receipt's at some leaf) accepts exactly what verify_inclusion
    accepts for the two proofs, and fails with the first one's error."""
    small = min(batch, size)
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(size)])
    head_tree = tree
    if fork is not None:
        head_tree = kit.Tree(
            [tree.leaves[i] if i < fork else kit.leaf_hash(b"fork%d" % i) for i in range(size)]
        )
    head = PathCursor(size, head_tree.root(size))
    cursor = PathCursor(small, tree.root(small))
    index = start % small
    last, last_raw = -1, b""
    for gap, how, damage_head in steps:
        index = (index + gap) % small if gap < 40 else 0
        leaf = tree.leaves[index]
        claimed, head_raw = _damage(head_tree, index, size, how if damage_head else (0, 0, 0))
        receipt_claimed, raw = _damage(tree, index, small, (0, 0, 0) if damage_head else how)
        claimed = claimed if damage_head else receipt_claimed  # one index for both
        if how[0] >= 13 and 0 <= last < index:
            # Forged: the header proof's lower hashes spliced onto the previous receipt
            # proof's upper ones, which is what the shared check reads.
            cut = 47 * (index ^ last).bit_length()
            raw = head_raw[:cut] + last_raw[cut:]
        expected = _full(leaf, claimed, size, head_raw, head_tree.root(size))
        if expected is None:
            expected = _full(leaf, claimed, small, raw, tree.root(small))
            if expected is None:
                last, last_raw = index, raw
        got = _outcome(head.verify_with_receipt, leaf, claimed, head_raw, cursor, raw)
        assert got == expected


def test_receipt_cursor_does_not_mirror_a_header_tree_that_differs_below() -> None:
    """A header tree that forked at leaf 21 has other subtrees over leaves 16-23 than the
    receipt's tree. A receipt proof for leaf 20 spliced from the header proof's lower
    hashes and the previous receipt proof's upper ones passes the shared check's text
    comparisons; only the running hashes compared before mirroring stop it."""
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(64)])
    forked = kit.Tree(
        [tree.leaves[i] if i < 21 else kit.leaf_hash(b"fork%d" % i) for i in range(64)]
    )
    head = PathCursor(64, forked.root(64))
    cursor = PathCursor(32, tree.root(32))
    _walk(head, forked, cursor, tree, range(16, 20))
    head_raw = _enc(forked.inclusion(20, 64))
    cut = 47 * (20 ^ 19).bit_length()
    spliced = head_raw[:cut] + _enc(tree.inclusion(19, 32))[cut:]
    assert _full(tree.leaves[20], 20, 32, spliced, tree.root(32)) is not None
    with pytest.raises(
        ProofInvalid, match="index 20 does not lead to the root of the tree of size 32"
    ):
        head.verify_with_receipt(tree.leaves[20], 20, head_raw, cursor, spliced)


def test_receipt_cursor_shares_nothing_at_its_right_border() -> None:
    """From leaf 15 to 16 the header tree (64 leaves) folds 5 levels before the paths
    meet, but in a receipt tree of 20 leaves leaf 16 has only 2 complete levels under
    it and a 3-hash proof. A 5-hash receipt proof spliced from the header proof and the
    previous receipt proof has the old proof's length and text; it must still fail."""
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(64)])
    head, cursor = PathCursor(64, tree.root(64)), PathCursor(20, tree.root(20))
    _walk(head, tree, cursor, tree, (14, 15))
    head_raw = _enc(tree.inclusion(16, 64))
    spliced = head_raw[: 47 * 5] + _enc(tree.inclusion(15, 20))[47 * 5 :]
    with pytest.raises(ProofInvalid, match="has 5 hashes, but index 16 in a tree of size 20"):
        head.verify_with_receipt(tree.leaves[16], 16, head_raw, cursor, spliced)


def test_receipt_cursor_shares_only_with_the_cursor_it_mirrors() -> None:
    """A receipt cursor that mirrors one header cursor takes nothing from another one
    (here of a tree that forked at leaf 21) that reached the same leaf."""
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(64)])
    forked = kit.Tree(
        [tree.leaves[i] if i < 21 else kit.leaf_hash(b"fork%d" % i) for i in range(64)]
    )
    head, other, cursor = (
        PathCursor(64, tree.root(64)),
        PathCursor(64, forked.root(64)),
        PathCursor(32, tree.root(32)),
    )
    for index in range(16, 20):
        _walk(head, tree, cursor, tree, (index,))
        other.verify(tree.leaves[index], index, _enc(forked.inclusion(index, 64)))
    other_raw = _enc(forked.inclusion(20, 64))
    cut = 47 * (20 ^ 19).bit_length()
    spliced = other_raw[:cut] + _enc(tree.inclusion(19, 32))[cut:]
    with pytest.raises(
        ProofInvalid, match="index 20 does not lead to the root of the tree of size 32"
    ):
        other.verify_with_receipt(tree.leaves[20], 20, other_raw, cursor, spliced)


def test_cursor_accepts_non_compact_proof_json() -> None:
    """Regression: the fast path reads msgspec's compact layout; pretty-printed JSON must
    still verify (through the strict path), and the cursor keep working after it."""
    tree = kit.Tree([kit.leaf_hash(bytes([i])) for i in range(13)])
    cursor = PathCursor(13, tree.root(13))
    for index in (4, 5, 6, 7):
        proof = [kit.b64(h) for h in tree.inclusion(index, 13)]
        cursor.verify(
            tree.leaves[index], index, ("[ " + ", ".join(f'"{p}"' for p in proof) + " ]").encode()
        )
    for index in (8, 9, 10, 11, 12):
        cursor.verify(tree.leaves[index], index, _enc(tree.inclusion(index, 13)))


def test_cursor_takes_the_fast_path_in_a_sequential_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path is taken: of 1,000 consecutive leaves of a 1,000-leaf tree, only the
    first and a few near the right border are checked in full; and a changed hash in
    the middle of the run is still caught at its leaf."""
    size = 1000
    tree = kit.Tree([kit.leaf_hash(i.to_bytes(4, "big")) for i in range(size)])
    cursor = PathCursor(size, tree.root(size))
    in_full: list[int] = []
    full = PathCursor._verify_in_full

    def spy(self: PathCursor, leaf: bytes, index: int, raw: bytes) -> None:
        in_full.append(index)
        full(self, leaf, index, raw)

    monkeypatch.setattr(PathCursor, "_verify_in_full", spy)
    for index in range(size):
        cursor.verify(tree.leaves[index], index, _enc(tree.inclusion(index, size)))
    assert len(in_full) < 10
    assert in_full[0] == 0
    cursor = PathCursor(size, tree.root(size))
    for index in range(600):
        cursor.verify(tree.leaves[index], index, _enc(tree.inclusion(index, size)))
    proof = tree.inclusion(600, size)
    assert (600 ^ 599).bit_length() == 4
    proof[1] = bytes(32)  # one of the 4 siblings below where 600's path leaves 599's
    with pytest.raises(ProofInvalid, match="index 600 does not lead to the root"):
        cursor.verify(tree.leaves[600], 600, _enc(proof))
    proof = tree.inclusion(601, size)
    proof[-1] = bytes(32)  # a hash 599's proof has too
    with pytest.raises(ProofInvalid, match="index 601 does not lead to the root"):
        cursor.verify(tree.leaves[601], 601, _enc(proof))


@FUZZ
@given(
    st.text(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
        min_size=44,
        max_size=44,
    )
)
def test_fast_path_base64_agrees_with_the_strict_decoder(token: str) -> None:
    """The fast path decodes one 44-character hash with binascii in strict mode; the
    strict path decodes the whole array with msgspec. They agree on every such token."""
    try:
        fast: bytes | None = binascii.a2b_base64(token.encode(), strict_mode=True)
    except binascii.Error:
        fast = None
    try:
        (strict,) = msgspec.json.decode(f'["{token}"]'.encode(), type=tuple[bytes, ...])
    except msgspec.ValidationError:
        strict = None
    assert fast == strict


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


# Receipt ids as the writer makes them (plain text, the compact fast path), or any text.
RECEIPT_IDS = st.lists(
    st.text("0123456789abcdef-", max_size=12) | st.text(max_size=12), max_size=20
)


@FUZZ
@given(JSON, RECEIPT_IDS, st.integers(1, 64), st.booleans())
def test_stream_parser_matches_msgspec(
    value: object, receipts: list[str], chunk: int, receipts_first: bool
) -> None:
    state = (
        {"receipts": receipts, "x": value} if receipts_first else {"x": value, "receipts": receipts}
    )
    doc = {"kind": "state", "state": state}
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


# ---- the line reader ------------------------------------------------------------------


@FUZZ
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.booleans(),
    st.integers(1, 50),
    st.integers(1, 60),
)
def test_line_reader_gives_the_lines_split_gives(
    lines: list[bytes], final_newline: bool, block: int, limit: int
) -> None:
    """Lines cut at any block boundary, and lines longer than the limit (handed out as
    chunks), come out as ``split(b"\\n")`` gives them; a final newline adds no line."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    with (
        mock.patch.object(lines_mod, "_BLOCK", block),
        mock.patch.object(lines_mod, "LINE_LIMIT", limit),
    ):
        got = [
            item if isinstance(item, bytes) else b"".join(item)
            for item in lines_mod._lines(io.BytesIO(data))
        ]
    assert got == expected


# ---- the receipt id check -------------------------------------------------------------


def _expected_match(event_id: str, receipt_id: str) -> bool:
    try:
        return receipt_id == receipt_id_for(event_id)
    except MalformedInput:
        return False


@FUZZ
@given(
    st.integers(0, 2**130 - 1),
    st.integers(0, 7),
    st.integers(0, 40),
    st.characters(codec="utf-8") | st.sampled_from("abcdefILOUilou_ -+0123456789ABCDEF"),
    st.text(max_size=40),
)
def test_receipt_id_check_agrees_with_the_derivation(
    n: int, kind: int, pos: int, char: str, text: str
) -> None:
    """receipt_id_matches (the bundle loop's check, which compares digits) says yes
    exactly when the receipt id is receipt_id_for's text, for ULIDs of up to 130 bits
    and receipt ids or event ids with one thing changed."""
    event_id = kit.ulid_from_int(n)
    receipt_id = kit.uuid_from_ulid_int(n % 2**128)
    if kind == 1:  # one character of the receipt id
        i = pos % len(receipt_id)
        receipt_id = receipt_id[:i] + char + receipt_id[i + 1 :]
    elif kind == 2:  # one character of the event id
        i = pos % len(event_id)
        event_id = event_id[:i] + char + event_id[i + 1 :]
    elif kind == 3:  # upper case
        receipt_id = receipt_id.upper()
    elif kind == 4:  # hyphens: all but one dropped, all dropped, one more, one moved
        digits = receipt_id.replace("-", "")
        i = pos % 33
        h = [8, 13, 18, 23][pos % 4]
        receipt_id = [
            digits[:i] + "-" + digits[i:],
            digits,
            receipt_id + "-",
            receipt_id[:h] + receipt_id[h + 1] + "-" + receipt_id[h + 2 :],
        ][pos % 4]
    elif kind == 5:  # an event id a character short (a leading "0": the same number)
        event_id = event_id[1:] if pos % 2 else event_id[:-1]
    elif kind == 6:
        receipt_id = text
    elif kind == 7:
        event_id = text
    assert receipt_id_matches(event_id, receipt_id) == _expected_match(event_id, receipt_id)
