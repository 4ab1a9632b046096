"""The ledger's exception hierarchy: one root, :class:`LedgerError`.

Foreign errors (sqlite3, msgspec, cryptography) are translated at the boundary with
``raise X(...) from e`` so callers only ever catch ledger types.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "IntegrityError",
    "InvalidEventError",
    "LedgerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProofError",
    "SignatureError",
    "StorageUnavailableError",
    "UnknownEventTypeError",
]


class LedgerError(Exception):
    """Root of every error the ledger raises."""


class InvalidEventError(LedgerError, ValueError):
    """An event cannot be encoded: bad field, non-UTF-8 text, wrong payload shape.

    ``field`` is the offending field's path in the caller's input (``events[0].type``),
    when the raiser knows it; ``""`` when it does not.
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UnknownEventTypeError(InvalidEventError):
    """The event type is not registered in the catalog."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class PayloadTooLargeError(InvalidEventError):
    """The canonical leaf bytes exceed the documented limit."""

    def __init__(self, size: int, limit: int, *, what: str = "event leaf") -> None:
        super().__init__(f"{what} is {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit


class ConflictError(LedgerError):
    """Optimistic concurrency failed: the stream is not at the expected sequence.

    ``actual_seq`` is the stream's committed head. An append whose expectation would be
    right if appends still in flight failed waits for them, so a conflict is with events
    that were committed. One that is wrong whatever they do (behind the committed head,
    or past where they would leave it) is refused at once, with where they would leave
    it as ``pending_seq``: they may yet fail, and the stream then never reaches it.
    """

    def __init__(
        self, stream_id: str, expected_seq: int, actual_seq: int, pending_seq: int | None = None
    ) -> None:
        at = f"seq {actual_seq}"
        if pending_seq is not None:
            at += f" ({pending_seq} once the appends in flight commit)"
        super().__init__(f"stream {stream_id!r} is at {at}, not the expected {expected_seq}")
        self.stream_id = stream_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq
        self.pending_seq = pending_seq


class NotFoundError(LedgerError, LookupError):
    """No such event, receipt, checkpoint or stream (for this tenant)."""


class ProofError(LedgerError):
    """A Merkle proof cannot be produced or does not verify."""


class SignatureError(LedgerError):
    """A signed note or key is malformed or its signature does not verify."""


class IntegrityError(LedgerError):
    """Stored data contradicts a signed checkpoint: tampering or corruption."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class StorageUnavailableError(LedgerError):
    """The store cannot durably write right now (disk full, read-only, locked).

    Nothing of the failed batch was acknowledged or signed into a published checkpoint.
    """
