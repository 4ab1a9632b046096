"""What the log hands back of what it recorded: an event at its position, and a
checkpoint as it was signed (``specs/log-format.md`` §2, §3).

They live apart from :mod:`ledger.log` so that the parts the log is composed of can
build them without importing the log; :mod:`ledger.log` re-exports both.
"""

from __future__ import annotations

import msgspec

from ledger.events import Event

__all__ = ["RecordedEvent", "SignedCheckpoint"]


class RecordedEvent(msgspec.Struct, frozen=True):
    """An event as the log holds it: typed, with its exact leaf bytes and position."""

    event: Event
    leaf: bytes
    leaf_index: int
    receipt_id: str
    tree_size: int


class SignedCheckpoint(msgspec.Struct, frozen=True):
    size: int
    root: bytes
    note: str
