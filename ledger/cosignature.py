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

from cryptography.exceptions import InvalidSignature

from ledger.errors import SignatureError
from ledger.note import Ed25519NoteKey, parse_signature_line

__all__ = ["WitnessKey", "note_text"]

_TYPE_COSIGNATURE_V1 = 0x04
_MAX_TIMESTAMP = (1 << 63) - 1
_BLOB_BYTES = 4 + 8 + 64


def note_text(note: str) -> str:
    """The text of a signed note (up to and including the newline before the blank
    line): what a witness cosigns. A checkpoint body holds no empty line, so the first
    blank line is the one before the signatures."""
    split = note.find("\n\n")
    if split < 0:
        raise SignatureError("note has no blank line before its signatures")
    return note[: split + 1]


class WitnessKey(Ed25519NoteKey):
    """A witness's cosignature/v1 verifier key, parsed from its vkey."""

    __slots__ = ()
    ALG = _TYPE_COSIGNATURE_V1
    WHAT = "witness key"

    def __repr__(self) -> str:
        return f"WitnessKey({self.vkey!r})"

    def owns(self, line: str) -> bool:
        """Whether ``line`` is a signature line with this witness's name and key ID
        (malformed lines are nobody's)."""
        try:
            name, blob = parse_signature_line(line)
        except SignatureError:
            return False
        return name == self.name and blob[:4] == self.key_id.to_bytes(4, "big")

    def verify(self, text: str, line: str) -> int:
        """Check that ``line`` (without its newline) is this witness's valid cosignature
        on the checkpoint note text ``text``; its timestamp. Raises
        :class:`SignatureError` otherwise."""
        name, blob = parse_signature_line(line)
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
