"""Blueprint declarations: dims and attrs (both with ``-D`` overrides: an attr's value, a static
dim's size), inputs, params and requires."""

from __future__ import annotations

import math
from collections.abc import Mapping

from esperc.diagnostics import Diagnostic, Note, Severity, did_you_mean
from esperc.frontend import ast
from esperc.frontend.context import Ctx, Scope
from esperc.frontend.dims import eval_dim, names_in, require_expr
from esperc.frontend.exprs import lower_expr
from esperc.frontend.values import POISON, DimRef, Failed, Tensor, Weak, fail
from esperc.ir import dimexpr as dx
from esperc.ir.types import DType, SymDim, TensorType

MAX_DIM = 2**31 - 1
ATTR_TYPES = ("f32", "i32", "bool")


def declare(ctx: Ctx, scope: Scope, bp: ast.Blueprint, overrides: Mapping[str, str]) -> None:
    """Process every declaration of ``bp`` in source order, binding names in ``scope``.

    Errors go to ``ctx``; a failed declaration binds its name to POISON (or a DimRef for dims).
    """
    attrs: dict[str, ast.AttrDecl] = {}
    static: set[str] = set()  # static dims, which -D may resize
    for d in bp.body:
        if isinstance(d, ast.Require):
            _guard(ctx, _require, ctx, scope, d)
            continue
        if not isinstance(d, ast.DimDecl | ast.AttrDecl | ast.TensorDecl):
            continue
        if d.name in ctx.decls:
            kind, where = ctx.decls[d.name]
            ctx.report(
                Diagnostic(
                    Severity.ERROR,
                    "E0102",
                    f"'{d.name}' is declared twice",
                    d.name_span,
                    (Note("note", f"'{d.name}' was first declared here as {kind}", where),),
                )
            )
            continue
        if isinstance(d, ast.DimDecl):
            ctx.decls[d.name] = ("a dim", d.name_span)
            scope[d.name] = DimRef(d.name, d.name_span)
            if d.value is not None:
                static.add(d.name)
            _guard(ctx, _dim, ctx, scope, d, overrides.get(d.name))
        elif isinstance(d, ast.AttrDecl):
            ctx.decls[d.name] = ("an attr", d.name_span)
            attrs[d.name] = d
            scope[d.name] = POISON
            _guard(ctx, _attr, ctx, scope, d, overrides.get(d.name))
        else:
            ctx.decls[d.name] = (f"an {d.kind}" if d.kind == "input" else "a param", d.name_span)
            scope[d.name] = POISON
            _guard(ctx, _tensor, ctx, scope, d)
    for name in overrides:
        if name not in attrs and name not in static:
            known = [*attrs, *sorted(static)]
            dynamic = name in ctx.dims  # declared, but a dynamic dim: sized at every call
            ctx.report(
                Diagnostic(
                    Severity.ERROR,
                    "E0108",
                    f"-D {name}: '{name}' is a dynamic dim of blueprint '{bp.name}'"
                    if dynamic
                    else f"-D {name}: blueprint '{bp.name}' has no attr or static dim '{name}'",
                    None,
                    (Note("note", "a dynamic dim takes its size from the inputs at each call"),)
                    if dynamic
                    else tuple(n for n in [did_you_mean(name, known)] if n)
                    or (Note("note", f"its attrs and static dims: {', '.join(known) or 'none'}"),),
                )
            )


def _guard(ctx: Ctx, fn, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except Failed as f:
        if f.diag is not None:
            ctx.report(f.diag)


def _static_int(ctx: Ctx, scope: Scope, e: ast.Expr, what: str) -> int:
    v = eval_dim(e, ctx.dims, scope)
    if not isinstance(v, int):
        dyn = sorted(v.symbols)[0]
        raise fail(
            "E0209",
            f"{what} must be static, but '{dyn}' is a dynamic dim",
            e.span,
            Note("help", "a static dim is an integer expression over other static dims"),
        )
    return v


def _dim(ctx: Ctx, scope: Scope, d: ast.DimDecl, override: str | None = None) -> None:
    if d.value is not None:
        v = _static_int(ctx, scope, d.value, f"dim '{d.name}'")
        if v < 1:
            raise fail("E0209", f"dim '{d.name}' = {v} must be positive", d.value.span)
        if override is not None:  # dims derived from it, and every require, see the new size
            v = _parse_override(override)
            if type(v) is not int or not 1 <= v <= MAX_DIM:
                raise fail(
                    "E0211",
                    f"-D {d.name}={override}: a static dim's size is an integer in [1, {MAX_DIM}]",
                    None,
                    Note("note", f"dim '{d.name}' is declared here", d.span),
                )
        ctx.dims[d.name] = v
        return
    lo, hi = 1, MAX_DIM
    if d.lo is not None and d.hi is not None:
        lo = _static_int(ctx, scope, d.lo, "a dim range bound")
        hi = _static_int(ctx, scope, d.hi, "a dim range bound")
        if not 1 <= lo <= hi <= MAX_DIM:
            span = d.lo.span if not 1 <= lo <= MAX_DIM else d.hi.span
            raise fail(
                "E0213",
                f"invalid range [{lo}, {hi}] for dim '{d.name}'",
                span,
                Note("help", f"a dim range needs 1 <= LO <= HI <= {MAX_DIM}"),
            )
    ctx.dims[d.name] = SymDim.symbol(d.name)
    ctx.builder.add_dim(d.name, lo, hi, d.span)


def _attr(ctx: Ctx, scope: Scope, d: ast.AttrDecl, override: str | None) -> None:
    if d.type_name not in ATTR_TYPES:
        raise fail(
            "E0201",
            f"an attr has type f32, i32 or bool, not '{d.type_name}'",
            d.type_span,
            did_you_mean(d.type_name, ATTR_TYPES),
        )
    v = lower_expr(ctx, scope, d.value)
    if not isinstance(v, Weak):
        raise fail("E0211", f"attr '{d.name}' needs a compile-time value", d.value.span)
    value = _check_attr(d, v.value)
    if value is None:
        raise fail(
            "E0211",
            f"{v.value!r} is not a valid {d.type_name} value for attr '{d.name}'",
            d.value.span,
        )
    if override is not None:
        value = _check_attr(d, _parse_override(override))
        if value is None:
            raise fail(
                "E0211",
                f"-D {d.name}={override}: not a valid {d.type_name} value",
                None,
                Note("note", f"attr '{d.name}' is declared here", d.span),
            )
    scope[d.name] = Weak(value)


def _parse_override(text: str) -> bool | int | float | None:
    t = text.strip()
    if t in ("true", "false"):
        return t == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            continue
    return None


def _check_attr(d: ast.AttrDecl, v: object) -> bool | int | float | None:
    if d.type_name == "bool":
        return v if type(v) is bool else None
    if d.type_name == "i32":
        return v if type(v) is int and -(2**31) <= v < 2**31 else None
    if type(v) in (int, float):
        f = float(v)  # type: ignore[arg-type]
        return f if math.isinf(f) or abs(f) <= 3.4028234663852886e38 or math.isnan(f) else None
    return None


def _tensor(ctx: Ctx, scope: Scope, d: ast.TensorDecl) -> None:
    if d.dtype not in {t.value for t in DType}:
        raise fail(
            "E0201",
            f"unknown dtype '{d.dtype}'",
            d.dtype_span,
            did_you_mean(d.dtype, [t.value for t in DType]),
            Note("note", "dtypes: f16, bf16, f32, i32, i64, bool"),
        )
    shape = []
    for e in d.dims:
        v = eval_dim(e, ctx.dims, scope)
        if isinstance(v, int) and v < 1:
            raise fail("E0209", f"dimension {v} must be positive", e.span)
        shape.append(v)
    ty = TensorType(DType(d.dtype), tuple(shape))
    name = ctx.builder.add_arg(d.name, ty, d.kind, d.span)
    scope[d.name] = Tensor(name, d.name_span, f"{d.kind} {d.name}: {ty}")


def _require(ctx: Ctx, scope: Scope, r: ast.Require) -> None:
    expr, kind = require_expr(r.expr, ctx.dims, scope)
    if kind != "bool":
        raise fail("E0209", "'require' needs a condition, like D % 16 == 0", r.expr.span)
    if dx.symbols(expr):
        ctx.builder.add_require(expr, r.span)
        return
    try:
        ok = dx.evaluate(expr, {})
    except dx.DimExprError as err:
        raise fail("E0209", f"cannot evaluate this constraint: {err}", r.expr.span) from None
    if not ok:
        static = [
            f"{n} = {ctx.dims[n]}" for n in names_in(r.expr) if isinstance(ctx.dims.get(n), int)
        ]
        raise fail(
            "E0210",
            "constraint is false",
            r.expr.span,
            Note("note", "with " + ", ".join(static)) if static else None,
        )
