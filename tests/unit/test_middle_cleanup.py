"""Property and numerics tests of the clean-up passes (canonicalize, cse, dce) and decompose.

Oracles: the eager interpreter (``esperc.ir.interpreter``) on the function before and after a
pass, and plain PyTorch written here for the decompositions and folds. canonicalize, cse and
dce must keep every result bit for bit (NaN matches NaN, signed zeros must agree); decompose is
checked node by node: each original value, recomputed by the decomposed function from the
original values of its operands, must be close to the original (so rounding differences are not
amplified by later ops into false failures).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from ir_strategies import concrete_inputs, funcs, random_func

from esperc.diagnostics import DiagnosticError
from esperc.ir.builder import Builder
from esperc.ir.graph import Func, Node
from esperc.ir.interpreter import check_guards, random_inputs, run_func, small_dims
from esperc.ir.ops import Op
from esperc.ir.printer import print_func
from esperc.ir.reference import evaluate_node
from esperc.ir.types import DType, SymDim, TensorType
from esperc.ir.verifier import verify
from esperc.middle.pass_manager import PassContext, parse_pipeline, run_pipeline
from esperc.middle.registry import load_passes

PASSES = load_passes()
PIPELINE = "canonicalize,cse,dce,decompose,canonicalize,cse,dce"
EXACT = ("canonicalize", "cse", "dce")
SAMPLES = sorted((Path(__file__).parents[2] / "samples").glob("*.esp"))
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# (rtol, atol) of a decomposition against the composite, by result dtype: f32 rounding
# differences in the reductions, plus one final rounding for bf16/f16 (and two for linear).
TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (2e-2, 3e-2), torch.float16: (2e-3, 4e-3)}


def run(func: Func, pipeline: str) -> Func:
    return run_pipeline(func, parse_pipeline(pipeline, PASSES), PassContext())


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (any NaN matches any NaN; 0.0 and -0.0 differ)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    as_int = {2: torch.int16, 4: torch.int32}[a.element_size()]
    same = (a.view(as_int) == b.view(as_int)) | (a.isnan() & b.isnan())
    return bool(same.all())


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 0.0) -> bool:
    """Equal within ``TOL`` of the dtype (plus ``atol``); NaN matches NaN, inf matches inf."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    rtol, base = TOL[a.dtype]
    return torch.allclose(a.float(), b.float(), rtol=rtol, atol=base + atol, equal_nan=True)


def conditioning_atol(node: Node, operands: list[torch.Tensor]) -> float:
    """Extra absolute error of a decomposed ``layer_norm``: its two-pass mean (``sum / N``) is
    exact only to a few ulps of ``|x|``, and normalising scales that by ``1 / sqrt(var + eps)``
    (up to ``1 / sqrt(eps)`` on a constant row, where PyTorch's Welford mean is exact)."""
    if node.op is not Op.LAYER_NORM or operands[0].numel() == 0:
        return 0.0
    scale = max((t.abs().max().item() for t in operands[1:2]), default=1.0)
    x = operands[0].abs().max().item()
    return 16 * torch.finfo(torch.float32).eps * x / math.sqrt(node.attr("eps")) * max(1, scale)


def all_values(func: Func, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Every value of ``func`` (arguments and nodes) on ``inputs``, each made contiguous.

    The eager interpreter's per-node rules (``evaluate_node``) with one change: PyTorch's CPU
    kernels for some ops (sigmoid, softplus, log1p) round differently on strided views than on
    dense tensors (vectorised against scalar loops), so removing a copy such as ``x * 1.0``
    would change later bits although no value changed. Dense values make the oracle depend on
    values only, as a compiled kernel does.
    """
    env = check_guards(func, inputs)
    values = {k: v.contiguous() for k, v in inputs.items()}
    for n in func.body:
        out = evaluate_node(n, [values[o] for o in n.operands], env)
        values[n.result] = out.contiguous()
    return values, env


def assert_same_results(before: Func, after: Func, inputs: dict[str, Any]) -> None:
    want, got = all_values(before, inputs)[0], all_values(after, inputs)[0]
    assert len(before.results) == len(after.results)
    for i, (a, b) in enumerate(zip(before.results, after.results)):
        w, g = want[a], got[b]
        assert bit_equal(w, g), f"result {i}\n{print_func(before)}\n{print_func(after)}\n{w}\n{g}"


def assert_locally_close(before: Func, after: Func, inputs: dict[str, Any]) -> None:
    """Every value of ``before`` is recomputed by ``after`` from ``before``'s values of the
    operands: bit-equal for a node ``after`` keeps, close for a decomposed one (which is not
    compared when its operands hold inf or NaN: PyTorch's fused kernels and the textbook
    formulas legitimately disagree there, e.g. ``0 * inf`` against a refactored product)."""
    want, env = all_values(before, inputs)
    got: dict[str, Any] = {}
    for n in after.body:
        operands = [want[o] if o in want else got[o] for o in n.operands]
        got[n.result] = evaluate_node(n, operands, env).contiguous()
    kept = {n.result: n for n in after.body}
    assert {n.result for n in before.body} <= set(kept), "decompose dropped a composite's name"
    for n in before.body:
        w, g = want[n.result], got[n.result]
        if kept[n.result] == n:
            ok = bit_equal(w, g)
        else:
            operands = [want[o] for o in n.operands]
            if not all(t.isfinite().all() for t in operands if t.dtype.is_floating_point):
                continue
            ok = close(w, g, conditioning_atol(n, operands))
        assert ok, f"%{n.result} = {n.op}\n{print_func(before)}\n{print_func(after)}\n{w}\n{g}"


def assert_idempotent(func: Func, pipeline: str) -> None:
    again = run(func, pipeline)
    assert again == func and print_func(again) == print_func(func), print_func(func)


def run_each(func: Func, pipeline: str) -> Func:
    """Run the passes one by one, checking that each is idempotent on its own output (a
    pipeline as a whole need not be: cse can expose a new canonicalization)."""
    for name in pipeline.split(","):
        func = run(func, name)
        assert_idempotent(func, name)
    return func


# --------------------------------------------------------------------------------------------
# Properties over random graphs


@pytest.mark.parametrize("name", EXACT)
@PROPERTY
@given(func=funcs())
def test_cleanup_pass_is_exact_and_idempotent(name: str, func: Func) -> None:
    out = run(func, name)
    verify(out)
    assert_same_results(func, out, concrete_inputs(func, 0))
    assert_idempotent(out, name)


@PROPERTY
@given(func=funcs())
def test_decompose_is_close_and_idempotent(func: Func) -> None:
    out = run(func, "decompose")
    verify(out)
    assert not any(n.op in (Op.SOFTMAX, Op.LOG_SOFTMAX, Op.LAYER_NORM, Op.RMS_NORM, Op.GELU,
                            Op.SILU) for n in out.body)  # fmt: skip
    assert_locally_close(func, out, concrete_inputs(func, 0))
    assert_idempotent(out, "decompose")


@PROPERTY
@given(func=funcs())
def test_pipeline_stages_are_exact_and_idempotent(func: Func) -> None:
    inputs = concrete_inputs(func, 1)
    first = run_each(func, "canonicalize,cse,dce")
    assert_same_results(func, first, inputs)
    decomposed = run_each(first, "decompose")
    assert_locally_close(first, decomposed, inputs)
    final = run_each(decomposed, "canonicalize,cse,dce")
    assert_same_results(decomposed, final, inputs)


@pytest.mark.parametrize("seed", range(40))
def test_pipeline_end_to_end(seed: int) -> None:
    func = random_func(seed, float_only=True)
    inputs = concrete_inputs(func, seed)
    out = run(func, PIPELINE)
    want, got = run_func(func, inputs), run_func(out, inputs)
    assert all(close(w, g) for w, g in zip(want, got)), print_func(func) + print_func(out)


@PROPERTY
@given(func=funcs(allow_regions=True))
def test_passes_keep_region_membership(func: Func) -> None:
    before = {m: r.name for r in func.regions for m in r.members}
    for name in (*EXACT, "decompose"):
        out = run(func, name)
        after = {m: r.name for r in out.regions for m in r.members}
        kept = {n.result for n in out.body} & {n.result for n in func.body}
        assert {m: before.get(m) for m in kept} == {m: after.get(m) for m in kept}, name


# --------------------------------------------------------------------------------------------
# Folding: the dtype's own arithmetic, checked against plain PyTorch


def _fold(op: Op, dtype: DType, *values: Any) -> Func:
    b = Builder("fold")
    consts = [b.constant(v, dtype) for v in values]
    return run(b.finish([b.emit(op, consts)]), "canonicalize")


@pytest.mark.parametrize(
    ("op", "dtype", "a", "b", "expect"),
    [
        (Op.ADD, DType.F32, 0.1, 0.2, lambda: torch.tensor(0.1) + torch.tensor(0.2)),
        (Op.ADD, DType.BF16, 1.0, 2**-8, lambda: torch.tensor(1.0, dtype=torch.bfloat16)
         + torch.tensor(2**-8, dtype=torch.bfloat16)),
        (Op.MUL, DType.F16, 3.1, 7.3, lambda: torch.tensor(3.1, dtype=torch.float16)
         * torch.tensor(7.3, dtype=torch.float16)),
        (Op.DIV, DType.F32, 1.0, 3.0, lambda: torch.tensor(1.0) / torch.tensor(3.0)),
        (Op.ADD, DType.I32, 2**31 - 1, 1, lambda: torch.tensor(-(2**31), dtype=torch.int32)),
        (Op.FLOORDIV, DType.I64, -7, 2, lambda: torch.tensor(-4)),
        (Op.MOD, DType.I64, -7, 2, lambda: torch.tensor(1)),
        (Op.POW, DType.F32, 2.0, 0.5, lambda: torch.tensor(2.0) ** torch.tensor(0.5)),
        (Op.MAXIMUM, DType.F32, -0.0, 0.0, lambda: torch.tensor(-0.0)),
        (Op.LT, DType.BF16, 1.0, 1.00390625, lambda: torch.tensor(False)),
    ],
)  # fmt: skip
def test_fold_uses_dtype_semantics(op: Op, dtype: DType, a: Any, b: Any, expect: Any) -> None:
    out = _fold(op, dtype, a, b)
    (node,) = out.body
    assert node.op is Op.CONSTANT
    want = expect().item()
    got = node.attr("value")
    assert got == want and math.copysign(1, got) == math.copysign(1, want)


def test_fold_exp_in_f32_differs_from_python() -> None:
    (node,) = _fold(Op.EXP, DType.F32, 0.1).body
    assert node.attr("value") == torch.exp(torch.tensor(0.1)).item() != math.exp(0.1)


def test_integer_division_by_zero_is_not_folded() -> None:
    out = _fold(Op.FLOORDIV, DType.I32, 7, 0)
    assert out.body[-1].op is Op.FLOORDIV


def _binary_with_const(op: Op, value: float, dtype: DType = DType.F32) -> Func:
    b = Builder("f")
    x = b.add_arg("x", TensorType(dtype, (4,)), "input")
    return b.finish([b.emit(op, [x, b.constant(value, dtype)])])


@pytest.mark.parametrize(
    ("op", "value", "folds"),
    [(Op.ADD, 0.0, False), (Op.ADD, -0.0, True), (Op.SUB, 0.0, True), (Op.SUB, -0.0, False),
     (Op.MUL, 1.0, True), (Op.MUL, 0.0, False), (Op.DIV, 1.0, True), (Op.MAXIMUM, 0.0, False),
     (Op.POW, 1.0, True), (Op.POW, 2.0, False)],
)  # fmt: skip
def test_float_identities_respect_signed_zero(op: Op, value: float, folds: bool) -> None:
    func = _binary_with_const(op, value)
    out = run(func, "canonicalize,cse")
    assert (out.results == ("x",)) is folds
    x = torch.tensor([-0.0, 0.0, float("nan"), -3.5])
    assert_same_results(func, out, {"x": x})


def test_commutative_float_max_keeps_operand_order() -> None:
    b = Builder("f")
    x = b.add_arg("x", TensorType(DType.F32, (2,)), "input")
    z = b.constant(0.0, DType.F32)
    func = b.finish([b.emit(Op.MAXIMUM, [z, x]), b.emit(Op.MAXIMUM, [x, z])])
    out = run(func, "canonicalize,cse,dce")
    assert len({r for r in out.results}) == 2
    assert_same_results(func, out, {"x": torch.tensor([-0.0, 0.0])})


# --------------------------------------------------------------------------------------------
# Decompositions against plain PyTorch


def _composite(op: Op, dtype: DType, extra: int, attrs: dict[str, Any], rows: Any = 5) -> Func:
    b = Builder("c")
    if isinstance(rows, str):
        b.add_dim(rows, 1, 64)
        rows = SymDim.symbol(rows)
    x = b.add_arg("x", TensorType(dtype, (rows, 33)), "input")
    shapes = [(33,), (33,)] if op is not Op.LINEAR else [(17, 33), (17,)]
    params = [b.add_arg(f"p{i}", TensorType(dtype, shapes[i]), "param") for i in range(extra)]
    return b.finish([b.emit(op, [x, *params], attrs, hint="y")])


REFERENCES = [
    (Op.SOFTMAX, 0, {"axis": -1}, lambda x: F.softmax(x, -1)),
    (Op.SOFTMAX, 0, {"axis": 0}, lambda x: F.softmax(x, 0)),
    (Op.LOG_SOFTMAX, 0, {"axis": -1}, lambda x: F.log_softmax(x, -1)),
    (Op.LAYER_NORM, 2, {"eps": 1e-5}, lambda x, w, b: F.layer_norm(x, (33,), w, b, 1e-5)),
    (Op.LAYER_NORM, 0, {"eps": 1e-3}, lambda x: F.layer_norm(x, (33,), eps=1e-3)),
    (Op.RMS_NORM, 1, {"eps": 1e-6}, lambda x, w: F.rms_norm(x, (33,), w, 1e-6)),
    (Op.VAR, 0, {"axis": [1], "keepdim": False, "correction": 1}, lambda x: x.var(1)),
    (
        Op.VAR,
        0,
        {"axis": [0, 1], "keepdim": True, "correction": 0},
        lambda x: x.var((0, 1), keepdim=True, correction=0),
    ),
    (Op.REDUCE_MEAN, 0, {"axis": [1], "keepdim": False}, lambda x: x.mean(1)),
    (Op.LINEAR, 2, {}, lambda x, w, b: F.linear(x, w, b)),
    (Op.GELU, 0, {"approximate": "none"}, lambda x: F.gelu(x)),
    (Op.GELU, 0, {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    (Op.SILU, 0, {}, lambda x: F.silu(x)),
]


@pytest.mark.parametrize("dtype", [DType.F32, DType.BF16])
def test_square_is_pytorch_x_squared(dtype: DType) -> None:
    func = _binary_with_const(Op.POW, 2.0, dtype)
    out = run(func, "decompose")
    assert [n.op for n in out.body] == [Op.CONSTANT, Op.MUL]
    x = (torch.randn(4) * 10).to(torch.bfloat16 if dtype is DType.BF16 else torch.float32)
    (got,) = run_func(out, {"x": x})
    assert bit_equal(got, x**2)  # fmt: skip


@pytest.mark.parametrize("dtype", [DType.F32, DType.BF16, DType.F16])
@pytest.mark.parametrize(("op", "extra", "attrs", "ref"), REFERENCES)
def test_decomposition_matches_pytorch(
    op: Op, extra: int, attrs: Any, ref: Any, dtype: DType
) -> None:
    func = _composite(op, dtype, extra, attrs)
    out = run(func, "decompose,canonicalize,cse")
    assert op not in {n.op for n in out.body}
    assert out.body[-1].result == "y" and out.results == ("y",)
    inputs = random_inputs(func, {}, seed=3)
    inputs["x"] = inputs["x"] * 3 + 1  # an offset mean, so centering matters
    (got,) = run_func(out, inputs)
    want = ref(*inputs.values())
    assert got.dtype == want.dtype
    atol = 2e-2 if op is Op.LINEAR and dtype is not DType.F32 else None
    torch.testing.assert_close(got, want, atol=atol, rtol=None if atol is None else 1.6e-2)


def test_decompose_keeps_reductions_over_dynamic_dims() -> None:
    for op, attrs in [(Op.VAR, {"axis": [0], "keepdim": False, "correction": 1}),
                      (Op.REDUCE_MEAN, {"axis": [0], "keepdim": True})]:  # fmt: skip
        func = _composite(op, DType.F32, 0, attrs, rows="B")
        assert run(func, "decompose").body[-1].op is op


def test_decompose_carries_source_location() -> None:
    from esperc.diagnostics import Loc

    func = _composite(Op.SOFTMAX, DType.BF16, 0, {"axis": -1})
    loc = Loc("m.esp", 3, 7)
    func = func.with_(body=(func.body[0].with_(loc=loc),))
    assert {n.loc for n in run(func, "decompose").body} == {loc}


def test_decompose_options() -> None:
    func = _composite(Op.LAYER_NORM, DType.F32, 2, {"eps": 1e-5})
    assert run(func, "decompose{keep=softmax+layer_norm}") == func
    lin = _composite(Op.LINEAR, DType.F32, 2, {})
    assert run(lin, "decompose{linear=false}") == lin
    with pytest.raises(DiagnosticError) as e:
        parse_pipeline("decompose{keep=layernorm}", PASSES)
    assert e.value.diagnostics[0].code == "E0603"


# --------------------------------------------------------------------------------------------
# Every sample through the pipeline (needs the front end: a missing one fails, never skips)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_through_pipeline(path: Path) -> None:
    from esperc.frontend import lower, parse_file

    func = lower(parse_file(path), None, {})
    out = run_each(func, PIPELINE)
    assert not {n.op for n in out.body} & {Op.SOFTMAX, Op.LOG_SOFTMAX, Op.LAYER_NORM, Op.RMS_NORM}
    inputs = random_inputs(func, small_dims(func), seed=0)
    want, got = run_func(func, inputs), run_func(out, inputs)
    for w, g in zip(want, got):
        assert close(w, g), f"{path.name}\n{print_func(out)}"


def test_samples_exist() -> None:
    assert len(SAMPLES) >= 10
