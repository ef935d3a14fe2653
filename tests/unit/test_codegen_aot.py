"""Every generated kernel compiles to an sm_90 cubin (Triton's real GPU pipeline, no GPU needed).

Both the small interpreter-test configs of test_codegen_ir.py and the default heuristic's
full-size configs (128x128x64 matmul tiles, 128x64 attention tiles, whole-row reductions) on
blueprint-sized shapes, so a kernel that only runs in the interpreter cannot pass.
"""

from __future__ import annotations

import os

import pytest
from test_codegen_ir import CASES, case

from esperc.backend.triton.aot import KernelSpec, compile_many
from esperc.backend.triton.emitter import generate
from esperc.ir.parser import parse_func

FULL_SIZE = """
func @block {
  dim B in [1, 65536]
  dim S in [1, 16384]
  input %x : bf16[B,1024]
  param %w1 : bf16[4096,1024]
  param %b1 : bf16[4096]
  param %g : bf16[1024]
  input %q : bf16[B,8,S,64]
  input %k : bf16[B,8,S,64]
  input %v : bf16[B,8,S,64]
  kernel @mm {kind = "matmul"} {
    %h = linear %x, %w1, %b1 : bf16[B,4096]
    %a = gelu %h {approximate = "none"} : bf16[B,4096]
  }
  kernel @ln {kind = "reduction"} {
    %y = rms_norm %x, %g {eps = 1e-06} : bf16[B,1024]
  }
  kernel @sm {kind = "reduction"} {
    %p = softmax %a {axis = -1} : bf16[B,4096]
  }
  kernel @attn {kind = "attention"} {
    %kt = transpose %k {dim0 = 2, dim1 = 3} : bf16[B,8,64,S]
    %s0 = matmul %q, %kt : bf16[B,8,S,S]
    %c = constant {dtype = bf16, value = 0.125} : bf16[]
    %s = mul %s0, %c : bf16[B,8,S,S]
    %i = index %s {axis = -1} : i64[B,8,S,S]
    %j = index %s {axis = -2} : i64[B,8,S,S]
    %m = le %i, %j : bool[B,8,S,S]
    %ninf = constant {dtype = bf16, value = -inf} : bf16[]
    %t = where %m, %s, %ninf : bf16[B,8,S,S]
    %pr = softmax %t {axis = -1} : bf16[B,8,S,S]
    %o = matmul %pr, %v : bf16[B,8,S,64]
  }
  kernel @pw {kind = "pointwise"} {
    %r = add %x, %y : bf16[B,1024]
  }
  return %p, %o, %r
}
"""


def _specs(gen) -> list[KernelSpec]:  # noqa: ANN001
    return [
        KernelSpec(
            source=gen.source,
            kernel_name=k.name,
            signature=k.signature,
            constexprs=k.constexprs,
            target="sm_90",
            num_warps=k.config.num_warps,
            num_stages=k.config.num_stages,
            divisible_by_16=k.divisible_by_16,
        )
        for k in gen.kernels
    ]


@pytest.fixture(scope="module")
def compiled() -> dict[str, object]:
    """Every kernel of every case, compiled in fresh processes: after the Triton interpreter ran
    in a process (other test modules), Triton's compiler there still uses the interpreter's
    builder, and TRITON_INTERPRET must be unset for @triton.jit to compile at all."""
    gens = {name: generate(case(name)) for name in CASES}
    gens["full"] = generate(parse_func(FULL_SIZE))
    specs = [spec for gen in gens.values() for spec in _specs(gen)]
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        results = compile_many(specs, max_workers=2)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return {"gens": gens, **{s.kernel_name: r for s, r in zip(specs, results)}}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_kernels_compile_for_sm90(name: str, compiled: dict) -> None:
    gen = compiled["gens"][name]
    for k in gen.kernels:
        ck = compiled[k.name]
        assert ck.cubin[:4] == b"\x7fELF", k
        assert [a.name for a in ck.user_args] == list(k.signature)


def test_full_size_default_configs_compile_for_sm90(compiled: dict) -> None:
    gen = compiled["gens"]["full"]
    mm = gen.kernel("block_mm")
    assert (mm.constexprs["BLOCK_M"], mm.constexprs["BLOCK_N"], mm.constexprs["BLOCK_K"]) == (
        128, 128, 64)  # fmt: skip
    assert mm.config.num_warps == 8 and mm.config.num_stages == 3
    assert gen.kernel("block_ln").constexprs["BLOCK_N"] == 1024
    for name in ("block_mm", "block_attn"):  # tensor cores: sm_90 wgmma
        assert "wgmma.mma_async" in compiled[name].ptx, name
    for name in ("block_ln", "block_sm", "block_pw", "block_attn"):  # 16-byte vector loads
        assert "ld.global.v4" in compiled[name].ptx, name
    assert all(compiled[k.name].frame_bytes in (0, None) for k in gen.kernels)  # no spills
