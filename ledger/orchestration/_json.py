"""JSON that comes from outside the engine (a model, a tool, a definition).

msgspec reports two kinds of bad input otherwise than with the ``DecodeError`` every
other malformed input gives: a string that is not UTF-8 (``UnicodeDecodeError``), and
JSON nested past its limit (``RecursionError``; near 1,000 levels, less the Python call
stack under it). Because that limit moves with the call stack, a value decoded in one
place may not encode into a leaf, or decode back, in another. So outside JSON is held to
:data:`MAX_JSON_NESTING` levels, far below that limit, and anything deeper is "not JSON"
wherever it arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

__all__ = ["MAX_JSON_NESTING", "decode_json", "nested_deeper_than"]

#: How deep arrays and objects from outside may nest (request bodies are held to the same).
MAX_JSON_NESTING: Final = 128


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:  # a loop, not recursion: the value may be nested beyond Python's limit
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def decode_json(data: bytes | str) -> Any:
    """``msgspec.json.decode``, with a string that is not UTF-8 and nesting past
    :data:`MAX_JSON_NESTING` (or past the decoder's own limit) a ``DecodeError`` too."""
    too_deep = f"JSON nests more than {MAX_JSON_NESTING} levels deep"
    try:
        value = msgspec.json.decode(data)
    except (UnicodeDecodeError, UnicodeEncodeError):  # bytes, or a str holding a surrogate
        raise msgspec.DecodeError("a string is not valid UTF-8") from None
    except RecursionError:  # past the decoder's own limit, which is past ours
        raise msgspec.DecodeError(too_deep) from None
    # Only text with more brackets than the bound can nest past it: counting is C-fast,
    # walking the value is not.
    if isinstance(data, str):
        brackets = data.count("[") + data.count("{")
    else:
        brackets = data.count(b"[") + data.count(b"{")
    if brackets > MAX_JSON_NESTING and nested_deeper_than(value, MAX_JSON_NESTING):
        raise msgspec.DecodeError(too_deep)
    return value
