"""Which of SQLite's errors mean the medium cannot be used now, and which mean damage."""

from __future__ import annotations

import sqlite3

from ledger.errors import IntegrityError, LedgerError, StorageUnavailableError

__all__ = ["storage_error"]


def storage_error(e: sqlite3.Error) -> LedgerError:
    """Map SQLite's failure to read or write into our error; anything else is integrity."""
    message = str(e).lower()
    if "could not decode" in message:
        # Text that is not UTF-8 was written behind the store's back (the writer binds
        # only str and bytes): damage, not a medium that cannot write. The rest of
        # SQLite's message quotes the whole value.
        return IntegrityError(f"stored text is not UTF-8: {str(e).split(' with text ')[0]}")
    transient = ("full", "readonly", "read-only", "disk i/o", "locked", "unable to open")
    if isinstance(e, sqlite3.OperationalError) or any(w in message for w in transient):
        return StorageUnavailableError(f"storage cannot write: {e}")
    return IntegrityError(f"storage rejected the batch: {e}")
