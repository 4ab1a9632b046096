"""Identifiers: ULIDs for events and orchestrations, and their UUID twins.

An event id is a ULID (48-bit millisecond time, 80 random bits); its receipt id is a
UUID of the same 16 bytes (log-format §4). Time and randomness are injected so tests
are deterministic. Encoding is done here rather than with ``python-ulid`` objects
because it runs once per appended event.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

__all__ = ["new_ulid_bytes", "ulid_bytes", "ulid_str", "uuid_str"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits (10 bits) per lookup: 13 lookups render a 128-bit ULID.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = range(120, -1, -10)
# Crockford digits as Python's base-32 digits, so int(text, 32) decodes in C.
_ULID_CHARS = frozenset(_CROCKFORD + _CROCKFORD.lower())
_TO_INT32 = str.maketrans(_CROCKFORD + _CROCKFORD.lower(), "0123456789abcdefghijklmnopqrstuv" * 2)


def new_ulid_bytes(moment: datetime, entropy: Callable[[int], bytes]) -> bytes:
    ms = int(moment.timestamp() * 1000)
    return ms.to_bytes(6, "big") + entropy(10)


def ulid_str(raw: bytes) -> str:
    """Crockford base32 of 16 bytes, 26 characters (the ULID text form)."""
    n = int.from_bytes(raw, "big")
    return "".join([_PAIRS[(n >> shift) & 1023] for shift in _SHIFTS])


def uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def ulid_bytes(text: str) -> bytes:
    """The 16 bytes of a ULID's 26-character text; ValueError if it is not one."""
    # Check the alphabet first: letters outside Crockford's (i, l, o, u) would pass
    # through the translation and still be base-32 digits to int().
    if len(text) != 26 or text[0] not in "01234567" or not _ULID_CHARS.issuperset(text):
        raise ValueError(f"{text!r} is not a ULID")
    return int(text.translate(_TO_INT32), 32).to_bytes(16, "big")
