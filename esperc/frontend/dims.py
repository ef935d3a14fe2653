"""Dimension expressions: shapes, dim lists, ``dim N = EXPR`` and ``require`` constraints.

A dimension evaluates to an ``int`` (static) or a ``SymDim`` polynomial over dynamic dims. A
``require`` becomes an ``esperc.ir.dimexpr`` tree in which static dims are replaced by their values
and only dynamic dims remain symbols.
"""

from __future__ import annotations

from collections.abc import Mapping

from esperc.diagnostics import Note, did_you_mean
from esperc.frontend import ast
from esperc.frontend.values import POISON, Binding, DimRef, Failed, Tensor, Weak, fail
from esperc.ir import dimexpr as dx
from esperc.ir.types import Dim, SymDim, TypeRuleError

_ARITH = ("+", "-", "*", "//", "%")
_CMP = ("<", "<=", ">", ">=", "==", "!=")


def _name_dim(e: ast.Name, dims: Mapping[str, Dim], scope: Mapping[str, Binding]) -> Dim:
    if e.id in dims:
        return dims[e.id]
    b = scope.get(e.id)
    if isinstance(b, Weak) and type(b.value) is int:
        return b.value
    if isinstance(b, Tensor | Weak):
        raise fail(
            "E0209",
            f"'{e.id}' is not a dimension",
            e.span,
            Note("help", "a dimension expression uses integers and declared dims only"),
        )
    if isinstance(b, DimRef) or b is POISON:  # its declaration failed and was reported
        raise Failed()
    raise fail("E0101", f"unknown dimension '{e.id}'", e.span, did_you_mean(e.id, dims))


def eval_dim(e: ast.Expr, dims: Mapping[str, Dim], scope: Mapping[str, Binding]) -> Dim:
    """Evaluate a dimension expression (integers, dims, int attrs; ``+ - * // %``, unary ``-``).

    Raises:
        Failed: E0101 unknown name, E0209 anything else that is not a valid dimension.
    """
    if isinstance(e, ast.IntLit):
        return e.value
    if isinstance(e, ast.Name):
        return _name_dim(e, dims, scope)
    if isinstance(e, ast.UnaryOp) and e.op == "-":
        return 0 - eval_dim(e.operand, dims, scope)
    if isinstance(e, ast.BinOp) and e.op in _ARITH:
        a, b = eval_dim(e.lhs, dims, scope), eval_dim(e.rhs, dims, scope)
        try:
            if e.op in ("//", "%") and isinstance(a, int) and isinstance(b, int) and b == 0:
                raise TypeRuleError("E0209", "division by zero in a dimension expression")
            if e.op in ("//", "%") and isinstance(b, SymDim):
                raise TypeRuleError("E0209", f"cannot divide by the dynamic dimension '{b}'")
            return _apply(e.op, a, b)
        except TypeRuleError as err:
            raise fail(err.code, err.message, e.span) from None
    what = "'/' (use '//')" if isinstance(e, ast.BinOp) and e.op == "/" else "this expression"
    raise fail(
        "E0209",
        f"{what} is not allowed in a dimension expression",
        e.span,
        Note("help", "dimensions use integers, dims and + - * // %"),
    )


def _apply(op: str, a: Dim, b: Dim) -> Dim:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "//":
        return a // b  # type: ignore[operator]
    return a % b  # type: ignore[operator]


def require_expr(
    e: ast.Expr, dims: Mapping[str, Dim], scope: Mapping[str, Binding]
) -> tuple[dx.DimExpr, str]:
    """Translate a ``require`` expression; returns the tree and its kind ("int" or "bool").

    Static dims become numbers; dynamic dims stay symbols.

    Raises:
        Failed: E0101 unknown name, E0209 ill-typed or unsupported expression.
    """
    if isinstance(e, ast.IntLit):
        return dx.Num(e.value), "int"
    if isinstance(e, ast.BoolLit):
        return dx.Num(e.value), "bool"
    if isinstance(e, ast.Name):
        b = scope.get(e.id)
        if isinstance(b, Weak) and type(b.value) is bool:
            return dx.Num(b.value), "bool"
        d = _name_dim(e, dims, scope)
        if isinstance(d, int):
            return dx.Num(d), "int"
        if len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1:
            return dx.Sym(d.terms[0][0][0]), "int"
        raise fail("E0209", f"'{e.id}' is not a plain dimension", e.span)
    if isinstance(e, ast.UnaryOp):
        x, kind = require_expr(e.operand, dims, scope)
        want = "bool" if e.op == "not" else "int"
        _want(kind, want, e.operand)
        return dx.UnaryOp(e.op, x), want
    if isinstance(e, ast.BinOp) and e.op in (*_ARITH, *_CMP, "and", "or"):
        a, ka = require_expr(e.lhs, dims, scope)
        b, kb = require_expr(e.rhs, dims, scope)
        want = "bool" if e.op in ("and", "or") else "int"
        _want(ka, want, e.lhs)
        _want(kb, want, e.rhs)
        return dx.BinOp(e.op, a, b), "bool" if e.op in (*_CMP, "and", "or") else "int"
    raise fail(
        "E0209",
        "this expression is not allowed in a 'require'",
        e.span,
        Note("help", "require uses dims, integers, + - * // %, comparisons, and, or, not"),
    )


def _want(kind: str, want: str, e: ast.Expr) -> None:
    if kind != want:
        raise fail(
            "E0209", f"expected {'a condition' if want == 'bool' else 'an integer'} here", e.span
        )


def names_in(e: ast.Expr) -> list[str]:
    """Every name an expression mentions, in order, once each (iterative)."""
    return list(dict.fromkeys(x.id for x in ast.sub_exprs(e) if isinstance(x, ast.Name)))


def divide_dims(total: Dim, factors: list[Dim]) -> Dim | None:
    """``total / prod(factors)`` when exact, for static factors and plain dynamic dims."""
    for f in factors:
        if isinstance(f, int):
            if f == 0 or (isinstance(total, int) and total % f):
                return None
            try:
                total = total // f
            except TypeRuleError:
                return None
            continue
        if len(f.terms) != 1 or f.terms[0][1] != 1 or len(f.terms[0][0]) != 1:
            return None
        sym = f.terms[0][0][0]
        if isinstance(total, int) or any(sym not in m for m, _ in total.terms):
            return None
        out: Dim = 0
        for mono, coef in total.terms:
            rest = list(mono)
            rest.remove(sym)
            term: Dim = coef
            for s in rest:
                term = SymDim.symbol(s) * term
            out = out + term
        total = out
    return total
