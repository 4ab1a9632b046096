"""Request bodies whose objects repeat a member name are refused.

RFC 8259 §4 leaves an object with two members of one name to each parser ("the
behavior of software that receives such an object is unpredictable"), and parsers
differ: some keep the first, ours (msgspec) the last. A gateway, a WAF or an audit
proxy in front of us that reads ``{"executor": "external", "executor": "engine"}`` one
way while we read it the other would approve one request and see another run. I-JSON
(RFC 7493 §2.3) makes unique names a MUST, and so do we: 400 naming the member.

msgspec cannot report repeated names, so a body it accepted is parsed a second time by
the standard library with an ``object_pairs_hook`` (about 10 µs for a typical body).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["repeated_member"]


class _RepeatedError(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(items)
    if len(out) != len(items):
        seen: set[str] = set()
        for name, _ in items:
            if name in seen:
                raise _RepeatedError(name)
            seen.add(name)
    return out


def _where(value: Any, name: str, path: str) -> str | None:
    """The path of the first object in ``value`` holding ``name`` (depth first): the
    one repeating it, but for an enclosing object that holds the name once too."""
    children: Any
    if isinstance(value, dict):
        if name in value:
            return f"{path}.{name}"
        children = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_path, child in children:
        found = _where(child, name, child_path)
        if found is not None:
            return found
    return None


def repeated_member(raw: bytes, decoded: Any) -> tuple[str, str] | None:
    """``(name, path)`` of a member name an object in ``raw`` repeats, else ``None``.
    ``decoded`` is the body as msgspec read it (last one kept), to locate the object."""
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except _RepeatedError as e:
        return e.name, _where(decoded, e.name, "$") or "$"
    except (ValueError, RecursionError):
        return None  # msgspec read it: what the standard library refuses is not ours to judge
    return None
