"""Gradient rules of the elementwise ops (unary, binary, ternary).

Every formula is PyTorch's (``tools/autograd/derivatives.yaml`` and the ``*_backward`` kernels
it names), including its conventions at ties and kinks: ``relu'(0) = 0``, ``abs'(0) = 0``,
``maximum``/``minimum`` split the gradient in halves where the operands are equal, ``clamp``
passes the gradient to ``x`` on the closed interval ``[lo, hi]``. Formulas of f16/bf16 values
are computed in f32 (``ctx.up``); the driver rounds the result to the operand dtype once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.middle.gradients_base import GradCtx, GradRule

Grads = Sequence[str | None]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_GELU_KAPPA = 0.044715
_SOFTPLUS_THRESHOLD = 20.0  # F.softplus default (beta = 1)


def _xg(ctx: GradCtx, node: Node, g: str) -> tuple[str, str]:
    """The operand and the incoming gradient, in the compute dtype."""
    return ctx.up(ctx.fwd(node.operands[0])), ctx.up(g)


def _yg(ctx: GradCtx, node: Node, g: str) -> tuple[str, str]:
    """The result (recomputed or saved) and the incoming gradient, in the compute dtype."""
    return ctx.up(ctx.fwd(node.result)), ctx.up(g)


def neg(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    return [ctx.neg(g)]


def abs_(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g * sgn(x)``: zero at 0."""
    x, g = _xg(ctx, node, g)
    z = ctx.zero(x)
    return [ctx.where(ctx.op(Op.GT, x, z), g, ctx.where(ctx.op(Op.LT, x, z), ctx.neg(g), z))]


def exp(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    y, g = _yg(ctx, node, g)
    return [ctx.mul(g, y)]


def log(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    x, g = _xg(ctx, node, g)
    return [ctx.div(g, x)]


def sqrt(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g / (2 * sqrt(x))``."""
    y, g = _yg(ctx, node, g)
    return [ctx.div(g, ctx.mul(y, ctx.const(2.0, y)))]


def rsqrt(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``-0.5 * g * y**3``."""
    y, g = _yg(ctx, node, g)
    return [ctx.mul(ctx.mul(g, ctx.const(-0.5, g)), ctx.mul(y, y, y))]


def sin(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    x, g = _xg(ctx, node, g)
    return [ctx.mul(g, ctx.op(Op.COS, x))]


def cos(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    x, g = _xg(ctx, node, g)
    return [ctx.mul(g, ctx.neg(ctx.op(Op.SIN, x)))]


def tanh(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g * (1 - y**2)``."""
    y, g = _yg(ctx, node, g)
    return [ctx.mul(g, ctx.sub(ctx.const(1.0, y), ctx.mul(y, y)))]


def sigmoid(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g * (1 - y) * y``."""
    y, g = _yg(ctx, node, g)
    return [ctx.mul(g, ctx.sub(ctx.const(1.0, y), y), y)]


def erf(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``2/sqrt(pi) * exp(-x**2) * g``."""
    x, g = _xg(ctx, node, g)
    e = ctx.op(Op.EXP, ctx.neg(ctx.mul(x, x)))
    return [ctx.mul(ctx.mul(e, ctx.const(_TWO_OVER_SQRT_PI, x)), g)]


def relu(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``threshold_backward(g, y, 0)``: the gradient where the result is positive."""
    y = ctx.fwd(node.result)
    return [ctx.where(ctx.op(Op.GT, y, ctx.zero(y)), g, ctx.zero(g))]


def gelu(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``GeluBackward`` (aten/src/ATen/native/cpu/Activation.cpp), both approximations."""
    x, g = _xg(ctx, node, g)

    def c(v: float) -> str:
        return ctx.const(v, x)

    if node.attr("approximate") == "tanh":
        x2 = ctx.mul(x, x)
        inner = ctx.mul(c(_SQRT_2_OVER_PI), ctx.add(x, ctx.mul(c(_GELU_KAPPA), x2, x)))
        t = ctx.op(Op.TANH, inner)
        left = ctx.mul(c(0.5), x)
        left_d = ctx.mul(c(0.5), ctx.add(c(1.0), t))
        d_inner = ctx.mul(c(_SQRT_2_OVER_PI), ctx.add(c(1.0), ctx.mul(c(3.0 * _GELU_KAPPA), x2)))
        right_d = ctx.mul(left, ctx.sub(c(1.0), ctx.mul(t, t)), d_inner)
        return [ctx.mul(g, ctx.add(left_d, right_d))]
    cdf = ctx.mul(c(0.5), ctx.add(c(1.0), ctx.op(Op.ERF, ctx.mul(x, c(_INV_SQRT_2)))))
    pdf = ctx.mul(ctx.op(Op.EXP, ctx.mul(ctx.mul(x, x), c(-0.5))), c(_INV_SQRT_2PI))
    return [ctx.mul(g, ctx.add(cdf, ctx.mul(x, pdf)))]


def silu(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    x, g = _xg(ctx, node, g)
    s = ctx.op(Op.SIGMOID, x)
    one = ctx.const(1.0, x)
    return [ctx.mul(g, s, ctx.add(one, ctx.mul(x, ctx.sub(one, s))))]


def softplus(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``g * sigmoid(x)`` below the threshold 20, ``g`` above (F.softplus is linear there)."""
    x, g = _xg(ctx, node, g)
    z = ctx.op(Op.EXP, x)
    smooth = ctx.div(ctx.mul(g, z), ctx.add(z, ctx.const(1.0, z)))
    return [ctx.where(ctx.op(Op.GT, x, ctx.const(_SOFTPLUS_THRESHOLD, x)), g, smooth)]


def cast(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """The gradient cast back to the operand's dtype (by the driver)."""
    return [g]


# --------------------------------------------------------------------------------- binary


def add(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    return [g, g]


def sub(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    return [g, ctx.neg(g) if needs[1] else None]


def mul(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    a, b = node.operands
    g = ctx.up(g)
    return [
        ctx.mul(g, ctx.up(ctx.fwd(b))) if needs[0] else None,
        ctx.mul(g, ctx.up(ctx.fwd(a))) if needs[1] else None,
    ]


def div(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``a: g / b``; ``b: -g * ((a / b) / b)`` (PyTorch's ``div_tensor_other_backward``)."""
    b = ctx.up(ctx.fwd(node.operands[1]))
    g = ctx.up(g)
    da = ctx.div(g, b) if needs[0] else None
    db = None
    if needs[1]:
        y = ctx.up(ctx.fwd(node.result))
        db = ctx.mul(ctx.neg(g), ctx.div(y, b))
    return [da, db]


def mod(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``remainder``: ``a: g``; ``b: -g * floor(a / b)``."""
    db = None
    if needs[1]:
        a, b = (ctx.up(ctx.fwd(o)) for o in node.operands)
        db = ctx.mul(ctx.neg(ctx.up(g)), ctx.op(Op.FLOORDIV, a, b))
    return [g, db]


def pow_(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``pow_backward_self``: 0 where the exponent is 0, else ``g * e * a**(e-1)``;
    ``pow_backward_exponent``: 0 where ``a == 0 and e >= 0``, else ``g * y * log(a)``."""
    a, e = (ctx.up(ctx.fwd(o)) for o in node.operands)
    g = ctx.up(g)
    zero, one = ctx.zero(a), ctx.const(1.0, a)
    da = de = None
    if needs[0]:
        d = ctx.mul(g, ctx.mul(e, ctx.op(Op.POW, a, ctx.sub(e, one))))
        da = ctx.where(ctx.op(Op.EQ, e, zero), zero, d)
    if needs[1]:
        y = ctx.up(ctx.fwd(node.result))
        at_zero = ctx.op(Op.LOGICAL_AND, ctx.op(Op.EQ, a, zero), ctx.op(Op.GE, e, zero))
        de = ctx.where(at_zero, zero, ctx.mul(g, ctx.mul(y, ctx.op(Op.LOG, a))))
    return [da, de]


def _extremum(lose_a: Op, lose_b: Op) -> GradRule:
    def rule(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
        """Halves at ties; zero to the operand that lost (PyTorch >= 1.7)."""
        a, b = (ctx.fwd(o) for o in node.operands)
        g = ctx.up(g)
        zero = ctx.zero(g)
        split = ctx.where(ctx.op(Op.EQ, a, b), ctx.mul(g, ctx.const(0.5, g)), g)
        return [
            ctx.where(ctx.op(lose_a, a, b), zero, split) if needs[0] else None,
            ctx.where(ctx.op(lose_b, a, b), zero, split) if needs[1] else None,
        ]

    return rule


maximum = _extremum(Op.LT, Op.GT)
minimum = _extremum(Op.GT, Op.LT)

# -------------------------------------------------------------------------------- ternary


def where(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    c = ctx.fwd(node.operands[0])
    zero = ctx.zero(g)
    return [
        None,
        ctx.where(c, g, zero) if needs[1] else None,
        ctx.where(c, zero, g) if needs[2] else None,
    ]


def clamp(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """``clamp_backward`` and ``clamp_backward_min_max``: ``x`` on ``lo <= x <= hi``; ``lo``
    where ``x < lo < hi``; ``hi`` where ``x > hi`` or ``hi < lo`` (then the result is ``hi``)."""
    x, lo, hi = (ctx.fwd(o) for o in node.operands)
    zero = ctx.zero(g)
    land = ctx.op(Op.LOGICAL_AND, ctx.op(Op.GE, x, lo), ctx.op(Op.LE, x, hi))
    out: list[str | None] = [ctx.where(land, g, zero) if needs[0] else None, None, None]
    if needs[1]:
        below = ctx.op(Op.LOGICAL_AND, ctx.op(Op.LT, x, lo), ctx.op(Op.LT, lo, hi))
        out[1] = ctx.where(below, g, zero)
    if needs[2]:
        above = ctx.op(Op.LOGICAL_OR, ctx.op(Op.GT, x, hi), ctx.op(Op.LT, hi, lo))
        out[2] = ctx.where(above, g, zero)
    return out


def select(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """The uniform branch routes the whole gradient to the taken operand."""
    c = ctx.fwd(node.operands[0])
    zeros = ctx.zeros(node.type.shape, node.type.dtype)
    return [
        None,
        ctx.op(Op.SELECT, c, g, zeros) if needs[1] else None,
        ctx.op(Op.SELECT, c, zeros, g) if needs[2] else None,
    ]
