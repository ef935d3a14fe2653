"""The PyTorch meaning of every IR op: ``REFERENCE[op](operands, attrs, out_type) -> Tensor``.

Each rule computes the op eagerly with the PyTorch function named in its docstring, in PyTorch's
own dtype semantics (a bf16 ``add`` rounds to bf16; ``reduce_sum`` of an integer tensor gives
int64, as ``torch.sum``). The rules see only concrete shapes: ``evaluate_node`` replaces every
symbolic dim in the node's attributes and type by its runtime value before calling the rule, so
a ``reshape`` to ``[B*S, 64]`` arrives as ``[6, 64]``.

This module and ``interpreter`` are the only ``esperc.ir`` modules that import torch; nothing in
``esperc/ir/__init__.py`` imports them, so the rest of the IR stays importable without torch.

Semantics worth knowing (each matches PyTorch eager):

* ``floordiv`` floors (``torch.div(rounding_mode="floor")``) and ``mod`` takes the divisor's sign
  (``torch.remainder``, Python's ``%``). Integer division by zero raises.
* ``rms_norm`` is ``torch.nn.functional.rms_norm``: for f16/bf16 it upcasts to f32, computes
  ``x * rsqrt(mean(x^2) + eps) * w`` in f32 and rounds once to the input dtype at the end
  (``torch._decomp.decompositions._fused_rms_norm``). ``layer_norm`` (``F.layer_norm``) likewise
  accumulates in f32 and rounds the result.
* Reductions over an empty ``axis`` tuple reduce nothing (``torch.sum(x, dim=())`` would reduce
  every axis): the result is the op over a singleton, e.g. ``var`` with correction 1 is NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from esperc.ir.graph import Node
from esperc.ir.ops import OPS, AttrKind, Op
from esperc.ir.types import DType, SymDim, TensorType, eval_dim

TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.F16: torch.float16,
    DType.BF16: torch.bfloat16,
    DType.F32: torch.float32,
    DType.I32: torch.int32,
    DType.I64: torch.int64,
    DType.BOOL: torch.bool,
}
DTYPES_OF_TORCH: dict[torch.dtype, DType] = {v: k for k, v in TORCH_DTYPES.items()}

Tensor = torch.Tensor
Attrs = Mapping[str, Any]
RefRule = Callable[[Sequence[Tensor], Attrs, TensorType], Tensor]


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype of an IR dtype (``bf16`` -> ``torch.bfloat16``)."""
    return TORCH_DTYPES[dtype]


def concrete_shape(shape: Sequence[Any], env: Mapping[str, int]) -> tuple[int, ...]:
    """A shape with every symbolic dim evaluated (raises KeyError for an unbound symbol)."""
    return tuple(eval_dim(d, dict(env)) for d in shape)


def concrete_type(t: TensorType, env: Mapping[str, int]) -> TensorType:
    return TensorType(t.dtype, concrete_shape(t.shape, env))


def concrete_attrs(op: Op, attrs: Attrs, env: Mapping[str, int]) -> dict[str, Any]:
    """Attributes with the symbolic dims of SHAPE-kind attributes evaluated."""
    kinds = OPS[op].attrs
    out = dict(attrs)
    for k, v in attrs.items():
        if kinds.get(k) is AttrKind.SHAPE:
            out[k] = concrete_shape(v, env)
        elif isinstance(v, SymDim):
            out[k] = eval_dim(v, dict(env))
    return out


def evaluate_node(node: Node, operands: Sequence[Tensor], env: Mapping[str, int]) -> Tensor:
    """Evaluate one node on concrete operand tensors; ``env`` gives the dynamic dims' values."""
    attrs = concrete_attrs(node.op, node.attr_dict, env)
    return REFERENCE[node.op](operands, attrs, concrete_type(node.type, env))


# --------------------------------------------------------------------------------------------
# Rules


def _unary(fn: Callable[[Tensor], Tensor]) -> RefRule:
    return lambda xs, attrs, out: fn(xs[0])


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> RefRule:
    return lambda xs, attrs, out: fn(xs[0], xs[1])


def _gelu(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``F.gelu(x, approximate=...)`` ("none": exact erf form; "tanh": the tanh approximation)."""
    return F.gelu(xs[0], approximate=attrs["approximate"])


def _cast(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``x.to(dtype)``: float -> int truncates toward zero, nonzero -> bool is True."""
    return xs[0].to(torch_dtype(attrs["dtype"]))


def _floordiv(a: Tensor, b: Tensor) -> Tensor:
    """``torch.div(a, b, rounding_mode="floor")``."""
    return torch.div(a, b, rounding_mode="floor")


def _where(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return torch.where(xs[0], xs[1], xs[2])


def _clamp(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``torch.clamp(x, lo, hi)`` with tensor bounds: ``min(max(x, lo), hi)``, NaN propagates."""
    x, lo, hi = xs
    return torch.clamp(x, lo, hi).broadcast_to(out.shape)


def _select(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """A uniform branch: the rank-0 bool condition picks one whole operand."""
    return xs[1] if bool(xs[0].item()) else xs[2]


def _reduce(fn: Callable[..., Tensor]) -> RefRule:
    def rule(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
        x, axes, keep = xs[0], tuple(attrs["axis"]), attrs["keepdim"]
        extra = {"correction": attrs["correction"]} if "correction" in attrs else {}
        if not axes:  # reduce a fresh singleton axis: nothing is reduced
            x, axes, keep = x.unsqueeze(-1), (-1,), False
        with warnings.catch_warnings():
            # var with correction >= the reduced count is inf/NaN in torch, by design.
            warnings.simplefilter("ignore", UserWarning)
            return fn(x, dim=axes, keepdim=keep, **extra)

    return rule


def _softmax(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return F.softmax(xs[0], dim=attrs["axis"])


def _log_softmax(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return F.log_softmax(xs[0], dim=attrs["axis"])


def _layer_norm(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``F.layer_norm`` over the last axis; operands ``x[, weight[, bias]]``."""
    x = xs[0]
    w = xs[1] if len(xs) > 1 else None
    b = xs[2] if len(xs) > 2 else None
    return F.layer_norm(x, (x.shape[-1],), w, b, attrs["eps"])


def _rms_norm(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``F.rms_norm`` over the last axis; operands ``x[, weight]`` (see the module docstring)."""
    x = xs[0]
    w = xs[1] if len(xs) > 1 else None
    return F.rms_norm(x, (x.shape[-1],), w, attrs["eps"])


def _linear(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``F.linear(x, w, b)`` = ``x @ w.T + b``."""
    return F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None)


def _reshape(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return xs[0].reshape(attrs["shape"])


def _transpose(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return xs[0].transpose(attrs["dim0"], attrs["dim1"])


def _permute(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return xs[0].permute(tuple(attrs["dims"]))


def _broadcast_to(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return xs[0].expand(attrs["shape"])


def _concat(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    return torch.cat(list(xs), dim=attrs["axis"])


def _slice(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """Python slice semantics ``x[..., start:end, ...]`` on ``axis`` (negative bounds count from
    the end). Raises ValueError when a slice of a dynamic dim would not have its typed length."""
    x, axis = xs[0], attrs["axis"]
    index = (slice(None),) * axis + (slice(attrs["start"], attrs["end"]),)
    y = x[index]
    if y.shape[axis] != out.shape[axis]:
        raise ValueError(
            f"slice [{attrs['start']}:{attrs['end']}] of axis {axis} needs at least "
            f"{attrs['end']} elements, the dim is {x.shape[axis]}"
        )
    return y


def _index(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """The coordinate along ``axis`` of every element of the operand's shape, as int64."""
    x, axis = xs[0], attrs["axis"]
    if x.dim() == 0:
        return torch.zeros((), dtype=torch.int64, device=x.device)
    view = [1] * x.dim()
    view[axis] = x.shape[axis]
    return torch.arange(x.shape[axis], device=x.device).reshape(view).expand(x.shape)


def _constant(xs: Sequence[Tensor], attrs: Attrs, out: TensorType) -> Tensor:
    """``torch.tensor(value, dtype)`` (rank 0, on the CPU; the interpreter moves it)."""
    return torch.tensor(attrs["value"], dtype=torch_dtype(attrs["dtype"]))


REFERENCE: dict[Op, RefRule] = {
    Op.NEG: _unary(torch.neg),
    Op.ABS: _unary(torch.abs),
    Op.EXP: _unary(torch.exp),
    Op.LOG: _unary(torch.log),
    Op.SQRT: _unary(torch.sqrt),
    Op.RSQRT: _unary(torch.rsqrt),
    Op.SIN: _unary(torch.sin),
    Op.COS: _unary(torch.cos),
    Op.TANH: _unary(torch.tanh),
    Op.SIGMOID: _unary(torch.sigmoid),
    Op.ERF: _unary(torch.erf),
    Op.RELU: _unary(torch.relu),
    Op.GELU: _gelu,
    Op.SILU: _unary(F.silu),
    Op.SOFTPLUS: _unary(F.softplus),  # beta=1, threshold=20
    Op.FLOOR: _unary(torch.floor),
    Op.LOGICAL_NOT: _unary(torch.logical_not),
    Op.CAST: _cast,
    Op.ADD: _binary(torch.add),
    Op.SUB: _binary(torch.sub),
    Op.MUL: _binary(torch.mul),
    Op.DIV: _binary(torch.div),
    Op.FLOORDIV: _binary(_floordiv),
    Op.MOD: _binary(torch.remainder),
    Op.POW: _binary(torch.pow),
    Op.MAXIMUM: _binary(torch.maximum),
    Op.MINIMUM: _binary(torch.minimum),
    Op.LT: _binary(torch.lt),
    Op.LE: _binary(torch.le),
    Op.GT: _binary(torch.gt),
    Op.GE: _binary(torch.ge),
    Op.EQ: _binary(torch.eq),
    Op.NE: _binary(torch.ne),
    Op.LOGICAL_AND: _binary(torch.logical_and),
    Op.LOGICAL_OR: _binary(torch.logical_or),
    Op.WHERE: _where,
    Op.CLAMP: _clamp,
    Op.SELECT: _select,
    Op.REDUCE_SUM: _reduce(torch.sum),
    Op.REDUCE_MEAN: _reduce(torch.mean),
    Op.REDUCE_MAX: _reduce(torch.amax),
    Op.REDUCE_MIN: _reduce(torch.amin),
    Op.VAR: _reduce(torch.var),
    Op.SOFTMAX: _softmax,
    Op.LOG_SOFTMAX: _log_softmax,
    Op.LAYER_NORM: _layer_norm,
    Op.RMS_NORM: _rms_norm,
    Op.MATMUL: _binary(torch.matmul),
    Op.LINEAR: _linear,
    Op.RESHAPE: _reshape,
    Op.TRANSPOSE: _transpose,
    Op.PERMUTE: _permute,
    Op.BROADCAST_TO: _broadcast_to,
    Op.CONCAT: _concat,
    Op.SLICE: _slice,
    Op.INDEX: _index,
    Op.CONSTANT: _constant,
}
