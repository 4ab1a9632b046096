"""Canonical leaf bytes: deterministic, round-tripping, versioned, and typed errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_testkit import CATALOG, Count, Note

from ledger.errors import InvalidEventError, PayloadTooLargeError, UnknownEventTypeError
from ledger.events import (
    LEAF_VERSION,
    Event,
    EventCatalog,
    decode_leaf,
    decode_leaf_envelope,
    encode_leaf,
    format_time,
    parse_time,
)

texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60)


def _event(payload: msgspec.Struct, type_: str = "note.added", **kw: object) -> Event:
    fields: dict[str, object] = {
        "v": LEAF_VERSION,
        "event_id": "01JDQ6Z0000000000000000000",
        "tenant_id": "t1",
        "stream_id": "s1",
        "stream_seq": 1,
        "type": type_,
        "occurred_at": "2026-11-29T12:00:00.000000Z",
        "payload": payload,
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def test_leaf_bytes_are_sorted_compact_utf8() -> None:
    leaf = encode_leaf(_event(Note("héllo"), causation_id="c1"))
    assert leaf == (
        b'{"causation_id":"c1","event_id":"01JDQ6Z0000000000000000000",'
        b'"occurred_at":"2026-11-29T12:00:00.000000Z","payload":{"text":"h\xc3\xa9llo"},'
        b'"stream_id":"s1","stream_seq":1,"tenant_id":"t1","type":"note.added","v":1}'
    )


@given(text=texts, tenant=texts.filter(bool), seq=st.integers(1, 2**53), corr=st.none() | texts)
def test_encoding_round_trips_and_is_stable(
    text: str, tenant: str, seq: int, corr: str | None
) -> None:
    event = _event(Note(text), tenant_id=tenant, stream_seq=seq, correlation_id=corr)
    leaf = encode_leaf(event)
    assert decode_leaf(leaf, CATALOG) == event
    assert encode_leaf(decode_leaf(leaf, CATALOG)) == leaf
    assert encode_leaf(event) == leaf


def test_unknown_event_type_is_a_typed_error() -> None:
    with pytest.raises(UnknownEventTypeError, match=r"'nope\.added'"):
        CATALOG.coerce("nope.added", {"text": "x"})
    leaf = encode_leaf(_event(Note("x"), type_="nope.added"))
    with pytest.raises(UnknownEventTypeError):
        decode_leaf(leaf, CATALOG)


def test_wrong_payload_shape_is_invalid() -> None:
    with pytest.raises(InvalidEventError, match=r"payload of 'count\.added' is invalid"):
        CATALOG.coerce("count.added", {"n": "three"})
    assert CATALOG.coerce("count.added", {"n": 3}) == Count(3)


def test_oversized_payload_is_rejected_with_the_limit() -> None:
    with pytest.raises(PayloadTooLargeError, match="the limit is 262144"):
        encode_leaf(_event(Note("x" * 262_144)))


def test_lone_surrogate_is_not_utf8() -> None:
    with pytest.raises(InvalidEventError, match="not valid UTF-8"):
        encode_leaf(_event(Note("bad \ud800 text")))


def test_unknown_leaf_version_is_refused_not_guessed() -> None:
    leaf = encode_leaf(_event(Note("x"), v=2))
    with pytest.raises(InvalidEventError, match="version 2 is not supported"):
        decode_leaf(leaf, CATALOG)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.timezones(),
    )
)
def test_format_time_is_rfc3339_utc_with_microseconds(moment: datetime) -> None:
    """The per-second cache renders exactly what isoformat would, in UTC."""
    expected = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    assert format_time(moment) == expected + "Z"
    assert parse_time(format_time(moment)) == moment.astimezone(UTC)


def test_format_time_refuses_naive_timestamps() -> None:
    with pytest.raises(InvalidEventError, match="timezone-aware"):
        format_time(datetime(2026, 1, 1))


def test_regression_names_and_times_ending_in_a_newline_are_refused() -> None:
    """``$`` also matched before a final newline, so these passed."""
    with pytest.raises(InvalidEventError):
        parse_time("2026-11-29T12:00:00.000000Z\n")
    with pytest.raises(InvalidEventError):
        EventCatalog({"note.added\n": Note})


class _Blob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: Any


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_regression_values_nested_past_the_json_limit_are_invalid_events() -> None:
    """msgspec says RecursionError, not an encode or decode error, for values nested
    past its limit (near 1,000 levels, less the call stack): it escaped the ledger's
    exception root, and the API answered 500."""
    with pytest.raises(InvalidEventError, match="nests too deeply"):
        encode_leaf(_event(_Blob(_deep(5000)), type_="blob.added"))
    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(InvalidEventError, match="nests too deeply"):
        decode_leaf_envelope(b'{"payload":' + deep + b',"v":1}')
    with pytest.raises(InvalidEventError, match="nests too deeply"):
        EventCatalog({"blob.added": _Blob}).decode_payload("blob.added", b'{"value":' + deep + b"}")
