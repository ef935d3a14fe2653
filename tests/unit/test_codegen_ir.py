"""Triton code generation: hand-written partitioned IR cases, source structure, lowering table.

The IR cases here are shared with test_codegen_numerics.py (interpreter runs against plain
PyTorch) and test_codegen_aot.py (sm_90 cubins). Configs are small so that the Triton
interpreter stays fast.
"""

from __future__ import annotations

import ast

import pytest

from esperc.backend.triton.common import CodegenError
from esperc.backend.triton.configs import parse_config
from esperc.backend.triton.emitter import generate
from esperc.backend.triton.lowering import LOWERING, Composite, Elementwise, Reduction, Template
from esperc.backend.triton.plan import DimArg, StrideArg, TensorArg, ViewOp, eval_grid
from esperc.ir.ops import Op
from esperc.ir.parser import parse_func

SMALL_MM = 'config = "BLOCK_M=16,BLOCK_N=16,BLOCK_K=16,GROUP_M=2,num_warps=4,num_stages=2", '
SMALL_ATTN = 'config = "BLOCK_M=16,BLOCK_N=16,num_warps=4,num_stages=2", '

CASES: dict[str, str] = {}

CASES["branch"] = """
func @gate {
  dim B in [1, 64]
  input %x : bf16[B,40]
  input %flag : bool[]
  param %b : bf16[40]
  param %r : bf16[B,1]
  kernel @gate_k0 {kind = "pointwise", reason = "if"} {
    %c = constant {dtype = bf16, value = 2.0} : bf16[]
    %0 = add %x, %b : bf16[B,40] loc("gate.esp":7:3)
    %1 = mul %0, %c : bf16[B,40] loc("gate.esp":7:3)
    %2 = gelu %1 {approximate = "none"} : bf16[B,40] loc("gate.esp":8:3)
    %3 = sub %2, %r : bf16[B,40] loc("gate.esp":8:3)
    %4 = tanh %x : bf16[B,40] loc("gate.esp":10:3)
    %5 = select %flag, %3, %4 : bf16[B,40] loc("gate.esp":6:3)
  }
  return %5
}
"""

CASES["flat"] = """
func @axpy {
  dim N in [1, 100000]
  input %x : f32[N,4]
  input %y : f32[N,4]
  param %a : f32[]
  kernel @k {config = "BLOCK_N=64,num_warps=1", kind = "pointwise"} {
    %0 = mul %a, %x : f32[N,4]
    %1 = add %0, %y : f32[N,4]
    %2 = sigmoid %1 : f32[N,4]
  }
  return %2
}
"""

CASES["broadcast3d"] = """
func @bc {
  dim B in [1, 8]
  dim S in [1, 64]
  input %x : f16[B,S,8]
  input %y : f16[B,1,8]
  input %z : f16[S,1]
  kernel @k {kind = "pointwise"} {
    %0 = add %x, %y : f16[B,S,8]
    %1 = mul %0, %z : f16[B,S,8]
    %2 = index %1 {axis = 1} : i64[B,S,8]
    %3 = cast %2 {dtype = f16} : f16[B,S,8]
    %4 = add %1, %3 : f16[B,S,8]
    %5 = mul %y, %y : f16[B,1,8]
  }
  return %4, %5
}
"""

LN = """
func @ln {{
  dim B in [1, 65536]
  input %x : bf16[B,{n}]
  param %g : bf16[{n}]
  param %b : bf16[{n}]
  kernel @ln_k0 {{{cfg}kind = "reduction", reason = "layer_norm"}} {{
    %y = layer_norm %x, %g, %b {{eps = 1e-05}} : bf16[B,{n}]
    %s = softmax %x {{axis = -1}} : bf16[B,{n}]
    %m = reduce_max %x {{axis = [1], keepdim = false}} : bf16[B]
  }}
  return %y, %s, %m
}}
"""
CASES["ln_single"] = LN.format(n=100, cfg="")
CASES["ln_looped"] = LN.format(n=100, cfg='config = "BLOCK_M=2,BLOCK_N=32,num_warps=4", ')

CASES["stats"] = """
func @stats {
  dim B in [1, 16]
  dim H in [1, 32]
  input %x : f32[B,3,H,5]
  param %w : f32[5]
  kernel @k0 {config = "BLOCK_M=4,BLOCK_N=16,num_warps=2", kind = "reduction"} {
    %m = reduce_mean %x {axis = [2, 3], keepdim = true} : f32[B,3,1,1]
    %v = var %x {axis = [2, 3], correction = 1, keepdim = false} : f32[B,3]
  }
  kernel @k1 {kind = "reduction"} {
    %r = rms_norm %x, %w {eps = 1e-06} : f32[B,3,H,5]
    %l = log_softmax %r {axis = -1} : f32[B,3,H,5]
    %n = reduce_min %l {axis = [3], keepdim = true} : f32[B,3,H,1]
  }
  return %m, %v, %l, %n
}
"""

CASES["xent"] = """
func @xent {
  dim N in [1, 2147483647]
  input %logits : bf16[N,50]
  input %target : i64[N,1]
  kernel @k0 {kind = "reduction"} {
    %0 = cast %logits {dtype = f32} : f32[N,50]
    %1 = log_softmax %0 {axis = -1} : f32[N,50]
    %2 = index %1 {axis = -1} : i64[N,50]
    %3 = eq %2, %target : bool[N,50]
    %z = constant {dtype = f32, value = 0.0} : f32[]
    %4 = where %3, %1, %z : f32[N,50]
    %5 = reduce_sum %4 {axis = [1], keepdim = false} : f32[N]
    %6 = neg %5 : f32[N]
  }
  return %6
}
"""

CASES["linear"] = f"""
func @mlp {{
  dim B in [1, 64]
  input %x : bf16[B,48]
  param %w : bf16[40,48]
  param %b : bf16[40]
  input %r : bf16[B,40]
  kernel @k0 {{{SMALL_MM}kind = "matmul", reason = "linear"}} {{
    %h = linear %x, %w, %b : bf16[B,40] loc("residual_mlp.esp":17:7)
    %g = gelu %h {{approximate = "tanh"}} : bf16[B,40] loc("residual_mlp.esp":17:7)
    %y = add %g, %r : bf16[B,40] loc("residual_mlp.esp":19:7)
  }}
  return %y
}}
"""

CASES["bmm"] = f"""
func @bmm {{
  dim B in [1, 8]
  input %a : f32[B,20,24]
  input %b : f32[B,24,36]
  param %bias : f32[36]
  kernel @k0 {{{SMALL_MM}kind = "matmul"}} {{
    %c = matmul %a, %b : f32[B,20,36]
    %d = add %c, %bias : f32[B,20,36]
    %e = relu %d : f32[B,20,36]
  }}
  return %c, %e
}}
"""

CASES["lora"] = f"""
func @lora {{
  dim B in [1, 4]
  dim S in [1, 64]
  input %x : bf16[B,S,32]
  param %wa : bf16[16,32]
  kernel @k0 {{anchor = "h", {SMALL_MM}kind = "matmul", trans_b = true}} {{
    %wt = transpose %wa {{dim0 = 0, dim1 = 1}} : bf16[32,16]
    %h = matmul %x, %wt : bf16[B,S,16]
    %s = constant {{dtype = bf16, value = 2.0}} : bf16[]
    %y = mul %h, %s : bf16[B,S,16]
  }}
  return %y
}}
"""

ATTN = """
func @causal_attention {{
  dim B in [1, 64]
  dim S in [1, 16384]
  input %q : bf16[B,2,S,32]
  input %k : bf16[B,2,S,32]
  input %v : bf16[B,2,S,32]
  kernel @k0 {{causal = true, {cfg}kind = "attention", lowering = "tile-skip"}} {{
    %kt = transpose %k {{dim0 = -2, dim1 = -1}} : bf16[B,2,32,S]
    %s0 = matmul %q, %kt : bf16[B,2,S,S] loc("causal_attention.esp":16:3)
    %c = constant {{dtype = bf16, value = 0.125}} : bf16[]
    %s = mul %s0, %c : bf16[B,2,S,S] loc("causal_attention.esp":16:3)
    %i = index %s {{axis = -1}} : i64[B,2,S,S] loc("causal_attention.esp":17:3)
    %j = index %s {{axis = -2}} : i64[B,2,S,S] loc("causal_attention.esp":17:3)
    %m = le %i, %j : bool[B,2,S,S] loc("causal_attention.esp":17:3)
    %ninf = constant {{dtype = bf16, value = -inf}} : bf16[]
    %w = where %m, %s, %ninf : bf16[B,2,S,S] loc("causal_attention.esp":18:3)
    %p = softmax %w {{axis = -1}} : bf16[B,2,S,S] loc("causal_attention.esp":18:3)
    %o = matmul %p, %v : bf16[B,2,S,32] loc("causal_attention.esp":19:3)
  }}
  return %o
}}
"""
CASES["attn_causal"] = ATTN.format(cfg=SMALL_ATTN)

CASES["attn_masked"] = f"""
func @mha {{
  dim B in [1, 8]
  dim S in [1, 4096]
  input %x : f16[B,S,2,16]
  input %k : f16[B,S,16]
  input %v : f16[B,S,16]
  input %mask : bool[S,S]
  kernel @views {{kind = "view"}} {{
    %q = permute %x {{dims = [0, 2, 1, 3]}} : f16[B,2,S,16]
    %q0 = slice %q {{axis = 1, end = 1, start = 0}} : f16[B,1,S,16]
    %q1 = reshape %q0 {{shape = [B, S, 16]}} : f16[B,S,16]
  }}
  kernel @attn {{{SMALL_ATTN}kind = "attention"}} {{
    %kt = transpose %k {{dim0 = 1, dim1 = 2}} : f16[B,16,S]
    %s0 = matmul %q1, %kt : f16[B,S,S]
    %c = constant {{dtype = f16, value = 4.0}} : f16[]
    %s = div %s0, %c : f16[B,S,S]
    %ninf = constant {{dtype = f16, value = -inf}} : f16[]
    %w = where %mask, %s, %ninf : f16[B,S,S]
    %p = softmax %w {{axis = -1}} : f16[B,S,S]
    %o = matmul %p, %v : f16[B,S,16]
  }}
  return %o
}}
"""

CASES["unpartitioned"] = """
func @mix {
  dim B in [1, 64]
  input %x : f32[B,2,8]
  param %w : f32[12,16]
  %0 = reshape %x {shape = [B, 16]} : f32[B,16]
  %1 = linear %0, %w : f32[B,12]
  %2 = softmax %1 {axis = -1} : f32[B,12]
  %c = constant {dtype = f32, value = 3.0} : f32[]
  %3 = pow %2, %c : f32[B,12]
  return %3
}
"""


def case(name: str):  # noqa: ANN201 - a parsed Func
    return parse_func(CASES[name], f"{name}.eir")


@pytest.mark.parametrize("name", sorted(CASES))
def test_generates_valid_python(name: str) -> None:
    gen = generate(case(name))
    tree = ast.parse(gen.source)
    defs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {k.name for k in gen.kernels} <= defs
    for k in gen.kernels:
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == k.name)
        params = [a.arg for a in fn.args.args]
        assert params == list(k.signature) + list(k.constexprs), k.name
        assert all(ty in ("i32",) or ty.startswith("*") for ty in k.signature.values())
        assert any(isinstance(s, ast.Name) and s.id == "triton" for s in ast.walk(fn))


def test_every_op_has_a_lowering() -> None:
    assert set(LOWERING) == set(Op)
    kinds = {type(v) for v in LOWERING.values()}
    assert kinds == {Elementwise, Reduction, Composite, Template}


def test_kernel_names_and_plan() -> None:
    gen = generate(case("attn_masked"))
    assert [k.name for k in gen.kernels] == ["mha_attn"]
    views = [s for s in gen.plan.steps if isinstance(s, ViewOp)]
    assert [v.op for v in views] == ["permute", "slice", "reshape"]
    launch = gen.kernels[0].launch
    tensors = [a for a in launch.args if isinstance(a, TensorArg)]
    assert [(t.value, t.layout) for t in tensors] == [
        ("q1", "strided"), ("k", "strided"), ("v", "strided"), ("mask", "strided"),
        ("o", "contiguous")]  # fmt: skip
    assert any(isinstance(a, StrideArg) and a.value == "q1" for a in launch.args)
    assert [a.expr for a in launch.args if isinstance(a, DimArg)] == ["B", "S"]
    assert eval_grid(launch.grid, {"B": 3, "S": 33}, dict(launch.constexprs)) == (3, 3)
    assert [(b.dim, b.value, b.axis) for b in gen.plan.bindings] == [("B", "x", 0), ("S", "x", 1)]


def test_source_line_comments() -> None:
    src = generate(case("linear"), sources={"residual_mlp.esp": "\n" * 18 + "  y = x + y  # res\n"})
    assert "# residual_mlp.esp:17" in src.source
    assert "# residual_mlp.esp:19  y = x + y\n" in src.source


def test_even_tiles_drop_masks() -> None:
    text = CASES["flat"].replace("BLOCK_N=64", "BLOCK_N=4").replace("[N,4]", "[8,4]")
    text = text.replace("  dim N in [1, 100000]\n", "")
    gen = generate(parse_func(text))
    assert "mask" not in gen.source.split("def axpy_k")[1]
    assert gen.kernels[0].requires == ("32 % BLOCK_N == 0",)


def test_branch_is_an_if_with_loads_inside() -> None:
    body = generate(case("branch")).source.split("def gate_k0")[1]
    assert "flag = tl.load(flag_ptr)" in body
    then, other = body.split("    if flag:\n")[1].split("    else:\n")
    assert "b_ptr" in then and "r_ptr" in then and "b_ptr" not in other
    assert body.index("x = tl.load") < body.index("if flag:")  # both sides read x: loaded once


def test_causal_attention_structure() -> None:
    body = generate(case("attn_causal")).source.split("def causal_attention_k0")[1]
    full, diag = body.split("for start_n in range(")[1:]
    assert full.startswith("0, mid, BLOCK_N)") and "tl.where" not in full and "mask=" not in full
    assert diag.startswith("mid, hi, BLOCK_N)") and "cols[None, :] <= offs_m[:, None]" in diag
    assert "hi = tl.minimum((start_m + 1) * BLOCK_M, SK)" in body
    for line in ("m_ij = tl.maximum(m_i, tl.max(s, 1))", "alpha = tl.exp2(m_i - m_ij)",
                 "l_i = l_i * alpha + tl.sum(p, 1)", "acc = acc / l_i[:, None]"):  # fmt: skip
        assert line in body


def test_matmul_reads_transposed_weight_in_place() -> None:
    gen = generate(case("lora"))
    body = gen.source.split("def lora_k0")[1]
    assert "b_ptrs = wa_ptr + rbn[None, :] * K + rk[:, None]" in body
    assert [a.value for a in gen.kernels[0].launch.args if isinstance(a, TensorArg)] == [
        "x",
        "wa",
        "y",
    ]
    assert "M = B*S" in body


def test_looped_reduction_has_three_passes_for_layer_norm() -> None:
    body = generate(case("ln_looped")).source.split("def ln_k0")[1]
    assert body.count("for off in range(0, 100, BLOCK_N):") == 3
    assert "single" not in body and "(looped)" in body


def test_config_parse_round_trip() -> None:
    text = "BLOCK_K=64,BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=3"
    assert str(parse_config(text)) == text
    with pytest.raises(CodegenError):
        parse_config("BLOCK_M=100")


def test_unsupported_region_is_a_codegen_error() -> None:
    text = """
func @bad {
  dim B in [1, 8]
  input %x : f32[B,4]
  kernel @k {kind = "reduction"} {
    %0 = reduce_sum %x {axis = [0], keepdim = true} : f32[1,4]
  }
  return %0
}
"""
    with pytest.raises(CodegenError, match="not trailing"):
        generate(parse_func(text))
