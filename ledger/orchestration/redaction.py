"""Redaction: replace configured JSON paths in payloads by salted SHA-256 commitments.

A rule is ``<event type or *>:<path>``. A path is a chain of keys: ``a.b.c``, where a
key is any characters but ``.``, ``[`` and ``]``; ``*`` matches every key of an object
or every item of a list; a key of decimal digits also selects that item of a list
(``[0]`` is the same as ``.0``). A key that holds ``.``, ``[``, ``]`` or is ``*`` itself
is written quoted, as a JSON string in brackets: ``arguments["user.email"]``,
``["gen_ai.request.model"]``, ``input["*"]`` (only ever the key ``*``). Examples:
``*:input.customer.email``, ``llm.requested:messages.*.content``,
``tool.invoked:arguments["user.email"]``.

A matched value is replaced by ``"redacted:sha256:<hex>"``, the SHA-256 of the
tenant's salt followed by the value's canonical JSON (sorted keys, no whitespace).
Salts live outside the log (supplied by a :data:`SaltSource`), so proofs stay valid
and nobody can brute-force a low-entropy value from its commitment; whoever holds the
salt and the value can prove the match.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from ledger.orchestration.errors import RedactionPathError

__all__ = ["RedactionPolicy", "SaltSource", "commitment", "parse_path"]

SaltSource = Callable[[str], bytes]
#: A path segment: a key (or list index), or ``None`` for ``*`` (every key or item).
Segment = str | None

_ENCODER = msgspec.json.Encoder(order="sorted")
_PREFIX = "redacted:sha256:"
_COMMITMENT = re.compile(r"redacted:sha256:[0-9a-f]{64}")
_BARE = re.compile(r"[^.\[\]]+")
_QUOTED = re.compile(r'\["((?:[^"\\]|\\.)*)"\]')
_INDEX = re.compile(r"\[([0-9]+)\]")
_EVERY: Final = None


def commitment(salt: bytes, value: Any) -> str:
    return _PREFIX + hashlib.sha256(salt + _ENCODER.encode(value)).hexdigest()


def parse_path(path: str) -> tuple[Segment, ...]:
    """The segments of a path (see the module docstring); ``None`` stands for ``*``."""
    segments: list[Segment] = []
    pos = 0
    while True:
        quoted = _QUOTED.match(path, pos) or _INDEX.match(path, pos)
        if quoted is not None:
            text = path[pos : quoted.end()]
            try:
                key = msgspec.json.decode(text[1:-1], type=str) if text[1] == '"' else text[1:-1]
            except msgspec.DecodeError as e:
                raise RedactionPathError(f"bad syntax in {text!r}: {e}") from e
            segments.append(key)
        else:
            bare = _BARE.match(path, pos)
            if bare is None:
                raise RedactionPathError(_bad_syntax(path, pos))
            segments.append(_EVERY if bare.group() == "*" else bare.group())
            quoted = bare
        pos = quoted.end()
        if pos == len(path):
            return tuple(segments)
        if path[pos] == ".":
            pos += 1
        elif path[pos] != "[":
            raise RedactionPathError(_bad_syntax(path, pos))


def _bad_syntax(path: str, pos: int) -> str:
    return (
        f"bad syntax at {path[pos:]!r} (keys are separated by '.'; quote a key with '.', "
        """'[' or ']' as ["key"])"""
    )


class RedactionPolicy:
    def __init__(self, paths: Sequence[str], salts: SaltSource) -> None:
        self._rules: list[tuple[str, tuple[Segment, ...]]] = []
        for spec in paths:
            event_type, sep, path = spec.partition(":")
            if not sep or not path:
                raise RedactionPathError(
                    f"redaction path {spec!r} must be '<event type or *>:<path>'"
                )
            try:
                self._rules.append((event_type, parse_path(path)))
            except RedactionPathError as e:
                raise RedactionPathError(f"redaction path {spec!r}: {e}") from None
        self._salts = salts

    def __bool__(self) -> bool:
        return bool(self._rules)

    def apply(self, tenant_id: str, event_type: str, payload: msgspec.Struct) -> Any:
        """``payload`` with every matching path committed; unchanged if nothing matches."""
        rules = [p for t, p in self._rules if t in ("*", event_type)]
        if not rules:
            return payload
        data = msgspec.to_builtins(payload)
        salt = self._salts(tenant_id)
        changed = False
        for path in rules:
            data, hit = _redact(data, path, salt)
            changed = changed or hit
        if not changed:
            return payload
        return msgspec.convert(data, type(payload))


def _redact(value: Any, path: tuple[Segment, ...], salt: bytes) -> tuple[Any, bool]:
    if not path:
        # Already a commitment (a resumed run records again what the log holds): keep
        # it. Only a whole one: a value that merely starts like one is still a secret.
        if isinstance(value, str) and _COMMITMENT.fullmatch(value):
            return value, False
        return commitment(salt, value), True
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        keys = list(value) if head is _EVERY else ([head] if head in value else [])
        hit = False
        out = dict(value)
        for k in keys:
            out[k], h = _redact(value[k], rest, salt)
            hit = hit or h
        return out, hit
    if isinstance(value, list):
        if head is _EVERY:
            indexes = range(len(value))
        elif _is_index(head) and int(head) < len(value):
            indexes = range(int(head), int(head) + 1)
        else:
            return value, False
        items = list(value)
        hit = False
        for i in indexes:
            items[i], h = _redact(value[i], rest, salt)
            hit = hit or h
        return items, hit
    return value, False


def _is_index(segment: Segment) -> bool:
    return segment is not None and segment.isascii() and segment.isdigit()
