"""C2SP signed-note with Ed25519 signatures (https://c2sp.org/signed-note).

A signed note is a UTF-8 text ending in a newline, a blank line, then one or more
signature lines ``— <key name> <base64(key ID || signature)>``. The signature covers
the text including its final newline.

- Key ID (§ "Signatures"): the first 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey),
  0x01 being the Ed25519 signature type.
- Verifier key (vkey): ``<name>+<hex key ID>+<base64(0x01 || pubkey)>``.
- Signer key (skey), as Go's ``sumdb/note`` writes it:
  ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``.

Key names are non-empty well-formed UTF-8 with no Unicode spaces and no ``+``.
Signatures from keys the verifier does not know are ignored, but a signature line whose
name breaks that rule is malformed; a known key whose signature fails rejects the whole
note, as in Go's ``note.Open``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ledger.errors import SignatureError

__all__ = [
    "Ed25519NoteKey",
    "NoteSigner",
    "NoteVerifier",
    "decode_vkey",
    "generate_signer",
    "key_id",
    "open_note",
    "parse_signature_line",
    "sign_note",
    "valid_key_name",
]

_ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "
_MAX_SIGNATURES = 100


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError(f"{what} is not valid base64") from e


def valid_key_name(name: str) -> bool:
    # C2SP signed-note: a key name is non-empty well-formed UTF-8 with no Unicode spaces
    # and no '+'. A Python str may hold lone surrogates, which UTF-8 cannot carry.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(name) and not any(c.isspace() or c == "+" for c in name)


def _check_name(name: str) -> None:
    if not valid_key_name(name):
        raise SignatureError(f"invalid key name {name!r}: empty, not UTF-8, or has a space or '+'")


def key_id(name: str, alg: int, pubkey: bytes) -> int:
    """C2SP signed-note: a key's ID, the first 4 bytes of SHA-256(name, LF, type, key)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + pubkey).digest()
    return int.from_bytes(digest[:4], "big")


def decode_vkey(vkey: str, alg: int, what: str) -> tuple[str, str, bytes]:
    """``(name, hex key ID, public key)`` of a vkey ``<name>+<hex id>+<base64(type||key)>``
    whose signature type is ``alg``. The caller checks the ID against the key."""
    parts = vkey.strip().split("+", 2)  # base64 may itself hold "+"
    if len(parts) != 3:
        raise SignatureError(f"a {what} has the form <name>+<8 hex key ID>+<base64 key>")
    name, hex_id, b64 = parts
    key = _b64decode(b64, what)
    if len(key) != 33 or key[0] != alg:
        # Another type's key (a log's given as a witness's, say) is refused, never
        # reinterpreted.
        raise SignatureError(f"the {what} is not an Ed25519 key of type 0x{alg:02x} (32 bytes)")
    return name, hex_id, key[1:]


def parse_signature_line(line: str) -> tuple[str, bytes]:
    """A note signature line's key name and signature blob (key ID first)."""
    if not line.startswith(_SIG_PREFIX):
        raise SignatureError(f"malformed signature line {line[:40]!r}")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    # A bad name makes the line malformed even for a key we do not know, as in Go's
    # note.Open: otherwise the writer accepts notes that verifiers reject.
    if not sep or not valid_key_name(name) or not b64 or " " in b64:
        raise SignatureError(f"malformed signature line {line[:40]!r}")
    blob = _b64decode(b64, "signature")
    if len(blob) < 5:
        raise SignatureError("signature is too short to hold a key ID")
    return name, blob


class Ed25519NoteKey:
    """An Ed25519 public key with a note key name, as a vkey names it (C2SP signed-note):
    ``<name>+<8 hex key ID>+<base64(type || key)>``. The signature type is the class's
    ``ALG`` (a log's 0x01, a witness's cosignature/v1 0x04)."""

    __slots__ = ("_key", "key_id", "name", "public_key")
    ALG: ClassVar[int] = _ALG_ED25519
    #: What a vkey of this type is called in errors.
    WHAT: ClassVar[str] = "verifier key"

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise SignatureError(f"Ed25519 public key is {len(public_key)} bytes, not 32")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, self.ALG, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        name, hex_id, key = decode_vkey(vkey, cls.ALG, cls.WHAT)
        parsed = cls(name, key)
        if len(hex_id) != 8 or f"{parsed.key_id:08x}" != hex_id.lower():
            raise SignatureError(f"{cls.WHAT} ID {hex_id!r} does not match its key")
        return parsed

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([self.ALG]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{encoded}"


class NoteVerifier(Ed25519NoteKey):
    """An Ed25519 verifier key, parsed from or rendered as a vkey string."""

    __slots__ = ()

    def verify(self, message: bytes, signature: bytes) -> None:
        try:
            self._key.verify(signature, message)
        except InvalidSignature as e:
            raise SignatureError(f"signature by {self.name!r} does not verify") from e


class NoteSigner:
    """An Ed25519 signing key with a note key name. Inject it; never construct it ad hoc."""

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.verifier = NoteVerifier(name, private_key.public_key().public_bytes_raw())

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise SignatureError("a signer key has the form PRIVATE+KEY+<name>+<id>+<key>")
        name, hex_id, b64 = parts[2:]
        key = _b64decode(b64, "signer key")
        if len(key) != 33 or key[0] != _ALG_ED25519:
            raise SignatureError("signer key is not an Ed25519 key (type 0x01, 32-byte seed)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
        if f"{signer.key_id:08x}" != hex_id.lower():
            raise SignatureError(f"signer key ID {hex_id!r} does not match its key")
        return signer

    @property
    def skey(self) -> str:
        seed = self._key.private_bytes_raw()
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{encoded}"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def derive_secret(self, purpose: bytes) -> bytes:
        """A 32-byte secret for ``purpose``, derived from the signing key (HKDF-SHA256,
        RFC 5869): whoever cannot sign checkpoints cannot compute it either, and no
        two purposes share one."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose)
        return hkdf.derive(self._key.private_bytes_raw())


def generate_signer(name: str) -> NoteSigner:
    """A new random key. Callers that need determinism pass a seeded key instead."""
    return NoteSigner(name, Ed25519PrivateKey.generate())


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise SignatureError("note text must end in a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise SignatureError("note text must not contain control characters")


def sign_note(text: str, *signers: NoteSigner) -> str:
    """The signed note: ``text``, a blank line, one signature line per signer."""
    _check_text(text)
    if not signers:
        raise SignatureError("a note needs at least one signer")
    message = text.encode()
    lines = []
    for signer in signers:
        blob = struct.pack(">I", signer.key_id) + signer.sign(message)
        lines.append(f"{_SIG_PREFIX}{signer.name} {base64.b64encode(blob).decode()}\n")
    return text + "\n" + "".join(lines)


def open_note(note: str | bytes, *verifiers: NoteVerifier) -> str:
    """Verify ``note`` and return its text.

    At least one signature must be by a known verifier and every known signature must
    verify; signatures by unknown keys are ignored.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SignatureError("note is not valid UTF-8") from e
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SignatureError("note is not valid Unicode (lone surrogate)") from e
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise SignatureError("note contains control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise SignatureError("note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block.endswith("\n"):
        raise SignatureError("note signature block must end in a newline")
    sig_lines = sig_block[:-1].split("\n")
    if len(sig_lines) > _MAX_SIGNATURES:
        raise SignatureError(f"note has more than {_MAX_SIGNATURES} signatures")
    known = {(v.name, v.key_id): v for v in verifiers}
    message = text.encode()
    verified = 0
    for line in sig_lines:
        name, blob = parse_signature_line(line)
        verifier = known.get((name, int.from_bytes(blob[:4], "big")))
        if verifier is None:
            continue
        verifier.verify(message, blob[4:])
        verified += 1
    if not verified:
        raise SignatureError("note has no signature from a known key")
    return text
