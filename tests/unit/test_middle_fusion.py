"""Tests of the ``fuse`` pass: sample regions, invariants on random graphs, cost choices.

Oracles: the eager interpreter on the function before and after ``fuse,divergence,smem-plan``
(these passes only reorder nodes, clone rank-0 constants and annotate, so every result must be
bit-for-bit equal), the verifier, and hand-written expectations for the samples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from ir_strategies import concrete_inputs, funcs, random_func

from esperc.frontend import lower, parse_file
from esperc.ir.graph import Func
from esperc.ir.interpreter import run_func
from esperc.ir.ops import Op
from esperc.ir.parser import parse_func
from esperc.ir.printer import print_func
from esperc.ir.verifier import verify
from esperc.middle.pass_manager import PassContext, parse_pipeline, run_pipeline
from esperc.middle.registry import DEFAULT_PIPELINE, load_passes

PASSES = load_passes()
ROOT = Path(__file__).parents[2]
KERNEL_PASSES = "fuse,divergence,smem-plan"

# Region kinds of every sample after the default pipeline, in body order.
SAMPLE_KINDS = {
    "adaln_modulate": ["matmul", "view", "view", "reduction"],
    "bias_gelu_residual": ["pointwise"],
    "causal_attention": ["attention"],
    "cross_entropy": ["view", "reduction", "reduction"],
    "gated_residual": ["matmul", "matmul", "matmul", "matmul", "reduction"],
    "geglu": ["matmul", "view", "view", "pointwise"],
    "layer_norm": ["reduction"],
    "lora_adapter": ["matmul", "matmul"],
    "multi_head_attention": ["matmul", "view"] * 3 + ["attention", "view", "matmul"],
    "residual_mlp": ["matmul", "matmul", "reduction"],
    "rms_norm": ["reduction"],
    "rope": ["view", "pointwise", "view", "pointwise"] * 2,
    "softmax": ["reduction"],
    "squeeze_excite": ["reduction", "matmul", "matmul", "view", "pointwise"],
    "swiglu_mlp": ["matmul", "matmul", "matmul"],
    "tiny_adapter": ["reduction", "matmul", "matmul"],
}


def _sample(name: str) -> Func:
    return lower(parse_file(ROOT / "samples" / f"{name}.esp"))


def _run(func: Func, pipeline: str, ctx: PassContext | None = None) -> Func:
    return run_pipeline(func, parse_pipeline(pipeline, PASSES), ctx or PassContext())


def _kinds(func: Func) -> list[str]:
    return [str(r.attr("kind")) for r in func.regions]


def test_every_sample_is_listed() -> None:
    assert sorted(SAMPLE_KINDS) == sorted(p.stem for p in (ROOT / "samples").glob("*.esp"))


@pytest.mark.parametrize("name", sorted(SAMPLE_KINDS))
def test_sample_regions(name: str) -> None:
    out = _run(_sample(name), DEFAULT_PIPELINE)
    assert _kinds(out) == SAMPLE_KINDS[name]
    _check_partition(out)


def test_residual_mlp_kernels() -> None:
    """linear+bias+GELU, linear+bias+residual, LayerNorm (the f32 upcast joins the norm)."""
    out = _run(_sample("residual_mlp"), DEFAULT_PIPELINE)
    nodes = out.producers()
    k0, k1, k2 = out.regions
    assert k0.attr("trans_b") is True and k0.attr("b") == "w1"
    assert Op.ERF in {nodes[m].op for m in k0.members}
    assert any(nodes[m].op is Op.ADD and "x" in nodes[m].operands for m in k1.members)
    assert not any(nodes[m].op is Op.CAST for m in k1.members)
    assert [nodes[m].op for m in k2.members].count(Op.REDUCE_SUM) == 2


@pytest.mark.parametrize("pipeline", ["fuse", DEFAULT_PIPELINE])
def test_causal_attention_one_region(pipeline: str) -> None:
    """With the composite softmax (no decompose) and with its decomposition."""
    out = _run(_sample("causal_attention"), pipeline)
    (r,) = out.regions
    assert r.attr("kind") == "attention"
    assert (r.attr("q"), r.attr("k"), r.attr("v")) == ("q", "k", "v")
    assert r.attr("causal") is True and r.attr("mask") == "causal-index"
    assert r.attr("scale") == 0.125 and r.attr("out") == out.results[0]


def test_mha_views_stay_outside_attention() -> None:
    out = _run(_sample("multi_head_attention"), DEFAULT_PIPELINE)
    att = next(r for r in out.regions if r.attr("kind") == "attention")
    nodes = out.producers()
    assert att.attr("mask") == "none" and att.attr("causal") is False
    assert nodes[str(att.attr("q"))].op in (Op.PERMUTE, Op.TRANSPOSE)  # from a view region
    assert all(nodes[m].op not in (Op.RESHAPE, Op.PERMUTE) for m in att.members)


def test_escaping_probabilities_are_not_attention() -> None:
    """If p is also returned, flash attention cannot be used: softmax and matmuls split."""
    f = parse_func(
        """func @f {
  input %q : f32[16,8]
  input %k : f32[16,8]
  input %v : f32[16,8]
  %kt = transpose %k {dim0 = 0, dim1 = 1} : f32[8,16]
  %s = matmul %q, %kt : f32[16,16]
  %p = softmax %s {axis = 1} : f32[16,16]
  %o = matmul %p, %v : f32[16,8]
  return %o, %p
}
"""
    )
    assert _kinds(_run(f, "fuse")) == ["matmul", "reduction", "matmul"]


def test_max_ops_caps_regions() -> None:
    f = _run(_sample("layer_norm"), "canonicalize,cse,dce,decompose,canonicalize,cse,dce")
    out = _run(f, "fuse{max-ops=4}")
    assert len(out.regions) > 1
    nodes = out.producers()
    for r in out.regions:
        assert sum(nodes[m].op is not Op.CONSTANT for m in r.members) <= 4


def test_explain_remarks() -> None:
    ctx = PassContext()
    _run(_sample("residual_mlp"), DEFAULT_PIPELINE.replace("fuse", "fuse{explain=true}"), ctx)
    lines = ctx.remarks["fuse"]
    assert sum(line.startswith("@residual_mlp_k") for line in lines) == 3
    assert any("boundary %h -> " in line and "two matrix products" in line for line in lines)


def _check_partition(func: Func) -> None:
    verify(func)
    members = [m for r in func.regions for m in r.members]
    assert sorted(members) == sorted(n.result for n in func.body)  # each node exactly once


def _same_results(before: Func, after: Func, seed: int) -> None:
    inputs = concrete_inputs(before, seed)
    for a, b in zip(run_func(before, inputs), run_func(after, inputs), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.is_floating_point():
            assert torch.equal(a.isnan(), b.isnan())
            a, b = torch.nan_to_num(a), torch.nan_to_num(b)
            assert torch.equal(a.signbit(), b.signbit())
        assert torch.equal(a, b)


def _property(func: Func, seed: int) -> None:
    out = _run(func, KERNEL_PASSES)
    _check_partition(out)
    assert print_func(_run(out, KERNEL_PASSES)) == print_func(out)  # idempotent
    assert {n.result for n in out.body} >= {n.result for n in func.body}
    _same_results(func, out, seed)


@pytest.mark.parametrize("seed", range(120))
def test_random_graphs(seed: int) -> None:
    _property(random_func(seed, max_nodes=40), seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(funcs(max_nodes=30))
def test_random_graphs_hypothesis(func: Func) -> None:
    _property(func, 0)


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_after_cleanup(seed: int) -> None:
    """The default pipeline's front half first, so fuse sees decomposed primitives."""
    f = random_func(1000 + seed, max_nodes=40, float_only=True)
    g = _run(f, "canonicalize,cse,dce,decompose,canonicalize,cse,dce")
    _property(g, seed)
