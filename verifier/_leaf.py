"""Leaf decoding for verification (``specs/log-format.md`` §2).

A reader first reads ``v``; a version it does not know is reported as unsupported,
never guessed. The bytes hashed are always the bytes given, never a re-encoding.
"""

from __future__ import annotations

from typing import Any

import msgspec

from verifier._errors import MalformedInput, UnsupportedLeafVersion
from verifier._wire import Envelope, Version

__all__ = ["ENVELOPE_DECODER", "LEAF_VERSION", "MAX_LEAF_BYTES", "decode", "decode_leaf"]

LEAF_VERSION = 1
MAX_LEAF_BYTES = 256 * 1024

ENVELOPE_DECODER = _ENVELOPE = msgspec.json.Decoder(Envelope)
_VERSION = msgspec.json.Decoder(Version)


def decode(decoder: msgspec.json.Decoder[Any], data: bytes | str, what: str) -> Any:
    """``decoder.decode(data)`` with every msgspec/Unicode/nesting error as MalformedInput."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        raise MalformedInput(f"{what} does not decode: {e}") from e


def decode_leaf(data: bytes) -> Envelope:
    """The §2 envelope of ``data`` (payload left raw), or a :class:`MalformedInput`."""
    if len(data) > MAX_LEAF_BYTES:
        raise MalformedInput(f"leaf is {len(data)} bytes; the limit is {MAX_LEAF_BYTES}")
    try:
        env = _ENVELOPE.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        # Read v alone, so that a newer format is reported as unsupported, not malformed.
        try:
            version = _VERSION.decode(data).v
        except (msgspec.DecodeError, ValueError, RecursionError):
            version = LEAF_VERSION
        if version != LEAF_VERSION:
            raise UnsupportedLeafVersion(
                f"leaf format version {version} is not supported (this verifier knows 1)"
            ) from e
        raise MalformedInput(f"leaf does not decode as a version 1 event: {e}") from e
    if env.v != LEAF_VERSION:
        raise UnsupportedLeafVersion(
            f"leaf format version {env.v} is not supported (this verifier knows 1)"
        )
    return env
