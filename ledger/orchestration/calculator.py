"""A safe arithmetic parser for the ``calculator`` tool (a parser, never ``eval``).

Grammar: numbers (ints, decimals, exponents), ``+ - * / // % **``, unary ``+``/``-``,
parentheses. Expressions are parsed with :mod:`ast` and only those node types are
walked; exponents and the magnitude of every number (literals included) and every
intermediate result are bounded so no input can exhaust memory or CPU, and results are
always finite (JSON has no infinity). Expressions nest at most 200 levels deep.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, Final

from ledger.orchestration.errors import ToolError

__all__ = ["calculate"]

_MAX_LEN: Final = 1000
_MAX_POW: Final = 1000
_MAX_ABS: Final = 10**100
#: Operators nest at most this deep (``1+1+…`` counts one level per ``+``): the walk
#: recurses once per level and must stay well inside Python's recursion limit.
_MAX_DEPTH: Final = 200

_BIN: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ToolError("booleans are not numbers here")
        # Literals are bounded like results: ``1e999`` is infinity, and a 1,000-digit
        # literal would make the power below cost seconds before the bound caught it.
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_POW:
            raise ToolError(f"exponent {right} is too large")
        try:
            return _check(_BIN[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result is too large") from None
    raise ToolError(f"unsupported expression element: {type(node).__name__}")


def _check(value: Any) -> int | float:
    if isinstance(value, complex):
        raise ToolError("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not finite")
    if abs(value) > _MAX_ABS:
        raise ToolError("result is too large")
    result: int | float = value
    return result


def _depth(tree: ast.AST) -> int:
    deepest = 0
    stack = [(tree, 0)]
    while stack:  # a loop: the tree may be deeper than the recursion limit
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def calculate(expression: str) -> int | float:
    if not isinstance(expression, str) or len(expression) > _MAX_LEN:
        raise ToolError(f"expression must be a string of at most {_MAX_LEN} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ToolError(f"cannot parse expression {expression!r}") from None
    if _depth(tree) > _MAX_DEPTH:
        raise ToolError(f"expression is nested more than {_MAX_DEPTH} levels deep")
    return _eval(tree)
