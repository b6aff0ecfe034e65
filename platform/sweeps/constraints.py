"""Sweep constraints: a small expression language over parameter values (comparisons, and/or/not,
arithmetic, parameter names and literals), evaluated with `ast`, never `eval`."""
from __future__ import annotations

import ast
from typing import Any

from ..errors import SpecError

_COMPARE = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
            ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: a % b}
MAX_CONSTRAINT_CHARS = 1_000  # a constraint's length (bounds nesting and the size of its literals)
MAX_SEQUENCE = 10_000  # items a repeated string or list in a constraint may have


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _shown(expression: str) -> str:
    """The constraint as error messages quote it (long ones cut)."""
    return repr(expression if len(expression) <= 80 else expression[:80] + "...")


def check_constraint(expression: str, params: dict[str, Any]) -> bool:
    """Evaluate a constraint over parameter values (comparisons, and/or/not, + - * / %, literals only).

    Any failure (division by zero, a type error, a result too large, nesting too deep) is a `SpecError`
    naming the constraint and the parameter values.
    """
    if len(expression) > MAX_CONSTRAINT_CHARS:
        raise SpecError(f"constraints: {_shown(expression)} has {len(expression)} characters; expected at most "
                        f"{MAX_CONSTRAINT_CHARS}")
    try:
        return _evaluate_constraint(expression, params)
    except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as exc:
        raise SpecError(f"constraints: {_shown(expression)} fails for {params}: {type(exc).__name__}: {exc}; "
                        "expected an expression that evaluates to true or false") from None


def _arithmetic(op: ast.operator, left: Any, right: Any) -> Any:
    """`left op right`, refusing %-formatting of strings and repeated sequences above MAX_SEQUENCE items."""
    if isinstance(op, ast.Mod) and isinstance(left, str):
        raise TypeError("string formatting with % is not allowed")
    if isinstance(op, ast.Mult) and isinstance(left, (str, list)) != isinstance(right, (str, list)):
        seq, times = (left, right) if isinstance(left, (str, list)) else (right, left)
        if isinstance(times, int) and len(seq) * times > MAX_SEQUENCE:
            raise ValueError(f"repeating a sequence {times} times gives more than {MAX_SEQUENCE} items")
    return _ARITH[type(op)](left, right)


def _evaluate_constraint(expression: str, params: dict[str, Any]) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"constraints: {_shown(expression)} is not an expression ({exc.msg})") from None

    def ev(node: ast.AST) -> Any:
        name = _dotted(node)
        if name is not None:
            if name not in params:
                raise SpecError(f"constraints: {_shown(expression)} names {name!r}; expected one of {sorted(params)}")
            return params[name]
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            values = (ev(v) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            return _arithmetic(node.op, ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if type(op) not in _COMPARE or not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise SpecError(f"constraints: {_shown(expression)}: {type(node).__name__} is not allowed; expected "
                        "comparisons, and/or/not, arithmetic, parameter names and literals")

    return bool(ev(tree))
