"""Decision conditions: safe, declarative tests over JSON paths (no ``eval``).

A condition is a JSON object with exactly one operator key (``specs/workflows.md`` §4):

- comparisons ``{"eq": [path, value]}``, and ``ne``, ``lt``, ``le``, ``gt``, ``ge``:
  ``path`` is a reference as in templates (``steps.classify.output.json.label``,
  ``input.amount``, ``parameters.limit``); ``value`` is a JSON literal, or
  ``{"path": "..."}`` to compare with another reference;
- ``{"in": [path, [v1, v2, ...]]}``: the value is one of the list (or, if the right side
  is a string, a substring of it);
- ``{"exists": path}``: the path resolves (possibly to ``null``);
- ``{"and": [c1, c2, ...]}``, ``{"or": [...]}``, ``{"not": c}``.

``lt``/``le``/``gt``/``ge`` compare two numbers or two strings; other pairs, or a path
that does not resolve outside ``exists``, are a :class:`ConditionError`. Conditions nest
at most :data:`~ledger.orchestration.templates.MAX_NESTING` levels deep, and so do the
arrays and objects of a literal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ledger.orchestration.errors import ConditionError, TemplateError
from ledger.orchestration.templates import (
    MAX_NESTING,
    Reference,
    nested_deeper_than,
    parse_path,
    resolve_path,
)

__all__ = ["COMPARISONS", "condition_references", "evaluate", "validate_condition"]

_NUMBER = (int, float)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        both_numbers = (
            isinstance(a, _NUMBER)
            and isinstance(b, _NUMBER)
            and not isinstance(a, bool)
            and not isinstance(b, bool)
        )
        if both_numbers or (isinstance(a, str) and isinstance(b, str)):
            return op(a, b)
        raise ConditionError(f"cannot order {type(a).__name__} and {type(b).__name__}")

    return compare


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _contains(a: Any, b: Any) -> bool:
    if isinstance(b, str):
        if not isinstance(a, str):
            raise ConditionError("'in' with a string on the right needs a string on the left")
        return a in b
    if isinstance(b, list | tuple):
        return any(_equal(a, item) for item in b)
    raise ConditionError("'in' needs a list or a string on the right")


COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": _equal,
    "ne": lambda a, b: not _equal(a, b),
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "in": _contains,
}
_LOGICAL: Final = ("and", "or", "not", "exists")


def _operator(cond: Any) -> tuple[str, Any]:
    if not isinstance(cond, Mapping) or len(cond) != 1:
        raise ConditionError("a condition is an object with exactly one operator key")
    ((op, arg),) = cond.items()
    if op not in COMPARISONS and op not in _LOGICAL:
        raise ConditionError(f"unknown condition operator {op!r}")
    return str(op), arg


def _path(text: Any) -> Reference:
    if not isinstance(text, str):
        raise ConditionError("a condition path must be a string")
    try:
        return parse_path(text)
    except TemplateError as e:
        raise ConditionError(str(e)) from None


def condition_references(cond: Any) -> list[Reference]:
    """Every path a condition reads; validates its shape (raises :class:`ConditionError`)."""
    return _references(cond, 1)


def _references(cond: Any, depth: int) -> list[Reference]:
    # Bounded before recursing: evaluation, hashing and encoding recurse over it too.
    if depth > MAX_NESTING:
        raise ConditionError(f"a condition is nested more than {MAX_NESTING} levels deep")
    op, arg = _operator(cond)
    if op in ("and", "or"):
        if not isinstance(arg, list | tuple) or not arg:
            raise ConditionError(f"{op!r} needs a non-empty list of conditions")
        return [ref for sub in arg for ref in _references(sub, depth + 1)]
    if op == "not":
        return _references(arg, depth + 1)
    if op == "exists":
        return [_path(arg)]
    if not isinstance(arg, list | tuple) or len(arg) != 2:
        raise ConditionError(f"{op!r} needs [path, value]")
    refs = [_path(arg[0])]
    right = arg[1]
    if isinstance(right, Mapping) and set(right) == {"path"}:
        refs.append(_path(right["path"]))
    elif nested_deeper_than(right, MAX_NESTING):
        raise ConditionError(f"the value of {op!r} is nested more than {MAX_NESTING} levels deep")
    return refs


def validate_condition(cond: Any) -> None:
    condition_references(cond)


def evaluate(cond: Any, context: Mapping[str, Any], values: dict[str, Any]) -> bool:
    """Evaluate ``cond``; record every path it read (and its value) into ``values``."""
    op, arg = _operator(cond)
    if op == "and":
        return all(evaluate(c, context, values) for c in arg)
    if op == "or":
        return any(evaluate(c, context, values) for c in arg)
    if op == "not":
        return not evaluate(arg, context, values)
    if op == "exists":
        ref = _path(arg)
        try:
            values[ref.text] = resolve_path(ref, context)
        except TemplateError:
            return False
        return True
    left_ref = _path(arg[0])
    left = _read(left_ref, context, values)
    right = arg[1]
    if isinstance(right, Mapping) and set(right) == {"path"}:
        right = _read(_path(right["path"]), context, values)
    return COMPARISONS[op](left, right)


def _read(ref: Reference, context: Mapping[str, Any], values: dict[str, Any]) -> Any:
    try:
        value = resolve_path(ref, context)
    except TemplateError as e:
        raise ConditionError(str(e)) from None
    values[ref.text] = value
    return value
