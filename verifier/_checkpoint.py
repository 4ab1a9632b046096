"""C2SP ``tlog-checkpoint`` bodies (https://c2sp.org/tlog-checkpoint), verified as signed notes.

::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <base64 root hash (32 bytes)>\\n
    [non-empty extension lines]\\n

``specs/log-format.md`` §3: the note must be signed by the trusted key, and the origin
must equal that key's name (§4.1 step 1), so a key cannot vouch for another log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import msgspec

from verifier._errors import MalformedInput, SignatureInvalid
from verifier._note import VerifierKey, open_note, parse_vkey

__all__ = ["Checkpoint", "parse_checkpoint_body", "verify_checkpoint"]

_MAX_SIZE = (1 << 64) - 1
_EMPTY_ROOT = hashlib.sha256(b"").digest()


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A verified checkpoint: origin, tree size, root hash, extensions, and its signed note."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]
    note: str


def parse_checkpoint_body(text: str, note: str = "") -> Checkpoint:
    """Parse a checkpoint body (the text of an already verified note)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise MalformedInput("a checkpoint has an origin, a tree size and a root hash, each a line")
    origin, size_text, root_text, *extensions = lines[:-1]
    if not origin:
        raise MalformedInput("checkpoint origin is empty")
    if (
        not size_text.isascii()
        or not size_text.isdigit()
        or (len(size_text) > 1 and size_text[0] == "0")
        or len(size_text) > 20
    ):
        raise MalformedInput(f"checkpoint tree size {size_text[:40]!r} is not a decimal number")
    size = int(size_text)
    if size > _MAX_SIZE:
        raise MalformedInput(f"checkpoint tree size {size} does not fit in 64 bits")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedInput("checkpoint root hash is not valid base64") from e
    if len(root) != 32:
        raise MalformedInput(f"checkpoint root hash is {len(root)} bytes, not 32")
    if size == 0 and root != _EMPTY_ROOT:
        # RFC 9162 §2.1.1: the empty tree's hash is SHA-256 of nothing; no other root
        # belongs to size 0.
        raise MalformedInput("a checkpoint of tree size 0 must have the empty tree's root")
    if any(not ext for ext in extensions):
        raise MalformedInput("checkpoint extension lines must not be empty")
    return Checkpoint(origin, size, root, tuple(extensions), note)


def verify_checkpoint(note_text: str | bytes, vkey: str | VerifierKey) -> Checkpoint:
    """``specs/log-format.md`` §4.1 step 1: verify a signed checkpoint under the trusted key.

    1. Verify the note's signature by the trusted key (unknown keys ignored).
    2. Parse the body as a C2SP checkpoint.
    3. Its origin must equal the key's name.

    Returns the :class:`Checkpoint` or raises a :class:`VerificationError` subclass.
    """
    key = parse_vkey(vkey)
    # 1. Signature.
    text = open_note(note_text, key)
    note = note_text if isinstance(note_text, str) else note_text.decode("utf-8")
    # 2. Body.
    checkpoint = parse_checkpoint_body(text, note)
    # 3. Origin.
    if checkpoint.origin != key.name:
        raise SignatureInvalid(
            f"checkpoint origin {checkpoint.origin!r} is not the trusted key's name {key.name!r}"
        )
    return checkpoint
