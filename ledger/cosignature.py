"""Witness keys and cosignature lines, the log's side of C2SP ``tlog-cosignature`` v1
(https://c2sp.org/tlog-cosignature; ``specs/log-format.md`` §9.1 and §9.2).

The log checks every cosignature a witness returns before it keeps or publishes it, so a
witness answering garbage (or a proxy in front of one) cannot get garbage published:

- witness vkey: ``<name>+<8 hex key ID>+<base64(0x04 || 32-byte Ed25519 key)>``, the key
  ID ``SHA-256(name || 0x0A || 0x04 || key)[:4]``; type 0x01 (a log key) is refused;
- a cosignature line: ``— <name> <base64(key ID || 8-byte timestamp || 64-byte sig)>``;
- signed message: ``cosignature/v1\\ntime <timestamp>\\n`` then the checkpoint's note
  text exactly as the log signed it.

The verifier (``verifier/_cosignature.py``) implements the same rules independently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import SignatureError

__all__ = ["WitnessKey", "note_text"]

_TYPE_COSIGNATURE_V1 = 0x04
_SIG_PREFIX = "\u2014 "
_MAX_TIMESTAMP = (1 << 63) - 1
_BLOB_BYTES = 4 + 8 + 64


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(name) and not any(c.isspace() or c == "+" for c in name)


def note_text(note: str) -> str:
    """The text of a signed note (up to and including the newline before the blank
    line): what a witness cosigns. A checkpoint body holds no empty line, so the first
    blank line is the one before the signatures."""
    split = note.find("\n\n")
    if split < 0:
        raise SignatureError("note has no blank line before its signatures")
    return note[: split + 1]


class WitnessKey:
    """A witness's cosignature/v1 verifier key, parsed from its vkey."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not _valid_name(name):
            raise SignatureError(f"witness key name {name!r} is empty or has a space or '+'")
        if len(public_key) != 32:
            raise SignatureError(f"Ed25519 public key is {len(public_key)} bytes, not 32")
        self.name = name
        self.public_key = public_key
        digest = hashlib.sha256(
            name.encode() + b"\n" + bytes([_TYPE_COSIGNATURE_V1]) + public_key
        ).digest()
        self.key_id = int.from_bytes(digest[:4], "big")
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> WitnessKey:
        parts = vkey.strip().split("+", 2)  # base64 may itself hold "+"
        if len(parts) != 3:
            raise SignatureError("a witness key has the form <name>+<8 hex key ID>+<base64 key>")
        name, hex_id, b64 = parts
        try:
            key = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SignatureError("the witness key is not valid base64") from e
        if len(key) != 33 or key[0] != _TYPE_COSIGNATURE_V1:
            # A log's 0x01 key given as a witness is refused, not reinterpreted.
            raise SignatureError(
                "the witness key is not an Ed25519 cosignature/v1 key (type 0x04, 32 bytes)"
            )
        witness = cls(name, key[1:])
        if len(hex_id) != 8 or f"{witness.key_id:08x}" != hex_id.lower():
            raise SignatureError(f"witness key ID {hex_id!r} does not match its key")
        return witness

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([_TYPE_COSIGNATURE_V1]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    def __repr__(self) -> str:
        return f"WitnessKey({self.vkey!r})"

    def owns(self, line: str) -> bool:
        """Whether ``line`` is a signature line with this witness's name and key ID
        (malformed lines are nobody's)."""
        try:
            name, blob = _split_line(line)
        except SignatureError:
            return False
        return name == self.name and blob[:4] == self.key_id.to_bytes(4, "big")

    def verify(self, text: str, line: str) -> int:
        """Check that ``line`` (without its newline) is this witness's valid cosignature
        on the checkpoint note text ``text``; its timestamp. Raises
        :class:`SignatureError` otherwise."""
        name, blob = _split_line(line)
        if name != self.name or blob[:4] != self.key_id.to_bytes(4, "big"):
            raise SignatureError(f"the line is not signed by witness {self.vkey}")
        if len(blob) != _BLOB_BYTES:
            raise SignatureError(
                f"the cosignature by {self.name!r} is {len(blob)} bytes, not {_BLOB_BYTES}"
            )
        timestamp = int.from_bytes(blob[4:12], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise SignatureError(f"the cosignature by {self.name!r} has a timestamp above 2^63-1")
        message = b"cosignature/v1\ntime %d\n" % timestamp + text.encode()
        try:
            self._key.verify(blob[12:], message)
        except InvalidSignature as e:
            raise SignatureError(
                f"the cosignature by {self.name!r} does not verify on this checkpoint"
            ) from e
        return timestamp


def _split_line(line: str) -> tuple[str, bytes]:
    if not line.startswith(_SIG_PREFIX):
        raise SignatureError("not a signature line")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not _valid_name(name) or not b64 or " " in b64:
        raise SignatureError("malformed signature line")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError("the signature is not valid base64") from e
    if len(blob) < 5:
        raise SignatureError("the signature is too short to hold a key ID")
    return name, blob
