"""Text and JSON round trips of the IR: print -> parse is identity, and so is JSON."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_strategies import funcs, random_func

from esperc.diagnostics import DiagnosticError, Loc
from esperc.ir import Builder, DType, Module, Op, TensorType, parse_func, parse_module, print_func
from esperc.ir.dimexpr import BinOp, Num, Sym, UnaryOp, parse_dimexpr, to_str
from esperc.ir.graph import Func, Region
from esperc.ir.printer import print_module
from esperc.ir.serialize import from_json, to_json
from esperc.ir.types import SymDim

QUICK = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))  # fmt: skip
MANY = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


def _check_text(f: Func) -> None:
    text = print_func(f)
    g = parse_func(text)
    assert g == f
    assert print_func(g) == text


def _check_json(f: Func) -> None:
    (g,) = from_json(to_json(f)).funcs
    assert g == f
    assert print_func(g) == print_func(f)


@QUICK
@given(funcs())
def test_text_round_trip_shrinkable(f: Func) -> None:
    _check_text(f)
    _check_json(f)


@MANY
@given(st.integers(0, 2**63 - 1))
def test_text_and_json_round_trip(seed: int) -> None:
    f = random_func(seed)
    _check_text(f)
    _check_json(f)


def _with_locs(f: Func, rng: random.Random) -> Func:
    def loc() -> Loc:
        return Loc(rng.choice(["a.esp", "dir/b c.esp", 'q"uote.esp']), rng.randint(1, 999),
                   rng.randint(1, 99))  # fmt: skip

    return f.with_(
        args=tuple(a.__class__(a.name, a.type, a.kind, loc()) for a in f.args),
        body=tuple(n.with_(loc=loc()) for n in f.body),
    )


@QUICK
@given(st.integers(0, 2**63 - 1))
def test_round_trip_with_locs(seed: int) -> None:
    f = _with_locs(random_func(seed), random.Random(seed))
    text = print_func(f, locs=True)
    g = parse_func(text)
    assert g == f  # locs are not part of equality...
    assert [n.loc for n in g.body] == [n.loc for n in f.body]  # ...but they are kept
    assert [a.loc for a in g.args] == [a.loc for a in f.args]
    assert print_func(g, locs=True) == text
    # Without locs, the parser records the IR text position instead; the print is unchanged.
    plain = print_func(f)
    h = parse_func(plain, "x.eir")
    assert print_func(h) == plain
    assert all(n.loc is not None and n.loc.file == "x.eir" for n in h.body)


def test_module_round_trip() -> None:
    m = Module(tuple(random_func(s).with_(name=f"f{s}") for s in range(5)))
    text = print_module(m)
    assert parse_module(text) == m
    assert print_module(parse_module(text)) == text
    assert from_json(to_json(m)) == m


def test_golden_print() -> None:
    """The printed form is a contract (docs/dev/HELPERS.md): this exact text."""
    b = Builder("softmax")
    b.add_dim("B", 1, 65536)
    b.add_require(BinOp("==", BinOp("%", Sym("B"), Num(16)), Num(0)))
    B = SymDim.symbol("B")
    x = b.add_arg("x", TensorType(DType.F32, (B, 1024)), "input")
    m = b.emit(Op.REDUCE_MAX, [x], {"axis": [-1], "keepdim": True})
    d = b.emit(Op.SUB, [x, m])
    e = b.emit(Op.EXP, [d])
    r = b.emit(Op.RESHAPE, [e], {"shape": [B * 1024]}, hint="flat")
    c = b.emit(Op.MUL, [r, b.constant(0.5, DType.F32)])
    f = b.finish([c])
    assert (d, e) == ("1", "2")
    f = f.with_(regions=(Region("k0", (d, e), (("kind", "pointwise"), ("reason", "sub+exp"))),))
    assert print_func(f) == (
        "func @softmax {\n"
        "  dim B in [1, 65536]\n"
        "  require B % 16 == 0\n"
        "  input %x : f32[B,1024]\n"
        "  %0 = reduce_max %x {axis = [1], keepdim = true} : f32[B,1]\n"
        '  kernel @k0 {kind = "pointwise", reason = "sub+exp"} {\n'
        "    %1 = sub %x, %0 : f32[B,1024]\n"
        "    %2 = exp %1 : f32[B,1024]\n"
        "  }\n"
        "  %flat = reshape %2 {shape = [1024*B]} : f32[1024*B]\n"
        "  %3 = constant {dtype = f32, value = 0.5} : f32[]\n"
        "  %4 = mul %flat, %3 : f32[1024*B]\n"
        "  return %4\n"
        "}\n"
    )
    _check_text(f)


@pytest.mark.parametrize(
    "value",
    [0.1, -0.0, 1e-5, 1e300, float("inf"), float("-inf"), 3.0, 2.5e-8, -7.0],
)
def test_float_constants_round_trip_exactly(value: float) -> None:
    b = Builder("f")
    f = b.finish([b.constant(value, DType.F32)])
    g = parse_func(print_func(f))
    got = g.body[0].attr("value")
    assert type(got) is float and repr(got) == repr(value)


@pytest.mark.parametrize(
    "text",
    ["B", "B + 1", "2 * B - S", "B % 16 == 0", "B <= 4096 and S > 1", "not B == 2 or S != 3",
     "(B + 1) * S // 2", "B - (S - 1)", "-B + 3 < S", "-(B + S) >= -4", "true", "B >= 1 or false"],
)  # fmt: skip
def test_dimexpr_round_trip(text: str) -> None:
    e = parse_dimexpr(text)
    assert parse_dimexpr(to_str(e)) == e
    assert to_str(parse_dimexpr(to_str(e))) == to_str(e)


def test_dimexpr_printer_parenthesises() -> None:
    e = BinOp("-", Sym("B"), BinOp("-", Sym("S"), Num(1)))
    assert to_str(e) == "B - (S - 1)" and parse_dimexpr(to_str(e)) == e
    e = UnaryOp("not", BinOp("and", Sym("A"), Sym("B")))
    assert parse_dimexpr(to_str(e)) == e


@pytest.mark.parametrize(
    "line, col, code",
    [
        ("  input %x : f33[4]", 14, "E0601"),
        ("  %0 = exq %x : f32[4]", 8, "E0601"),
        ("  %0 = exp %x {axis = 1} : f32[4]", 16, "E0601"),
        ("  %0 = exp %x : f32[4] extra", 24, "E0601"),
        ("  %0 = exp %x : f32[4", 22, "E0601"),
        ("  %0 = exp %x : f32[4] $", 24, "E0601"),
    ],
)
def test_syntax_errors_point_at_line_and_column(line: str, col: int, code: str) -> None:
    text = f"func @f {{\n  input %x : f32[4]\n{line}\n  return %x\n}}\n"
    with pytest.raises(DiagnosticError) as err:
        parse_module(text, "t.eir")
    (d,) = err.value.diagnostics
    assert d.code == code
    assert (d.loc.file, d.loc.line, d.loc.col) == ("t.eir", 3, col)


@pytest.mark.parametrize(
    "text",
    [
        "",  # no function
        "func @f {\n  input %x : f32[4]\n  return %x\n",  # not closed
        "func @f {\n  input %x : f32[4]\n}\n",  # no return
        "func @f {\n  return %x\n  %0 = exp %x : f32[4]\n}\n",  # node after return
        "func @f {\n  kernel @k {} {\n  kernel @j {} {\n}\n",  # nested kernels
    ],
)
def test_structural_syntax_errors(text: str) -> None:
    with pytest.raises(DiagnosticError) as err:
        parse_module(text)
    assert [d.code for d in err.value.diagnostics] == ["E0601"]
