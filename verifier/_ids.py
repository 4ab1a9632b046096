"""Identifier derivations of ``specs/log-format.md`` §4 and §7.3.

- ``receipt_id``: the UUID (lowercase, hyphenated) whose 16 bytes are the event ULID's.
- ``id``: ``"maip-orch:"`` + the ULID (Crockford base32) with the orchestration UUID's bits.
"""

from __future__ import annotations

import re

from verifier._errors import MalformedInput

__all__ = ["orchestration_display_id", "receipt_id_for"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crockford base32 digits -> the digits int(x, 32) understands (0-9, a-v); every other
# character that int() would accept (a-z, I, L, O, U, "_", spaces) -> "!", which it rejects.
_TO_BASE32HEX = str.maketrans(
    {
        **dict.fromkeys("abcdefghijklmnopqrstuvwxyzILOU_ \t\n\r\f\v+-", "!"),
        **dict(zip(_CROCKFORD, "0123456789abcdefghijklmnopqrstuv", strict=True)),
    }
)
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def _not_a_ulid(event_id: str) -> MalformedInput:
    return MalformedInput(f"event id {event_id[:40]!r} is not a 26-character ULID")


def receipt_id_for(event_id: str) -> str:
    """The receipt UUID of an event ULID (§4), or :class:`MalformedInput`."""
    if len(event_id) != 26 or event_id[0] > "7" or not event_id.isascii():
        raise _not_a_ulid(event_id)
    try:
        h = "%032x" % int(event_id.translate(_TO_BASE32HEX), 32)  # noqa: UP031 - hot path
    except ValueError:
        raise _not_a_ulid(event_id) from None
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def orchestration_display_id(orchestration_id: str) -> str:
    """``maip-orch:`` + the ULID with the same 128 bits as the orchestration UUID (§7.3)."""
    if not _UUID_RE.fullmatch(orchestration_id):
        raise MalformedInput(f"orchestration id {orchestration_id[:40]!r} is not a UUID")
    n = int(orchestration_id.replace("-", ""), 16)
    return "maip-orch:" + "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))
