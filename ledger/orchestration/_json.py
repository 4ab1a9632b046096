"""Decoding JSON that comes from outside the engine (a model, a tool, a definition).

msgspec reports JSON nested past its limit (near 1,000 levels, less the call stack) as
``RecursionError``, not as the ``DecodeError`` every other malformed input gives. Each
caller decides what "not JSON" means where it stands; none should have to know that.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["decode_json"]


def decode_json(data: bytes | str) -> Any:
    """``msgspec.json.decode``, with nesting past its limit a ``DecodeError`` too."""
    try:
        return msgspec.json.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("JSON nests deeper than it can be decoded") from None
