"""Receipts: an event's inclusion proof against a signed checkpoint (log-format §4).

A receipt is verifiable offline with only itself, the leaf bytes and the verifier key.
``receipt_id`` is a UUID made of the event ULID's 16 bytes, so receipt and event are
one-to-one and each id finds the other.
"""

from __future__ import annotations

import msgspec

from ledger.errors import NotFoundError
from ledger.ids import canonical_uuid, ulid_bytes, uuid_str

__all__ = ["Receipt", "event_id_bytes", "receipt_id_for"]


class Receipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event's proof of inclusion. ``bytes`` fields are base64 on the wire."""

    receipt_id: str
    event_id: str
    leaf_index: int
    leaf_hash: bytes
    tree_size: int
    inclusion_proof: list[bytes]
    checkpoint: str


def event_id_bytes(identifier: str) -> bytes:
    """The 16 bytes behind an event ULID or a receipt UUID."""
    try:
        if len(identifier) == 26:
            return ulid_bytes(identifier)
        return bytes.fromhex(canonical_uuid(identifier).replace("-", ""))
    except ValueError as e:
        raise NotFoundError(f"{identifier!r} is neither an event ULID nor a receipt UUID") from e


def receipt_id_for(event_id: str) -> str:
    return uuid_str(event_id_bytes(event_id))
