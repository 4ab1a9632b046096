"""Server-Sent Events for an orchestration's stream, resumable with ``Last-Event-ID``.

A :class:`StreamHub` is a log listener: every committed event is offered to the
subscribers of its ``(tenant, stream)``. A subscriber registers *before* reading the
backlog from the log, then skips anything it already sent, so no event falls in the
gap between the read and the live feed. The SSE ``id`` is the event's ``stream_seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ledger.log import RecordedEvent

__all__ = ["StreamHub", "Subscription", "format_sse"]

#: An event the client is too slow for ends its subscription (it can resume).
_QUEUE_LIMIT = 10_000


class Subscription:
    def __init__(self, hub: StreamHub, key: tuple[str, str]) -> None:
        self._hub = hub
        self.key = key
        self.queue: asyncio.Queue[RecordedEvent | None] = asyncio.Queue(_QUEUE_LIMIT)
        self.overflowed = False

    def offer(self, rec: RecordedEvent | None) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        self._hub.unsubscribe(self)


class StreamHub:
    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], set[Subscription]] = {}
        self._closed = False

    def subscribe(self, tenant_id: str, stream_id: str) -> Subscription:
        sub = Subscription(self, (tenant_id, stream_id))
        if self._closed:
            sub.offer(None)
        self._subs.setdefault(sub.key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    def subscribers(self, tenant_id: str, stream_id: str) -> int:
        """How many streams are open on ``(tenant_id, stream_id)``."""
        return len(self._subs.get((tenant_id, stream_id), ()))

    def on_commit(self, batch: Sequence[RecordedEvent]) -> None:
        if not self._subs:
            return
        for rec in batch:
            subs = self._subs.get((rec.event.tenant_id, rec.event.stream_id))
            if subs:
                for sub in subs:
                    sub.offer(rec)

    def close(self) -> None:
        """End every open stream (shutdown): each subscriber gets ``None``."""
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub.offer(None)


def format_sse(event_id: int, event_type: str, data: bytes) -> bytes:
    """One SSE message; ``data`` is single-line JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event_type.encode(), data)
