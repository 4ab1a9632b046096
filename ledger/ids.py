"""Identifiers: ULIDs for events and orchestrations, and their UUID twins.

An event id is a ULID (48-bit millisecond time, 80 random bits); its receipt id is a
UUID of the same 16 bytes (log-format §4). Time and randomness are injected so tests
are deterministic. Encoding is done here rather than with ``python-ulid`` objects
because it runs once per appended event.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime

__all__ = ["new_ulid_bytes", "ulid_str", "uuid_str"]

_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(_RFC4648, _CROCKFORD)


def new_ulid_bytes(moment: datetime, entropy: Callable[[int], bytes]) -> bytes:
    ms = int(moment.timestamp() * 1000)
    return ms.to_bytes(6, "big") + entropy(10)


def ulid_str(raw: bytes) -> str:
    """Crockford base32 of 16 bytes, 26 characters (the ULID text form)."""
    # 20 bytes = 32 base32 digits; the 128-bit value fills the low 26 of them.
    padded = base64.b32encode(b"\x00\x00\x00\x00" + raw)
    return padded[-26:].translate(_TO_CROCKFORD).decode()


def uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
