"""One orchestration's stream writer: ordered, buffered, single-writer appends.

Events are emitted in order into a buffer and appended by :meth:`StreamWriter.flush`
under a lock, so concurrent steps of one orchestration never conflict on the stream
sequence. The engine flushes *before* any call with an outside effect (a network
provider, a non-pure tool) and right after it, so an effect is always preceded by its
durable request event; events of pure, deterministic work are buffered and flushed at
the next such point, at the end, or when the buffer grows — after a crash that work
is simply redone, with the same result.

:meth:`StreamWriter.emit` takes an event only if it can be written: it encodes the
payload, redacts it and checks the leaf's size at once, and raises
:class:`~ledger.errors.InvalidEventError` otherwise, so the caller can record a failure
instead; an event that can never be written never sits in the buffer. It returns the
payload as the log will hold it (before redaction). With ``normalize=True`` that is the
payload decoded from its own JSON, so a tuple is a list, a dict's int keys are strings
and inf is null, exactly as a replay will see it: for payloads carrying values from
outside the engine (a tool's result, a caller's input, an external event). The engine
builds the rest from such values and JSON alone, so they already are as a replay reads
them, and skip the decode (a tenth of the engine's time on the bench).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from ledger.errors import InvalidEventError, PayloadTooLargeError
from ledger.events import LEAF_VERSION, MAX_LEAF_BYTES, Event, NewEvent
from ledger.orchestration.redaction import RedactionPolicy
from ledger.receipt import Receipt

__all__ = ["AppendLog", "StreamWriter"]

MAX_BUFFER = 64

_P = TypeVar("_P", bound=msgspec.Struct)
# Not the leaf's sorted encoder, which refuses a dict with int keys: those become
# strings here, so the payload that reaches the leaf encoder has none.
_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _decoder(payload_type: type[_P]) -> msgspec.json.Decoder[_P]:
    decoder = _DECODERS.get(payload_type)
    if decoder is None:
        decoder = _DECODERS[payload_type] = msgspec.json.Decoder(payload_type)
    return decoder


def _envelope_bytes(tenant_id: str, stream_id: str) -> int:
    """A leaf's bytes besides its payload and type name, at their largest: the id, time
    and sequence number are only known at the flush."""
    event = Event(
        LEAF_VERSION,
        "0" * 26,  # a ULID
        tenant_id,
        stream_id,
        2**63 - 1,
        "",
        "0000-00-00T00:00:00.000000Z",
        None,
    )
    return len(_ENCODER.encode(event)) - len(b"null")


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
        self._envelope = _envelope_bytes(tenant_id, stream_id)

    def emit(self, event_type: str, payload: _P, *, normalize: bool = False) -> _P:
        """Buffer an event; the payload as the log holds it, before redaction (see the
        module docstring). Raises :class:`InvalidEventError` (and buffers nothing) if
        the event cannot be written."""
        new, normal = self._prepare(event_type, payload, normalize=normalize)
        self._buffer.append(new)
        return normal

    def _prepare(self, event_type: str, payload: _P, *, normalize: bool) -> tuple[NewEvent, _P]:
        try:
            data = _ENCODER.encode(payload)
            normal = _decoder(type(payload)).decode(data) if normalize else payload
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            raise InvalidEventError(f"the {event_type} event cannot be encoded: {e}") from e
        stored: Any = normal
        if self._redaction:
            try:
                stored = self._redaction.apply(self.tenant_id, event_type, normal)
            except Exception as e:  # the salt source is the caller's code: anything goes
                raise InvalidEventError(
                    f"the {event_type} event cannot be redacted: {type(e).__name__}: {e}"
                ) from e
            if stored is not normal:
                data = _ENCODER.encode(stored)
        size = self._envelope + len(event_type) + len(data)
        if size > MAX_LEAF_BYTES:
            raise PayloadTooLargeError(size, MAX_LEAF_BYTES, what=f"the {event_type} event")
        return NewEvent(event_type, stored, occurred_at=self._now()), normal

    def redacts(self, event_type: str) -> bool:
        """Whether the log may hold ``event_type``'s payloads otherwise than emitted."""
        return self._redaction is not None and self._redaction.applies_to(event_type)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> list[Receipt]:
        """Append everything emitted so far; returns once it is durable.

        A caller cancelled mid-flush never leaves the writer unsure whether the batch
        was written: once queued, an append's outcome cannot be cancelled, and the
        cancellation arrives after it (``Log.submit``). Written, the sequence moves on;
        not written, the events go back in front of the buffer — unless the log refused
        them as invalid, which no retry would change: they are dropped, so the writer
        can still record what happened next (the run's failure).
        """
        async with self._lock:
            if not self._buffer:
                return []
            batch, self._buffer = self._buffer, []
            try:
                outcome = await self._log.submit(self.tenant_id, self.stream_id, self.seq, batch)
            except InvalidEventError:
                raise
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
        """Emit ``events`` and flush; the receipts of exactly those events. If one
        cannot be written, none is buffered."""
        prepared = [
            self._prepare(event_type, payload, normalize=True)[0] for event_type, payload in events
        ]
        self._buffer.extend(prepared)
        receipts = await self.flush()
        return receipts[len(receipts) - len(events) :] if events else []
