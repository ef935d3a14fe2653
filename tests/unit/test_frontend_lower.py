"""Lowering tests: type promotion and broadcasting against PyTorch, SSA, fn inlining, ifs."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esperc.diagnostics import DiagnosticError
from esperc.frontend import lower, parse_source
from esperc.ir.graph import Func
from esperc.ir.ops import Op
from esperc.ir.types import DType, SymDim

DTYPES = ["f16", "bf16", "f32", "i32", "i64", "bool"]
TORCH = {
    "f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "i32": torch.int32,
    "i64": torch.int64, "bool": torch.bool,
}  # fmt: skip


def compile_src(src: str, blueprint: str | None = None, **overrides: str) -> Func:
    return lower(parse_source(src, "t.esp"), blueprint, overrides)


def result_dtype(src: str) -> DType:
    f = compile_src(src)
    return f.result_types()[0].dtype


def torch_operand(spec: str) -> object:
    """A PyTorch operand for a spec: 'f32[2]' tensor, 'f32[]' 0-dim tensor, or a literal."""
    if "[" in spec:
        dt, rank = spec.split("[")
        shape = (2,) if rank == "2]" else ()
        return torch.ones(shape, dtype=TORCH[dt])
    return {"1": 1, "2.5": 2.5, "true": True}[spec]


def esp_operand(spec: str, name: str) -> tuple[str, str]:
    """(declaration, expression) for the same operand in .esp."""
    if "[" in spec:
        return f"input {name}: {spec}\n", name
    return "", spec


OPERANDS = [f"{d}[2]" for d in DTYPES] + [f"{d}[]" for d in DTYPES] + ["1", "2.5", "true"]


# Two literals fold in Python before any IR exists, so pairs need at least one tensor.
PAIRS = [(a, b) for a, b in itertools.product(OPERANDS, OPERANDS) if "[" in a or "[" in b]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_promotion_matches_torch_result_type(a: str, b: str) -> None:
    da, ea = esp_operand(a, "a")
    db, eb = esp_operand(b, "b")
    want = torch.result_type(torch_operand(a), torch_operand(b))  # type: ignore[arg-type]
    want_name = {v: k for k, v in TORCH.items()}[want]
    # maximum works on every dtype (bool included), so it isolates the promotion rule.
    src = f"blueprint p {{\n{da}{db}  return maximum({ea}, {eb})\n}}"
    assert result_dtype(src) == DType(want_name)
    if want != torch.bool:
        add = f"blueprint p {{\n{da}{db}  return {ea} + {eb}\n}}"
        assert result_dtype(add) == DType(want_name)


# bool / scalar is rejected like other bool arithmetic (a diagnostic, tested elsewhere).
@pytest.mark.parametrize("a", [f"{d}[2]" for d in DTYPES if d != "bool"])
@pytest.mark.parametrize("lit", ["1", "2.5"])
def test_true_division_and_comparison_match_torch(a: str, lit: str) -> None:
    decl, e = esp_operand(a, "a")
    x = torch_operand(a)
    y = torch_operand(lit)
    want_div = {v: k for k, v in TORCH.items()}[(x / y).dtype]  # type: ignore[operator]
    assert result_dtype(f"blueprint p {{\n{decl}  return {e} / {lit}\n}}") == DType(want_div)
    assert result_dtype(f"blueprint p {{\n{decl}  return {e} < {lit}\n}}") == DType.BOOL


def test_every_binary_node_has_equal_operand_dtypes() -> None:
    f = compile_src(
        """blueprint p {
  input h: f16[4]
  input b: bf16[4]
  input i: i32[4]
  input m: bool[4]
  return where(m, h * b + i, 0.5) < i / 2
}"""
    )
    types = f.types()
    for n in f.body:
        if n.op in (Op.ADD, Op.MUL, Op.DIV, Op.LT) or n.op is Op.WHERE:
            dts = {types[o].dtype for o in n.operands[-2:]}
            assert len(dts) == 1, n


SHAPES = [(), (1,), (3,), (2, 1), (1, 3), (2, 3), (4, 1, 3), (4, 2, 1), (2, 2)]


@pytest.mark.parametrize(("a", "b"), list(itertools.product(SHAPES, SHAPES)))
def test_broadcasting_matches_torch(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    src = (
        f"blueprint p {{\n  input a: f32[{', '.join(map(str, a))}]\n"
        f"  input b: f32[{', '.join(map(str, b))}]\n  return a * b\n}}"
    )
    try:
        want = tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        with pytest.raises(DiagnosticError) as e:
            compile_src(src)
        assert e.value.diagnostics[0].code == "E0203"
        return
    assert compile_src(src).result_types()[0].shape == want


def test_symbolic_shapes_and_dims() -> None:
    f = compile_src(
        """blueprint p {
  dim B in [1, 64]
  dim S
  dim D = 2 * 32
  input x: f32[B * S, D]
  return reshape(x, [B, S, D // 2, 2])
}"""
    )
    b, s = SymDim.symbol("B"), SymDim.symbol("S")
    assert f.args[0].type.shape == (b * s, 64)
    assert f.result_types()[0].shape == (b, s, 32, 2)
    assert [(d.name, d.lo, d.hi) for d in f.dims] == [("B", 1, 64), ("S", 1, 2**31 - 1)]


def test_ssa_renaming_and_hints() -> None:
    f = compile_src(
        """blueprint p {
  input x: f32[4]
  y = exp(x)
  y = y + x
  y = y * y
  return y
}"""
    )
    assert [n.result for n in f.body] == ["y", "y.1", "y.2"]
    assert f.body[1].operands == ("y", "x") and f.results == ("y.2",)


def test_fn_inlining() -> None:
    f = compile_src(
        """fn sq(v) { return v * v }
fn poly(v, c) { t = sq(v) + c; return t * 2.0 }
blueprint p {
  input x: f32[4]
  a = poly(x, 1.0)
  return poly(c=a, v=x)
}"""
    )
    ops = [n.op for n in f.body if n.op is not Op.CONSTANT]
    assert ops == [Op.MUL, Op.ADD, Op.MUL, Op.MUL, Op.ADD, Op.MUL]


def test_attr_if_lowers_only_the_taken_arm_and_override() -> None:
    src = """blueprint p {
  attr fast: bool = true
  input x: f32[4]
  if fast { y = tanh(x) } else { y = sigmoid(x) }
  return y
}"""
    assert [n.op for n in compile_src(src).body] == [Op.TANH]
    assert [n.op for n in compile_src(src, fast="false").body] == [Op.SIGMOID]


def test_runtime_if_selects() -> None:
    f = compile_src(
        """blueprint p {
  input c: bool[]
  input x: f32[4]
  y = x
  z = x
  if c { y = exp(x) } else { z = tanh(x) }
  return (y, z)
}"""
    )
    sel = [n for n in f.body if n.op is Op.SELECT]
    assert [(n.result, n.operands) for n in sel] == [
        ("y.1", ("c", "y", "x")),
        ("z.1", ("c", "x", "z")),
    ]
    assert f.results == ("y.1", "z.1")


def test_require_static_and_dynamic() -> None:
    f = compile_src(
        """blueprint p {
  dim B in [1, 64]
  dim D = 32
  require D % 16 == 0
  require B % 8 == 0
  input x: f32[B, D]
  return x * 1.0
}"""
    )
    assert len(f.requires) == 1
    from esperc.ir.dimexpr import evaluate

    assert evaluate(f.requires[0].expr, {"B": 16}) and not evaluate(f.requires[0].expr, {"B": 3})


def test_constant_folding() -> None:
    f = compile_src(
        """blueprint p {
  attr k: i32 = 3
  input x: f32[4]
  return x * (k * 2 + 1 / 4)
}"""
    )
    consts = [n.attr("value") for n in f.body if n.op is Op.CONSTANT]
    assert consts == [6.25]


def test_several_blueprints_pick() -> None:
    src = (
        "blueprint a { input x: f32[1]\n return x * 1.0 }\n"
        "blueprint b { input x: f32[2]\n return x * 2.0 }"
    )
    assert compile_src(src, "b").name == "b"


FUZZ_BASE = """fn g(x) { return 0.5 * x * (1.0 + tanh(x)) }
blueprint m {
  dim B in [1, 64]
  dim D = 8
  attr eps: f32 = 1e-5
  attr on: bool = true
  input x: bf16[B, D]
  input c: bool[]
  param w: bf16[D, D]
  param b: bf16[D]
  h = g(linear(x, w, b))
  if on { h = h + x } else { h = h - x }
  if c { h = softmax(h, axis=-1) }
  y = sum(h * h, axis=-1, keepdim=true) @ reshape(b, [1, D])
  return (layer_norm(y, eps=eps), index(y, axis=0) < 3)
}
"""
_MUT = ["x", "h", "w", "b", "c", "D", "B", "eps", "on", "1", "2.5", "true", "-1", "[1, 2]",
        "(", ")", ",", "+", "@", "**", "<", "and", "not", "g(", "sum(", "axis=", "f32"]  # fmt: skip


def test_fuzz_base_compiles() -> None:
    assert compile_src(FUZZ_BASE).name == "m"


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(FUZZ_BASE) - 1), st.integers(0, 6), st.sampled_from(_MUT))
def test_mutated_program_lowering_never_crashes(pos: int, cut: int, insert: str) -> None:
    src = FUZZ_BASE[:pos] + insert + FUZZ_BASE[pos + cut :]
    try:
        compile_src(src)
    except DiagnosticError as e:
        assert e.diagnostics and all(d.code.startswith("E0") for d in e.diagnostics)
