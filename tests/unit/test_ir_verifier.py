"""The verifier rejects each broken invariant (and the parser reports it as E0602)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from ir_strategies import funcs

from esperc.diagnostics import DiagnosticError
from esperc.ir import DType, Op, TensorType, VerifyError, parse_module, print_func, verify
from esperc.ir.dimexpr import BinOp, Num, Sym
from esperc.ir.graph import Arg, DimDecl, Func, Node, Region, Require
from esperc.ir.ops import OPS, infer_type
from esperc.ir.types import SymDim, TypeRuleError

B = SymDim.symbol("B")
F4 = TensorType(DType.F32, (4,))
FB = TensorType(DType.F32, (B,))


def _node(result: str, op: Op, operands: tuple[str, ...], ty: TensorType = F4, **attrs) -> Node:
    return Node(result, op, operands, tuple(sorted(attrs.items())), ty)


def _good() -> Func:
    return Func(
        "f",
        (DimDecl("B", 1, 64),),
        (Require(BinOp(">=", Sym("B"), Num(1))),),
        (Arg("x", F4, "input"), Arg("y", FB, "param")),
        (
            _node("0", Op.EXP, ("x",)),
            _node("1", Op.NEG, ("0",)),
            _node("2", Op.ABS, ("y",), FB),
            _node("3", Op.ADD, ("0", "1")),
        ),
        ("3", "2"),
        (Region("k0", ("0", "1")),),
    )


def test_good_function_verifies() -> None:
    verify(_good())


def _body(f: Func, *nodes: Node) -> Func:
    return f.with_(body=tuple(nodes), regions=())


BROKEN = {
    "use-before-def": lambda f: _body(f, _node("0", Op.NEG, ("1",)), _node("1", Op.EXP, ("x",))),
    "undefined-operand": lambda f: _body(f, _node("0", Op.NEG, ("zz",))).with_(results=("0",)),
    "duplicate-node": lambda f: _body(f, _node("0", Op.NEG, ("x",)), _node("0", Op.EXP, ("x",))),
    "node-shadows-arg": lambda f: _body(f, _node("x", Op.NEG, ("x",))).with_(results=("x",)),
    "duplicate-arg": lambda f: f.with_(args=(f.args[0], Arg("x", FB, "param"))),
    "bad-arg-kind": lambda f: f.with_(args=(Arg("x", F4, "output"), f.args[1])),
    "wrong-dtype": lambda f: f.with_(body=(
        f.body[0].with_(type=TensorType(DType.BF16, (4,))), *f.body[1:])),
    "wrong-shape": lambda f: f.with_(body=(
        f.body[0].with_(type=TensorType(DType.F32, (5,))), *f.body[1:])),
    "wrong-operand-dtypes": lambda f: _body(
        f, _node("0", Op.CAST, ("x",), TensorType(DType.BF16, (4,)), dtype=DType.BF16),
        _node("1", Op.ADD, ("x", "0"))).with_(results=("1",)),
    "wrong-operand-count": lambda f: _body(f, _node("0", Op.NEG, ("x", "x"))).with_(
        results=("0",)),
    "missing-attr": lambda f: _body(
        f, _node("0", Op.SOFTMAX, ("x",))).with_(results=("0",)),
    "unknown-attr": lambda f: _body(
        f, _node("0", Op.EXP, ("x",), axis=0)).with_(results=("0",)),
    "undeclared-dim-in-arg": lambda f: f.with_(dims=(), requires=()),
    "undeclared-dim-in-node": lambda f: _body(f, _node(
        "0", Op.BROADCAST_TO, ("x",), TensorType(DType.F32, (SymDim.symbol("Q"), 4)),
        shape=(SymDim.symbol("Q"), 4))).with_(results=("0",)),
    "undeclared-dim-in-require": lambda f: f.with_(requires=(Require(Sym("S")),)),
    "duplicate-dim": lambda f: f.with_(dims=(f.dims[0], f.dims[0])),
    "empty-dim-range": lambda f: f.with_(dims=(DimDecl("B", 5, 4),)),
    "no-results": lambda f: f.with_(results=()),
    "undefined-result": lambda f: f.with_(results=("9",)),
    "non-contiguous-region": lambda f: f.with_(regions=(Region("k0", ("0", "2")),)),
    "node-in-two-regions": lambda f: f.with_(
        regions=(Region("k0", ("0", "1")), Region("k1", ("1", "2")))),
    "region-unknown-member": lambda f: f.with_(regions=(Region("k0", ("0", "7")),)),
    "empty-region": lambda f: f.with_(regions=(Region("k0", ()),)),
    "duplicate-region-name": lambda f: f.with_(
        regions=(Region("k0", ("0",)), Region("k0", ("1",)))),
}  # fmt: skip


EXPECT = {
    "bad-arg-kind": "unknown kind", "duplicate-arg": "defined twice",
    "duplicate-dim": "declared twice", "duplicate-node": "defined twice",
    "duplicate-region-name": "defined twice", "empty-dim-range": "empty range",
    "empty-region": "is empty", "missing-attr": "attributes", "no-results": "returns nothing",
    "node-in-two-regions": "two kernel regions", "node-shadows-arg": "defined twice",
    "non-contiguous-region": "contiguous", "region-unknown-member": "names unknown",
    "undeclared-dim-in-arg": "undeclared dims ['B']",
    "undeclared-dim-in-node": "undeclared dims ['Q']",
    "undeclared-dim-in-require": "undeclared dims ['S']", "undefined-operand": "before its def",
    "undefined-result": "returns undefined", "unknown-attr": "attributes",
    "use-before-def": "%1 before its definition", "wrong-dtype": "the op rule gives f32[4]",
    "wrong-operand-count": "takes 1 operands", "wrong-operand-dtypes": "different dtypes",
    "wrong-shape": "the op rule gives f32[4]",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_verifier_rejects(name: str) -> None:
    with pytest.raises(VerifyError) as err:
        verify(BROKEN[name](_good()))
    assert EXPECT[name] in str(err.value)


@pytest.mark.parametrize(
    "body, message",
    [
        ("  %0 = neg %1 : f32[4]\n  %1 = exp %x : f32[4]\n  return %0", "before its definition"),
        ("  %0 = neg %x : f32[4]\n  %0 = exp %x : f32[4]\n  return %0", "defined twice"),
        ("  %0 = neg %x : bf16[4]\n  return %0", "the op rule gives f32[4]"),
        ("  %0 = neg %x : f32[Q]\n  return %0", "the op rule gives"),
        ("  %0 = broadcast_to %x {shape = [Q, 4]} : f32[Q,4]\n  return %0", "undeclared dims"),
        ("  %0 = neg %x : f32[4]\n  return %9", "returns undefined"),
        ("  kernel @k {} {\n    %0 = neg %x : f32[4]\n  }\n  %1 = exp %0 : f32[4]\n"
         "  kernel @k {} {\n    %2 = exp %1 : f32[4]\n  }\n  return %2", "defined twice"),
        ("  kernel @k {} {\n  }\n  %0 = neg %x : f32[4]\n  return %0", "is empty"),
    ],
)  # fmt: skip
def test_parser_reports_verifier_errors_as_e0602(body: str, message: str) -> None:
    text = f"func @f {{\n  input %x : f32[4]\n{body}\n}}\n"
    with pytest.raises(DiagnosticError) as err:
        parse_module(text, "v.eir")
    (d,) = err.value.diagnostics
    assert d.code == "E0602"
    assert message in d.message
    assert d.loc is not None and d.loc.file == "v.eir" and d.loc.line == 1


def test_e0602_for_each_bad_function() -> None:
    bad = "func @{n} {{\n  input %x : f32[4]\n  %0 = neg %x : f16[4]\n  return %0\n}}\n"
    with pytest.raises(DiagnosticError) as err:
        parse_module(bad.format(n="a") + "\n" + bad.format(n="b"))
    assert [d.code for d in err.value.diagnostics] == ["E0602", "E0602"]


@settings(max_examples=80, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(funcs(max_nodes=20))
def test_random_graphs_verify_and_break_when_truncated(f: Func) -> None:
    verify(f)
    verify(parse_module(print_func(f)).funcs[0])
    # Dropping the definition of a used value breaks SSA dominance.
    used = {o for n in f.body for o in n.operands} | set(f.results)
    for i, n in enumerate(f.body):
        if n.result in used:
            g = f.with_body(f.body[:i] + f.body[i + 1 :])
            with pytest.raises(VerifyError):
                verify(g)
            break


def test_type_rules_raise_only_type_rule_errors() -> None:
    """Every op on operands of awkward ranks (0 included) either types or raises TypeRuleError,
    never IndexError/KeyError (found: slice/concat/transpose of a rank-0 tensor)."""
    shapes = [(), (1,), (3,), (3, 4), (2, 3, 4)]
    attrs = {"axis": 0, "keepdim": False, "correction": 1, "eps": 1e-5, "approximate": "none",
             "dtype": DType.F32, "shape": (3,), "dim0": 0, "dim1": 1, "dims": (0,), "start": 0,
             "end": 1, "value": 1.0}  # fmt: skip
    for op, d in OPS.items():
        a = {k: attrs[k] for k in d.attrs}
        if "axis" in a and d.attrs["axis"].value == "ints":
            a["axis"] = (0,)
        n = d.min_operands or 0
        for shape in shapes:
            for dt in (DType.F32, DType.I32, DType.BOOL):
                try:
                    infer_type(op, [TensorType(dt, shape)] * max(n, 1 if n else 0), a)
                except TypeRuleError:
                    pass
