"""Redaction: replace configured JSON paths in payloads by salted SHA-256 commitments.

A rule is ``<event type or *>:<path>``. A path is a chain of keys: ``a.b.c``, where a
key is any characters but ``.``, ``[`` and ``]``; ``*`` matches every key of an object
or every item of a list; a key of decimal digits also selects that item of a list
(``[0]`` is the same as ``.0``). A key that holds ``.``, ``[``, ``]`` or is ``*`` itself
is written quoted, as a JSON string in brackets: ``arguments["user.email"]``,
``["gen_ai.request.model"]``, ``input["*"]`` (only ever the key ``*``). Examples:
``*:input.customer.email``, ``llm.requested:messages.*.content``,
``tool.invoked:arguments["user.email"]``.

A policy is checked against the payload schemas (``specs/log-format.md`` §7.2) when it
is built: a rule must name an event type the engine records in an orchestration's
stream (or ``*``), must address at least one field, and must address only values a
string can replace (a string, or anything inside a field of any JSON type); so a
redacted payload always has its type, and recording it cannot fail. Nor may it reach
into a field the engine reads back to resume a run or keys runs and steps on
(``orchestration_id``, ``step_id``, ``attempt`` anywhere; ``orchestration.created``'s
definition, agents, workflow and limits; ``step.started``'s ``agent_id``; a decision's
``branch`` and ``skipped``, in ``decision.made`` and in its ``step.completed`` output, and
an agent-loop round's ``tool_calls``), nor replace a ``step.completed`` output whole.

A matched value is replaced by ``"redacted:sha256:<hex>"``, the SHA-256 of the tenant's
salt followed by the value's canonical JSON (sorted keys, no whitespace); ``null`` is
kept as it is. Salts live outside the log (supplied by a :data:`SaltSource`), so proofs
stay valid and nobody can brute-force a low-entropy value from its commitment; whoever
holds the salt and the value can prove the match.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
from msgspec import inspect as mi

from ledger.orchestration import events as ev
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
#: What a policy applies to: the payloads the stream writer records. Registrations are
#: appended as given, never through a policy.
_NOT_REDACTED: Final = frozenset({ev.AGENT_REGISTERED, ev.WORKFLOW_REGISTERED})
_SCHEMAS: Final[dict[str, mi.Type]] = {
    name: mi.type_info(ev.ORCHESTRATION_EVENTS.payload_type(name))
    for name in ev.ORCHESTRATION_EVENTS.names()
    if name not in _NOT_REDACTED
}
#: Values the engine reads back to resume a run, or that it and the registry key runs
#: and steps on, as paths of keys: a commitment in any of them, or anywhere inside one,
#: would leave a resumed run unable to decode its own history (a definition whose steps
#: are a string, an agent-loop round whose tool calls are), running as another agent,
#: model or step, or skipping another branch.
_STRUCTURAL_EVERYWHERE: Final = (("orchestration_id",), ("step_id",), ("attempt",))
_STRUCTURAL: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    ev.ORCHESTRATION_CREATED: tuple(
        (key,)
        for key in (
            "executor",
            "workflow_id",
            "workflow_version",
            "workflow_hash",
            "agent_id",
            "agents",
            "agent_revisions",
            "definition",
            "model",
            "max_steps",
            "timeout_seconds",
        )
    ),
    ev.STEP_STARTED: (("agent_id",), ("action",)),
    # A decision's output, and an agent loop's round (``output`` is any JSON, so a
    # rule cannot tell which step's output it meets).
    ev.STEP_COMPLETED: (
        ("output", "tool_calls"),
        ("output", "skipped"),
        ("output", "branch"),
        # A resumed agent loop sends each round's message back to the model.
        ("output", "message", "role"),
        ("output", "message", "tool_calls"),
    ),
    ev.DECISION_MADE: (("branch",), ("skipped",)),
}
#: Values a resumed run reads fields of, so a commitment may not replace them whole;
#: what is inside them (but what ``_STRUCTURAL`` names) may be redacted.
_STRUCTURAL_WHOLE: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    ev.STEP_COMPLETED: (("output",), ("output", "message")),
    # A tool step resumed after its call completed takes this as its output.
    ev.TOOL_COMPLETED: (("result",),),
}


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
                segments = parse_path(path)
                _check_schema(event_type, segments)
            except RedactionPathError as e:
                raise RedactionPathError(f"redaction path {spec!r}: {e}") from None
            self._rules.append((event_type, segments))
        self._salts = salts

    def __bool__(self) -> bool:
        return bool(self._rules)

    def applies_to(self, event_type: str) -> bool:
        """Whether any rule may change a payload of ``event_type``."""
        return any(t in ("*", event_type) for t, _ in self._rules)

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


def _check_schema(event_type: str, path: tuple[Segment, ...]) -> None:
    if event_type == "*":
        schemas = _SCHEMAS
    elif event_type in _SCHEMAS:
        schemas = {event_type: _SCHEMAS[event_type]}
    elif event_type in _NOT_REDACTED:
        raise RedactionPathError(
            f"{event_type} is not written through a redaction policy (registrations "
            "are stored as given)"
        )
    else:
        raise RedactionPathError(f"unknown event type {event_type!r}")
    matched = False
    for name, schema in schemas.items():
        hit, problem = _fits(path, schema)
        if problem is not None:
            raise RedactionPathError(
                f"in {name} it {problem}, which a commitment (a string) cannot replace"
            )
        problem = _structural(name, path, schema)
        if problem is not None:
            raise RedactionPathError(f"in {name} it {problem}")
        matched = matched or hit
    if not matched:
        raise RedactionPathError(
            "addresses no field of " + ("any event" if event_type == "*" else event_type)
        )


def _structural(name: str, path: tuple[Segment, ...], t: mi.Type) -> str | None:
    """What ``path`` would replace of a structural value of ``name`` (see
    ``_STRUCTURAL`` and ``_STRUCTURAL_WHOLE``); ``None`` if nothing."""
    for keys in _STRUCTURAL_WHOLE.get(name, ()):
        if _reaches(path, keys, t, inside=False):
            return (
                f"replaces {'.'.join(keys)!r} whole, which a resumed run reads fields of "
                "(redact fields inside it instead)"
            )
    for keys in _STRUCTURAL_EVERYWHERE + _STRUCTURAL.get(name, ()):
        if _reaches(path, keys, t, inside=True):
            return (
                f"reaches {'.'.join(keys)!r}, which the engine reads back to resume or "
                "identify the run"
            )
    return None


def _reaches(path: tuple[Segment, ...], keys: tuple[str, ...], t: mi.Type, *, inside: bool) -> bool:
    """Whether ``path`` can match the value at ``keys`` in a ``t``, or what holds it,
    or (if ``inside``) anything inside it."""
    for i, key in enumerate(keys):
        if i == len(path):
            return True  # it replaces what holds the value
        if path[i] is not _EVERY and path[i] != key:
            return False
        children = [t] if isinstance(t, mi.AnyType) else _children(t, key)
        if not children:
            return False
        t = children[0]
    return len(path) == len(keys) or (inside and _fits(path[len(keys) :], t)[0])


def _fits(path: tuple[Segment, ...], t: mi.Type) -> tuple[bool, str | None]:
    """Whether ``path`` can match inside a value of type ``t``, and what it would match
    that a string cannot replace (``None``: nothing)."""
    if not path:
        return True, None if _takes_string(t) else f"holds {_describe(t)}"
    if isinstance(t, mi.AnyType):
        return True, None
    if isinstance(t, mi.UnionType):
        children = [(path, member) for member in t.types]
    else:
        head, rest = path[0], path[1:]
        children = [(rest, child) for child in _children(t, head)]
    matched = False
    for sub, child in children:
        hit, problem = _fits(sub, child)
        if problem is not None:
            return hit, problem
        matched = matched or hit
    return matched, None


def _children(t: mi.Type, head: Segment) -> list[mi.Type]:
    """The types a segment ``head`` can select inside a value of type ``t``."""
    if isinstance(t, mi.StructType):
        return [f.type for f in t.fields if head is _EVERY or f.encode_name == head]
    if isinstance(t, mi.DictType):
        return [t.value_type]
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return [t.item_type] if head is _EVERY or _is_index(head) else []
    if isinstance(t, mi.TupleType):
        if head is _EVERY:
            return list(t.item_types)
        if _is_index(head) and int(head) < len(t.item_types):
            return [t.item_types[int(head)]]
    return []


def _takes_string(t: mi.Type) -> bool:
    if isinstance(t, mi.UnionType):
        return any(_takes_string(member) for member in t.types)
    if isinstance(t, mi.StrType):
        return t.min_length is None and t.max_length is None and t.pattern is None
    return isinstance(t, mi.AnyType)


def _describe(t: mi.Type) -> str:
    if isinstance(t, mi.UnionType):
        return " or ".join(_describe(member) for member in t.types)
    if isinstance(t, mi.LiteralType):
        return f"one of {', '.join(map(repr, t.values))}"
    names: list[tuple[type[mi.Type] | tuple[type[mi.Type], ...], str]] = [
        ((mi.StructType, mi.DictType), "an object"),
        ((mi.ListType, mi.VarTupleType, mi.TupleType, mi.SetType, mi.FrozenSetType), "an array"),
        (mi.BoolType, "a boolean"),
        (mi.IntType, "an integer"),
        (mi.FloatType, "a number"),
        (mi.NoneType, "null"),
        (mi.StrType, "a constrained string"),
    ]
    for kinds, name in names:
        if isinstance(t, kinds):
            return name
    return type(t).__name__


def _redact(value: Any, path: tuple[Segment, ...], salt: bytes) -> tuple[Any, bool]:
    if not path:
        # Already a commitment (a resumed run records again what the log holds): keep
        # it. Only a whole one: a value that merely starts like one is still a secret.
        if isinstance(value, str) and _COMMITMENT.fullmatch(value):
            return value, False
        # A missing value has nothing to hide, and a commitment in its place would read
        # back as a value (a successful call's error, say).
        if value is None:
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
