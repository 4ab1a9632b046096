"""ULID and UUID text forms of one 16-byte identifier (log-format §2, §4)."""

from __future__ import annotations

import uuid
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from ledger.errors import NotFoundError
from ledger.ids import UlidMint, ulid_bytes, ulid_str, uuid_str
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


@given(st.integers(0, (1 << 48) - 1), st.integers(0, 2**32))
def test_minted_ulids_carry_their_time_and_agree_with_python_ulid(ms: int, seed: int) -> None:
    mint = UlidMint(Random(seed).randbytes)
    seen = set()
    for _ in range(200):  # crosses entropy-block boundaries
        raw, text = mint.mint(ms)
        assert text == str(ULID.from_bytes(raw))
        assert ulid_bytes(text) == raw
        assert int.from_bytes(raw[:6], "big") == ms
        seen.add(raw)
    assert len(seen) == 200


def test_minting_is_deterministic_under_injected_entropy() -> None:
    a, b = UlidMint(Random(3).randbytes), UlidMint(Random(3).randbytes)
    assert [a.mint(i // 7) for i in range(300)] == [b.mint(i // 7) for i in range(300)]


@pytest.mark.parametrize("ms", [-1, 1 << 48])
def test_a_time_outside_48_bits_is_refused(ms: int) -> None:
    with pytest.raises(ValueError, match="outside the ULID time range"):
        UlidMint(Random(0).randbytes).mint(ms)
