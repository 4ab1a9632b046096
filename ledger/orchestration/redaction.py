"""Redaction: replace configured JSON paths in payloads by salted SHA-256 commitments.

A path is ``<event type or *>:<path>``, where the path is dot-separated keys with ``*``
matching every key of an object or every item of a list, e.g. ``*:input.customer.email``,
``llm.requested:messages.*.content``, ``tool.invoked:arguments.ssn``. A matched value is
replaced by ``"redacted:sha256:<hex>"``, the SHA-256 of the tenant's salt followed by
the value's canonical JSON (sorted keys, no whitespace). Salts live outside the log
(supplied by a :data:`SaltSource`), so proofs stay valid and nobody can brute-force a
low-entropy value from its commitment; whoever holds the salt and the value can prove
the match.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

__all__ = ["RedactionPolicy", "SaltSource", "commitment"]

SaltSource = Callable[[str], bytes]
_ENCODER = msgspec.json.Encoder(order="sorted")
_PREFIX = "redacted:sha256:"
_COMMITMENT = re.compile(r"redacted:sha256:[0-9a-f]{64}")


def commitment(salt: bytes, value: Any) -> str:
    return _PREFIX + hashlib.sha256(salt + _ENCODER.encode(value)).hexdigest()


class RedactionPolicy:
    def __init__(self, paths: Sequence[str], salts: SaltSource) -> None:
        self._rules: list[tuple[str, tuple[str, ...]]] = []
        for spec in paths:
            event_type, sep, path = spec.partition(":")
            if not sep or not path:
                raise ValueError(f"redaction path {spec!r} must be '<event type or *>:<path>'")
            self._rules.append((event_type, tuple(path.split("."))))
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


def _redact(value: Any, path: tuple[str, ...], salt: bytes) -> tuple[Any, bool]:
    if not path:
        # Already a commitment (a resumed run records again what the log holds): keep
        # it. Only a whole one: a value that merely starts like one is still a secret.
        if isinstance(value, str) and _COMMITMENT.fullmatch(value):
            return value, False
        return commitment(salt, value), True
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        keys = list(value) if head == "*" else ([head] if head in value else [])
        hit = False
        out = dict(value)
        for k in keys:
            out[k], h = _redact(value[k], rest, salt)
            hit = hit or h
        return out, hit
    if isinstance(value, list):
        if head == "*":
            indexes = range(len(value))
        elif head.isdigit() and int(head) < len(value):
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
