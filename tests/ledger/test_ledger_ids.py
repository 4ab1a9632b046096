"""ULID and UUID text forms of one 16-byte identifier (log-format §2, §4)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from ledger.errors import NotFoundError
from ledger.ids import ulid_bytes, ulid_str, uuid_str
from ledger.receipt import event_id_bytes, receipt_id_for


@given(st.binary(min_size=16, max_size=16))
def test_text_forms_round_trip_and_agree_with_python_ulid_and_uuid(raw: bytes) -> None:
    text = ulid_str(raw)
    assert text == str(ULID.from_bytes(raw))
    assert ulid_bytes(text) == raw
    assert ulid_bytes(text.lower()) == raw
    assert uuid_str(raw) == str(uuid.UUID(bytes=raw))
    assert receipt_id_for(text) == uuid_str(raw)
    assert event_id_bytes(uuid_str(raw)) == raw


@pytest.mark.parametrize("letter", ["i", "l", "o", "u", "I", "L", "O", "U", "!", "é"])
def test_regression_letters_outside_crockford_are_not_a_ulid(letter: str) -> None:
    """Decoding by translating to Python's base-32 digits let i, l, o and u through."""
    text = "01JDQ6Z00000000000000000" + letter + "0"
    with pytest.raises(ValueError, match="is not a ULID"):
        ulid_bytes(text)
    with pytest.raises(NotFoundError):
        event_id_bytes(text)


def test_a_ulid_above_128_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a ULID"):
        ulid_bytes("8" + "0" * 25)
