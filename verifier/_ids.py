"""Identifier derivations of ``specs/log-format.md`` §4 and §7.3.

- ``receipt_id``: the UUID (lowercase, hyphenated) whose 16 bytes are the event ULID's.
- ``id``: ``"maip-orch:"`` + the ULID (Crockford base32) with the orchestration UUID's bits.
"""

from __future__ import annotations

import re

from verifier._errors import MalformedInput

__all__ = ["orchestration_display_id", "receipt_id_for", "receipt_id_matches"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# For bytes.translate: Crockford base32 digits -> the digits int(x, 32) understands (0-9,
# a-v); every other byte -> "!", which int() rejects (it would accept a-z, I, L, O, U,
# "_", signs and spaces).
_TO_BASE32HEX = bytes(
    ord("0123456789abcdefghijklmnopqrstuv"[_CROCKFORD.index(chr(b))])
    if chr(b) in _CROCKFORD
    else ord("!")
    for b in range(256)
)
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def _not_a_ulid(event_id: str) -> MalformedInput:
    return MalformedInput(f"event id {event_id[:40]!r} is not a 26-character ULID")


def _ulid_digits(event_id: str) -> str:
    """The ULID's 128 bits as 32 lowercase hex digits ("" if it has other characters or
    more than 128 bits)."""
    try:
        return int(event_id.encode().translate(_TO_BASE32HEX), 32).to_bytes(16, "big").hex()
    except (ValueError, OverflowError):  # not base32 or not encodable; over 128 bits
        return ""


def receipt_id_for(event_id: str) -> str:
    """The receipt UUID of an event ULID (§4), or :class:`MalformedInput`."""
    if len(event_id) != 26 or event_id[0] > "7" or not event_id.isascii():
        raise _not_a_ulid(event_id)
    h = _ulid_digits(event_id)
    if not h:
        raise _not_a_ulid(event_id)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def receipt_id_matches(event_id: str, receipt_id: str) -> bool:
    """``receipt_id == receipt_id_for(event_id)``, without building the UUID text, and
    False (never an error) when ``event_id`` is not a ULID.

    The 32 digits of ``receipt_id`` without its hyphens must be the ULID's, and the
    hyphens exactly the four of the 8-4-4-4-12 layout. A 26-character ULID of more than
    128 bits (first character above "7") matches nothing.
    """
    try:  # _ulid_digits, inline: this runs once per event of a bundle
        digits = int(event_id.encode().translate(_TO_BASE32HEX), 32).to_bytes(16, "big").hex()
    except (ValueError, OverflowError):
        return False
    return (
        len(event_id) == 26
        and receipt_id.replace("-", "") == digits
        and len(receipt_id) == 36
        and receipt_id[8:24:5] == "----"
    )


def orchestration_display_id(orchestration_id: str) -> str:
    """``maip-orch:`` + the ULID with the same 128 bits as the orchestration UUID (§7.3)."""
    if not _UUID_RE.fullmatch(orchestration_id):
        raise MalformedInput(f"orchestration id {orchestration_id[:40]!r} is not a UUID")
    n = int(orchestration_id.replace("-", ""), 16)
    return "maip-orch:" + "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))
