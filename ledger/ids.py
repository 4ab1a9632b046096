"""Identifiers: ULIDs for events and orchestrations, and their UUID twins.

An event id is a ULID (48-bit millisecond time, 80 random bits); its receipt id is a
UUID of the same 16 bytes (log-format §4). Time and randomness are injected so tests
are deterministic. Encoding is done here rather than with ``python-ulid`` objects
because it runs once per appended event.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["UlidMint", "canonical_uuid", "ulid_bytes", "ulid_str", "uuid_str"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits (10 bits) per lookup: 13 lookups render a 128-bit ULID.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = range(120, -1, -10)
# Crockford digits as Python's base-32 digits, so int(text, 32) decodes in C.
_ULID_CHARS = frozenset(_CROCKFORD + _CROCKFORD.lower())
_TO_INT32 = str.maketrans(_CROCKFORD + _CROCKFORD.lower(), "0123456789abcdefghijklmnopqrstuv" * 2)
_ENTROPY_BLOCK = 1024
# ASCII hex only: a str pattern's [0-9a-f] is not \d, which would take any Unicode digit.
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
# One random byte -> one digit: its low five bits, as an int(..., 32) digit. 256 is a
# multiple of 32, so each digit is uniform.
_BYTE_TO_DIGIT32 = bytes(b"0123456789abcdefghijklmnopqrstuv"[b & 31] for b in range(256))
_DIGIT32_TO_CROCKFORD = bytes.maketrans(b"0123456789abcdefghijklmnopqrstuv", _CROCKFORD.encode())


def ulid_str(raw: bytes) -> str:
    """Crockford base32 of 16 bytes, 26 characters (the ULID text form)."""
    n = int.from_bytes(raw, "big")
    return "".join([_PAIRS[(n >> shift) & 1023] for shift in _SHIFTS])


class UlidMint:
    """New ULIDs, as bytes and text, for one writer.

    A ULID's text splits exactly at the time/random boundary: 10 digits hold the 48-bit
    millisecond time (with two zero bits on top) and 16 digits the 80 random bits. So
    the time digits are rendered once per millisecond, and randomness is drawn from
    ``entropy`` in blocks rather than one system call per id.
    """

    __slots__ = ("_block", "_entropy", "_ms", "_pos", "_prefix", "_time_text")

    def __init__(self, entropy: Callable[[int], bytes]) -> None:
        self._entropy = entropy
        self._block = b""
        self._pos = 0
        self._ms: int | None = None
        self._prefix = b""
        self._time_text = ""

    def mint(self, ms: int) -> tuple[bytes, str]:
        """A new ULID for Unix time ``ms`` (milliseconds): its 16 bytes and its text."""
        if ms != self._ms:
            if not 0 <= ms < 1 << 48:
                raise ValueError(f"{ms} ms is outside the ULID time range")
            self._ms, self._prefix = ms, ms.to_bytes(6, "big")
            self._time_text = (
                _PAIRS[ms >> 40] + _PAIRS[(ms >> 30) & 1023] + _PAIRS[(ms >> 20) & 1023]
                + _PAIRS[(ms >> 10) & 1023] + _PAIRS[ms & 1023]
            )  # fmt: skip
        pos = self._pos
        if pos + 16 > len(self._block):
            self._block, pos = self._entropy(_ENTROPY_BLOCK), 0
        # The 16 random digits are drawn as digits (five bits from each of 16 bytes),
        # so both forms come from C-level translate and int() rather than a digit loop.
        digits = self._block[pos : pos + 16].translate(_BYTE_TO_DIGIT32)
        self._pos = pos + 16
        raw = self._prefix + int(digits, 32).to_bytes(10, "big")
        return raw, self._time_text + digits.translate(_DIGIT32_TO_CROCKFORD).decode()


def uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def canonical_uuid(text: str) -> str:
    """``text``, a UUID in its hyphenated 8-4-4-4-12 form in either case, as stored (lower
    case); ``ValueError`` for anything else.

    Not ``uuid.UUID(text)``: it drops hyphens, braces and "urn:uuid:" wherever they are
    and reads what is left with ``int(..., 16)``, which takes Unicode digits, a sign, "_"
    and spaces, so many strings would name one id.
    """
    if _UUID_RE.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not a UUID")
    return text.lower()


def ulid_bytes(text: str) -> bytes:
    """The 16 bytes of a ULID's 26-character text; ValueError if it is not one."""
    # Check the alphabet first: letters outside Crockford's (i, l, o, u) would pass
    # through the translation and still be base-32 digits to int().
    if len(text) != 26 or text[0] not in "01234567" or not _ULID_CHARS.issuperset(text):
        raise ValueError(f"{text!r} is not a ULID")
    return int(text.translate(_TO_INT32), 32).to_bytes(16, "big")
