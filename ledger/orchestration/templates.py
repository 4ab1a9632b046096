"""Step input templates: a small, documented syntax with no ``eval``.

Syntax (also in ``specs/workflows.md`` §3):

- A placeholder is ``{{ reference }}`` inside any string of a step's ``prompt`` or
  ``inputs`` (``inputs`` may be any JSON value; every string in it is rendered).
- A reference is a root followed by a path: ``input``, ``parameters`` or
  ``steps.<step_id>.output``, then any number of ``.key`` or ``[index]`` segments, e.g.
  ``{{ input.customer.name }}``, ``{{ steps.classify.output.json.label }}``,
  ``{{ parameters.items[0] }}``. Keys are ``[A-Za-z0-9_-]+``; indexes are decimal.
- ``a ?? b`` tries ``a`` and, if it does not resolve, ``b`` (useful after a decision,
  when only one branch ran). The last alternative may be a JSON literal:
  ``{{ steps.a.output ?? null }}``.
- A string that is exactly one placeholder keeps the JSON type of the value (a number
  stays a number, an object stays an object). Placeholders embedded in longer text are
  interpolated: strings as they are, everything else as compact JSON.
- A reference that does not resolve is an error that names it. There is no escape
  for a literal ``{{``; there are no filters, calls or expressions.
- Arrays and objects in a template nest at most :data:`MAX_NESTING` levels deep.
- A template renders to at most :data:`MAX_RENDERED_CHARS` characters of text and JSON
  (four times what one leaf of the log holds): more is an error, raised before it is
  built.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec

from ledger.events import MAX_LEAF_BYTES
from ledger.orchestration._json import decode_json, nested_deeper_than
from ledger.orchestration.errors import TemplateError

__all__ = [
    "MAX_NESTING",
    "MAX_RENDERED_CHARS",
    "ROOTS",
    "Reference",
    "find_references",
    "nested_deeper_than",
    "parse_path",
    "render",
    "resolve_path",
]

ROOTS: Final = ("input", "parameters", "steps")
#: How deeply arrays and objects may nest in a template (and conditions in a condition):
#: far more than any definition needs, and far below Python's recursion limit, which a
#: definition built in Python could otherwise reach in validation, hashing or rendering.
MAX_NESTING: Final = 64
#: How much a template may render to, counted as the characters of its strings and of
#: the JSON of the other values its placeholders insert. A rendered step input or output
#: is recorded in one leaf, and one a little too large for it fails there (an error that
#: names the event and its size); this only stops a render from growing far past that:
#: without it, a few KiB of placeholders repeating a large value rendered to GiB.
MAX_RENDERED_CHARS: Final = 4 * MAX_LEAF_BYTES
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
_ROOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING: Final = object()


class Reference(msgspec.Struct, frozen=True):
    """A parsed path: ``text`` as written, ``root`` and the segments after it."""

    text: str
    root: str
    path: tuple[str | int, ...]

    @property
    def step_id(self) -> str | None:
        """For ``steps.<id>.output…``, the step id; else ``None``."""
        if self.root == "steps" and self.path and isinstance(self.path[0], str):
            return self.path[0]
        return None


def parse_path(text: str) -> Reference:
    """Parse ``root.key[0].key`` into a :class:`Reference`; raise on bad syntax."""
    text = text.strip()
    match = _ROOT.match(text)
    if match is None or match.group(0) not in ROOTS:
        raise TemplateError(
            f"reference {text!r} must start with one of {', '.join(ROOTS)}", reference=text
        )
    root = match.group(0)
    pos = match.end()
    path: list[str | int] = []
    while pos < len(text):
        seg = _SEGMENT.match(text, pos)
        if seg is None:
            raise TemplateError(
                f"reference {text!r} has bad syntax at {text[pos:]!r}", reference=text
            )
        path.append(seg.group(1) if seg.group(1) is not None else int(seg.group(2)))
        pos = seg.end()
    if root == "steps" and (len(path) < 2 or path[1] != "output" or not isinstance(path[0], str)):
        raise TemplateError(
            f"reference {text!r} must have the form steps.<step_id>.output[...]", reference=text
        )
    return Reference(text=text, root=root, path=tuple(path))


def _parse_expression(body: str) -> tuple[list[Reference], Any]:
    """Alternatives of one placeholder, plus an optional trailing literal (or _MISSING)."""
    refs, fallback = _parsed(body)
    # The literal is decoded afresh each time: a cached dict or list handed to one
    # step could otherwise be mutated under the next. ``_parsed`` checked it, so
    # it nests at most MAX_JSON_NESTING deep: far from where decoding depends on the
    # call stack under it.
    return list(refs), _MISSING if fallback is None else msgspec.json.decode(fallback)


@functools.lru_cache(maxsize=4096)
def _parsed(body: str) -> tuple[tuple[Reference, ...], bytes | None]:
    # Templates are rendered for every step of every run, but are few and immutable
    # once registered: parse each placeholder once. Errors are not cached.
    parts = [p.strip() for p in body.split("??")]
    refs: list[Reference] = []
    fallback: bytes | None = None
    for i, part in enumerate(parts):
        root = _ROOT.match(part)
        is_reference = root is not None and root.group(0) in ROOTS
        if i == len(parts) - 1 and i > 0 and not is_reference:
            try:
                decode_json(part)
            except msgspec.DecodeError:
                raise TemplateError(
                    f"fallback {part!r} is not a reference or a JSON literal", reference=part
                ) from None
            fallback = part.encode()
            continue
        refs.append(parse_path(part))
    if not refs:
        raise TemplateError(f"placeholder {{{{{body}}}}} has no reference", reference=body)
    return tuple(refs), fallback


def _walk_strings(value: Any, depth: int = 0) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        return
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return
    if depth >= MAX_NESTING:
        raise TemplateError(f"a template is nested more than {MAX_NESTING} levels deep")
    for item in items:
        yield from _walk_strings(item, depth + 1)


def find_references(value: Any) -> list[Reference]:
    """Every reference in every placeholder of ``value`` (validates the syntax)."""
    out: list[Reference] = []
    for text in _walk_strings(value):
        if "{{" not in text and "}}" not in text:
            continue
        stripped = _PLACEHOLDER.sub("", text)
        if "{{" in stripped or "}}" in stripped:
            raise TemplateError(f"unbalanced braces in template {text!r}", reference=text)
        for match in _PLACEHOLDER.finditer(text):
            refs, _ = _parse_expression(match.group(1))
            out.extend(refs)
    return out


def resolve_path(ref: Reference, context: Mapping[str, Any]) -> Any:
    """The value ``ref`` points at in ``context``; raise :class:`TemplateError` if absent."""
    value = _lookup(ref, context)
    if value is _MISSING:
        raise TemplateError(f"reference {ref.text!r} does not resolve", reference=ref.text)
    return value


def _lookup(ref: Reference, context: Mapping[str, Any]) -> Any:
    if ref.root not in context:
        return _MISSING
    value: Any = context[ref.root]
    for seg in ref.path:
        if isinstance(seg, int):
            if not isinstance(value, list | tuple) or not 0 <= seg < len(value):
                return _MISSING
            value = value[seg]
        else:
            if not (type(value) is dict or isinstance(value, Mapping)) or seg not in value:
                return _MISSING
            value = value[seg]
    return value


def _evaluate(body: str, context: Mapping[str, Any]) -> Any:
    refs, fallback = _parse_expression(body)
    for ref in refs:
        value = _lookup(ref, context)
        if value is not _MISSING:
            return value
    if fallback is not _MISSING:
        return fallback
    names = " ?? ".join(r.text for r in refs)
    raise TemplateError(f"reference {names!r} does not resolve", reference=refs[0].text)


class _Budget:
    """What a template may still render to (see :data:`MAX_RENDERED_CHARS`)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_RENDERED_CHARS

    def spend(self, chars: int) -> None:
        self.left -= chars
        if self.left < 0:
            raise TemplateError(
                f"the template renders to more than {MAX_RENDERED_CHARS} characters"
            )

    def value(self, value: Any) -> Any:
        """Spend what ``value``, inserted whole, adds to the rendered size."""
        if isinstance(value, str):
            self.spend(len(value))
        elif isinstance(value, list | tuple | Mapping):
            # A value from the run's own records: at most a leaf, so encoding it to
            # measure it costs no more than the budget it is measured against.
            self.spend(len(msgspec.json.encode(value)))
        return value


def _render_string(text: str, context: Mapping[str, Any], budget: _Budget) -> Any:
    if "{{" not in text:
        budget.spend(len(text))
        return text
    whole = _PLACEHOLDER.fullmatch(text.strip())
    if whole is not None and text.strip().count("{{") == 1:
        return budget.value(_evaluate(whole.group(1), context))

    def sub(match: re.Match[str]) -> str:
        value = _evaluate(match.group(1), context)
        out = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        budget.spend(len(out))
        return out

    budget.spend(len(_PLACEHOLDER.sub("", text)))
    return _PLACEHOLDER.sub(sub, text)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with every placeholder replaced (see the module docstring)."""
    return _render(value, context, _Budget())


def _render(value: Any, context: Mapping[str, Any], budget: _Budget) -> Any:
    if isinstance(value, str):
        return _render_string(value, context, budget)
    if type(value) is dict or isinstance(value, Mapping):
        return {k: _render(v, context, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render(v, context, budget) for v in value]
    return value
