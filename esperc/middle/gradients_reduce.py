"""Gradient rules of the reductions and of the row-wise composites (softmax, norms).

Formulas are PyTorch's: ``sum``/``mean`` broadcast the gradient back (``mean`` divides by the
reduced count), ``amax``/``amin`` share it equally among tied maxima (``scale_grad_by_count``),
``var`` is ``2 (x - mean) g / (N - correction)``, softmax and log_softmax use their saved output
(``_softmax_backward_data``), and the norms save per-row statistics in the forward
(``native_layer_norm``'s mean and rstd; rms_norm's rstd) and recompute the normalized input.
Everything on f16/bf16 values is computed in f32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import DType
from esperc.middle.gradients_base import Emitter, GradCtx

Grads = Sequence[str | None]
F32 = DType.F32


def _spread(ctx: GradCtx, node: Node, g: str) -> tuple[str, tuple[int, ...]]:
    """The result's gradient broadcast back over the reduced axes, and those axes."""
    axes = tuple(node.attr("axis"))
    shape = ctx.fwd_type(node.operands[0]).shape
    return ctx.expand(ctx.keepdim(g, shape, axes, node.attr("keepdim")), shape), axes


def reduce_sum(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    return [_spread(ctx, node, g)[0]]


def reduce_mean(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g.expand(x.shape) / N`` with ``N`` the number of reduced elements."""
    spread, axes = _spread(ctx, node, ctx.up(g))
    if not axes:
        return [spread]
    n = ctx.count(ctx.fwd_type(node.operands[0]).shape, axes, ctx.type(spread).dtype)
    return [ctx.div(spread, n)]


def reduce_extremum(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``amax``/``amin``: the gradient split equally among the positions equal to the result."""
    spread, axes = _spread(ctx, node, ctx.up(g))
    if not axes:
        return [spread]
    shape = ctx.fwd_type(node.operands[0]).shape
    x = ctx.fwd(node.operands[0])
    y = ctx.expand(ctx.keepdim(ctx.fwd(node.result), shape, axes, node.attr("keepdim")), shape)
    hit = ctx.op(Op.EQ, x, y)
    count = ctx.sum(ctx.cast(hit, F32), axes)
    share = ctx.div(spread, ctx.cast(count, ctx.type(spread).dtype))
    return [ctx.where(hit, share, ctx.zero(spread))]


def var(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``2 / (N - correction) * g * (x - mean(x))`` (PyTorch's ``var_backward``)."""
    spread, axes = _spread(ctx, node, ctx.up(g))
    x = ctx.up(ctx.fwd(node.operands[0]))
    centered = ctx.sub(x, ctx.mean(x, axes)) if axes else ctx.sub(x, x)
    shape = ctx.fwd_type(node.operands[0]).shape
    n = ctx.count(shape, axes, F32) if axes else ctx.e.const(1.0, F32)
    dof = ctx.sub(n, ctx.e.const(float(node.attr("correction")), F32))
    scale = ctx.div(ctx.e.const(2.0, F32), dof)
    return [ctx.mul(ctx.mul(spread, centered), scale)]


def softmax(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``y * (g - sum(g * y))`` along the axis, with the saved output ``y``."""
    axis = node.attr("axis")
    y, g = ctx.up(ctx.fwd(node.result)), ctx.up(g)
    gy = ctx.mul(g, y)
    return [ctx.sub(gy, ctx.mul(y, ctx.sum(gy, [axis])))]


def log_softmax(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g - exp(y) * sum(g)`` along the axis, with the saved output ``y``."""
    axis = node.attr("axis")
    y, g = ctx.up(ctx.fwd(node.result)), ctx.up(g)
    return [ctx.sub(g, ctx.mul(ctx.op(Op.EXP, y), ctx.sum(g, [axis])))]


# ---------------------------------------------------------------------------------- norms


def _row_stats(node: Node, with_mean: bool) -> Callable[[Emitter], str]:
    """Forward builder of a norm's per-row statistics over the last axis, in f32."""

    def build(e: Emitter) -> str:
        x = node.operands[0]
        if e.types[x].dtype is not F32:
            x = e.emit(Op.CAST, [x], {"dtype": F32})
        last = e.types[x].rank - 1
        if with_mean:
            spread = e.emit(Op.VAR, [x], {"axis": [last], "keepdim": True, "correction": 0})
        else:
            sq = e.emit(Op.MUL, [x, x])
            spread = e.emit(Op.REDUCE_MEAN, [sq], {"axis": [last], "keepdim": True})
        eps = e.const(float(node.attr("eps")), F32)
        return e.emit(Op.RSQRT, [e.emit(Op.ADD, [spread, eps])], hint=f"{node.result}_rstd")

    return build


def _row_mean(node: Node) -> Callable[[Emitter], str]:
    def build(e: Emitter) -> str:
        x = node.operands[0]
        if e.types[x].dtype is not F32:
            x = e.emit(Op.CAST, [x], {"dtype": F32})
        last = e.types[x].rank - 1
        return e.emit(Op.REDUCE_MEAN, [x], {"axis": [last], "keepdim": True},
                      hint=f"{node.result}_mean")  # fmt: skip

    return build


def _norm_input_grad(ctx: GradCtx, gxhat: str, xhat: str, rstd: str, centered: bool) -> str:
    """``rstd * (gxhat - [mean(gxhat)] - xhat * mean(gxhat * xhat))`` over the last axis."""
    last = ctx.type(xhat).rank - 1
    inner = ctx.sub(gxhat, ctx.mul(xhat, ctx.mean(ctx.mul(gxhat, xhat), [last])))
    if centered:
        inner = ctx.sub(inner, ctx.mean(gxhat, [last]))
    return ctx.mul(rstd, inner)


def layer_norm(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """Saves mean and rstd (f32, one per row); recomputes ``xhat = (x - mean) * rstd``.

    ``dx = rstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))`` with ``gxhat = g * w``;
    ``dw = g * xhat`` and ``db = g`` are summed over the rows by the driver, in f32.
    """
    mean = ctx.aux(node, "mean", _row_mean(node))
    rstd = ctx.aux(node, "rstd", _row_stats(node, with_mean=True))
    x = ctx.up(ctx.fwd(node.operands[0]))
    xhat = ctx.mul(ctx.sub(x, mean), rstd)
    g = ctx.up(g)
    out: list[str | None] = [None] * len(node.operands)
    gxhat = g
    if len(node.operands) > 1:
        gxhat = ctx.mul(g, ctx.up(ctx.fwd(node.operands[1])))
        out[1] = ctx.mul(g, xhat) if needs[1] else None
    if len(node.operands) > 2 and needs[2]:
        out[2] = g
    if needs[0]:
        out[0] = _norm_input_grad(ctx, gxhat, xhat, rstd, centered=True)
    return out


def rms_norm(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """Saves rstd = ``rsqrt(mean(x**2) + eps)`` (f32, one per row); ``xhat = x * rstd``.

    ``dx = rstd * (gxhat - xhat * mean(gxhat * xhat))`` with ``gxhat = g * w``; ``dw = g * xhat``.
    """
    rstd = ctx.aux(node, "rstd", _row_stats(node, with_mean=False))
    xhat = ctx.mul(ctx.up(ctx.fwd(node.operands[0])), rstd)
    g = ctx.up(g)
    out: list[str | None] = [None] * len(node.operands)
    gxhat = g
    if len(node.operands) > 1:
        gxhat = ctx.mul(g, ctx.up(ctx.fwd(node.operands[1])))
        out[1] = ctx.mul(g, xhat) if needs[1] else None
    if needs[0]:
        out[0] = _norm_input_grad(ctx, gxhat, xhat, rstd, centered=False)
    return out
