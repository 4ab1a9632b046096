"""The C2SP ``tlog-checkpoint`` note body (https://c2sp.org/tlog-checkpoint).

::

    <origin>\\n
    <tree size, decimal, no leading zeros, below 2**64>\\n
    <base64 root hash>\\n
    [extension lines]\\n

The body is signed as a C2SP signed note (:mod:`ledger.note`) by a key whose name
equals the origin.
"""

from __future__ import annotations

import base64
import binascii
import re

import msgspec

from ledger.errors import SignatureError
from ledger.merkle import EMPTY_ROOT, HASH_SIZE
from ledger.note import NoteSigner, NoteVerifier, open_note, sign_note

__all__ = ["Checkpoint", "open_checkpoint"]

_SIZE = re.compile("0|[1-9][0-9]*")
_MAX_SIZE = (1 << 64) - 1
_MAX_SIZE_DIGITS = len(str(_MAX_SIZE))


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The exact note text that is signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    def sign(self, signer: NoteSigner) -> str:
        """The signed note for this checkpoint."""
        if signer.name != self.origin:
            raise SignatureError(f"key name {signer.name!r} is not the origin {self.origin!r}")
        return sign_note(self.body(), signer)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body (already verified; see :func:`open_checkpoint`)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise SignatureError("a checkpoint has an origin, a size and a root, each a line")
        origin, size_text, root_text, *extensions = lines[:-1]
        if not origin:
            raise SignatureError("checkpoint origin is empty")
        # Checked before int(), which takes "+1", " 1", "1_0" and non-ASCII digits and
        # raises a bare ValueError past 4300 digits; C2SP sizes are uint64.
        if (
            len(size_text) > _MAX_SIZE_DIGITS
            or not _SIZE.fullmatch(size_text)
            or int(size_text) > _MAX_SIZE
        ):
            raise SignatureError(
                f"checkpoint tree size {size_text[:40]!r} is not a decimal number below 2**64"
            )
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SignatureError("checkpoint root hash is not valid base64") from e
        if len(root) != HASH_SIZE:
            raise SignatureError(f"checkpoint root hash is {len(root)} bytes, not {HASH_SIZE}")
        if size_text == "0" and root != EMPTY_ROOT:
            # RFC 9162 §2.1.1: no other root belongs to the empty tree.
            raise SignatureError("a checkpoint of tree size 0 must have the empty tree's root")
        if any(not ext for ext in extensions):
            raise SignatureError("checkpoint extension lines must not be empty")
        return cls(origin, int(size_text), root, tuple(extensions))


def open_checkpoint(note: str | bytes, verifier: NoteVerifier) -> Checkpoint:
    """Verify a signed checkpoint note against ``verifier`` and parse its body.

    The origin must equal the verifier's key name, so that a key cannot vouch for
    another log's checkpoints.
    """
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if checkpoint.origin != verifier.name:
        raise SignatureError(
            f"checkpoint origin {checkpoint.origin!r} is not the key name {verifier.name!r}"
        )
    return checkpoint
