"""Expression lowering: names, literals, operators, constant folding and type promotion.

Operators follow PyTorch: ``result_type`` picks the dtype of a binary op, then every operand is
cast to it (``cast`` nodes) and compile-time scalars become rank-0 ``constant`` nodes of it, so
that the IR's elementwise ops see operands of one dtype. Operators on compile-time scalars only
are folded with Python semantics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from esperc.diagnostics import Note, did_you_mean
from esperc.frontend import ast
from esperc.frontend.context import Ctx, Scope
from esperc.frontend.values import POISON, DimRef, Failed, Tensor, Value, Weak, fail, result_type
from esperc.ir.ops import Op
from esperc.ir.types import DType, TypeRuleError, promote_types

BINARY_OPS = {
    "+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "//": Op.FLOORDIV, "%": Op.MOD,
    "**": Op.POW, "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE, "==": Op.EQ, "!=": Op.NE,
    "and": Op.LOGICAL_AND, "or": Op.LOGICAL_OR,
}  # fmt: skip
_COMPARE = ("<", "<=", ">", ">=", "==", "!=")
_INT_RANGE = {DType.I32: (-(2**31), 2**31 - 1), DType.I64: (-(2**63), 2**63 - 1)}


def short(e: ast.Expr, depth: int = 0) -> str:
    """A short source-like rendering of an expression, for notes (``linear(x, w1, b1)``)."""
    if depth > 2:
        return "..."
    match e:
        case ast.Name(id=n):
            return n
        case ast.IntLit(value=v) | ast.FloatLit(value=v):
            return repr(v) if v != math.inf else "inf"
        case ast.BoolLit(value=v):
            return "true" if v else "false"
        case ast.Call(func=f, args=args, kwargs=kws):
            parts = [short(a, depth + 1) for a in args] + [k.name + "=..." for k in kws]
            return f"{f}({', '.join(parts)})"
        case ast.BinOp(op=op, lhs=a, rhs=b):
            return f"{short(a, depth + 1)} {op} {short(b, depth + 1)}"
        case ast.UnaryOp(op=op, operand=x):
            return f"{op}{' ' if op == 'not' else ''}{short(x, depth + 1)}"
    return "..."


def tier(ctx: Ctx, v: Value) -> tuple[DType, int]:
    """``(dtype, priority tier)`` of a value for ``result_type``."""
    if isinstance(v, Weak):
        return v.dtype, 0
    t = ctx.builder.type_of(v.name)
    return t.dtype, 2 if t.rank else 1


def dtype_of(ctx: Ctx, v: Value) -> DType:
    return tier(ctx, v)[0]


def materialize(ctx: Ctx, v: Value, dtype: DType | None, e: ast.Expr) -> str:
    """The SSA name of ``v`` converted to ``dtype`` (a constant node for a scalar)."""
    if isinstance(v, Tensor):
        return v.name if dtype is None else ctx.builder.cast(v.name, dtype, e.span)
    dt = dtype or v.dtype
    if dt.is_int and type(v.value) is int:
        lo, hi = _INT_RANGE[dt]
        if not lo <= v.value <= hi:
            raise fail("E0215", f"integer {v.value} does not fit in {dt}", e.span)
    if dt.is_int and isinstance(v.value, float) and not math.isfinite(v.value):
        raise fail("E0215", f"{v.value} cannot be converted to {dt}", e.span)
    return ctx.builder.constant(v.value, dt, e.span)


def emit(
    ctx: Ctx,
    op: Op,
    operands: Sequence[str],
    attrs: dict[str, Any],
    e: ast.Expr,
    hint: str | None,
    sources: Sequence[tuple[ast.Expr, Value]] = (),
    what: str | None = None,
) -> Tensor:
    """Emit one node; a rejected type rule becomes an error at ``e`` with notes on operands."""
    try:
        name = ctx.builder.emit(op, operands, attrs, e.span, hint)
    except TypeRuleError as err:
        msg = f"{err.message} in '{what}'" if what and err.code == "E0203" else err.message
        notes = [Note(k, m) for k, m in err.notes] + operand_notes(ctx, sources)
        raise fail(err.code, msg, e.span, *notes) from None
    return Tensor(name, e.span, short(e))


def operand_notes(ctx: Ctx, sources: Sequence[tuple[ast.Expr, Value]]) -> list[Note]:
    """``'h' is bf16[B, 512], from linear(x, w1)`` for each tensor operand."""
    notes = []
    for x, v in sources:
        if not isinstance(v, Tensor):
            continue
        t = ctx.builder.type_of(v.name)
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        label = f"'{x.id}'" if isinstance(x, ast.Name) else f"'{short(x)}'"
        came = f", from {v.desc}" if isinstance(x, ast.Name) and v.desc and v.desc != x.id else ""
        at = v.origin if isinstance(x, ast.Name) and v.origin and v.origin.line else None
        notes.append(Note("note", f"{label} is {t.dtype}{shape}{came}", at))
    return notes


def lower_expr(ctx: Ctx, scope: Scope, e: ast.Expr, hint: str | None = None) -> Value:
    """Lower an expression to a tensor value or a compile-time scalar.

    Raises:
        Failed: with the diagnostic, or without one when an operand was already poisoned.
    """
    match e:
        case ast.IntLit(value=v) | ast.FloatLit(value=v) | ast.BoolLit(value=v):
            return Weak(v)
        case ast.Name():
            return lookup(ctx, scope, e)
        case ast.BinOp(op="@"):
            a, b = lower_expr(ctx, scope, e.lhs), lower_expr(ctx, scope, e.rhs)
            return matmul(ctx, [(e.lhs, a), (e.rhs, b)], e, hint)
        case ast.BinOp():
            a, b = lower_expr(ctx, scope, e.lhs), lower_expr(ctx, scope, e.rhs)
            return binary(ctx, e.op, [(e.lhs, a), (e.rhs, b)], e, hint)
        case ast.UnaryOp():
            return unary(ctx, e.op, (e.operand, lower_expr(ctx, scope, e.operand)), e, hint)
        case ast.Call():
            from esperc.frontend.calls import lower_call

            return lower_call(ctx, scope, e, hint)
        case ast.StrLit():
            raise fail("E0214", "a string is only allowed as a keyword argument", e.span)
        case ast.ListExpr():
            raise fail(
                "E0214",
                "a list is not a tensor",
                e.span,
                Note(
                    "help", "lists are arguments of concat, reshape, permute, broadcast_to, axis="
                ),
            )
        case ast.TupleExpr():
            raise fail("E0214", "a tuple is only allowed as the value of 'return'", e.span)
    raise AssertionError(f"unknown expression {e!r}")


def lookup(ctx: Ctx, scope: Scope, e: ast.Name) -> Value:
    b = scope.get(e.id)
    if isinstance(b, Tensor | Weak):
        return b
    if b is POISON:
        raise Failed()
    if isinstance(b, DimRef):
        raise fail(
            "E0214",
            f"dimension '{e.id}' is not a value",
            e.span,
            Note("help", "dims appear only in shapes, dim lists and 'require'"),
            Note("note", f"'{e.id}' is declared here", b.loc) if b.loc else None,
        )
    notes: list[Note | None] = [ctx.unbound.get(e.id)]
    if ctx.inline and e.id in ctx.decls:
        notes.append(Note("note", "a helper fn only sees its parameters and its own names"))
    else:
        notes.append(did_you_mean(e.id, [k for k, v in scope.items() if v is not POISON]))
    raise fail("E0101", f"unknown name '{e.id}'", e.span, *notes)


def _is_bool(ctx: Ctx, v: Value) -> bool:
    return dtype_of(ctx, v) is DType.BOOL


def binary(
    ctx: Ctx, sym: str, ops: list[tuple[ast.Expr, Value]], e: ast.Expr, hint: str | None
) -> Value:
    """``a SYM b`` with PyTorch promotion; folded when both operands are compile-time scalars."""
    if sym in ("and", "or"):
        for x, v in ops:
            if not _is_bool(ctx, v):
                raise fail("E0201", f"'{sym}' needs bool operands, got {dtype_of(ctx, v)}", x.span)
    dt = result_type([tier(ctx, v) for _, v in ops])
    if dt is DType.BOOL and sym not in (*_COMPARE, "and", "or", "maximum", "minimum"):
        raise fail("E0201", f"'{sym}' is not defined on bool", e.span)
    (ea, a), (eb, b) = ops
    if isinstance(a, Weak) and isinstance(b, Weak):
        return fold(sym, a, b, e)
    if sym in ("/", "**", "pow") and not dt.is_float:
        dt = DType.F32  # true division (and, in this IR, pow) of integers gives float
    names = [materialize(ctx, v, dt, x) for x, v in ops]
    op = {"maximum": Op.MAXIMUM, "minimum": Op.MINIMUM, "pow": Op.POW}.get(sym) or BINARY_OPS[sym]
    return emit(ctx, op, names, {}, e, hint, ops, sym)


def fold(sym: str, a: Weak, b: Weak, e: ast.Expr) -> Weak:
    """Python-semantics fold of two compile-time scalars (E0215 if it cannot be computed)."""
    x, y = a.value, b.value
    try:
        if sym in ("**", "pow") and type(x) is int and type(y) is int and y > 0:
            if abs(x) > 1 and y * abs(x).bit_length() > 4096:
                raise OverflowError("integer power too large")
        r = _FOLD[sym](x, y)
    except (ArithmeticError, ValueError) as err:
        raise fail("E0215", f"cannot compute {x!r} {sym} {y!r}: {err}", e.span) from None
    if isinstance(r, complex):
        r = math.nan  # as torch.pow(-8.0, 0.5)
    if type(r) is int and abs(r).bit_length() > 4096:
        raise fail("E0215", "integer constant too large", e.span)
    return Weak(r)


_FOLD: dict[str, Any] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x / y,
    "//": lambda x, y: x // y,
    "%": lambda x, y: x % y,
    "**": lambda x, y: x**y,
    "pow": lambda x, y: x**y,
    "maximum": max,
    "minimum": min,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
    "==": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    "and": lambda x, y: x and y,
    "or": lambda x, y: x or y,
}


def unary(ctx: Ctx, sym: str, op: tuple[ast.Expr, Value], e: ast.Expr, hint: str | None) -> Value:
    """``-x`` or ``not x``."""
    x, v = op
    if sym == "not":
        if not _is_bool(ctx, v):
            raise fail("E0201", f"'not' needs a bool operand, got {dtype_of(ctx, v)}", x.span)
        if isinstance(v, Weak):
            return Weak(not v.value)
        return emit(ctx, Op.LOGICAL_NOT, [v.name], {}, e, hint, [op])
    if _is_bool(ctx, v):
        raise fail("E0201", "unary '-' is not defined on bool", x.span)
    if isinstance(v, Weak):
        return Weak(-v.value)
    return emit(ctx, Op.NEG, [v.name], {}, e, hint, [op])


def matmul(ctx: Ctx, ops: list[tuple[ast.Expr, Value]], e: ast.Expr, hint: str | None) -> Value:
    """``a @ b``: both operands promoted to one dtype (PyTorch requires equal dtypes)."""
    for x, v in ops:
        if isinstance(v, Weak):
            raise fail("E0202", "matrix product needs tensors of rank >= 2, got a scalar", x.span)
    (_, a), (_, b) = ops
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    dt = promote_types(dtype_of(ctx, a), dtype_of(ctx, b))
    names = [materialize(ctx, v, dt, x) for x, v in ops]
    return emit(ctx, Op.MATMUL, names, {}, e, hint, ops, "@")
