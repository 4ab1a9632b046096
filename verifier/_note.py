"""C2SP signed-note verification with Ed25519 (https://c2sp.org/signed-note).

A signed note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(4-byte key ID || signature)>`` (U+2014, space). The signature
covers the text including its final newline (``specs/log-format.md`` §3).

- Key ID: ``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]``, big-endian.
- Verifier key (vkey): ``<name>+<8 hex key ID>+<base64(0x01 || public key)>``.

As in Go's ``sumdb/note.Open``: signatures from unknown keys are ignored; a known key's
failed signature rejects the note; a note with no signature by the trusted key is
rejected; more than 100 signature lines is malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from verifier._errors import MalformedInput, SignatureInvalid

__all__ = [
    "VerifierKey",
    "b64_decode",
    "open_note",
    "parse_signature_line",
    "parse_vkey",
    "split_note",
    "valid_key_name",
]

_ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "
_MAX_SIGNATURES = 100


def b64_decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedInput(f"{what} is not valid base64") from e


def _well_formed(text: str) -> bool:
    # A Python str may hold lone surrogates (a non-UTF-8 byte in argv becomes one),
    # which no UTF-8 text can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_key_name(name: str) -> bool:
    # C2SP: a key name is non-empty well-formed UTF-8 with no Unicode spaces and no plus
    # sign.
    return bool(name) and _well_formed(name) and not any(c.isspace() or c == "+" for c in name)


def key_id(name: str, public_key: bytes, alg: int = _ALG_ED25519) -> int:
    """``SHA-256(name || 0x0A || alg || public key)[:4]`` as a big-endian integer (alg
    0x01 for a log's key, 0x04 for a witness's)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def render_vkey(name: str, kid: int, alg: int, public_key: bytes) -> str:
    """``<name>+<8 hex key ID>+<base64(alg || key)>``: :func:`decode_vkey` undone."""
    return f"{name}+{kid:08x}+{base64.b64encode(bytes([alg]) + public_key).decode()}"


def decode_vkey(
    vkey: str, alg: int, what: str, kind: str
) -> tuple[str, int, bytes, Ed25519PublicKey]:
    """``<name>+<hex id>+<base64(alg || key)>``: its name, key ID, public key and loaded
    key; the ID must match the key. ``what`` names the key in errors (``verifier key``),
    ``kind`` says what a key of another type is not."""
    parts = vkey.strip().split("+", 2)  # base64 may itself hold "+"
    if len(parts) != 3:
        raise MalformedInput(f"a {what} has the form <name>+<8 hex key ID>+<base64 key>")
    name, hex_id, b64 = parts
    if not valid_key_name(name):
        raise MalformedInput(f"{what} name {name!r} is empty, not UTF-8, or has a space or '+'")
    key = b64_decode(b64, what)
    if len(key) != 33 or key[0] != alg:
        raise MalformedInput(f"{what} is not {kind}")
    public_key = key[1:]
    kid = key_id(name, public_key, alg)
    if len(hex_id) != 8 or not all(c in "0123456789abcdefABCDEF" for c in hex_id):
        raise MalformedInput(f"{what} ID {hex_id!r} is not 8 hex digits")
    if int(hex_id, 16) != kid:
        raise MalformedInput(f"{what} ID {hex_id!r} does not match its key ({kid:08x})")
    try:
        ed_key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as e:  # pragma: no cover - any 32 bytes load; kept for safety
        raise MalformedInput(f"{what} is not a valid Ed25519 public key") from e
    return name, kid, public_key, ed_key


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A trusted Ed25519 note verifier key: its name, key ID and public key."""

    name: str
    key_id: int
    public_key: bytes
    _key: Ed25519PublicKey = field(compare=False, repr=False)

    @property
    def vkey(self) -> str:
        return render_vkey(self.name, self.key_id, _ALG_ED25519, self.public_key)

    def verify_signature(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureInvalid` unless ``signature`` is this key's over ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature as e:
            raise SignatureInvalid(
                f"the signature by trusted key {self.name!r} does not verify"
            ) from e


def parse_vkey(vkey: str | VerifierKey) -> VerifierKey:
    """Parse ``<name>+<hex id>+<base64(0x01 || key)>``; the ID must match the key."""
    if isinstance(vkey, VerifierKey):
        return vkey
    if not isinstance(vkey, str):
        raise MalformedInput("a verifier key must be a string")
    name, kid, public_key, ed_key = decode_vkey(
        vkey, _ALG_ED25519, "verifier key", "an Ed25519 key (type 0x01 and 32 bytes)"
    )
    return VerifierKey(name, kid, public_key, ed_key)


def split_note(note: str | bytes) -> tuple[str, list[str]]:
    """Signed-note steps 1-2: the note's text (with its final newline) and its signature
    lines, or :class:`MalformedInput`. Shared by :func:`open_note` and the cosignature
    checks (``verifier._cosignature``), so both read a note by the same rules."""
    # 1. The note is UTF-8 with no ASCII control characters other than newline.
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedInput("signed note is not valid UTF-8") from e
    elif not isinstance(note, str):
        raise MalformedInput("signed note must be text")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedInput("signed note is not valid Unicode (lone surrogate)") from e
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise MalformedInput("signed note contains a control character other than newline")
    # 2. The text ends at the last blank line; signature lines follow it.
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedInput("signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedInput("signed note's signature block must end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise MalformedInput(f"signed note has more than {_MAX_SIGNATURES} signatures")
    return text, lines


def parse_signature_line(line: str) -> tuple[str, int, bytes]:
    """Signed-note step 3: ``— <name> <base64(key ID || signature)>`` as (name, key ID,
    signature), or :class:`MalformedInput`."""
    if not line.startswith(_SIG_PREFIX):
        raise MalformedInput(f"malformed signature line {line[:60]!r}")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not valid_key_name(name) or not b64 or " " in b64:
        raise MalformedInput(f"malformed signature line {line[:60]!r}")
    blob = b64_decode(b64, "signature")
    if len(blob) < 5:
        raise MalformedInput("signature is too short to hold a key ID")
    return name, int.from_bytes(blob[:4], "big"), blob[4:]


def open_note(note: str | bytes, key: VerifierKey) -> str:
    """Verify a signed note under ``key`` and return its text (signed-note "Verifying").

    Returns the text (with its final newline) or raises :class:`MalformedInput` (syntax)
    or :class:`SignatureInvalid` (no signature by ``key``, or a bad one).
    """
    # 1-2. UTF-8 text, a blank line, signature lines.
    text, lines = split_note(note)
    message = text.encode("utf-8")
    verified = 0
    for line in lines:
        # 3. Each line is "— <name> <base64(key ID || signature)>".
        name, kid, signature = parse_signature_line(line)
        # 4. Signatures by keys other than the trusted one are ignored.
        if name != key.name or kid != key.key_id:
            continue
        # 5. A signature by the trusted key must verify.
        key.verify_signature(message, signature)
        verified += 1
    if not verified:
        raise SignatureInvalid(
            f"signed note has no signature by the trusted key {key.name}+{key.key_id:08x}"
        )
    return text
