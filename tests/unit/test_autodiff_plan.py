"""BackwardPlan structure and saved-value selection (esperc.middle.autodiff, remat).

Signatures and names of the forward/backward pair, ``wrt`` handling and errors, which values are
saved or recomputed, and gradients of the cases that need special inputs (uniform branches, a
causal mask), against torch.autograd on plain-PyTorch expressions written here.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from autodiff_harness import assert_close32, run_plan, torch_grads

from esperc.ir.builder import Builder
from esperc.ir.ops import Op
from esperc.ir.types import DType, SymDim, TensorType
from esperc.middle.autodiff import AutodiffError, differentiate
from esperc.middle.gradients import GRADIENTS
from esperc.middle.gradients_base import NotDifferentiable
from esperc.middle.remat import RematPolicy

F32, BF16 = DType.F32, DType.BF16
N = SymDim.symbol("N")


def test_every_op_has_a_gradient_entry() -> None:
    assert set(GRADIENTS) == set(Op)
    for op, entry in GRADIENTS.items():
        if isinstance(entry, NotDifferentiable):
            assert entry.reason, op
        else:
            assert callable(entry), op


def test_signature_names_and_types() -> None:
    b = Builder("f")
    x = b.add_arg("x", TensorType(BF16, (4, 8)), "input")
    w = b.add_arg("w", TensorType(BF16, (8,)), "param")
    i = b.add_arg("i", TensorType(DType.I64, (4, 8)), "input")
    y = b.emit(Op.MUL, [x, w], hint="y")
    func = b.finish([y, i])
    plan = differentiate(func)
    assert plan.wrt == ("x", "w") and plan.num_outputs == 2
    assert plan.backward.results == ("grad_x", "grad_w")
    assert [a.name for a in plan.backward.args[-2:]] == ["grad_y", "grad_i"]
    types = plan.backward.types()
    assert types["grad_x"] == func.args[0].type and types["grad_w"] == func.args[1].type
    assert plan.forward.results[:2] == func.results
    assert plan.forward.results[2:] == plan.saved == ("x", "w")
    # The bias-like reduction over the rows accumulates in f32, rounded once at the end.
    grad_w = plan.backward.producers()["grad_w"]
    assert grad_w.op is Op.CAST
    assert any(n.op is Op.REDUCE_SUM and n.type.dtype is F32 for n in plan.backward.body)


def test_wrt_subset_and_errors() -> None:
    b = Builder("f")
    x = b.add_arg("x", TensorType(F32, (2, 3, 4)), "input")
    w = b.add_arg("w", TensorType(F32, (5, 4)), "param")
    bias = b.add_arg("b", TensorType(F32, (5,)), "param")
    func = b.finish([b.emit(Op.LINEAR, [x, w, bias])])
    plan = differentiate(func, wrt=["w"])
    assert plan.wrt == ("w",) and plan.backward.results == ("grad_w",)
    assert "w" not in plan.saved  # dw = g^T x needs x only
    with pytest.raises(AutodiffError):
        differentiate(func, wrt=["nope"])
    b = Builder("g")
    x = b.add_arg("x", TensorType(DType.I32, (3,)), "input")
    with pytest.raises(AutodiffError):
        differentiate(b.finish([b.emit(Op.NEG, [x])]), wrt=["x"])


def test_unused_argument_gets_zero_gradient() -> None:
    b = Builder("f")
    x = b.add_arg("x", TensorType(F32, (3,)), "input")
    b.add_arg("u", TensorType(F32, (2, 2)), "param")
    plan = differentiate(b.finish([b.emit(Op.EXP, [x])]))
    _, grads = run_plan(plan, {"x": torch.ones(3), "u": torch.ones(2, 2)}, [torch.ones(3)])
    assert torch.equal(grads["u"], torch.zeros(2, 2))


def _saved_ops(plan: Any) -> dict[str, Op | None]:
    prod = plan.forward.producers()
    return {s: (prod[s].op if s in prod else None) for s in plan.saved}


def test_remat_gelu_saves_input_layer_norm_saves_stats() -> None:
    b = Builder("f")
    x = b.add_arg("x", TensorType(F32, (4, 8)), "input")
    bias = b.add_arg("bias", TensorType(F32, (8,)), "param")
    h = b.emit(Op.ADD, [x, bias], hint="h")
    y = b.emit(Op.GELU, [h], {"approximate": "none"}, hint="y")
    z = b.emit(Op.LAYER_NORM, [y], {"eps": 1e-5}, hint="z")
    plan = differentiate(b.finish([z]))
    ops = _saved_ops(plan)
    assert ops.pop("x") is None and ops.pop("bias") is None  # h and y are recomputed
    assert sorted(o.value for o in ops.values()) == ["reduce_mean", "rsqrt"]  # mean, rstd
    assert plan.saved_bytes({}) == (32 + 8 + 4 + 4) * 4
    assert plan.saved_bytes({}, include_args=False) == 8 * 4


def test_remat_long_chain_is_saved() -> None:
    b = Builder("f")
    v = b.add_arg("x", TensorType(F32, (4,)), "input")
    for _ in range(12):
        v = b.emit(Op.SIN, [v])
    func = b.finish([v])
    saved_default = differentiate(func).saved
    assert len(saved_default) > 1  # the 12-op chain is cut by saving values
    assert differentiate(func, policy=RematPolicy(max_recompute_ops=64)).saved == ("x",)


def test_softmax_saves_its_output_and_index_needs_no_operand() -> None:
    b = Builder("f")
    b.add_dim("S", 1, 64)
    s_dim = SymDim.symbol("S")
    q = b.add_arg("q", TensorType(F32, (s_dim, 4)), "input")
    k = b.add_arg("k", TensorType(F32, (s_dim, 4)), "input")
    s = b.emit(Op.MATMUL, [q, b.emit(Op.TRANSPOSE, [k], {"dim0": 0, "dim1": 1})], hint="s")
    keep = b.emit(Op.LE, [b.emit(Op.INDEX, [s], {"axis": 1}), b.emit(Op.INDEX, [s], {"axis": 0})])
    m = b.emit(Op.WHERE, [keep, s, b.constant(float("-inf"), F32)])
    p = b.emit(Op.SOFTMAX, [m], {"axis": 1}, hint="p")
    plan = differentiate(b.finish([p]))
    assert set(plan.saved) == {"p", "q", "k"}  # not the S x S scores: the mask is rebuilt
    inputs = {"q": torch.randn(5, 4), "k": torch.randn(5, 4)}
    gout = [torch.randn(5, 5)]

    def ref(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        sc = q @ k.T
        return torch.softmax(sc.masked_fill(~torch.ones(5, 5).bool().tril(), -torch.inf), 1)

    _, grads = run_plan(plan, inputs, gout)
    _, want = torch_grads(ref, inputs, ["q", "k"], gout)
    for n in ("q", "k"):
        assert_close32(grads[n], want[n], n)


def test_select_both_branches() -> None:
    b = Builder("f")
    c = b.add_arg("c", TensorType(DType.BOOL, ()), "input")
    x = b.add_arg("x", TensorType(F32, (3,)), "input")
    y = b.add_arg("y", TensorType(F32, (3,)), "input")
    plan = differentiate(b.finish([b.emit(Op.SELECT, [c, b.emit(Op.EXP, [x]), y])]))
    assert plan.wrt == ("x", "y")
    for flag in (True, False):
        inputs = {"c": torch.tensor(flag), "x": torch.randn(3), "y": torch.randn(3)}
        gout = [torch.randn(3)]
        _, grads = run_plan(plan, inputs, gout)
        _, want = torch_grads(
            lambda c, x, y: torch.exp(x) if bool(c) else y, inputs, ["x", "y"], gout
        )
        for n in ("x", "y"):
            assert_close32(grads[n], want[n], f"select {flag} {n}")


def test_concat_at_dynamic_offset_is_refused() -> None:
    b = Builder("f")
    b.add_dim("N", 1, 8)
    x = b.add_arg("x", TensorType(F32, (N,)), "input")
    y = b.add_arg("y", TensorType(F32, (3,)), "input")
    with pytest.raises(AutodiffError, match="dynamic offset"):
        differentiate(b.finish([b.emit(Op.CONCAT, [x, y], {"axis": 0})]))
