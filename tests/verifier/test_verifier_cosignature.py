"""C2SP tlog-cosignature v1 (specs/log-format.md §9.1-§9.2) and the witness quorum
(§9.5), on checkpoints signed by the writer (``ledger``) with real Ed25519 keys."""

from __future__ import annotations

import base64
import hashlib

import pytest
import verifier_testkit as kit
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.checkpoint import Checkpoint as WriterCheckpoint
from ledger.note import sign_note
from verifier import (
    MalformedInput,
    QuorumNotMet,
    SignatureInvalid,
    WitnessSigner,
    parse_witness_vkey,
    verify_cosignature,
    verify_witnessed,
    witness_policy,
)
from verifier._cosignature import cosigned_message, cosigned_text
from verifier._note import parse_signature_line, split_note

TREE = kit.Tree([kit.leaf_hash(b"leaf %d" % i) for i in range(64)])
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def note(size: int = 10, extensions: tuple[str, ...] = ()) -> str:
    """The log's signed checkpoint of ``size`` (with extension lines, if given)."""
    text = WriterCheckpoint(kit.ORIGIN, size, TREE.root(size)).body()
    return sign_note(text + "".join(e + "\n" for e in extensions), kit.signer())


def witness(seed: int, name: str = "witness.test/w") -> WitnessSigner:
    return WitnessSigner(f"{name}{seed}", Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


W1, W2, W3 = witness(1), witness(2), witness(3)


def test_cosignature_verifies_and_reports_its_witness_and_time() -> None:
    cp = note()
    line = W1.cosign(cosigned_text(cp), T0)
    got = verify_cosignature(cp, line, W1.key.vkey)
    assert (got.witness, got.timestamp) == (W1.key.vkey, T0)
    # The line's bytes: key ID || 8-byte big-endian time || 64-byte signature.
    blob = base64.b64decode(line.split(" ")[2])
    assert len(blob) == 4 + 8 + 64
    assert blob[:4] == W1.key.key_id.to_bytes(4, "big")
    assert int.from_bytes(blob[4:12], "big") == T0
    # The signed message is the C2SP one, over the note text as given.
    text = cp.split("\n\n")[0].encode() + b"\n"
    message = b"cosignature/v1\ntime %d\n" % T0 + text
    assert cosigned_message(text, T0) == message
    W1.key._key.verify(blob[12:], message)


def test_witness_vkey_has_type_4_and_a_key_id_over_it() -> None:
    name, hex_id, b64 = W1.key.vkey.split("+", 2)
    key = base64.b64decode(b64)
    assert key[0] == 0x04
    expected = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    assert bytes.fromhex(hex_id) == expected
    assert parse_witness_vkey(W1.key.vkey) == W1.key


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        (kit.signer().verifier.vkey, "type 0x04"),  # a log (0x01) key given as a witness
        ("w+00000000+" + base64.b64encode(b"\x04" + b"k" * 32).decode(), "does not match"),
        ("w+zz+" + base64.b64encode(b"\x04" + b"k" * 32).decode(), "8 hex digits"),
        ("two words+00000000+AA==", "name"),
        ("w+00000000+not base64", "base64"),
        ("nothing", "form"),
    ],
)
def test_bad_witness_vkeys_are_malformed(vkey: str, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        parse_witness_vkey(vkey)


def test_a_flipped_bit_anywhere_in_the_signature_is_rejected() -> None:
    cp = note()
    line = W1.cosign(cosigned_text(cp), T0)
    prefix, b64 = line.rstrip("\n").rsplit(" ", 1)
    blob = base64.b64decode(b64)
    for i in range(4, len(blob)):  # past the key ID (a changed ID is another key)
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        bad = f"{prefix} {base64.b64encode(bytes(flipped)).decode()}\n"
        with pytest.raises(SignatureInvalid):
            verify_cosignature(cp, bad, W1.key)


def test_a_wrong_key_a_wrong_timestamp_and_another_checkpoint_are_rejected() -> None:
    cp = note(10)
    line = W1.cosign(cosigned_text(cp), T0)
    # Another witness's key: the line is not its.
    with pytest.raises(SignatureInvalid, match="not by the witness"):
        verify_cosignature(cp, line, W2.key)
    # The same name with another key: the key ID differs.
    impostor = WitnessSigner(W1.key.name, Ed25519PrivateKey.from_private_bytes(b"\x09" * 32))
    with pytest.raises(SignatureInvalid, match="not by the witness"):
        verify_cosignature(cp, line, impostor.key)
    # A signature made at one time, presented with another.
    other_time = W1.cosign(cosigned_text(cp), T0 + 1)
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[12:] = base64.b64decode(other_time.split(" ")[2])[12:]
    swapped = f"\u2014 {W1.key.name} {base64.b64encode(bytes(blob)).decode()}"
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_cosignature(cp, swapped, W1.key)
    # A cosignature for another checkpoint of the log.
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_cosignature(note(11), line, W1.key)


def test_a_timestamp_above_2_63_is_rejected_and_never_made() -> None:
    cp = note()
    with pytest.raises(ValueError, match="2\\^63"):
        W1.cosign(cosigned_text(cp), 1 << 63)
    line = W1.cosign(cosigned_text(cp), (1 << 63) - 1)
    assert verify_cosignature(cp, line, W1.key).timestamp == (1 << 63) - 1
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[4] |= 0x80
    bad = f"\u2014 {W1.key.name} {base64.b64encode(bytes(blob)).decode()}"
    with pytest.raises(SignatureInvalid, match="above 2\\^63 - 1"):
        verify_cosignature(cp, bad, W1.key)


def test_extension_lines_are_cosigned_too() -> None:
    cp = note(12, ("ext one",))
    line = W1.cosign(cosigned_text(cp), T0)
    assert verify_cosignature(cp, line, W1.key).timestamp == T0
    without = note(12)
    with pytest.raises(SignatureInvalid):
        verify_cosignature(without, line, W1.key)


def test_a_note_that_is_not_a_checkpoint_is_malformed() -> None:
    bad = "just one line\n\n\u2014 x AAAAAAA=\n"
    with pytest.raises(MalformedInput):
        verify_cosignature(bad, W1.cosign(b"just one line\n", T0), W1.key)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=64),
    timestamp=st.integers(min_value=0, max_value=(1 << 63) - 1),
    seed=st.integers(min_value=1, max_value=255),
)
def test_cosignature_round_trips(size: int, timestamp: int, seed: int) -> None:
    w = witness(seed)
    cp = note(size)
    line = w.cosign(cosigned_text(cp), timestamp)
    got = verify_cosignature(cp, line, parse_witness_vkey(w.key.vkey))
    assert (got.witness, got.timestamp) == (w.key.vkey, timestamp)
    assert WitnessSigner.from_skey(w.skey).key == w.key


def _parts(note_text: str) -> tuple[str, tuple[str, int, bytes]] | None:
    """The note's text and its last signature line, parsed; None if it does not parse."""
    try:
        text, lines = split_note(note_text)
        return text, parse_signature_line(lines[-1])
    except MalformedInput:
        return None


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_a_cosigned_note_verifies_iff_unmodified(position: int, bit: int) -> None:
    """Flip one bit of a cosigned note: the cosignature verifies exactly when the note
    text and the cosignature's decoded bytes are what they were. (The log's own line is
    not read by the quorum check; a base64 character's unused low bits decode to the
    same bytes, as in Go's non-strict base64.)"""
    cp = note(20)
    original = cp + W1.cosign(cosigned_text(cp), T0)
    data = bytearray(original.encode())
    i = position % len(data)
    data[i] ^= 1 << bit
    try:
        changed = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # not text: no note to verify
    # In bytes, as ``i`` is: the signature lines begin with "—", three bytes in UTF-8.
    log_line = range(len(cp[: cp.index("\n\n") + 2].encode()), len(cp.encode()))
    try:
        verify_witnessed(changed, witness_policy([W1.key]))
        verified = True
    except (SignatureInvalid, MalformedInput, QuorumNotMet):
        verified = False
    if i in log_line:
        return  # the log's signature is verify_checkpoint's to check, not the quorum's
    assert verified == (_parts(changed) == _parts(original)), f"byte {i} bit {bit}"


def cosigned(cp: str, *signers: WitnessSigner, at: int = T0) -> str:
    return cp + "".join(s.cosign(cosigned_text(cp), at) for s in signers)


def test_quorum_defaults_to_every_witness_and_names_the_missing() -> None:
    cp = note()
    policy = witness_policy([W1.key.vkey, W2.key.vkey, W3.key.vkey])
    assert policy.quorum == 3
    got = verify_witnessed(cosigned(cp, W3, W1, W2), policy)
    assert [c.witness for c in got] == [W1.key.vkey, W2.key.vkey, W3.key.vkey]
    with pytest.raises(QuorumNotMet) as info:
        verify_witnessed(cosigned(cp, W1, W3), policy)
    assert info.value.missing == (W2.key.vkey,)
    assert W2.key.vkey in str(info.value)
    assert "from 2 of the trusted witnesses, 3 required" in str(info.value)


def test_quorum_k_of_n_counts_distinct_trusted_witnesses() -> None:
    cp = note()
    policy = witness_policy([W1.key, W2.key, W3.key], 2)
    assert len(verify_witnessed(cosigned(cp, W2, W3), policy)) == 2
    # One witness twice is one witness.
    with pytest.raises(QuorumNotMet, match="from 1 of"):
        verify_witnessed(cosigned(cp, W2, W2), policy)
    # Cosignatures by untrusted witnesses are ignored, not counted.
    stranger = witness(40)
    with pytest.raises(QuorumNotMet, match="from 1 of"):
        verify_witnessed(cosigned(cp, stranger, W1), policy)
    # The log's own signature is not a cosignature.
    with pytest.raises(QuorumNotMet, match="from 0 of"):
        verify_witnessed(cp, policy)


def test_a_trusted_witness_bad_cosignature_rejects_the_note() -> None:
    cp = note(10)
    other = W2.cosign(cosigned_text(note(11)), T0)  # W2's line for another checkpoint
    policy = witness_policy([W1.key, W2.key], 1)
    with pytest.raises(SignatureInvalid, match=W2.key.name):
        verify_witnessed(cosigned(cp, W1) + other, policy)


@pytest.mark.parametrize(
    ("keys", "quorum", "message"),
    [
        ([], None, "at least one"),
        ([W1.key, W1.key], None, "given twice"),
        ([W1.key, W2.key], 3, "within 1..2"),
        ([W1.key], 0, "within 1..1"),
    ],
)
def test_bad_policies_are_malformed(keys: list[object], quorum: int | None, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        witness_policy(keys, quorum)  # type: ignore[arg-type]


def test_one_key_under_two_names_counts_once() -> None:
    twin = WitnessSigner("witness.test/twin", Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
    with pytest.raises(MalformedInput, match="share one public key"):
        witness_policy([W1.key, twin.key])


def test_the_private_key_is_never_in_repr_or_errors() -> None:
    seed_b64 = base64.b64encode(b"\x04" + b"\x01" * 32).decode()
    assert seed_b64 in W1.skey
    assert seed_b64 not in repr(W1)
    assert "PRIVATE" not in repr(W1)
    broken = W1.skey[:-4] + "!!!!"
    with pytest.raises(MalformedInput) as info:
        WitnessSigner.from_skey(broken)
    assert seed_b64[:20] not in str(info.value)


def test_a_go_note_signer_key_loads_as_its_cosignature_key() -> None:
    """An 0x01 ``sumdb/note`` skey (Go's NewSignerForCosignatureV1 accepts it too) gives
    the same public key under the cosignature key ID."""
    seed = b"\x01" * 32
    public = W1.key.public_key
    legacy_id = hashlib.sha256(W1.key.name.encode() + b"\n\x01" + public).digest()[:4]
    skey = (
        f"PRIVATE+KEY+{W1.key.name}+{legacy_id.hex()}+" + base64.b64encode(b"\x01" + seed).decode()
    )
    assert WitnessSigner.from_skey(skey).key == W1.key
    with pytest.raises(MalformedInput, match="does not match"):
        WitnessSigner.from_skey(skey.replace(legacy_id.hex(), "00000000"))
