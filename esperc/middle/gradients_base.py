"""Shared machinery of the gradient rules: node emission, the rule context, the rule signature.

A gradient rule (``GradRule``) receives the ``GradCtx`` of one backward function, the forward
node it differentiates, the backward name of the gradient of that node's result (same type as the
result) and, per operand, whether a gradient is wanted. It returns one backward value per operand
(``None`` where not wanted or not defined). A returned gradient may have the *broadcast* shape of
the op (e.g. the result shape of an ``add`` for a bias operand) and any float dtype; the driver
(``autodiff._fit``) sums it over the broadcast axes (in f32 for f16/bf16) and casts it to the
operand's type. Rules read forward values only through ``ctx.fwd`` (saved or recomputed, see
``remat``) and ask for values the forward must compute for them with ``ctx.aux``.

Numerics follow PyTorch's autograd kernels: elementwise gradient formulas of f16/bf16 values are
computed in f32 and rounded once (PyTorch's "opmath"), reductions of low-precision gradients
accumulate in f32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from esperc.ir.builder import normalize_attrs
from esperc.ir.graph import Node, make_attrs
from esperc.ir.ops import Op, infer_type
from esperc.ir.types import Dim, DType, TensorType

LOW_PRECISION = frozenset({DType.F16, DType.BF16})


class AutodiffError(ValueError):
    """The function cannot be differentiated as asked (unknown or non-float ``wrt`` argument,
    or an op whose gradient cannot be expressed for these shapes, e.g. a concat of dynamic
    pieces). The message names the value."""


@dataclass(frozen=True, slots=True)
class NotDifferentiable:
    """Marker of the gradient table for ops without a gradient; ``reason`` says why."""

    reason: str


class Emitter:
    """Appends typed nodes to one body; names are fresh against a shared ``used`` set.

    Args:
        types: type of every value already visible (arguments, earlier nodes); updated in place.
        used: every SSA name taken in the function (shared between the forward and backward
            emitters of one ``differentiate`` call, so names never clash).
    """

    def __init__(self, types: dict[str, TensorType], used: set[str]) -> None:
        self.types = types
        self.used = used
        self.nodes: list[Node] = []
        self._counter = 0
        self._consts: dict[tuple[str, Any, DType], str] = {}

    def fresh(self, hint: str | None = None) -> str:
        if hint is None:
            while str(self._counter) in self.used:
                self._counter += 1
            name = str(self._counter)
        else:
            name, i = hint, 0
            while name in self.used:
                i += 1
                name = f"{hint}.{i}"
        self.used.add(name)
        return name

    def emit(
        self,
        op: Op,
        operands: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        hint: str | None = None,
    ) -> str:
        """Append ``op(operands, attrs)``, typed by the op table; returns the new name.

        Raises:
            TypeRuleError: the operands do not type-check (a bug in a gradient rule).
        """
        ts = [self.types[o] for o in operands]
        norm = normalize_attrs(op, ts, attrs or {})
        ty = infer_type(op, ts, norm)
        name = self.fresh(hint)
        self.nodes.append(Node(name, op, tuple(operands), make_attrs(norm), ty))
        self.types[name] = ty
        return name

    def const(self, value: float | int | bool, dtype: DType) -> str:
        """A rank-0 literal, emitted once per (value, dtype) in this body."""
        key = (type(value).__name__, float(value).hex(), dtype)
        if key not in self._consts:
            self._consts[key] = self.emit(Op.CONSTANT, [], {"dtype": dtype, "value": value})
        return self._consts[key]


class Remat(Protocol):
    """What the rule context needs from the rematerializer (``remat.Rematerializer``)."""

    def get(self, name: str) -> str: ...

    def aux(self, anchor: Node, key: str, build: Callable[[Emitter], str]) -> str: ...


class GradCtx:
    """The backward function under construction, as the gradient rules see it.

    Helpers take and return backward SSA names; binary helpers broadcast like the ops do.
    """

    def __init__(self, emitter: Emitter, remat: Remat, fwd_types: Mapping[str, TensorType]) -> None:
        self.e = emitter
        self._remat = remat
        self._fwd_types = fwd_types

    # ------------------------------------------------------------------------ forward values
    def fwd(self, name: str) -> str:
        """The backward name of forward value ``name`` (saved, or recomputed: see ``remat``)."""
        return self._remat.get(name)

    def aux(self, anchor: Node, key: str, build: Callable[[Emitter], str]) -> str:
        """A value the forward computes next to ``anchor`` (``build`` emits it into the forward),
        always saved; returns its backward name. Used for LayerNorm's mean and rstd."""
        return self.fwd(self._remat.aux(anchor, key, build))

    def fwd_type(self, name: str) -> TensorType:
        """The type of forward value ``name`` (without fetching it into the backward)."""
        return self._fwd_types[name]

    # ------------------------------------------------------------------------------ queries
    def type(self, v: str) -> TensorType:
        return self.e.types[v]

    def shape(self, v: str) -> tuple[Dim, ...]:
        return self.e.types[v].shape

    # ---------------------------------------------------------------------------- emission
    def op(self, op: Op, *operands: str, **attrs: Any) -> str:
        return self.e.emit(op, operands, attrs)

    def const(self, value: float, like: str) -> str:
        """A rank-0 literal of ``like``'s dtype."""
        return self.e.const(value, self.type(like).dtype)

    def cast(self, v: str, dtype: DType) -> str:
        if self.type(v).dtype is dtype:
            return v
        return self.op(Op.CAST, v, dtype=dtype)

    def up(self, v: str) -> str:
        """``v`` in its compute dtype: f16/bf16 upcast to f32, others unchanged."""
        return self.cast(v, DType.F32) if self.type(v).dtype in LOW_PRECISION else v

    def add(self, a: str, b: str) -> str:
        return self.op(Op.ADD, a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op(Op.SUB, a, b)

    def mul(self, a: str, *rest: str) -> str:
        for b in rest:
            a = self.op(Op.MUL, a, b)
        return a

    def div(self, a: str, b: str) -> str:
        return self.op(Op.DIV, a, b)

    def neg(self, a: str) -> str:
        return self.op(Op.NEG, a)

    def where(self, c: str, a: str, b: str) -> str:
        return self.op(Op.WHERE, c, a, b)

    def zero(self, like: str) -> str:
        return self.const(0.0, like)

    def zeros(self, shape: Sequence[Dim], dtype: DType) -> str:
        """A zero tensor of ``shape`` (a broadcast literal: no memory)."""
        return self.op(Op.BROADCAST_TO, self.e.const(0.0, dtype), shape=tuple(shape))

    def sum(self, v: str, axes: Sequence[int], keepdim: bool = True) -> str:
        return self.op(Op.REDUCE_SUM, v, axis=tuple(axes), keepdim=keepdim)

    def mean(self, v: str, axes: Sequence[int], keepdim: bool = True) -> str:
        return self.op(Op.REDUCE_MEAN, v, axis=tuple(axes), keepdim=keepdim)

    def expand(self, v: str, shape: Sequence[Dim]) -> str:
        if self.shape(v) == tuple(shape):
            return v
        return self.op(Op.BROADCAST_TO, v, shape=tuple(shape))

    def reshape(self, v: str, shape: Sequence[Dim]) -> str:
        if self.shape(v) == tuple(shape):
            return v
        return self.op(Op.RESHAPE, v, shape=tuple(shape))

    def count(self, shape: Sequence[Dim], axes: Sequence[int], dtype: DType) -> str:
        """The number of elements over ``axes`` of ``shape`` as a rank-0 ``dtype`` value.

        A literal when those dims are static; otherwise ``reduce_sum`` of a broadcast 1 (the IR
        has no op that reads a dim's value), exact in f32 below 2**24 elements.
        """
        sizes = [shape[a] for a in axes]
        if all(isinstance(d, int) for d in sizes):
            n = 1
            for d in sizes:
                assert isinstance(d, int)
                n *= d
            return self.e.const(float(n), dtype)
        ones = self.op(Op.BROADCAST_TO, self.e.const(1.0, dtype), shape=tuple(sizes))
        return self.sum(ones, range(len(sizes)), keepdim=False)

    def keepdim(self, g: str, in_shape: Sequence[Dim], axes: Sequence[int], kept: bool) -> str:
        """The gradient of a reduction result, reshaped to keepdim form (1 on reduced axes)."""
        if kept:
            return g
        shape = [1 if i in axes else d for i, d in enumerate(in_shape)]
        return self.reshape(g, shape)


GradRule = Callable[[GradCtx, Node, str, tuple[bool, ...]], Sequence[str | None]]
GradEntry = GradRule | NotDifferentiable
