"""Whether the log's storage takes writes: what the last commit said, and a probe for
when no commit says anything (a server's ``/readyz``).
"""

from __future__ import annotations

import time

import structlog

from ledger.errors import StorageUnavailableError
from ledger.store import EventStore

__all__ = ["StorageHealth"]

_log = structlog.get_logger()


class StorageHealth:
    """The log's commits report here (:meth:`written`, ``healthy = False``); a probe
    (:meth:`check`) finds out on its own when they have nothing to say."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        #: False after a commit failed for lack of storage, until one succeeds again.
        self.healthy = True
        #: When a write last reached the store (time.monotonic): a commit or a probe.
        self.last_written = time.monotonic()

    def written(self) -> None:
        """A commit reached the store."""
        self.healthy = True
        self.last_written = time.monotonic()

    async def check(self, idle_seconds: float, *, now: float | None = None) -> bool:
        """Probe the store with one small durable write if a commit failed for lack of
        storage, or if nothing was written for ``idle_seconds``; whether it is healthy.

        After a failure, only the next successful commit would otherwise say storage is
        back, and a server ``/readyz`` took out of rotation might never be sent that
        write. While idle, no commit fails, so a medium that went read-only or full
        would otherwise be seen only by the next client's write."""
        moment = time.monotonic() if now is None else now
        if self.healthy and moment - self.last_written < idle_seconds:
            return True
        try:
            await self._store.probe()
        except StorageUnavailableError as e:
            if self.healthy:
                self.healthy = False
                _log.warning("log.storage_probe_failed", error=str(e))
            else:
                _log.info("log.storage_still_unavailable", error=str(e))
            return False
        self.last_written = time.monotonic()
        if not self.healthy:
            self.healthy = True
            _log.info("log.storage_available_again")
        return True
