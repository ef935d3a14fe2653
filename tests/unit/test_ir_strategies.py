"""The random-function strategy itself: valid, varied, and true to its options."""

from __future__ import annotations

from collections import Counter

from ir_strategies import concrete_inputs, random_func

from esperc.ir import Op, verify
from esperc.ir.interpreter import check_guards

SEEDS = range(300)


def test_random_funcs_cover_the_op_table() -> None:
    ops = Counter(n.op for s in SEEDS for n in random_func(s).body)
    assert set(ops) == set(Op), f"never generated: {sorted(set(Op) - set(ops))}"


def test_random_funcs_are_varied() -> None:
    fs = [random_func(s) for s in SEEDS]
    for f in fs:
        verify(f)
        assert 1 <= len(f.body) <= 30
    assert sum(bool(f.regions) for f in fs) > 30
    assert sum(len(f.results) > 1 for f in fs) > 30
    assert sum(bool(f.dims) for f in fs) > 100
    assert sum(bool(f.requires) for f in fs) > 20
    assert sum(any(a.kind == "param" for a in f.args) for f in fs) > 100
    assert max(len(f.body) for f in fs) == 30
    assert len({f.body for f in fs}) == len(fs)


def test_options_are_respected() -> None:
    for s in SEEDS:
        f = random_func(s, max_nodes=5, allow_regions=False, float_only=True)
        assert len(f.body) <= 5 and not f.regions
        assert all(a.type.dtype.is_float for a in f.args)
        assert all(t.dtype.is_float for t in f.result_types())


def test_concrete_inputs_pass_the_guards() -> None:
    for s in range(100):
        f = random_func(s)
        inputs = concrete_inputs(f, seed=s)
        dims = check_guards(f, inputs)
        assert all(v <= 8 for v in dims.values())
