"""One orchestration's stream writer: ordered, buffered, single-writer appends.

Events are emitted in order into a buffer and appended by :meth:`StreamWriter.flush`
under a lock, so concurrent steps of one orchestration never conflict on the stream
sequence. The engine flushes *before* any call with an outside effect (a network
provider, a non-pure tool) and right after it, so an effect is always preceded by its
durable request event; events of pure, deterministic work are buffered and flushed at
the next such point, at the end, or when the buffer grows — after a crash that work
is simply redone, with the same result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec

from ledger.events import NewEvent
from ledger.orchestration.redaction import RedactionPolicy
from ledger.receipt import Receipt

__all__ = ["AppendLog", "StreamWriter"]

MAX_BUFFER = 64


class AppendLog(Protocol):
    async def submit(
        self,
        tenant_id: str,
        stream_id: str,
        expected_seq: int,
        events: Sequence[NewEvent],
    ) -> asyncio.Future[list[Receipt]]: ...


class StreamWriter:
    def __init__(
        self,
        log: AppendLog,
        tenant_id: str,
        stream_id: str,
        seq: int,
        *,
        now: Callable[[], datetime],
        redaction: RedactionPolicy | None = None,
    ) -> None:
        self._log = log
        self.tenant_id = tenant_id
        self.stream_id = stream_id
        #: The last durable sequence number.
        self.seq = seq
        self._now = now
        self._redaction = redaction
        self._buffer: list[NewEvent] = []
        self._lock = asyncio.Lock()

    def emit(self, event_type: str, payload: msgspec.Struct) -> None:
        if self._redaction:
            payload = self._redaction.apply(self.tenant_id, event_type, payload)
        self._buffer.append(NewEvent(event_type, payload, occurred_at=self._now()))

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> list[Receipt]:
        """Append everything emitted so far; returns once it is durable.

        A caller cancelled mid-flush never leaves the writer unsure whether the batch
        was written: once queued, an append's outcome cannot be cancelled, and the
        cancellation arrives after it (``Log.submit``). Written, the sequence moves on;
        not written, the events go back in front of the buffer.
        """
        async with self._lock:
            if not self._buffer:
                return []
            batch, self._buffer = self._buffer, []
            try:
                outcome = await self._log.submit(self.tenant_id, self.stream_id, self.seq, batch)
            except BaseException:
                self._buffer = batch + self._buffer
                raise
            try:
                receipts = await outcome
            except BaseException:
                if outcome.done() and outcome.exception() is None:
                    self.seq += len(batch)  # written; only the wait was cancelled
                else:
                    self._buffer = batch + self._buffer
                raise
            self.seq += len(batch)
            return receipts

    async def flush_if_large(self) -> None:
        if len(self._buffer) >= MAX_BUFFER:
            await self.flush()

    async def append_now(self, events: list[tuple[str, Any]]) -> list[Receipt]:
        """Emit ``events`` and flush; the receipts of exactly those events."""
        for event_type, payload in events:
            self.emit(event_type, payload)
        receipts = await self.flush()
        return receipts[len(receipts) - len(events) :] if events else []
