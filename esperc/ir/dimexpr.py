"""Integer/boolean expressions over dimension names, used by ``require`` constraints and guards.

A ``DimExpr`` is a small immutable tree (``Num``, ``Sym``, ``BinOp``, ``UnaryOp``) with a printer
whose output ``parse_dimexpr`` reads back, and an evaluator used both at compile time (static
dims) and by the runtime guard check (dynamic dims). Semantics are Python's: ``//`` and ``%`` floor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True, slots=True)
class Num:
    value: int | bool


@dataclass(frozen=True, slots=True)
class Sym:
    name: str


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # + - * // % < <= > >= == != and or
    lhs: DimExpr
    rhs: DimExpr


@dataclass(frozen=True, slots=True)
class UnaryOp:
    op: str  # not -
    operand: DimExpr


DimExpr = Union[Num, Sym, BinOp, UnaryOp]

ARITH = ("+", "-", "*", "//", "%")
COMPARE = ("<", "<=", ">", ">=", "==", "!=")
LOGIC = ("and", "or")
_PREC = {
    "or": 1,
    "and": 2,
    "not": 3,
    **{c: 4 for c in COMPARE},
    "+": 5,
    "-": 5,
    "*": 6,
    "//": 6,
    "%": 6,
}


class DimExprError(Exception):
    """Evaluation failed: unknown symbol, division by zero, or a type mix-up."""


def symbols(e: DimExpr) -> frozenset[str]:
    if isinstance(e, Sym):
        return frozenset([e.name])
    if isinstance(e, BinOp):
        return symbols(e.lhs) | symbols(e.rhs)
    if isinstance(e, UnaryOp):
        return symbols(e.operand)
    return frozenset()


def evaluate(e: DimExpr, env: dict[str, int]) -> int | bool:
    """Evaluate with Python semantics.

    Raises:
        DimExprError: a symbol missing from ``env``, or division/modulo by zero.
    """
    if isinstance(e, Num):
        return e.value
    if isinstance(e, Sym):
        if e.name not in env:
            raise DimExprError(f"unknown dimension '{e.name}'")
        return env[e.name]
    if isinstance(e, UnaryOp):
        v = evaluate(e.operand, env)
        return (not v) if e.op == "not" else -v
    a = evaluate(e.lhs, env)
    if e.op == "and":
        return bool(a) and bool(evaluate(e.rhs, env))
    if e.op == "or":
        return bool(a) or bool(evaluate(e.rhs, env))
    b = evaluate(e.rhs, env)
    if e.op in ("//", "%") and b == 0:
        raise DimExprError("division by zero")
    return _BINARY[e.op](a, b)


_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def to_str(e: DimExpr, parent: int = 0) -> str:
    """Print with the fewest parentheses that keep the tree; ``parse_dimexpr`` reads it back."""
    if isinstance(e, Num):
        return ("true" if e.value else "false") if isinstance(e.value, bool) else str(e.value)
    if isinstance(e, Sym):
        return e.name
    if isinstance(e, UnaryOp):
        p = _PREC["not"] if e.op == "not" else 7
        sep = " " if e.op == "not" else ""
        text = f"{e.op}{sep}{to_str(e.operand, p)}"
        return f"({text})" if p < parent else text
    p = _PREC[e.op]
    # Left-associative except comparisons (non-associative): parenthesise an equal-precedence rhs.
    lhs_p = p + 1 if e.op in COMPARE else p
    text = f"{to_str(e.lhs, lhs_p)} {e.op} {to_str(e.rhs, p + 1)}"
    return f"({text})" if p < parent else text


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|<=|>=|==|!=|[-+*%<>()]))")


def parse_dimexpr(text: str) -> DimExpr:
    """Parse the printed form of a ``DimExpr`` (raises ValueError on malformed text)."""
    toks: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad character in dimension expression at {pos}: {text!r}")
        toks.append(m.group(0).strip())
        pos = m.end()
    expr, i = _parse(toks, 0, 0)
    if i != len(toks):
        raise ValueError(f"trailing tokens in dimension expression: {text!r}")
    return expr


def _parse(toks: list[str], i: int, min_prec: int) -> tuple[DimExpr, int]:
    lhs, i = _atom(toks, i)
    while i < len(toks) and toks[i] in _PREC and toks[i] != "not" and _PREC[toks[i]] >= min_prec:
        op = toks[i]
        p = _PREC[op]
        rhs, i = _parse(toks, i + 1, p + 1)
        lhs = BinOp(op, lhs, rhs)
        if op in COMPARE and i < len(toks) and toks[i] in COMPARE:
            raise ValueError("comparisons do not chain")
    return lhs, i


def _atom(toks: list[str], i: int) -> tuple[DimExpr, int]:
    if i >= len(toks):
        raise ValueError("unexpected end of dimension expression")
    t = toks[i]
    if t == "(":
        e, i = _parse(toks, i + 1, 0)
        if i >= len(toks) or toks[i] != ")":
            raise ValueError("missing ')' in dimension expression")
        return e, i + 1
    if t == "not":
        e, i = _parse(toks, i + 1, _PREC["not"])
        return UnaryOp("not", e), i
    if t == "-":
        if i + 1 < len(toks) and toks[i + 1].isdigit():  # a negative literal prints as "-3"
            return Num(-int(toks[i + 1])), i + 2
        e, i = _atom(toks, i + 1)
        return UnaryOp("-", e), i
    if t.isdigit():
        return Num(int(t)), i + 1
    if t in ("true", "false"):
        return Num(t == "true"), i + 1
    if t[0].isalpha() or t[0] == "_":
        return Sym(t), i + 1
    raise ValueError(f"unexpected token {t!r} in dimension expression")
