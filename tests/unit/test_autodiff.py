"""Reverse-mode autodiff (esperc.middle.autodiff) against torch.autograd, op by op.

Every case builds a tiny function with the IR Builder, differentiates it, runs forward and
backward in the eager interpreter, and compares the gradients with ``torch.autograd.grad`` of an
independent plain-PyTorch expression written here. f32 cases agree to 1e-4 (relative); bf16
cases agree within bf16 rounding. The backward also keeps its numbers through
``canonicalize,cse,dce``. Samples are tested in ``test_autodiff_samples.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from autodiff_harness import assert_close32, optimized, rel_err, run_plan, torch_grads

from esperc.ir.builder import Builder
from esperc.ir.ops import Op
from esperc.ir.reference import torch_dtype
from esperc.ir.types import DType, SymDim, TensorType
from esperc.middle.autodiff import differentiate

F32, BF16 = DType.F32, DType.BF16
N = SymDim.symbol("N")


@dataclass(frozen=True)
class Case:
    """``args``: (name, shape, kind of values); ``body`` emits the function from the Builder
    and the arg names; ``ref`` is the plain-PyTorch expression over the same names."""

    id: str
    args: tuple[tuple[str, tuple[Any, ...], str], ...]
    body: Callable[[Builder, dict[str, str]], list[str]]
    ref: Callable[..., Any]
    dims: tuple[tuple[str, int], ...] = ()


def _un(op: Op, **attrs: Any) -> Callable[[Builder, dict[str, str]], list[str]]:
    return lambda b, a: [b.emit(op, [a["x"]], attrs)]


def _bin(op: Op) -> Callable[[Builder, dict[str, str]], list[str]]:
    return lambda b, a: [b.emit(op, [a["x"], a["y"]])]


X = (("x", (3, 5), "normal"),)
POS = (("x", (3, 5), "pos"),)
XY = (("x", (3, 5), "normal"), ("y", (3, 5), "normal"))
XB = (("x", (3, 5), "normal"), ("y", (5,), "normal"))  # y broadcast over rows
TIES = (("x", (4, 6), "ties"), ("y", (4, 1), "ties"))

CASES = [
    Case("neg", X, _un(Op.NEG), lambda x: -x),
    Case("abs", (("x", (4, 6), "ties"),), _un(Op.ABS), torch.abs),
    Case("exp", X, _un(Op.EXP), torch.exp),
    Case("log", POS, _un(Op.LOG), torch.log),
    Case("sqrt", POS, _un(Op.SQRT), torch.sqrt),
    Case("rsqrt", POS, _un(Op.RSQRT), torch.rsqrt),
    Case("sin", X, _un(Op.SIN), torch.sin),
    Case("cos", X, _un(Op.COS), torch.cos),
    Case("tanh", X, _un(Op.TANH), torch.tanh),
    Case("sigmoid", X, _un(Op.SIGMOID), torch.sigmoid),
    Case("erf", X, _un(Op.ERF), torch.erf),
    Case("relu", (("x", (4, 6), "ties"),), _un(Op.RELU), torch.relu),
    Case("gelu", X, _un(Op.GELU, approximate="none"), F.gelu),
    Case("gelu_tanh", X, _un(Op.GELU, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    Case("silu", X, _un(Op.SILU), F.silu),
    Case("softplus", (("x", (3, 5), "wide"),), _un(Op.SOFTPLUS), F.softplus),
    Case(
        "floor_plus_x",
        X,
        lambda b, a: [b.emit(Op.ADD, [b.emit(Op.FLOOR, [a["x"]]), a["x"]])],
        lambda x: torch.floor(x) + x,
    ),
    Case(
        "cast_roundtrip",
        X,
        lambda b, a: [b.cast(b.emit(Op.EXP, [b.cast(a["x"], BF16)]), F32)],
        lambda x: torch.exp(x.bfloat16()).float(),
    ),
    Case("add", XB, _bin(Op.ADD), torch.add),
    Case("sub", XB, _bin(Op.SUB), torch.sub),
    Case("mul", XB, _bin(Op.MUL), torch.mul),
    Case("mul_col", (("x", (3, 5), "normal"), ("y", (3, 1), "normal")), _bin(Op.MUL), torch.mul),
    Case("mul_self", X, lambda b, a: [b.emit(Op.MUL, [a["x"], a["x"]])], lambda x: x * x),
    Case("div", (("x", (3, 5), "normal"), ("y", (5,), "pos")), _bin(Op.DIV), torch.div),
    Case("mod", (("x", (3, 5), "wide"), ("y", (3, 5), "pos")), _bin(Op.MOD), torch.remainder),
    Case("pow", (("x", (3, 5), "pos"), ("y", (3, 5), "normal")), _bin(Op.POW), torch.pow),
    Case(
        "pow_zero", (("x", (2, 3), "zeros"), ("y", (2, 3), "nonneg_ties")), _bin(Op.POW), torch.pow
    ),
    Case("maximum", TIES, _bin(Op.MAXIMUM), torch.maximum),
    Case("minimum", TIES, _bin(Op.MINIMUM), torch.minimum),
    Case(
        "where",
        (("x", (3, 5), "normal"), ("y", (5,), "normal")),
        lambda b, a: [b.emit(Op.WHERE, [b.emit(Op.GT, [a["x"], a["y"]]), a["x"], a["y"]])],
        lambda x, y: torch.where(x > y, x, y),
    ),
    Case(
        "clamp",
        (("x", (4, 6), "ties"), ("lo", (4, 6), "ties"), ("hi", (6,), "ties")),
        lambda b, a: [b.emit(Op.CLAMP, [a["x"], a["lo"], a["hi"]])],
        torch.clamp,
    ),
    Case("sum", X, _un(Op.REDUCE_SUM, axis=[1], keepdim=False), lambda x: x.sum(1)),
    Case(
        "sum_all", X, _un(Op.REDUCE_SUM, axis=[0, 1], keepdim=True), lambda x: x.sum((0, 1), True)
    ),
    Case("mean", X, _un(Op.REDUCE_MEAN, axis=[0], keepdim=False), lambda x: x.mean(0)),
    Case(
        "mean_dynamic",
        (("x", (N, 4), "normal"),),
        _un(Op.REDUCE_MEAN, axis=[0], keepdim=True),
        lambda x: x.mean(0, keepdim=True),
        (("N", 7),),
    ),
    Case(
        "max_ties",
        (("x", (4, 6), "ties"),),
        _un(Op.REDUCE_MAX, axis=[1], keepdim=False),
        lambda x: torch.amax(x, 1),
    ),
    Case(
        "min_ties",
        (("x", (4, 6), "ties"),),
        _un(Op.REDUCE_MIN, axis=[0, 1], keepdim=True),
        lambda x: torch.amin(x, (0, 1), keepdim=True),
    ),
    Case(
        "var",
        X,
        _un(Op.VAR, axis=[1], keepdim=False, correction=1),
        lambda x: torch.var(x, 1),
    ),
    Case(
        "var_dynamic",
        (("x", (N, 4), "normal"),),
        _un(Op.VAR, axis=[0, 1], keepdim=True, correction=0),
        lambda x: torch.var(x, (0, 1), correction=0, keepdim=True),
        (("N", 5),),
    ),
    Case("softmax", X, _un(Op.SOFTMAX, axis=1), lambda x: torch.softmax(x, 1)),
    Case("softmax_0", X, _un(Op.SOFTMAX, axis=0), lambda x: torch.softmax(x, 0)),
    Case("log_softmax", X, _un(Op.LOG_SOFTMAX, axis=1), lambda x: torch.log_softmax(x, 1)),
    Case(
        "layer_norm",
        (("x", (2, 3, 8), "normal"), ("w", (8,), "normal"), ("b", (8,), "normal")),
        lambda b, a: [b.emit(Op.LAYER_NORM, [a["x"], a["w"], a["b"]], {"eps": 1e-5})],
        lambda x, w, b: F.layer_norm(x, (8,), w, b, 1e-5),
    ),
    Case(
        "layer_norm_plain",
        (("x", (3, 8), "normal"),),
        _un(Op.LAYER_NORM, eps=1e-3),
        lambda x: F.layer_norm(x, (8,), eps=1e-3),
    ),
    Case(
        "rms_norm",
        (("x", (3, 8), "normal"), ("w", (8,), "normal")),
        lambda b, a: [b.emit(Op.RMS_NORM, [a["x"], a["w"]], {"eps": 1e-6})],
        lambda x, w: F.rms_norm(x, (8,), w, 1e-6),
    ),
    Case(
        "rms_norm_plain",
        (("x", (2, 8), "normal"),),
        _un(Op.RMS_NORM, eps=1e-6),
        lambda x: F.rms_norm(x, (8,), eps=1e-6),
    ),  # fmt: skip
    Case(
        "matmul", (("x", (3, 4), "normal"), ("y", (4, 5), "normal")), _bin(Op.MATMUL), torch.matmul
    ),
    Case(
        "matmul_batched_weight",
        (("x", (2, 3, 4), "normal"), ("y", (4, 5), "normal")),
        _bin(Op.MATMUL),
        torch.matmul,
    ),
    Case(
        "matmul_broadcast_batch",
        (("x", (2, 1, 3, 4), "normal"), ("y", (3, 4, 5), "normal")),
        _bin(Op.MATMUL),
        torch.matmul,
    ),
    Case(
        "matmul_matrix_lhs",
        (("x", (3, 4), "normal"), ("y", (2, 4, 5), "normal")),
        _bin(Op.MATMUL),
        torch.matmul,
    ),
    Case(
        "linear",
        (("x", (2, 3, 4), "normal"), ("w", (5, 4), "normal"), ("b", (5,), "normal")),
        lambda b, a: [b.emit(Op.LINEAR, [a["x"], a["w"], a["b"]])],
        F.linear,
    ),
    Case(
        "linear_vector",
        (("x", (4,), "normal"), ("w", (5, 4), "normal")),
        lambda b, a: [b.emit(Op.LINEAR, [a["x"], a["w"]])],
        F.linear,
    ),
    Case(
        "reshape",
        (("x", (N, 6), "normal"),),
        lambda b, a: [b.emit(Op.EXP, [b.emit(Op.RESHAPE, [a["x"]], {"shape": [N, 2, 3]})])],
        lambda x: torch.exp(x.reshape(-1, 2, 3)),
        (("N", 3),),
    ),
    Case(
        "transpose",
        (("x", (2, 3, 4), "normal"),),
        _un(Op.TRANSPOSE, dim0=0, dim1=2),
        lambda x: x.transpose(0, 2),
    ),  # fmt: skip
    Case(
        "permute",
        (("x", (2, 3, 4), "normal"),),
        _un(Op.PERMUTE, dims=[1, 2, 0]),
        lambda x: x.permute(1, 2, 0),
    ),  # fmt: skip
    Case(
        "broadcast_to",
        (("x", (3, 1), "normal"),),
        _un(Op.BROADCAST_TO, shape=[2, 3, 4]),
        lambda x: x.expand(2, 3, 4),
    ),  # fmt: skip
    Case(
        "concat",
        (("x", (3, 2), "normal"), ("y", (3, 4), "normal")),
        lambda b, a: [b.emit(Op.CONCAT, [a["y"], a["x"], a["y"]], {"axis": 1})],
        lambda x, y: torch.cat([y, x, y], 1),
    ),
    Case("slice", X, _un(Op.SLICE, axis=1, start=1, end=-1), lambda x: x[:, 1:-1]),
    Case("slice_head", X, _un(Op.SLICE, axis=0, start=0, end=2), lambda x: x[:2]),
    Case(
        "slice_dynamic",
        (("x", (N, 3), "normal"),),
        _un(Op.SLICE, axis=0, start=1, end=3),
        lambda x: x[1:3],
        (("N", 6),),
    ),
    Case(
        "two_results_shared",
        XY,
        lambda b, a: [b.emit(Op.MUL, [a["x"], a["y"]]), b.emit(Op.TANH, [a["x"]]), a["y"]],
        lambda x, y: (x * y, torch.tanh(x), y),
    ),
]


def _positional(case: Case) -> Callable[..., Any]:
    """``case.ref`` called with the arguments in declaration order (torch names them
    ``input``, ``other``...)."""
    return lambda **kw: case.ref(*(kw[n] for n, _, _ in case.args))


def _concrete(shape: tuple[Any, ...], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[str(d)] if isinstance(d, SymDim) else d for d in shape)


def _value(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "pos":
        return torch.rand(shape, generator=gen) * 2 + 0.2
    if kind == "ties":  # a few distinct values: equal operands, clamp bounds, zeros
        return torch.randint(-2, 3, shape, generator=gen).float() / 2
    if kind == "nonneg_ties":
        return torch.randint(0, 5, shape, generator=gen).float() / 2
    if kind == "wide":
        return torch.randn(shape, generator=gen) * 15
    if kind == "zeros":
        return torch.zeros(shape)
    return torch.randn(shape, generator=gen)


def _build(case: Case, dtype: DType) -> Any:
    b = Builder(case.id)
    for name, _ in case.dims:
        b.add_dim(name, 1, 64)
    names = {n: b.add_arg(n, TensorType(dtype, shape), "input") for n, shape, _ in case.args}
    return b.finish(case.body(b, names))


def _inputs(case: Case, dtype: DType, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dims = dict(case.dims)
    return {n: _value(k, _concrete(s, dims), gen).to(torch_dtype(dtype)) for n, s, k in case.args}


def _grad_outputs(results: tuple[torch.Tensor, ...], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(r.shape, generator=gen).to(r.dtype) for r in results]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradients_f32(case: Case) -> None:
    func = _build(case, F32)
    plan = differentiate(func)
    inputs = _inputs(case, F32)
    gouts = _grad_outputs(tuple(_zero_like_results(plan, inputs)))
    results, grads = run_plan(plan, inputs, gouts)
    ref_out, ref_grads = torch_grads(_positional(case), inputs, plan.wrt, gouts)
    for r, want in zip(results, ref_out):
        assert_close32(r, want, f"{case.id} forward")
    for w in plan.wrt:
        assert_close32(grads[w], ref_grads[w], f"{case.id} grad_{w}")
    # The cleanup pipeline keeps the backward's numbers.
    _, grads_opt = run_plan(plan, inputs, gouts, backward=optimized(plan.backward))
    for w in plan.wrt:
        assert_close32(grads_opt[w], grads[w], f"{case.id} grad_{w} after canonicalize,cse,dce")


def _zero_like_results(plan: Any, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    from esperc.ir.interpreter import run_func

    outs = run_func(plan.forward, inputs)[: plan.num_outputs]
    return [torch.zeros_like(o) for o in outs]


BF16_IDS = {
    "exp", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "add", "mul", "div", "softmax",
    "log_softmax", "layer_norm", "rms_norm", "matmul_batched_weight", "linear", "sum", "mean",
    "var", "slice", "concat",
}  # fmt: skip


@pytest.mark.parametrize("case", [c for c in CASES if c.id in BF16_IDS], ids=lambda c: c.id)
def test_gradients_bf16(case: Case) -> None:
    """bf16 gradients are no worse than PyTorch's own bf16 autograd, against f32 truth."""
    plan = differentiate(_build(case, BF16))
    inputs = _inputs(case, BF16)
    results = _zero_like_results(plan, inputs)
    gouts = _grad_outputs(tuple(results))
    _, grads = run_plan(plan, inputs, gouts)
    _, torch_bf16 = torch_grads(_positional(case), inputs, plan.wrt, gouts)
    up = {k: v.float() for k, v in inputs.items()}
    _, truth = torch_grads(_positional(case), up, plan.wrt, [g.float() for g in gouts])
    for w in plan.wrt:
        assert grads[w].dtype == torch.bfloat16
        ours, theirs = rel_err(grads[w], truth[w]), rel_err(torch_bf16[w], truth[w])
        assert ours <= 2 * theirs + 4e-3, (case.id, w, ours, theirs)
