"""Parser tests: every construct, precedence, spans, syntax diagnostics, robustness (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esperc.diagnostics import DiagnosticError
from esperc.frontend import ast, dump_ast, parse_source

SAMPLE = """
fn gelu_tanh(x) {
  return 0.5 * x * (1.0 + tanh(0.7978845608 * (x + 0.044715 * x * x * x)))
}
blueprint residual_mlp {
  dim B in [1, 65536]          # runtime dim
  dim D = 1024
  dim H = 4 * D
  attr eps: f32 = 1e-5
  require D % 16 == 0
  input x: bf16[B, D]
  param w1: bf16[H, D]
  param s: f32[]
  h = gelu(linear(x, w1))
  y = x + h; y = y * 2
  if true { z = y } else if false { z = x } else { z = h }
  return layer_norm(y, eps=eps)
}
"""


def expr(src: str) -> ast.Expr:
    f = parse_source(f"blueprint b {{ y = {src} }}", "t.esp")
    stmt = f.blueprints[0].body[0]
    assert isinstance(stmt, ast.Assign)
    return stmt.value


def codes(src: str | bytes) -> list[tuple[str, int, int]]:
    with pytest.raises(DiagnosticError) as e:
        parse_source(src, "t.esp")
    return [
        (d.code, d.loc.line, d.loc.col) if d.loc else (d.code, 0, 0) for d in e.value.diagnostics
    ]


def test_every_construct() -> None:
    f = parse_source(SAMPLE, "s.esp")
    assert [type(i) for i in f.items] == [ast.FnDef, ast.Blueprint]
    fn, bp = f.items
    assert fn.name == "gelu_tanh" and [p.name for p in fn.params] == ["x"]
    kinds = [type(d).__name__ for d in bp.body]
    assert kinds == [
        "DimDecl", "DimDecl", "DimDecl", "AttrDecl", "Require", "TensorDecl", "TensorDecl",
        "TensorDecl", "Assign", "Assign", "Assign", "If", "Return",
    ]  # fmt: skip
    b, d, h = bp.body[:3]
    assert b.lo == ast.IntLit(1) and b.hi == ast.IntLit(65536) and b.value is None
    assert d.value == ast.IntLit(1024) and d.lo is None
    assert h.value == ast.BinOp("*", ast.IntLit(4), ast.Name("D"))
    attr = bp.body[3]
    assert (attr.name, attr.type_name, attr.value) == ("eps", "f32", ast.FloatLit(1e-5))
    x = bp.body[5]
    assert (x.kind, x.name, x.dtype, x.dims) == (
        "input",
        "x",
        "bf16",
        (ast.Name("B"), ast.Name("D")),
    )
    assert bp.body[7].dims == ()  # rank-0 param
    iff = bp.body[11]
    assert iff.cond == ast.BoolLit(True) and isinstance(iff.orelse[0], ast.If)
    ret = bp.body[12].value
    assert ret == ast.Call("layer_norm", (ast.Name("y"),), (ast.Keyword("eps", ast.Name("eps")),))


def test_spans() -> None:
    f = parse_source(SAMPLE, "s.esp")
    bp = f.blueprints[0]
    x = bp.body[5]
    assert (x.span.line, x.span.col, x.name_span.col, x.dtype_span.col) == (11, 3, 9, 12)
    call = bp.body[8].value
    assert (call.span.line, call.span.col, call.span.end_col) == (14, 7, 26)
    assert call.name_span.end_col == 11


@pytest.mark.parametrize(
    ("src", "tree"),
    [
        ("a + b * c", ("+", "a", ("*", "b", "c"))),
        ("a - b - c", ("-", ("-", "a", "b"), "c")),
        ("a ** b ** c", ("**", "a", ("**", "b", "c"))),
        ("-a ** 2", ("neg", ("**", "a", 2))),
        ("a ** -b", ("**", "a", ("neg", "b"))),
        ("a @ b + c", ("+", ("@", "a", "b"), "c")),
        ("a // b % c", ("%", ("//", "a", "b"), "c")),
        ("a < b + c", ("<", "a", ("+", "b", "c"))),
        ("not a < b", ("not", ("<", "a", "b"))),
        ("a or b and not c", ("or", "a", ("and", "b", ("not", "c")))),
        ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
        ("-a * b", ("*", ("neg", "a"), "b")),
    ],
)
def test_precedence(src: str, tree: object) -> None:
    def norm(e: ast.Expr) -> object:
        if isinstance(e, ast.Name):
            return e.id
        if isinstance(e, ast.IntLit):
            return e.value
        if isinstance(e, ast.UnaryOp):
            return ("neg" if e.op == "-" else "not", norm(e.operand))
        assert isinstance(e, ast.BinOp)
        return (e.op, norm(e.lhs), norm(e.rhs))

    assert norm(expr(src)) == tree


def test_literals() -> None:
    assert expr("1e-5") == ast.FloatLit(1e-5)
    assert expr(".5") == ast.FloatLit(0.5)
    assert expr("inf") == ast.FloatLit(math.inf)
    assert expr("-inf") == ast.UnaryOp("-", ast.FloatLit(math.inf))
    assert expr("true") == ast.BoolLit(True)
    assert expr("[1, 2,]") == ast.ListExpr((ast.IntLit(1), ast.IntLit(2)))
    assert expr("(1, x)") == ast.TupleExpr((ast.IntLit(1), ast.Name("x")))
    assert expr('f(x, approximate="tanh")').kwargs[0].value == ast.StrLit("tanh")


def test_equality_ignores_spans() -> None:
    a = parse_source("blueprint b { y = x + 1 }", "a.esp")
    b = parse_source("blueprint b {\n  y = x\n    + 1\n}\n", "b.esp")
    assert a.items == b.items


def test_dump_ast_stable() -> None:
    text = dump_ast(parse_source(SAMPLE, "s.esp"))
    lines = text.splitlines()
    assert lines[0] == "File path='s.esp'"
    assert lines[1] == "  items[0]: FnDef name='gelu_tanh' @2:1"
    assert "      lo: IntLit value=1 @6:13" in lines
    assert "      value: FloatLit value=1e-05 @9:19" in lines
    assert text == dump_ast(parse_source(SAMPLE, "other.esp")).replace("other.esp", "s.esp")


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("blueprint b { y = x + * 2 }", ("E0001", 1, 23)),
        ("blueprint b { y = a < b < c }", ("E0001", 1, 25)),
        ("blueprint b { y = f(a=1, 2) }", ("E0001", 1, 26)),
        ("blueprint b {\n  y = x $ 2 }", ("E0002", 2, 9)),
        ("blueprint b { y = exp(x", ("E0003", 1, 24)),
        (b"blueprint b {\n  y = \xff }", ("E0004", 2, 7)),
        ("blueprint b { y = " + "exp(" * 300 + "x" + ")" * 300 + " }", ("E0005", 1, 0)),
        ("blueprint b { y = " + " + ".join(["x"] * 400) + " }", ("E0005", 1, 0)),
        ("blueprint b { y = " + "9" * 50 + " }", ("E0215", 1, 19)),
    ],
)
def test_syntax_diagnostics(src: str | bytes, want: tuple[str, int, int]) -> None:
    (got,) = codes(src)
    assert got[:2] == want[:2]
    if want[2]:
        assert got[2] == want[2]


def test_size_limit() -> None:
    assert codes(b"#" * (8 * 1024 * 1024 + 1))[0][0] == "E0005"


def test_bom_and_crlf() -> None:
    f = parse_source("\ufeffblueprint b {\r\n  y = x\r\n}\r\n".encode(), "t.esp")
    assert f.blueprints[0].body[0].span.line == 2


# Fragments that make mutated programs likely to reach deep into the grammar.
_TOKENS = [
    "blueprint", "fn", "dim", "attr", "input", "param", "require", "if", "else", "return",
    "{", "}", "(", ")", "[", "]", ",", "=", ":", ";", "+", "-", "*", "/", "//", "%", "**", "@",
    "<", "<=", "==", "and", "or", "not", "x", "y", "f32", "1", "2.5", "1e-5", "inf", "true",
    '"s"', "\n", " ", "#c\n", "$", "\x00", "é",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS), max_size=60))
def test_token_soup_never_crashes(toks: list[str]) -> None:
    try:
        parse_source(" ".join(toks), "t.esp")
    except DiagnosticError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        parse_source(data, "t.esp")
    except DiagnosticError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SAMPLE) - 1), st.integers(0, 20), st.sampled_from(_TOKENS))
def test_mutated_sample_never_crashes(pos: int, cut: int, insert: str) -> None:
    src = SAMPLE[:pos] + insert + SAMPLE[pos + cut :]
    try:
        parse_source(src, "t.esp")
    except DiagnosticError:
        pass
