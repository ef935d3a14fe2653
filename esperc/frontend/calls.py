"""Calls: argument binding against each op's signature, then one lowering rule per op family.

Signatures are data (``SIGS``): positional parameters in order (each may also be passed by
keyword, as in Python) with a kind and a default. Compile-time parameters (axes, eps, shapes,
dtypes) must be literals, attrs or folds of them; tensor parameters accept any value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esperc.diagnostics import Note, did_you_mean
from esperc.frontend import ast
from esperc.frontend.context import Ctx, Scope
from esperc.frontend.dims import divide_dims, eval_dim, names_in
from esperc.frontend.exprs import binary, emit, lower_expr, materialize, matmul, tier
from esperc.frontend.values import Tensor, Value, Weak, fail, result_type
from esperc.ir.ops import FLOAT_UNARY, Op
from esperc.ir.types import DType, numel, promote_types

REQUIRED = object()
_UNARY = (
    "neg abs exp log sqrt rsqrt sin cos tanh sigmoid erf relu gelu silu softplus floor"
).split()
_REDUCE = {
    "sum": Op.REDUCE_SUM, "mean": Op.REDUCE_MEAN, "max": Op.REDUCE_MAX, "min": Op.REDUCE_MIN,
    "var": Op.VAR,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class P:
    """One parameter: name, kind (tensor, int, ints, bool, float, str, dtype, shape, tensors)."""

    name: str
    kind: str = "tensor"
    default: Any = REQUIRED


_X = P("x")
SIGS: dict[str, tuple[P, ...]] = {
    **{u: (_X,) for u in _UNARY},
    "gelu": (_X, P("approximate", "str", "none")),
    "maximum": (P("a"), P("b")),
    "minimum": (P("a"), P("b")),
    "pow": (P("a"), P("b")),
    "clamp": (_X, P("lo"), P("hi")),
    "where": (P("cond"), P("a"), P("b")),
    "cast": (_X, P("dtype", "dtype")),
    **{r: (_X, P("axis", "ints", None), P("keepdim", "bool", False)) for r in _REDUCE},
    "var": (_X, P("axis", "ints", None), P("keepdim", "bool", False), P("correction", "int", 1)),
    "softmax": (_X, P("axis", "int", -1)),
    "log_softmax": (_X, P("axis", "int", -1)),
    "layer_norm": (_X, P("weight", default=None), P("bias", default=None), P("eps", "float", 1e-5)),
    "rms_norm": (_X, P("weight", default=None), P("eps", "float", 1e-6)),
    "matmul": (P("a"), P("b")),
    "linear": (_X, P("weight"), P("bias", default=None)),
    "reshape": (_X, P("shape", "shape")),
    "broadcast_to": (_X, P("shape", "shape")),
    "transpose": (_X, P("dim0", "int", -2), P("dim1", "int", -1)),
    "permute": (_X, P("dims", "int_list")),
    "concat": (P("tensors", "tensors"), P("axis", "int", 0)),
    "slice": (_X, P("axis", "int"), P("start", "int", 0), P("end", "int", None)),
    "index": (_X, P("axis", "int")),
}


def bind_args(name: str, sig: tuple[P, ...], e: ast.Call) -> dict[str, ast.Expr | None]:
    """Match positional and keyword arguments to parameters (E0105, E0106)."""
    if len(e.args) > len(sig):
        raise fail(
            "E0105",
            f"'{name}' takes at most {len(sig)} positional argument{'s' * (len(sig) != 1)}, "
            f"got {len(e.args)}",
            e.args[len(sig)].span,
            Note("note", f"signature: {name}({', '.join(p.name for p in sig)})"),
        )
    bound: dict[str, ast.Expr | None] = {p.name: a for p, a in zip(sig, e.args)}
    names = [p.name for p in sig]
    for k in e.kwargs:
        if k.name not in names:
            raise fail(
                "E0106",
                f"'{name}' has no keyword argument '{k.name}'",
                k.name_span,
                did_you_mean(k.name, names),
                Note("note", f"signature: {name}({', '.join(names)})"),
            )
        if k.name in bound:
            raise fail("E0106", f"argument '{k.name}' given twice", k.span)
        bound[k.name] = k.value
    for p in sig:
        if p.name not in bound:
            if p.default is REQUIRED:
                raise fail(
                    "E0105",
                    f"'{name}' is missing its argument '{p.name}'",
                    e.span,
                    Note("note", f"signature: {name}({', '.join(names)})"),
                )
            bound[p.name] = None
    return bound


class Args:
    """The bound arguments of one call, evaluated on demand by kind."""

    def __init__(self, ctx: Ctx, scope: Scope, name: str, sig: tuple[P, ...], e: ast.Call):
        self.ctx, self.scope, self.name, self.e = ctx, scope, name, e
        self.sig = {p.name: p for p in sig}
        self.exprs = bind_args(name, sig, e)

    def tensor(self, key: str) -> tuple[ast.Expr, Value] | None:
        x = self.exprs[key]
        return None if x is None else (x, lower_expr(self.ctx, self.scope, x))

    def static(self, key: str) -> Any:
        x, p = self.exprs[key], self.sig[key]
        if x is None:
            return p.default
        if p.kind == "dtype":
            return _dtype(x)
        if p.kind == "shape":
            return self._shape(x)
        if p.kind in ("ints", "int_list"):
            items = x.items if isinstance(x, ast.ListExpr) else None
            if items is None and p.kind == "int_list":
                raise fail("E0212", f"'{key}' must be a list of integers like [0, 2, 1]", x.span)
            return (
                tuple(self._const(i, "int", key) for i in items)
                if items is not None
                else (self._const(x, "int", key),)
            )
        return self._const(x, p.kind, key)

    def _const(self, x: ast.Expr, kind: str, key: str) -> Any:
        if kind == "str":
            if not isinstance(x, ast.StrLit):
                raise fail("E0212", f"'{key}' must be a string literal", x.span)
            return x.value
        if kind == "int" and any(n in self.ctx.dims for n in names_in(x)):
            d = eval_dim(x, self.ctx.dims, self.scope)  # a static dim is a compile-time int
            if not isinstance(d, int):
                raise fail("E0212", f"'{key}' of '{self.name}' must be static, got {d}", x.span)
            return d
        v = lower_expr(self.ctx, self.scope, x)
        ok = isinstance(v, Weak) and (
            (kind == "int" and type(v.value) is int)
            or (kind == "bool" and type(v.value) is bool)
            or (kind == "float" and type(v.value) in (int, float))
        )
        if not ok:
            what = {"int": "an integer", "bool": "true or false", "float": "a number"}[kind]
            got = "a tensor" if isinstance(v, Tensor) else f"{v.value!r}"
            raise fail(
                "E0212",
                f"'{key}' of '{self.name}' must be {what} known at compile time, got {got}",
                x.span,
            )
        return float(v.value) if kind == "float" else v.value

    def _shape(self, x: ast.Expr) -> tuple[Any, ...]:
        if not isinstance(x, ast.ListExpr):
            raise fail("E0212", "a shape is a list of dims like [B, S, D]", x.span)
        return tuple(eval_dim(i, self.ctx.dims, self.scope) for i in x.items)


def _dtype(x: ast.Expr) -> DType:
    text = x.id if isinstance(x, ast.Name) else x.value if isinstance(x, ast.StrLit) else None
    if text in {d.value for d in DType}:
        return DType(text)
    raise fail(
        "E0201",
        f"unknown dtype '{text}'" if text else "expected a dtype (f16, bf16, f32, i32, i64, bool)",
        x.span,
        did_you_mean(text, [d.value for d in DType]) if text else None,
    )


def lower_call(ctx: Ctx, scope: Scope, e: ast.Call, hint: str | None) -> Value:
    """Inline a helper fn or lower an op call."""
    if e.func in ctx.fns:
        from esperc.frontend.stmts import inline_call

        return inline_call(ctx, scope, e, hint)
    rule = RULES.get(e.func)
    if rule is None:
        raise fail(
            "E0103",
            f"unknown op or function '{e.func}'",
            e.name_span,
            did_you_mean(e.func, [*SIGS, *ctx.fns]),
        )
    return rule(Args(ctx, scope, e.func, SIGS[e.func], e), hint)


# --------------------------------------------------------------------------------------------
# Rules


def _t(a: Args, key: str) -> tuple[ast.Expr, Value]:
    v = a.tensor(key)
    assert v is not None
    return v


def _unary(a: Args, hint: str | None) -> Value:
    x, v = _t(a, "x")
    op = Op(a.name)
    dt = tier(a.ctx, v)[0]
    want = DType.F32 if op in FLOAT_UNARY and not dt.is_float else None
    attrs = {"approximate": a.static("approximate")} if op is Op.GELU else {}
    return emit(a.ctx, op, [materialize(a.ctx, v, want, x)], attrs, a.e, hint, [(x, v)], a.name)


def _elementwise2(a: Args, hint: str | None) -> Value:
    return binary(a.ctx, a.name, [_t(a, "a"), _t(a, "b")], a.e, hint)


def _promoted(a: Args, keys: tuple[str, ...], hint: str | None, op: Op, pre: list[str]) -> Value:
    ops = [_t(a, k) for k in keys]
    dt = result_type([tier(a.ctx, v) for _, v in ops])
    names = pre + [materialize(a.ctx, v, dt, x) for x, v in ops]
    return emit(a.ctx, op, names, {}, a.e, hint, ops, a.name)


def _clamp(a: Args, hint: str | None) -> Value:
    return _promoted(a, ("x", "lo", "hi"), hint, Op.CLAMP, [])


def _where(a: Args, hint: str | None) -> Value:
    c, cv = _t(a, "cond")
    if tier(a.ctx, cv)[0] is not DType.BOOL:
        raise fail(
            "E0201", f"the condition of 'where' must be bool, got {tier(a.ctx, cv)[0]}", c.span
        )
    return _promoted(a, ("a", "b"), hint, Op.WHERE, [materialize(a.ctx, cv, None, c)])


def _cast(a: Args, hint: str | None) -> Value:
    x, v = _t(a, "x")
    dt = a.static("dtype")
    name = materialize(a.ctx, v, None, x)
    return emit(a.ctx, Op.CAST, [name], {"dtype": dt}, a.e, hint, [(x, v)])


def _float_operand(a: Args, key: str) -> tuple[tuple[ast.Expr, Value], str]:
    x, v = _t(a, key)
    dt = tier(a.ctx, v)[0]
    return (x, v), materialize(a.ctx, v, None if dt.is_float else DType.F32, x)


def _reduce(a: Args, hint: str | None) -> Value:
    op = _REDUCE[a.name]
    (x, v), name = _float_operand(a, "x") if op in (Op.REDUCE_MEAN, Op.VAR) else (
        _t(a, "x"), None)  # fmt: skip
    name = name or materialize(a.ctx, v, None, x)
    rank = a.ctx.builder.type_of(name).rank
    axis = a.static("axis")
    attrs = {"axis": tuple(range(rank)) if axis is None else axis, "keepdim": a.static("keepdim")}
    if len(set(attrs["axis"])) != len(attrs["axis"]):
        raise fail("E0205", f"repeated axis in {list(attrs['axis'])}", a.exprs["axis"].span)
    if op is Op.VAR:
        attrs["correction"] = a.static("correction")
    return emit(a.ctx, op, [name], attrs, a.e, hint, [(x, v)], a.name)


def _rowwise(a: Args, hint: str | None) -> Value:
    src, name = _float_operand(a, "x")
    op = Op(a.name)
    return emit(a.ctx, op, [name], {"axis": a.static("axis")}, a.e, hint, [src], a.name)


def _norm(a: Args, hint: str | None) -> Value:
    src, name = _float_operand(a, "x")
    dt = a.ctx.builder.type_of(name).dtype
    names, srcs = [name], [src]
    for key in ("weight", "bias") if a.name == "layer_norm" else ("weight",):
        w = a.tensor(key)
        if w is None:
            if key == "weight" and a.name == "layer_norm" and a.exprs["bias"] is not None:
                raise fail("E0105", "layer_norm with a bias needs a weight", a.e.span)
            continue
        srcs.append(w)
        names.append(materialize(a.ctx, w[1], dt, w[0]))  # PyTorch needs equal dtypes
    attrs = {"eps": a.static("eps")}
    return emit(a.ctx, Op(a.name), names, attrs, a.e, hint, srcs, a.name)


def _matmul(a: Args, hint: str | None) -> Value:
    return matmul(a.ctx, [_t(a, "a"), _t(a, "b")], a.e, hint)


def _linear(a: Args, hint: str | None) -> Value:
    ops = [_t(a, "x"), _t(a, "weight")]
    b = a.tensor("bias")
    ops += [b] if b else []
    for x, v in ops:
        if isinstance(v, Weak):
            raise fail("E0202", "'linear' needs tensors, got a scalar", x.span)
    dt = tier(a.ctx, ops[0][1])[0]
    for _, v in ops[1:]:
        dt = promote_types(dt, tier(a.ctx, v)[0])
    names = [materialize(a.ctx, v, dt, x) for x, v in ops]
    return emit(a.ctx, Op.LINEAR, names, {}, a.e, hint, ops, "linear")


def _shape_op(a: Args, hint: str | None) -> Value:
    x, v = _t(a, "x")
    name = materialize(a.ctx, v, None, x)
    shape = list(a.static("shape"))
    if a.name == "reshape" and shape.count(-1) == 1:
        rest = divide_dims(numel(a.ctx.builder.type_of(name).shape), [d for d in shape if d != -1])
        if rest is None:
            raise fail(
                "E0206", "cannot infer the -1 dimension of this reshape", a.exprs["shape"].span
            )
        shape[shape.index(-1)] = rest
    for d in shape:
        if isinstance(d, int) and d < 1:
            raise fail("E0209", f"dimension {d} in a shape must be positive", a.exprs["shape"].span)
    return emit(a.ctx, Op(a.name), [name], {"shape": tuple(shape)}, a.e, hint, [(x, v)], a.name)


def _one_with(attrs_of: Callable[[Args], dict[str, Any]]) -> Callable[[Args, str | None], Value]:
    def rule(a: Args, hint: str | None) -> Value:
        x, v = _t(a, "x")
        name = materialize(a.ctx, v, None, x)
        return emit(a.ctx, Op(a.name), [name], attrs_of(a), a.e, hint, [(x, v)], a.name)

    return rule


def _slice(a: Args, hint: str | None) -> Value:
    x, v = _t(a, "x")
    name = materialize(a.ctx, v, None, x)
    axis, start, end = a.static("axis"), a.static("start"), a.static("end")
    if end is None:
        t = a.ctx.builder.type_of(name)
        size = t.shape[axis] if -t.rank <= axis < t.rank else None
        if not isinstance(size, int):
            raise fail("E0212", "slice of a dynamic dimension needs 'end='", a.e.span)
        end = size
    attrs = {"axis": axis, "start": start, "end": end}
    return emit(a.ctx, Op.SLICE, [name], attrs, a.e, hint, [(x, v)], a.name)


def _concat(a: Args, hint: str | None) -> Value:
    lst = a.exprs["tensors"]
    if not isinstance(lst, ast.ListExpr) or not lst.items:
        raise fail("E0212", "concat takes a list of tensors: concat([a, b], axis=0)", lst.span)
    ops = [(x, lower_expr(a.ctx, a.scope, x)) for x in lst.items]
    dt = result_type([tier(a.ctx, v) for _, v in ops])
    names = [materialize(a.ctx, v, dt, x) for x, v in ops]
    return emit(a.ctx, Op.CONCAT, names, {"axis": a.static("axis")}, a.e, hint, ops, "concat")


RULES: dict[str, Callable[[Args, str | None], Value]] = {
    **{u: _unary for u in _UNARY},
    "maximum": _elementwise2,
    "minimum": _elementwise2,
    "pow": _elementwise2,
    "clamp": _clamp,
    "where": _where,
    "cast": _cast,
    **{r: _reduce for r in _REDUCE},
    "softmax": _rowwise,
    "log_softmax": _rowwise,
    "layer_norm": _norm,
    "rms_norm": _norm,
    "matmul": _matmul,
    "linear": _linear,
    "reshape": _shape_op,
    "broadcast_to": _shape_op,
    "transpose": _one_with(lambda a: {"dim0": a.static("dim0"), "dim1": a.static("dim1")}),
    "permute": _one_with(lambda a: {"dims": a.static("dims")}),
    "index": _one_with(lambda a: {"axis": a.static("axis")}),
    "slice": _slice,
    "concat": _concat,
}
