"""Arithmetic expressions of closed-form predictions (a TOML variant's ``expression``), parsed
and evaluated without eval(): numbers, + - * / **, parentheses, a few math functions and named
values. Anything else (attribute access, strings, comprehensions, unknown functions) is refused
when the expression is parsed, with one line saying what is allowed.
"""

from __future__ import annotations

import ast
import functools
import math
from typing import Callable, Mapping


class ExpressionError(ValueError):
    """An expression that is not allowed, or a name it uses that has no value."""


# what a prediction's expression may call (every argument and result a float)
EXPRESSION_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
    "log1p": math.log1p, "expm1": math.expm1, "tanh": math.tanh, "sin": math.sin, "cos": math.cos,
    "abs": abs, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
}
# the names every prediction's expression may use, besides the builder's numeric parameters
SETTING_NAMES = ("depth", "width", "batch", "n_blocks")
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b}
_ALLOWED = ("numbers, + - * / **, parentheses, the functions " + ", ".join(EXPRESSION_FUNCTIONS)
            + " and the names " + ", ".join(SETTING_NAMES) + " and the builder's bool, int and float parameters")
_TOO_DEEP = "nested too deeply"


@functools.lru_cache(maxsize=None)
def parse_expression(expression: str) -> tuple[ast.expr, frozenset[str]]:
    """(syntax tree, names used) of a prediction's expression; ExpressionError (one line) when it is
    not an arithmetic expression of `_ALLOWED`'s kind."""
    def bad(why: str) -> ExpressionError:
        return ExpressionError(f"expression {expression!r}: {why}; allowed: {_ALLOWED}")

    if not isinstance(expression, str) or not expression.strip():
        raise bad("empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as exc:
        raise bad(f"not a valid expression ({exc.msg})") from None
    except (RecursionError, MemoryError):  # how CPython's parser gives up on deep nesting
        raise bad(_TOO_DEEP) from None
    names: set[str] = set()

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise bad(f"{node.value!r} is not a number")
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _OPERATORS:
                raise bad(f"operator {type(node.op).__name__} is not allowed")
            walk(node.left)
            walk(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise bad(f"operator {type(node.op).__name__} is not allowed")
            walk(node.operand)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in EXPRESSION_FUNCTIONS:
                what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise bad(f"{what}() is not one of the functions")
            if node.keywords or not node.args or any(isinstance(a, ast.Starred) for a in node.args):
                raise bad(f"{node.func.id}() takes plain positional arguments")
            for arg in node.args:
                walk(arg)
        elif isinstance(node, ast.Attribute):
            raise bad(f"attribute access ({ast.unparse(node)}) is not allowed")
        else:
            raise bad(f"{type(node).__name__} ({ast.unparse(node)}) is not allowed")

    try:
        walk(tree)
    except RecursionError:
        raise bad(_TOO_DEEP) from None
    return tree, frozenset(names)


def evaluate_expression(expression: str, names: Mapping[str, float]) -> float:
    """The value of a prediction's expression (see parse_expression) for these names, computed
    in floats (so that no power of integers can run away). A name it uses that `names` lacks is a
    ExpressionError; arithmetic errors (a zero division, a log of a negative, an overflow) propagate as
    ZeroDivisionError, ValueError, OverflowError."""
    tree, used = parse_expression(expression)
    missing = sorted(used - set(names))
    if missing:
        raise ExpressionError(f"expression {expression!r}: unknown name(s) {', '.join(missing)}; allowed: {_ALLOWED}")

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(names[node.id])
        if isinstance(node, ast.BinOp):
            out = _OPERATORS[type(node.op)](value(node.left), value(node.right))
            if isinstance(out, complex):  # a negative number to a fractional power
                raise ValueError("a negative number to a fractional power")
            return out
        if isinstance(node, ast.UnaryOp):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        return float(EXPRESSION_FUNCTIONS[node.func.id](*(value(a) for a in node.args)))

    return float(value(tree))
