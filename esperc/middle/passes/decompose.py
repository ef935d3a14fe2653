"""Decomposition of composite ops into primitives that fusion can schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from esperc.diagnostics import error
from esperc.ir.graph import Func, Node
from esperc.ir.ops import Op
from esperc.ir.types import DType, SymDim
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register
from esperc.middle.rewriter import BodyRewriter

ACC = DType.F32  # the accumulation and compute dtype of every decomposition


class _Emit:
    """Emits the replacement of one composite node: its location, its region, names
    ``<result>.<hint>``; constants and casts by dtype."""

    def __init__(self, rw: BodyRewriter, node: Node) -> None:
        self.rw, self.node = rw, node

    def __call__(
        self, op: Op, operands: Sequence[str], hint: str, attrs: dict[str, Any] | None = None
    ) -> str:
        return self.rw.emit(op, operands, attrs, self.node.loc, f"{self.node.result}.{hint}")

    def const(self, value: float) -> str:
        return self.rw.emit(
            Op.CONSTANT, [], {"dtype": ACC, "value": value}, self.node.loc, f"{self.node.result}.c"
        )

    def cast(self, value: str, dtype: DType, hint: str) -> str:
        """``value`` as ``dtype`` (no node when it already has it)."""
        if self.rw.types[value].dtype is dtype:
            return value
        return self(Op.CAST, [value], hint, {"dtype": dtype})

    def up(self, value: str) -> str:
        """``value`` in the f32 compute dtype (bf16/f16 are upcast once, as PyTorch does)."""
        return self.cast(value, ACC, "f32")

    def down(self, value: str) -> str:
        """The final result back in the composite's dtype (one rounding at the end)."""
        return self.cast(value, self.node.type.dtype, "out")

    def count(self, value: str, axes: Sequence[int]) -> int | None:
        """Number of elements reduced over ``axes`` of ``value``; None when one is dynamic.

        A rank-0 value reduced over its axis 0 reduces one element."""
        n, shape = 1, self.rw.types[value].shape
        for a in axes:
            d = shape[a] if a < len(shape) else 1
            if isinstance(d, SymDim):
                return None
            n *= d
        return n

    def mean(self, value: str, axes: Sequence[int], keepdim: bool, hint: str) -> str:
        """``reduce_sum / N`` when N is static, else ``reduce_mean`` (N known at run time)."""
        attrs = {"axis": tuple(axes), "keepdim": keepdim}
        n = self.count(value, axes)
        if n is None:
            return self(Op.REDUCE_MEAN, [value], hint, attrs)
        total = self(Op.REDUCE_SUM, [value], f"{hint}.sum", attrs)
        return self(Op.DIV, [total, self.const(float(n))], hint)


Decomposition = Callable[[_Emit, Node], str | None]


def _softmax(e: _Emit, node: Node, log: bool = False) -> str:
    x = e.up(node.operands[0])
    attrs = {"axis": (node.attr("axis"),), "keepdim": True}
    shifted = e(Op.SUB, [x, e(Op.REDUCE_MAX, [x], "max", attrs)], "shift")
    exp = e(Op.EXP, [shifted], "exp")
    total = e(Op.REDUCE_SUM, [exp], "sum", attrs)
    if log:
        return e.down(e(Op.SUB, [shifted, e(Op.LOG, [total], "lse")], "y"))
    return e.down(e(Op.DIV, [exp, total], "y"))


def _log_softmax(e: _Emit, node: Node) -> str:
    return _softmax(e, node, log=True)


def _layer_norm(e: _Emit, node: Node) -> str:
    x = e.up(node.operands[0])
    last = (e.rw.types[x].rank - 1,)
    centered = e(Op.SUB, [x, e.mean(x, last, True, "mean")], "centered")
    var = e.mean(e(Op.MUL, [centered, centered], "sq"), last, True, "var")
    rstd = e(Op.RSQRT, [e(Op.ADD, [var, e.const(node.attr("eps"))], "var.eps")], "rstd")
    y = e(Op.MUL, [centered, rstd], "norm")
    if len(node.operands) > 1:
        y = e(Op.MUL, [y, e.up(node.operands[1])], "scaled")
    if len(node.operands) > 2:
        y = e(Op.ADD, [y, e.up(node.operands[2])], "shifted")
    return e.down(y)


def _rms_norm(e: _Emit, node: Node) -> str:
    # PyTorch (>= 2.4) multiplies by the weight in f32 and rounds once, at the end.
    x = e.up(node.operands[0])
    last = (e.rw.types[x].rank - 1,)
    ms = e.mean(e(Op.MUL, [x, x], "sq"), last, True, "ms")
    rms = e(Op.RSQRT, [e(Op.ADD, [ms, e.const(node.attr("eps"))], "ms.eps")], "rrms")
    y = e(Op.MUL, [x, rms], "norm")
    if len(node.operands) > 1:
        y = e(Op.MUL, [y, e.up(node.operands[1])], "scaled")
    return e.down(y)


def _var(e: _Emit, node: Node) -> str | None:
    axes, keepdim = node.attr("axis"), node.attr("keepdim")
    n = e.count(node.operands[0], axes)
    if n is None:
        return None  # N - correction needs N at run time: keep the reduction whole
    x = e.up(node.operands[0])
    centered = e(Op.SUB, [x, e.mean(x, axes, True, "mean")], "centered")
    sq = e(Op.MUL, [centered, centered], "sq")
    total = e(Op.REDUCE_SUM, [sq], "sum", {"axis": axes, "keepdim": keepdim})
    # torch.var divides by max(0, N - correction): 0/0 gives nan, x/0 gives inf, as in PyTorch.
    dof = e.const(float(max(0, n - node.attr("correction"))))
    return e.down(e(Op.DIV, [total, dof], "y"))


def _reduce_mean(e: _Emit, node: Node) -> str | None:
    axes, keepdim = node.attr("axis"), node.attr("keepdim")
    if e.count(node.operands[0], axes) is None:
        return None
    return e.down(e.mean(e.up(node.operands[0]), axes, keepdim, "mean"))


def _linear(e: _Emit, node: Node) -> str | None:
    x, w = node.operands[:2]
    if e.rw.types[x].rank < 2:
        return None  # matmul takes rank >= 2 operands; a vector input stays a linear
    y = e(Op.MATMUL, [x, e(Op.TRANSPOSE, [w], "wt", {"dim0": 0, "dim1": 1})], "mm")
    if len(node.operands) > 2:
        y = e(Op.ADD, [y, node.operands[2]], "bias")
    return y


def _gelu(e: _Emit, node: Node) -> str:
    # PyTorch's CPU kernels (aten/src/ATen/native/cpu/Activation.cpp), computed in f32.
    x = e.up(node.operands[0])
    if node.attr("approximate") == "tanh":
        cube = e(Op.MUL, [e(Op.MUL, [x, x], "sq"), x], "cube")
        inner = e(Op.ADD, [x, e(Op.MUL, [cube, e.const(0.044715)], "kcube")], "inner")
        arg = e(Op.MUL, [inner, e.const(math.sqrt(2.0 / math.pi))], "arg")
        t = e(Op.TANH, [arg], "tanh")
    else:
        t = e(Op.ERF, [e(Op.MUL, [x, e.const(math.sqrt(0.5))], "arg")], "erf")
    half = e(Op.MUL, [x, e.const(0.5)], "half")
    return e.down(e(Op.MUL, [half, e(Op.ADD, [t, e.const(1.0)], "one.plus")], "y"))


def _silu(e: _Emit, node: Node) -> str:
    x = e.up(node.operands[0])
    return e.down(e(Op.MUL, [x, e(Op.SIGMOID, [x], "sigmoid")], "y"))


def _pow(e: _Emit, node: Node) -> str | None:
    # ``x ** 2`` in PyTorch (a Python-scalar exponent) is computed as ``x * x``; a general pow
    # is kept (it is ``exp2(y * log2(x))`` on the GPU, slower and less exact).
    x, y = node.operands
    if e.rw.constant_value(y) != 2.0 or e.rw.types[x] != node.type:
        return None
    return e(Op.MUL, [x, x], "sq")


DECOMPOSITIONS: dict[Op, Decomposition] = {
    Op.SOFTMAX: _softmax,
    Op.LOG_SOFTMAX: _log_softmax,
    Op.LAYER_NORM: _layer_norm,
    Op.RMS_NORM: _rms_norm,
    Op.VAR: _var,
    Op.REDUCE_MEAN: _reduce_mean,
    Op.LINEAR: _linear,
    Op.GELU: _gelu,
    Op.SILU: _silu,
    Op.POW: _pow,
}


@register
@dataclass(frozen=True)
class Decompose(FunctionPass):
    """Split composite ops (softmax, norms, var, mean, linear, gelu, silu) into primitives.

    softmax and log_softmax become max-subtracted ``exp``/``reduce_sum`` forms, layer_norm
    (biased variance of the centered input), rms_norm and var (divides by ``N - correction``)
    become reductions and elementwise ops, ``reduce_mean`` becomes ``reduce_sum / N``, linear
    becomes ``matmul(x, transpose(w)) + b``, gelu (erf or tanh form) and silu become their
    formulas, and ``pow`` by a literal 2 becomes ``x * x``. A bf16/f16 input of a composite is
    cast to f32 once, everything is computed in f32 and the result is cast back once, as
    PyTorch's kernels do. Ops whose reduced dims are dynamic (``var``, ``reduce_mean``) and
    ``linear`` of a vector input are kept. Every new node carries the composite's location and
    kernel region; the last one keeps its name.
    Preserves: semantics up to f32 rounding. Requires: a verified function. Idempotent.

    Options:
        keep: '+'-separated ops left whole, e.g. ``decompose{keep=softmax+layer_norm}``.
        linear: decompose ``linear`` (false keeps it for a fused GEMM epilogue).
    """

    name = "decompose"

    keep: str = ""
    linear: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(self._kept() - {op.value for op in DECOMPOSITIONS})
        if unknown:
            known = ", ".join(sorted(op.value for op in DECOMPOSITIONS))
            raise error("E0603", f"decompose cannot keep '{unknown[0]}' (one of: {known})", None)

    def _kept(self) -> set[str]:
        kept = {s.strip() for s in self.keep.split("+") if s.strip()}
        return kept | ({"linear"} if not self.linear else set())

    def run(self, func: Func, ctx: PassContext) -> Func:
        kept = self._kept()
        rw = BodyRewriter(func)
        for old in func.body:
            node = rw.begin(old)
            rule = DECOMPOSITIONS.get(node.op)
            if rule is None or node.op.value in kept:
                rw.keep(node)
                continue
            mark = len(rw.out)
            value = rule(_Emit(rw, node), node)
            if value is None:
                assert len(rw.out) == mark, node.op
                rw.keep(node)
                continue
            ctx.stat(f"{node.op.value}-decomposed")
            value = rw.rename_last(value, node.result)
            if value != node.result:
                rw.replace_with(node, value)
            else:
                assert rw.types[value] == node.type, (node.op, rw.types[value], node.type)
        return rw.finish()
