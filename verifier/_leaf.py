"""Leaf decoding for verification (``specs/log-format.md`` §2).

A reader first reads ``v``; a version it does not know is reported as unsupported,
never guessed. The bytes hashed are always the bytes given, never a re-encoding.

A leaf must also *be* the canonical encoding of what it decodes to (§2: keys sorted at
every depth, no whitespace, msgspec's escapes): JSON that is not, such as an object
with two members of one name, reads as different events to different JSON readers
(msgspec keeps the last member, others the first, or reject it), so a verifier that
accepted it would vouch for one reading of an ambiguous leaf.
"""

from __future__ import annotations

from typing import Any

import msgspec

from verifier._errors import MalformedInput, UnsupportedLeafVersion
from verifier._wire import Envelope, Version

__all__ = [
    "ENVELOPE_DECODER",
    "LEAF_VERSION",
    "MAX_LEAF_BYTES",
    "check_canonical",
    "check_envelope",
    "decode",
    "decode_leaf",
    "is_canonical",
]

LEAF_VERSION = 1
MAX_LEAF_BYTES = 256 * 1024

ENVELOPE_DECODER = _ENVELOPE = msgspec.json.Decoder(Envelope)
_VERSION = msgspec.json.Decoder(Version)
_ANY = msgspec.json.Decoder()
_CANONICAL = msgspec.json.Encoder(order="sorted")
_ENVELOPE_ENCODER = msgspec.json.Encoder()


def decode(decoder: msgspec.json.Decoder[Any], data: bytes | str, what: str) -> Any:
    """``decoder.decode(data)`` with every msgspec/Unicode/nesting error as MalformedInput."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        raise MalformedInput(f"{what} does not decode: {e}") from e


def _not_canonical(what: str) -> MalformedInput:
    return MalformedInput(
        f"{what} is not the canonical encoding of an event (§2: sorted keys, each once, "
        "no whitespace): JSON readers could read different events from it"
    )


def is_canonical(data: bytes | msgspec.Raw) -> bool:
    """Whether ``data`` is the canonical encoding (§2) of the JSON value it holds."""
    try:
        # memoryview: a Raw payload compares equal to no bytes, even its own.
        return _CANONICAL.encode(_ANY.decode(data)) == memoryview(data)
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return False


def check_canonical(data: bytes) -> None:
    """Raise :class:`MalformedInput` unless the whole leaf ``data`` is canonical."""
    if not is_canonical(data):
        raise _not_canonical("leaf")


def check_envelope(env: Envelope, data: bytes) -> None:
    """Raise :class:`MalformedInput` unless leaf ``data``, decoded as ``env``, is
    canonical outside its payload (the envelope encodes back to it; the payload is
    carried raw, byte for byte). A bundle reads every envelope but only the payloads it
    folds, which it checks whole (``verifier._projection``)."""
    if _ENVELOPE_ENCODER.encode(env) != data:
        raise _not_canonical("leaf")


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
    check_canonical(data)
    return env
