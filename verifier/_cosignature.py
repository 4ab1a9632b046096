"""C2SP ``tlog-cosignature`` v1 with Ed25519 (https://c2sp.org/tlog-cosignature):
verifying a witness's cosignature on a checkpoint, and making one (``specs/log-format.md``
§9.1 and §9.2).

A cosignature is a signed-note signature line (C2SP signed-note) on a checkpoint:

- key ID: ``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]`` (type 0x04, not
  the log's 0x01, so a log key and a witness key never share an ID);
- signature: ``key ID || 8-byte big-endian timestamp || 64-byte Ed25519 signature``;
- signed message: ``cosignature/v1\\ntime <timestamp>\\n`` followed by the checkpoint's
  note text, byte for byte as received (its extension lines too, no signature lines);
- witness vkey: ``<name>+<8 hex key ID>+<base64(0x04 || public key)>``.

The timestamp is POSIX seconds and at most 2^63 - 1. The signed message does not name
the witness, so one key must never serve two witness names (C2SP; §9.1).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from verifier._checkpoint import parse_checkpoint_body
from verifier._errors import MalformedInput, SignatureInvalid
from verifier._note import (
    b64_decode,
    decode_vkey,
    key_id,
    parse_signature_line,
    render_vkey,
    split_note,
    valid_key_name,
)

__all__ = [
    "MAX_TIMESTAMP",
    "Cosignature",
    "WitnessKey",
    "WitnessSigner",
    "cosignature_key_id",
    "cosigned_message",
    "cosigned_text",
    "parse_witness_vkey",
    "verify_cosignature",
]

_ALG_ED25519 = 0x01
_ALG_COSIGNATURE_V1 = 0x04
_SIG_PREFIX = "\u2014 "
_TIMESTAMP_BYTES = 8
_ED25519_SIGNATURE_BYTES = 64
MAX_TIMESTAMP = (1 << 63) - 1


def cosignature_key_id(name: str, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || 0x04 || public key)[:4]`` as a big-endian integer."""
    return key_id(name, public_key, _ALG_COSIGNATURE_V1)


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """The bytes a cosignature signs: the ``cosignature/v1`` header, the time line, then
    the checkpoint's note text exactly as given (tlog-cosignature "Ed25519 signed
    message")."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A trusted witness's cosignature/v1 key: its name, key ID and Ed25519 public key."""

    name: str
    key_id: int
    public_key: bytes
    _key: Ed25519PublicKey = field(compare=False, repr=False)

    @property
    def vkey(self) -> str:
        return render_vkey(self.name, self.key_id, _ALG_COSIGNATURE_V1, self.public_key)

    def matches(self, name: str, key_id: int) -> bool:
        """Whether a signature line's name and key ID are this key's."""
        return name == self.name and key_id == self.key_id


def _witness_key(name: str, public_key: bytes) -> WitnessKey:
    ed_key = Ed25519PublicKey.from_public_bytes(public_key)
    return WitnessKey(name, cosignature_key_id(name, public_key), public_key, ed_key)


def parse_witness_vkey(vkey: str | WitnessKey) -> WitnessKey:
    """Parse ``<name>+<hex id>+<base64(0x04 || key)>``; the ID must match the key.

    Only signature type 0x04 is a cosignature/v1 key: a log's 0x01 vkey given as a
    witness is refused rather than reinterpreted, so a misplaced key is noticed.
    """
    if isinstance(vkey, WitnessKey):
        return vkey
    if not isinstance(vkey, str):
        raise MalformedInput("a witness key must be a string")
    name, kid, public_key, ed_key = decode_vkey(
        vkey,
        _ALG_COSIGNATURE_V1,
        "witness key",
        "an Ed25519 cosignature/v1 key (type 0x04 and 32 bytes)",
    )
    return WitnessKey(name, kid, public_key, ed_key)


class Cosignature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A verified cosignature: the witness's vkey and the time it says it cosigned."""

    witness: str
    timestamp: int


def cosigned_text(note: str | bytes) -> bytes:
    """The note text a cosignature on ``note`` covers, after checking it is a checkpoint
    (signed-note steps 1-2, then the C2SP checkpoint body)."""
    text, _ = split_note(note)
    parse_checkpoint_body(text)
    return text.encode("utf-8")


def check_cosignature(text: bytes, signature: bytes, key: WitnessKey) -> Cosignature:
    """§9.2 steps 4-6 for one signature already matched to ``key`` by name and key ID."""
    # 4. The signature is an 8-byte timestamp and a 64-byte Ed25519 signature.
    if len(signature) != _TIMESTAMP_BYTES + _ED25519_SIGNATURE_BYTES:
        raise SignatureInvalid(
            f"the cosignature by witness {key.name!r} is {len(signature) + 4} bytes, not "
            f"{4 + _TIMESTAMP_BYTES + _ED25519_SIGNATURE_BYTES} (key ID, time, signature)"
        )
    # 5. The timestamp is at most 2^63 - 1.
    timestamp = int.from_bytes(signature[:_TIMESTAMP_BYTES], "big")
    if timestamp > MAX_TIMESTAMP:
        raise SignatureInvalid(
            f"the cosignature by witness {key.name!r} has timestamp {timestamp}, above 2^63 - 1"
        )
    # 6. The Ed25519 signature verifies over the cosigned message with that timestamp.
    try:
        key._key.verify(signature[_TIMESTAMP_BYTES:], cosigned_message(text, timestamp))
    except InvalidSignature as e:
        raise SignatureInvalid(
            f"the cosignature by witness {key.name!r} (time {timestamp}) does not verify on "
            "this checkpoint"
        ) from e
    return Cosignature(key.vkey, timestamp)


def verify_cosignature(note: str | bytes, line: str, key: str | WitnessKey) -> Cosignature:
    """§9.2: verify one cosignature line on the checkpoint ``note`` under a witness key.

    ``note`` is the signed checkpoint (any signature lines it has are not read); ``line``
    is the cosignature line, with or without its newline. Returns the
    :class:`Cosignature` or raises :class:`MalformedInput` or :class:`SignatureInvalid`.
    """
    witness = parse_witness_vkey(key)
    # 1. The note's text is a checkpoint body: it is what the witness cosigned.
    text = cosigned_text(note)
    # 2. The line is a signed-note signature line.
    name, key_id, signature = parse_signature_line(line.removesuffix("\n"))
    # 3. Its name and key ID are the witness's.
    if not witness.matches(name, key_id):
        raise SignatureInvalid(
            f"the signature line is by {name}+{key_id:08x}, not by the witness "
            f"{witness.name}+{witness.key_id:08x}"
        )
    # 4-6. Its size, timestamp and signature.
    return check_cosignature(text, signature, witness)


class WitnessSigner:
    """A witness's private key, making cosignature/v1 lines.

    The key is never part of ``repr``; :attr:`skey` (the key file's text) is the only
    way to read it.
    """

    __slots__ = ("_private", "key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise MalformedInput(
                f"witness name {name!r} is empty, not UTF-8, or has a space or '+'"
            )
        self._private = private_key
        public = private_key.public_key().public_bytes_raw()
        self.key = _witness_key(name, public)

    def __repr__(self) -> str:
        return f"WitnessSigner({self.key.vkey!r})"

    @classmethod
    def generate(cls, name: str) -> WitnessSigner:
        return cls(name, Ed25519PrivateKey.from_private_bytes(secrets.token_bytes(32)))

    @classmethod
    def from_skey(cls, skey: str) -> WitnessSigner:
        """``PRIVATE+KEY+<name>+<hex id>+<base64(type || 32-byte seed)>``, type 0x04 (a
        cosignature key, as written by :attr:`skey`) or 0x01 (a Go ``sumdb/note`` key,
        whose cosignature key ID is derived, as Go's ``NewSignerForCosignatureV1`` does)."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise MalformedInput("a witness key file holds PRIVATE+KEY+<name>+<id>+<key>")
        name, hex_id, b64 = parts[2:]
        seed = b64_decode(b64, "witness private key")
        if len(seed) != 33 or seed[0] not in (_ALG_ED25519, _ALG_COSIGNATURE_V1):
            raise MalformedInput("witness private key is not an Ed25519 seed (type 0x01 or 0x04)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed[1:]))
        # The ID is of the key's type as written: a Go sumdb/note key file (0x01) too.
        expected = key_id(name, signer.key.public_key, seed[0])
        if len(hex_id) != 8 or not all(c in "0123456789abcdefABCDEF" for c in hex_id):
            raise MalformedInput(f"witness private key ID {hex_id!r} is not 8 hex digits")
        if int(hex_id, 16) != expected:
            raise MalformedInput("witness private key ID does not match its key")
        return signer

    @property
    def skey(self) -> str:
        """The key file's text. Secret: written to the key file (mode 0600), never shown."""
        seed = self._private.private_bytes_raw()
        encoded = base64.b64encode(bytes([_ALG_COSIGNATURE_V1]) + seed).decode()
        return f"PRIVATE+KEY+{self.key.name}+{self.key.key_id:08x}+{encoded}"

    def cosign(self, text: bytes, timestamp: int) -> str:
        """The cosignature line (ending in a newline) on the checkpoint note text ``text``
        at ``timestamp`` (POSIX seconds, injected so that tests are deterministic)."""
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise ValueError(f"a cosignature timestamp must be within 0..2^63-1, not {timestamp}")
        signature = self._private.sign(cosigned_message(text, timestamp))
        blob = self.key.key_id.to_bytes(4, "big") + timestamp.to_bytes(8, "big") + signature
        return f"{_SIG_PREFIX}{self.key.name} {base64.b64encode(blob).decode()}\n"
