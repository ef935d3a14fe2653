"""The eager interpreter against independent NumPy code, one tiny function per op, plus guards.

Expected values are written here with NumPy (float64 math, Python floor/mod semantics), never
with ``esperc.ir.reference``; low-precision cases round the float64 result once to the IR dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from ir_strategies import concrete_inputs, funcs

from esperc.ir.builder import Builder
from esperc.ir.dimexpr import BinOp, Num, Sym
from esperc.ir.graph import Func
from esperc.ir.interpreter import (
    EvalError,
    GuardError,
    bind_dims,
    check_guards,
    random_inputs,
    run_func,
    small_dims,
)
from esperc.ir.ops import Op
from esperc.ir.types import DType, SymDim, TensorType

B, S = SymDim.symbol("B"), SymDim.symbol("S")
F32, BF16, F16, I32, I64, BOOL = (DType.F32, DType.BF16, DType.F16, DType.I32, DType.I64,
                                  DType.BOOL)  # fmt: skip
_GEN = torch.Generator().manual_seed(1234)


def T(dtype: DType, *shape: Any) -> TensorType:
    return TensorType(dtype, tuple(shape))


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=_GEN).to(dtype)


def positive(*shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=_GEN) + 0.25


def ints(*shape: int, lo: int = -6, hi: int = 7, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=_GEN).to(dtype)


def bools(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=_GEN).bool()


@dataclass
class Case:
    name: str
    args: list[TensorType]
    build: Callable[..., str]  # (builder, *arg values) -> result value
    inputs: list[torch.Tensor]
    expect: Callable[..., Any]  # (*numpy arrays) -> numpy array or scalar
    tol: float = 1e-5
    dims: tuple[tuple[str, int, int], ...] = ()


def make_func(case: Case) -> Func:
    b = Builder(case.name.replace("-", "_"))
    for name, lo, hi in case.dims:
        b.add_dim(name, lo, hi)
    vals = [b.add_arg(f"a{i}", t, "input") for i, t in enumerate(case.args)]
    return b.finish([case.build(b, *vals)])


def np_of(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy() if t.dtype.is_floating_point else t.numpy()


def unary(op: Op, **attrs: Any) -> Callable[..., str]:
    return lambda b, x: b.emit(op, [x], attrs)


def binary(op: Op) -> Callable[..., str]:
    return lambda b, x, y: b.emit(op, [x, y])


def reduce(op: Op, axis: Any, keepdim: bool, **extra: Any) -> Callable[..., str]:
    return lambda b, x: b.emit(op, [x], {"axis": axis, "keepdim": keepdim, **extra})


def elementwise(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A scalar Python function applied elementwise (exact Python semantics)."""
    return lambda *xs: np.vectorize(fn, otypes=[np.float64])(*xs)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


_erf = np.vectorize(math.erf)
X, Y = randn(3, 4), randn(3, 4)
P, Q = positive(3, 4), positive(4)
IA, IB = ints(3, 4), ints(4, lo=1, hi=5) * torch.tensor([1, -1, 1, -1], dtype=torch.int32)

CASES = [
    Case("neg", [T(F32, 3, 4)], unary(Op.NEG), [X], lambda x: -x),
    Case("abs", [T(I32, 3, 4)], unary(Op.ABS), [IA], np.abs),
    Case("exp", [T(F32, 3, 4)], unary(Op.EXP), [X], np.exp),
    Case("log", [T(F32, 3, 4)], unary(Op.LOG), [P], np.log),
    Case("sqrt", [T(F32, 3, 4)], unary(Op.SQRT), [P], np.sqrt),
    Case("rsqrt", [T(F32, 3, 4)], unary(Op.RSQRT), [P], lambda x: 1 / np.sqrt(x)),
    Case("sin", [T(F32, 3, 4)], unary(Op.SIN), [X], np.sin),
    Case("cos", [T(F32, 3, 4)], unary(Op.COS), [X], np.cos),
    Case("tanh", [T(F32, 3, 4)], unary(Op.TANH), [X], np.tanh),
    Case("sigmoid", [T(F32, 3, 4)], unary(Op.SIGMOID), [X], lambda x: 1 / (1 + np.exp(-x))),
    Case("erf", [T(F32, 3, 4)], unary(Op.ERF), [X], _erf),
    Case("relu", [T(F32, 3, 4)], unary(Op.RELU), [X], lambda x: np.where(x > 0, x, 0.0)),
    Case("relu-int", [T(I32, 3, 4)], unary(Op.RELU), [IA], lambda x: np.maximum(x, 0)),
    Case(
        "gelu",
        [T(F32, 3, 4)],
        unary(Op.GELU, approximate="none"),
        [X],
        lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    ),
    Case("gelu-tanh", [T(F32, 3, 4)], unary(Op.GELU, approximate="tanh"), [X], _gelu_tanh),
    Case("silu", [T(F32, 3, 4)], unary(Op.SILU), [X], lambda x: x / (1 + np.exp(-x))),
    Case("softplus", [T(F32, 3, 4)], unary(Op.SOFTPLUS), [X * 5], lambda x: np.log1p(np.exp(x))),
    Case("floor", [T(F32, 3, 4)], unary(Op.FLOOR), [X * 3], np.floor),
    Case("logical-not", [T(BOOL, 3, 4)], unary(Op.LOGICAL_NOT), [bools(3, 4)], np.logical_not),
    Case(
        "cast-f32-i32",
        [T(F32, 3, 4)],
        unary(Op.CAST, dtype=I32),
        [X * 4],
        elementwise(lambda v: int(v)),
    ),  # truncation toward zero
    Case(
        "cast-f32-bool",
        [T(F32, 2, 3)],
        unary(Op.CAST, dtype=BOOL),
        [torch.tensor([[0.0, -0.0, 2.5], [1e-30, 0.0, -3.0]])],
        lambda x: x != 0,
    ),
    Case("add", [T(F32, 3, 4), T(F32, 4)], binary(Op.ADD), [X, Q], lambda x, y: x + y),
    Case("sub", [T(F32, 3, 4), T(F32, 3, 4)], binary(Op.SUB), [X, Y], lambda x, y: x - y),
    Case("mul", [T(I32, 3, 4), T(I32, 4)], binary(Op.MUL), [IA, IB], lambda x, y: x * y),
    Case("div", [T(F32, 3, 4), T(F32, 4)], binary(Op.DIV), [X, Q], lambda x, y: x / y),
    Case(
        "floordiv-int",
        [T(I32, 3, 4), T(I32, 4)],
        binary(Op.FLOORDIV),
        [IA, IB],
        elementwise(lambda a, b: int(a) // int(b)),
    ),
    Case(
        "floordiv-float",
        [T(F32, 3, 4), T(F32, 3, 4)],
        binary(Op.FLOORDIV),
        [X * 5, Y],
        elementwise(lambda a, b: a // b),
    ),
    Case(
        "mod-int",
        [T(I32, 3, 4), T(I32, 4)],
        binary(Op.MOD),
        [IA, IB],
        elementwise(lambda a, b: int(a) % int(b)),
    ),  # the divisor's sign, as Python
    Case(
        "mod-float",
        [T(F32, 3, 4), T(F32, 3, 4)],
        binary(Op.MOD),
        [X * 5, Y],
        elementwise(lambda a, b: a % b),
        tol=1e-4,
    ),
    Case("pow", [T(F32, 3, 4), T(F32, 3, 4)], binary(Op.POW), [P, Y], lambda x, y: x**y),
    Case(
        "maximum",
        [T(F32, 3, 4), T(F32, 3, 4)],
        binary(Op.MAXIMUM),
        [X, Y],
        lambda x, y: np.where(x > y, x, y),
    ),
    Case(
        "minimum",
        [T(F32, 3, 4), T(F32, 3, 4)],
        binary(Op.MINIMUM),
        [X, Y],
        lambda x, y: np.where(x < y, x, y),
    ),
    Case("lt", [T(F32, 3, 4), T(F32, 3, 4)], binary(Op.LT), [X, Y], lambda x, y: x < y),
    Case("le", [T(I32, 3, 4), T(I32, 4)], binary(Op.LE), [IA, IB], lambda x, y: x <= y),
    Case("gt", [T(F32, 3, 4), T(F32, 3, 4)], binary(Op.GT), [X, Y], lambda x, y: x > y),
    Case("ge", [T(I32, 3, 4), T(I32, 4)], binary(Op.GE), [IA, IB], lambda x, y: x >= y),
    Case("eq", [T(I32, 3, 4), T(I32, 4)], binary(Op.EQ), [IA, IB], lambda x, y: x == y),
    Case("ne", [T(I32, 3, 4), T(I32, 4)], binary(Op.NE), [IA, IB], lambda x, y: x != y),
    Case(
        "logical-and",
        [T(BOOL, 3, 4), T(BOOL, 4)],
        binary(Op.LOGICAL_AND),
        [bools(3, 4), bools(4)],
        lambda x, y: x & y,
    ),
    Case(
        "logical-or",
        [T(BOOL, 3, 4), T(BOOL, 4)],
        binary(Op.LOGICAL_OR),
        [bools(3, 4), bools(4)],
        lambda x, y: x | y,
    ),
    Case(
        "where",
        [T(BOOL, 3, 1), T(F32, 3, 4), T(F32, 4)],
        lambda b, c, x, y: b.emit(Op.WHERE, [c, x, y]),
        [bools(3, 1), X, Q],
        lambda c, x, y: np.where(c, x, y),
    ),
    Case(
        "clamp",
        [T(F32, 3, 4), T(F32, 4), T(F32, 3, 1)],
        lambda b, x, lo, hi: b.emit(Op.CLAMP, [x, lo, hi]),
        [X, torch.tensor([-0.5, 0.0, -2.0, 0.5]), torch.tensor([[0.5], [1.0], [0.25]])],
        lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    ),
    Case(
        "select-true",
        [T(BOOL), T(F32, 3, 4), T(F32, 3, 4)],
        lambda b, c, x, y: b.emit(Op.SELECT, [c, x, y]),
        [torch.tensor(True), X, Y],
        lambda c, x, y: x if c else y,
    ),
    Case(
        "select-false",
        [T(BOOL), T(F32, 3, 4), T(F32, 3, 4)],
        lambda b, c, x, y: b.emit(Op.SELECT, [c, x, y]),
        [torch.tensor(False), X, Y],
        lambda c, x, y: x if c else y,
    ),
    Case(
        "reduce-sum",
        [T(F32, 2, 3, 4)],
        reduce(Op.REDUCE_SUM, [0, 2], False),
        [randn(2, 3, 4)],
        lambda x: x.sum(axis=(0, 2)),
    ),
    Case(
        "reduce-sum-int",
        [T(I32, 3, 4)],
        reduce(Op.REDUCE_SUM, [1], True),
        [IA],
        lambda x: x.astype(np.int64).sum(axis=1, keepdims=True),
    ),
    Case(
        "reduce-sum-bool",
        [T(BOOL, 3, 4)],
        reduce(Op.REDUCE_SUM, [-1], False),
        [bools(3, 4)],
        lambda x: x.astype(np.int64).sum(axis=1),
    ),
    Case(
        "reduce-mean",
        [T(F32, 2, 3, 4)],
        reduce(Op.REDUCE_MEAN, [1], True),
        [randn(2, 3, 4)],
        lambda x: x.mean(axis=1, keepdims=True),
    ),
    Case("reduce-max", [T(F32, 3, 4)], reduce(Op.REDUCE_MAX, [0, 1], False), [X], np.max),
    Case(
        "reduce-min",
        [T(I32, 3, 4)],
        reduce(Op.REDUCE_MIN, [0], True),
        [IA],
        lambda x: x.min(axis=0, keepdims=True),
    ),
    Case(
        "var",
        [T(F32, 3, 4)],
        reduce(Op.VAR, [1], False, correction=1),
        [X],
        lambda x: x.var(axis=1, ddof=1),
    ),
    Case(
        "var-population",
        [T(F32, 2, 3, 4)],
        reduce(Op.VAR, [0, 2], True, correction=0),
        [randn(2, 3, 4)],
        lambda x: x.var(axis=(0, 2), ddof=0, keepdims=True),
    ),
    Case("reduce-sum-rank0", [T(F32)], reduce(Op.REDUCE_SUM, [0], False), [randn()], lambda x: x),
    Case(
        "reduce-no-axes",
        [T(I32, 3, 4)],
        reduce(Op.REDUCE_SUM, [], True),
        [IA],
        lambda x: x.astype(np.int64),
    ),  # reduces nothing (torch's dim=() would reduce all)
    Case("softmax", [T(F32, 3, 4)], unary(Op.SOFTMAX, axis=0), [X * 3], lambda x: _softmax(x, 0)),
    Case(
        "log-softmax",
        [T(F32, 3, 4)],
        unary(Op.LOG_SOFTMAX, axis=-1),
        [X * 3],
        lambda x: np.log(_softmax(x, 1)),
    ),
    Case(
        "layer-norm",
        [T(F32, 3, 4), T(F32, 4), T(F32, 4)],
        lambda b, x, w, bias: b.emit(Op.LAYER_NORM, [x, w, bias], {"eps": 1e-5}),
        [X, randn(4), randn(4)],
        lambda x, w, bias: (
            (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + bias
        ),
        tol=1e-4,
    ),
    Case(
        "layer-norm-no-affine",
        [T(F32, 3, 4)],
        unary(Op.LAYER_NORM, eps=0.5),
        [X],
        lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 0.5),
    ),
    Case(
        "rms-norm",
        [T(F32, 3, 4), T(F32, 4)],
        lambda b, x, w: b.emit(Op.RMS_NORM, [x, w], {"eps": 1e-6}),
        [X, randn(4)],
        lambda x, w: x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * w,
        tol=1e-4,
    ),
    Case(
        "matmul",
        [T(F32, 2, 3, 4), T(F32, 4, 5)],
        binary(Op.MATMUL),
        [randn(2, 3, 4), randn(4, 5)],
        np.matmul,
        tol=1e-4,
    ),
    Case(
        "matmul-int",
        [T(I64, 3, 4), T(I64, 4, 2)],
        binary(Op.MATMUL),
        [ints(3, 4, dtype=torch.int64), ints(4, 2, dtype=torch.int64)],
        np.matmul,
    ),
    Case(
        "linear",
        [T(F32, 3, 4), T(F32, 5, 4), T(F32, 5)],
        lambda b, x, w, bias: b.emit(Op.LINEAR, [x, w, bias]),
        [X, randn(5, 4), randn(5)],
        lambda x, w, bias: x @ w.T + bias,
        tol=1e-4,
    ),
    Case(
        "linear-no-bias",
        [T(F32, 2, 3, 4), T(F32, 5, 4)],
        binary(Op.LINEAR),
        [randn(2, 3, 4), randn(5, 4)],
        lambda x, w: x @ w.T,
        tol=1e-4,
    ),
    Case(
        "reshape",
        [T(F32, 2, 6)],
        unary(Op.RESHAPE, shape=[3, 1, 4]),
        [randn(2, 6)],
        lambda x: x.reshape(3, 1, 4),
    ),
    Case(
        "transpose",
        [T(F32, 2, 3, 4)],
        unary(Op.TRANSPOSE, dim0=0, dim1=-1),
        [randn(2, 3, 4)],
        lambda x: np.swapaxes(x, 0, 2),
    ),
    Case(
        "permute",
        [T(F32, 2, 3, 4)],
        unary(Op.PERMUTE, dims=[1, 2, 0]),
        [randn(2, 3, 4)],
        lambda x: np.transpose(x, (1, 2, 0)),
    ),
    Case(
        "broadcast-to",
        [T(F32, 3, 1)],
        unary(Op.BROADCAST_TO, shape=[2, 3, 4]),
        [randn(3, 1)],
        lambda x: np.broadcast_to(x, (2, 3, 4)),
    ),
    Case(
        "concat",
        [T(F32, 3, 4), T(F32, 3, 2)],
        lambda b, x, y: b.emit(Op.CONCAT, [x, y, x], {"axis": 1}),
        [X, randn(3, 2)],
        lambda x, y: np.concatenate([x, y, x], axis=1),
    ),
    Case(
        "slice",
        [T(F32, 3, 6)],
        unary(Op.SLICE, axis=1, start=1, end=-2),
        [randn(3, 6)],
        lambda x: x[:, 1:-2],
    ),
    Case(
        "slice-clipped",
        [T(F32, 5, 2)],
        unary(Op.SLICE, axis=0, start=-7, end=3),
        [randn(5, 2)],
        lambda x: x[-7:3],
    ),
    Case(
        "index",
        [T(F32, 3, 4)],
        unary(Op.INDEX, axis=1),
        [X],
        lambda x: np.broadcast_to(np.arange(4), (3, 4)),
    ),
    Case(
        "index-rank0",
        [T(BOOL)],
        unary(Op.INDEX, axis=0),
        [torch.tensor(True)],
        lambda x: np.int64(0),
    ),
    Case(
        "constant",
        [T(F32, 2)],
        lambda b, x: b.emit(Op.ADD, [x, b.constant(0.1, F32)]),
        [randn(2)],
        lambda x: x + np.float32(0.1),
    ),
    Case(
        "constant-int",
        [T(I64, 2)],
        lambda b, x: b.emit(Op.MUL, [x, b.constant(-3, I64)]),
        [ints(2, dtype=torch.int64)],
        lambda x: x * -3,
    ),
    # Symbolic dims in attributes are evaluated with the dims bound from the arguments.
    Case(
        "reshape-sym",
        [T(F32, B, S)],
        unary(Op.RESHAPE, shape=[B * S]),
        [randn(3, 5)],
        lambda x: x.reshape(15),
        dims=(("B", 1, 64), ("S", 1, 64)),
    ),
    Case(
        "broadcast-sym",
        [T(F32, B, 1)],
        unary(Op.BROADCAST_TO, shape=[S, B, 4]),
        [randn(3, 1)],
        lambda x: np.broadcast_to(x, (2, 3, 4)),
        dims=(("B", 1, 64),),
    ),
    Case(
        "slice-sym",
        [T(F32, B, 2)],
        unary(Op.SLICE, axis=0, start=1, end=3),
        [randn(5, 2)],
        lambda x: x[1:3],
        dims=(("B", 1, 64),),
    ),
]
# broadcast-sym declares S without binding it from an argument: give it an argument.
CASES[-2] = Case("broadcast-sym", [T(F32, B, 1), T(F32, S)],
                 lambda b, x, s: b.emit(Op.BROADCAST_TO, [x], {"shape": [S, B, 4]}),
                 [randn(3, 1), randn(2)], lambda x, s: np.broadcast_to(x, (2, 3, 4)),
                 dims=(("B", 1, 64), ("S", 1, 64)))  # fmt: skip


def test_cases_cover_every_op() -> None:
    used = {n.op for c in CASES for n in make_func(c).body}
    assert used == set(Op), f"no interpreter case for {sorted(set(Op) - used)}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_numpy(case: Case) -> None:
    func = make_func(case)
    (out,) = run_func(func, case.inputs)
    rt = func.result_types()[0]
    assert (
        out.dtype
        == {
            F32: torch.float32,
            I32: torch.int32,
            I64: torch.int64,
            BOOL: torch.bool,
            BF16: torch.bfloat16,
            F16: torch.float16,
        }[rt.dtype]
    )
    want = np.asarray(case.expect(*[np_of(t) for t in case.inputs]))
    got = np_of(out)
    assert got.shape == want.shape
    if out.dtype.is_floating_point:
        np.testing.assert_allclose(got, want, rtol=case.tol, atol=case.tol)
    else:
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# Low-precision dtype semantics: one rounding to the IR dtype, as PyTorch eager


def _round(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    return torch.from_numpy(x).to(dtype).double().numpy()


@pytest.mark.parametrize("dt", [BF16, F16])
def test_rms_norm_low_precision_rounds_once(dt: DType) -> None:
    """rms_norm on bf16/f16 computes in f32 (torch's _fused_rms_norm) and rounds at the end."""
    tdt = torch.bfloat16 if dt is BF16 else torch.float16
    x, w = randn(4, 64, dtype=tdt), randn(64, dtype=tdt)
    b = Builder("f")
    xv, wv = b.add_arg("x", T(dt, 4, 64), "input"), b.add_arg("w", T(dt, 64), "param")
    func = b.finish([b.emit(Op.RMS_NORM, [xv, wv], {"eps": 1e-5})])
    (out,) = run_func(func, {"x": x, "w": w})
    assert out.dtype == tdt
    xd, wd = np_of(x), np_of(w)
    want = _round(xd / np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-5) * wd, tdt)
    ulp = 2.0**-7 if dt is BF16 else 2.0**-10
    np.testing.assert_allclose(np_of(out), want, rtol=ulp, atol=ulp)


def test_bf16_add_rounds_to_bf16() -> None:
    b = Builder("f")
    x = b.add_arg("x", T(BF16, 8), "input")
    func = b.finish([b.emit(Op.ADD, [x, b.constant(1.0, BF16)])])
    xs = randn(8, dtype=torch.bfloat16)
    (out,) = run_func(func, [xs])
    np.testing.assert_array_equal(np_of(out), _round(np_of(xs) + 1.0, torch.bfloat16))


# --------------------------------------------------------------------------------------------
# Guards


def _guarded() -> Func:
    b = Builder("g")
    b.add_dim("B", 1, 64)
    b.add_dim("S", 2, 8)
    b.add_require(BinOp("==", BinOp("%", Sym("B"), Num(2)), Num(0)))
    x = b.add_arg("x", T(BF16, B, 4), "input")
    y = b.add_arg("y", T(BF16, B, S), "input")
    s = b.emit(Op.REDUCE_SUM, [y], {"axis": [1], "keepdim": True})
    return b.finish([b.emit(Op.ADD, [x, s])])


def _xy(b: int = 4, s: int = 3, dt: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    return {"x": torch.zeros(b, 4, dtype=dt), "y": torch.ones(b, s, dtype=dt)}


def test_guards_pass_and_bind() -> None:
    f = _guarded()
    assert check_guards(f, _xy()) == {"B": 4, "S": 3}
    (out,) = run_func(f, _xy())
    assert out.shape == (4, 4) and float(out[0, 0]) == 3.0


@pytest.mark.parametrize(
    "inputs, message",
    [
        (_xy(dt=torch.float32), "x: expected bf16, got f32"),
        ({"x": torch.zeros(4, 4, 1, dtype=torch.bfloat16), "y": _xy()["y"]}, "x: expected rank 2"),
        ({"x": torch.zeros(4, 5, dtype=torch.bfloat16), "y": _xy()["y"]}, "x: dim 1 must be 4"),
        ({"x": torch.zeros(4, 4, dtype=torch.bfloat16), "y": _xy(b=6)["y"]}, "y: dim 0 is 6"),
        (_xy(b=66), "dim B = 66 outside [1, 64]"),
        (_xy(s=9), "dim S = 9 outside [2, 8]"),
        (_xy(b=3), "require B % 2 == 0 failed (B=3)"),
        ({"x": _xy()["x"]}, "missing argument 'y'"),
        ({**_xy(), "z": torch.zeros(1)}, "has no argument 'z'"),
        ([_xy()["x"]], "takes 2 tensors, got 1"),
    ],
)
def test_guard_errors(inputs: Any, message: str) -> None:
    with pytest.raises(GuardError) as err:
        run_func(_guarded(), inputs)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bind_dims_solves_linear_dims() -> None:
    b = Builder("f")
    b.add_dim("B", 1, 64)
    b.add_dim("S", 1, 64)
    x = b.add_arg("x", T(F32, 2 * B + 1), "input")
    y = b.add_arg("y", T(F32, B * S), "input")
    f = b.finish([b.emit(Op.REDUCE_SUM, [x], {"axis": [0], "keepdim": False}), y])
    assert bind_dims(f, [torch.zeros(7), torch.zeros(15)]) == {"B": 3, "S": 5}
    with pytest.raises(GuardError, match="no integer solution"):
        bind_dims(f, [torch.zeros(8), torch.zeros(15)])
    with pytest.raises(GuardError, match="y: dim 0 is 16: B\\*S = 16 has no integer solution"):
        bind_dims(f, [torch.zeros(7), torch.zeros(16)])
    b = Builder("g")
    b.add_dim("B", 1, 64)
    x = b.add_arg("x", T(F32, B), "input")
    y = b.add_arg("y", T(F32, 2 * B), "input")
    g = b.finish([x, y])
    with pytest.raises(GuardError, match="y: dim 0 is 7, but 2\\*B = 6"):
        bind_dims(g, [torch.zeros(3), torch.zeros(7)])


def test_unbound_dim_is_a_guard_error() -> None:
    b = Builder("f")
    b.add_dim("B", 1, 64)
    x = b.add_arg("x", T(F32, 4), "input")
    f = b.finish([b.emit(Op.BROADCAST_TO, [x], {"shape": [B, 4]})])
    with pytest.raises(GuardError, match="dim B is not determined"):
        run_func(f, [torch.zeros(4)])


def test_eval_errors_name_the_node() -> None:
    b = Builder("f")
    b.add_dim("B", 1, 64)
    x = b.add_arg("x", T(I64, B), "input")
    q = b.emit(Op.FLOORDIV, [x, x], hint="q")
    f = b.finish([b.emit(Op.SLICE, [q], {"axis": 0, "start": 0, "end": 4})])
    with pytest.raises(EvalError, match="%q = floordiv"):
        run_func(f, [torch.tensor([1, 0, 2, 3])])
    with pytest.raises(EvalError, match="slice"):
        run_func(f, [torch.tensor([1, 2])])
    assert run_func(f, [torch.tensor([1, 2, 3, 4, 5])])[0].tolist() == [1, 1, 1, 1]


# --------------------------------------------------------------------------------------------
# Inputs, dims, and random functions


def test_random_inputs_and_small_dims() -> None:
    f = _guarded()
    dims = small_dims(f)
    assert dims["B"] % 2 == 0 and 1 <= dims["B"] <= 64 and 2 <= dims["S"] <= 8
    a, b = random_inputs(f, dims, seed=7), random_inputs(f, dims, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["y"], random_inputs(f, dims, seed=8)["y"])
    assert a["x"].dtype == torch.bfloat16 and a["x"].shape == (dims["B"], 4)
    check_guards(f, a)
    bl = Builder("h")
    c = bl.add_arg("c", T(BOOL), "input")
    i = bl.add_arg("i", T(I64, 64), "input")
    w = bl.add_arg("w", T(F32, 256, 1024), "param")
    g = bl.finish([c, i, w])
    r = random_inputs(g, {}, seed=0)
    assert r["c"].dtype == torch.bool and r["c"].dim() == 0
    assert r["i"].min() >= 0 and r["i"].max() < 8
    assert abs(float(r["w"].std()) - 1 / 32) < 0.005  # scaled by 1/sqrt(fan_in)


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(funcs(max_nodes=15))
def test_random_funcs_run(func: Func) -> None:
    """Every generated function evaluates; results have their declared types (checked inside)."""
    outs = run_func(func, concrete_inputs(func, seed=0))
    assert len(outs) == len(func.results)
