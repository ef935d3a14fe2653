"""The gradient table: ``GRADIENTS[op]`` is the reverse-mode rule of every IR op.

An entry is a ``GradRule`` (see ``gradients_base``: ``rule(ctx, node, grad, needs) -> one
gradient per operand``) or a ``NotDifferentiable`` marker with its reason. The rules live in
``gradients_elementwise``, ``gradients_reduce`` and ``gradients_linalg`` by op group; this table
is the one place that maps ops to them, and ``tests/unit/test_autodiff.py`` checks that it
covers every op of ``esperc.ir.ops.Op``. The driver is ``esperc.middle.autodiff``.
"""

from __future__ import annotations

from esperc.ir.ops import Op
from esperc.middle import gradients_elementwise as ew
from esperc.middle import gradients_linalg as la
from esperc.middle import gradients_reduce as rd
from esperc.middle.gradients_base import GradEntry, NotDifferentiable

_BOOL = NotDifferentiable("bool result: logical and comparison ops carry no gradient")
_STEP = NotDifferentiable(
    "piecewise constant: the derivative is zero almost everywhere (PyTorch returns zeros)"
)

GRADIENTS: dict[Op, GradEntry] = {
    # elementwise unary
    Op.NEG: ew.neg,
    Op.ABS: ew.abs_,
    Op.EXP: ew.exp,
    Op.LOG: ew.log,
    Op.SQRT: ew.sqrt,
    Op.RSQRT: ew.rsqrt,
    Op.SIN: ew.sin,
    Op.COS: ew.cos,
    Op.TANH: ew.tanh,
    Op.SIGMOID: ew.sigmoid,
    Op.ERF: ew.erf,
    Op.RELU: ew.relu,
    Op.GELU: ew.gelu,
    Op.SILU: ew.silu,
    Op.SOFTPLUS: ew.softplus,
    Op.FLOOR: _STEP,
    Op.LOGICAL_NOT: _BOOL,
    Op.CAST: ew.cast,
    # elementwise binary
    Op.ADD: ew.add,
    Op.SUB: ew.sub,
    Op.MUL: ew.mul,
    Op.DIV: ew.div,
    Op.FLOORDIV: _STEP,
    Op.MOD: ew.mod,
    Op.POW: ew.pow_,
    Op.MAXIMUM: ew.maximum,
    Op.MINIMUM: ew.minimum,
    Op.LT: _BOOL,
    Op.LE: _BOOL,
    Op.GT: _BOOL,
    Op.GE: _BOOL,
    Op.EQ: _BOOL,
    Op.NE: _BOOL,
    Op.LOGICAL_AND: _BOOL,
    Op.LOGICAL_OR: _BOOL,
    # elementwise ternary
    Op.WHERE: ew.where,
    Op.CLAMP: ew.clamp,
    Op.SELECT: ew.select,
    # reductions
    Op.REDUCE_SUM: rd.reduce_sum,
    Op.REDUCE_MEAN: rd.reduce_mean,
    Op.REDUCE_MAX: rd.reduce_extremum,
    Op.REDUCE_MIN: rd.reduce_extremum,
    Op.VAR: rd.var,
    # composites
    Op.SOFTMAX: rd.softmax,
    Op.LOG_SOFTMAX: rd.log_softmax,
    Op.LAYER_NORM: rd.layer_norm,
    Op.RMS_NORM: rd.rms_norm,
    # contractions
    Op.MATMUL: la.matmul,
    Op.LINEAR: la.linear,
    # data movement
    Op.RESHAPE: la.reshape,
    Op.TRANSPOSE: la.transpose,
    Op.PERMUTE: la.permute,
    Op.BROADCAST_TO: la.broadcast_to,
    Op.CONCAT: la.concat,
    Op.SLICE: la.slice_,
    # sources
    Op.INDEX: NotDifferentiable("integer coordinates: depends only on its operand's shape"),
    Op.CONSTANT: NotDifferentiable("a literal has no inputs"),
}
