"""Events and their canonical leaf bytes (``specs/log-format.md`` § "Leaf").

An event is an immutable record. Its *leaf bytes* are the one canonical encoding that
is hashed into the Merkle log: msgspec JSON, keys sorted at every depth, no whitespace,
UTF-8, fields equal to their default omitted. The bytes are produced once, at append,
stored as they are, and hashed as stored; nothing is ever re-serialised to verify.

Every leaf carries ``v`` (:data:`LEAF_VERSION`) so the format can evolve without
breaking old receipts: a reader dispatches on ``v`` before it decodes anything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from ledger.errors import InvalidEventError, PayloadTooLargeError, UnknownEventTypeError

__all__ = [
    "LEAF_VERSION",
    "MAX_LEAF_BYTES",
    "Event",
    "EventCatalog",
    "NewEvent",
    "decode_leaf",
    "decode_leaf_envelope",
    "encode_leaf",
    "format_time",
    "parse_time",
]

LEAF_VERSION = 1
#: Upper bound on one event's canonical bytes. LLM transcripts are large, but a log
#: leaf is not a blob store: 256 KiB keeps a proof bundle and a replay bounded.
MAX_LEAF_BYTES = 256 * 1024

_ENCODER = msgspec.json.Encoder(order="sorted")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z\Z")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}\Z")


# The text of recent whole seconds: each second's prefix is rendered once, not once per
# event. Bounded, and only ever holds values a pure function would return.
_SECOND_TEXT: dict[tuple[int, int, int, int, int, int], str] = {}


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix: one form, so bytes are stable."""
    if moment.tzinfo is None:
        raise InvalidEventError("timestamps must be timezone-aware")
    if moment.tzinfo is not UTC and moment.utcoffset():
        moment = moment.astimezone(UTC)
    key = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year)
    prefix = _SECOND_TEXT.get(key)
    if prefix is None:
        if len(_SECOND_TEXT) >= 4096:
            _SECOND_TEXT.clear()
        prefix = _SECOND_TEXT[key] = moment.replace(microsecond=0, tzinfo=None).isoformat()
    return f"{prefix}.{moment.microsecond:06d}Z"


def parse_time(text: str) -> datetime:
    if not _TIME_RE.match(text):
        raise InvalidEventError(f"{text!r} is not an RFC 3339 UTC timestamp ending in Z")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidEventError(f"{text!r} is not a valid timestamp") from e


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One immutable log entry. ``payload`` is an instance of its type's payload Struct."""

    v: int
    event_id: str
    tenant_id: str
    stream_id: str
    stream_seq: int
    type: str
    occurred_at: str
    payload: Any
    causation_id: str | None = None
    correlation_id: str | None = None


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The leaf as read back: the payload stays raw until its type is known."""

    v: int
    event_id: str
    tenant_id: str
    stream_id: str
    stream_seq: int
    type: str
    occurred_at: str
    payload: msgspec.Raw
    causation_id: str | None = None
    correlation_id: str | None = None


class _Version(msgspec.Struct):
    v: int


_ENVELOPE_DECODER = msgspec.json.Decoder(_Envelope)
_VERSION_DECODER = msgspec.json.Decoder(_Version)


class NewEvent(msgspec.Struct, frozen=True):
    """What an appender supplies; the log assigns ids, sequence and leaf position."""

    type: str
    payload: Any
    causation_id: str | None = None
    correlation_id: str | None = None
    occurred_at: datetime | None = None


class EventCatalog:
    """Maps each event type name to its payload Struct: the set of events a log accepts."""

    def __init__(self, types: Mapping[str, type[msgspec.Struct]] | None = None) -> None:
        self._types: dict[str, type[msgspec.Struct]] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        for name, payload_type in (types or {}).items():
            self.register(name, payload_type)

    def register(self, name: str, payload_type: type[msgspec.Struct]) -> None:
        if not _NAME_RE.match(name):
            raise InvalidEventError(f"event type name {name!r} must match {_NAME_RE.pattern}")
        existing = self._types.get(name)
        if existing is not None and existing is not payload_type:
            raise InvalidEventError(f"event type {name!r} is already registered")
        self._types[name] = payload_type
        self._decoders[name] = msgspec.json.Decoder(payload_type)

    def extend(self, other: EventCatalog) -> EventCatalog:
        merged = EventCatalog(self._types)
        for name, payload_type in other._types.items():
            merged.register(name, payload_type)
        return merged

    def names(self) -> Iterable[str]:
        return self._types.keys()

    def payload_type(self, name: str) -> type[msgspec.Struct]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownEventTypeError(name) from None

    def coerce(self, name: str, payload: Any) -> msgspec.Struct:
        """The payload as its registered Struct, converting a mapping if needed."""
        payload_type = self.payload_type(name)
        if isinstance(payload, payload_type):
            return payload
        try:
            return msgspec.convert(payload, payload_type)
        except msgspec.ValidationError as e:
            raise InvalidEventError(f"payload of {name!r} is invalid: {e}") from e

    def decode_payload(self, name: str, raw: bytes) -> Any:
        decoder = self._decoders.get(name)
        if decoder is None:
            raise UnknownEventTypeError(name)
        try:
            return decoder.decode(raw)
        except msgspec.DecodeError as e:
            raise InvalidEventError(f"payload of {name!r} does not decode: {e}") from e
        except RecursionError:
            raise InvalidEventError(f"payload of {name!r} nests too deeply to decode") from None


def encode_leaf(event: Event, *, limit: int = MAX_LEAF_BYTES) -> bytes:
    """The canonical leaf bytes of ``event`` (sorted keys, no whitespace, UTF-8)."""
    try:
        data = _ENCODER.encode(event)
    except UnicodeEncodeError as e:
        raise InvalidEventError("event contains text that is not valid UTF-8") from e
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidEventError(f"event cannot be encoded: {e}") from e
    except RecursionError:  # nested deeper than the encoder goes
        raise InvalidEventError("event cannot be encoded: it nests too deeply") from None
    if len(data) > limit:
        raise PayloadTooLargeError(len(data), limit)
    return data


def decode_leaf_envelope(data: bytes) -> _Envelope:
    """Decode a leaf's envelope, leaving the payload as raw JSON (no catalog needed)."""
    try:
        version = _VERSION_DECODER.decode(data).v
    except msgspec.DecodeError as e:
        raise InvalidEventError(f"leaf is not a versioned event: {e}") from e
    except RecursionError:  # nested deeper than the decoder goes from this call
        raise InvalidEventError("leaf nests too deeply to decode") from None
    if version != LEAF_VERSION:
        raise InvalidEventError(f"leaf format version {version} is not supported")
    try:
        return _ENVELOPE_DECODER.decode(data)
    except msgspec.DecodeError as e:
        raise InvalidEventError(f"leaf does not decode: {e}") from e
    except RecursionError:
        raise InvalidEventError("leaf nests too deeply to decode") from None


def decode_leaf(data: bytes, catalog: EventCatalog) -> Event:
    """Decode leaf bytes into an :class:`Event` with a typed payload."""
    env = decode_leaf_envelope(data)
    payload = catalog.decode_payload(env.type, env.payload)
    return Event(
        v=env.v,
        event_id=env.event_id,
        tenant_id=env.tenant_id,
        stream_id=env.stream_id,
        stream_seq=env.stream_seq,
        type=env.type,
        occurred_at=env.occurred_at,
        payload=payload,
        causation_id=env.causation_id,
        correlation_id=env.correlation_id,
    )
