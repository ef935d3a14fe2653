"""Canonical hash properties over >= 10,000 random graphs (deterministic: derandomized seeds).

1. Invariance: renaming values, permuting independent statements, and printing with comments
   and extra whitespace then parsing leave the hash unchanged.
2. Sensitivity: one change of meaning (op, attribute, dtype, static dim, constant, dim range,
   require, argument kind, results) changes the hash.
3. No collisions: graphs with equal hashes have equal meaning, where meaning is computed
   independently of the printer and the hash: hash-consed expression trees of the results plus
   dims, requires and the signature. Every graph hashed in this module is recorded.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_strategies import random_func

from esperc.ir import canonical_hash, parse_func, print_func, verify
from esperc.ir.dimexpr import BinOp, Num, Sym
from esperc.ir.graph import Arg, DimDecl, Func, Require
from esperc.ir.ops import FLOAT_UNARY, OPS, AttrKind, Op, infer_type
from esperc.ir.topo import topo_order
from esperc.ir.types import DType, TensorType, TypeRuleError
from esperc.ir.verifier import VerifyError

SEEDS = st.integers(0, 2**63 - 1)


def _settings(n: int) -> settings:
    return settings(
        max_examples=n, derandomize=True, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Independent meaning and the collision record

_INTERN: dict[tuple[Any, ...], int] = {}


def _intern(t: tuple[Any, ...]) -> int:
    return _INTERN.setdefault(t, len(_INTERN))


def _val(v: Any) -> Any:
    if isinstance(v, tuple):
        return ("tuple", tuple(_val(x) for x in v))
    if isinstance(v, DType):
        return ("dtype", v.value)
    if isinstance(v, bool | int | float | str):
        return (type(v).__name__, repr(v))  # 1 != True != 1.0, -0.0 != 0.0, nan == nan
    return (type(v).__name__, v)  # SymDim: canonical and hashable


def _ty(t: TensorType) -> tuple[Any, ...]:
    return (t.dtype.value, _val(t.shape))


def meaning(f: Func) -> tuple[Any, ...]:
    """Expression trees of the results (hash-consed to ids), dims, requires and signature."""
    ids: dict[str, int] = {}
    for i, a in enumerate(f.args):
        ids[a.name] = _intern(("arg", i, a.kind, _ty(a.type)))
    for n in f.body:
        attrs = tuple((k, _val(v)) for k, v in n.attrs)
        ids[n.result] = _intern((n.op.value, attrs, _ty(n.type), *(ids[o] for o in n.operands)))
    return (
        tuple(ids[r] for r in f.results),
        tuple((d.name, d.lo, d.hi) for d in f.dims),
        tuple(r.expr for r in f.requires),
        tuple((a.kind, _ty(a.type)) for a in f.args),
    )


SEEN: dict[str, tuple[tuple[Any, ...], Func]] = {}
DISTINCT: set[Func] = set()


def record(f: Func) -> str:
    """Hash ``f``, check it against every graph hashed before, and return the hash."""
    h = canonical_hash(f)
    m = meaning(f)
    if h in SEEN:
        assert SEEN[h][0] == m, f"hash collision:\n{print_func(SEEN[h][1])}\n{print_func(f)}"
    else:
        SEEN[h] = (m, f)
    DISTINCT.add(f)
    return h


# --------------------------------------------------------------------------------------------
# Meaning-preserving transformations


def rename_values(f: Func, rng: random.Random) -> Func:
    """Every value renamed by a random bijection to fresh names."""
    old = [a.name for a in f.args] + [n.result for n in f.body]
    fresh = rng.sample(range(10 * len(old) + 10), len(old))
    m = {o: f"v{k}_{rng.choice('abc')}.{k % 7}" for o, k in zip(old, fresh)}
    return f.with_(
        args=tuple(a.__class__(m[a.name], a.type, a.kind) for a in f.args),
        body=tuple(n.with_(result=m[n.result], operands=tuple(m[o] for o in n.operands))
                   for n in f.body),
        results=tuple(m[r] for r in f.results),
        regions=tuple(r.__class__(r.name, tuple(m[x] for x in r.members), r.attrs)
                      for r in f.regions),
    )  # fmt: skip


def shuffle_body(f: Func, rng: random.Random) -> Func:
    """A random valid topological order of the body (functions without regions)."""
    keys = {n.result: rng.random() for n in f.body}
    return f.with_(
        body=tuple(topo_order(f.body, {a.name for a in f.args}, key=lambda n: keys[n.result]))
    )


def noisy_text(f: Func, rng: random.Random) -> str:
    """The printed form with comments, blank lines and extra spaces (outside string literals)."""
    out = []
    for line in print_func(f).splitlines():
        if rng.random() < 0.2:
            out.append(rng.choice(["", "   ", "# a comment", "  # %1 = add %x, %y : f32[]"]))
        parts = line.split('"')
        parts[::2] = [p.replace(" ", " " * rng.randint(1, 3)) for p in parts[::2]]
        line = '"'.join(parts)
        if rng.random() < 0.3:
            line += "   # trailing comment {"
        out.append(" " * rng.randint(0, 4) + line + " " * rng.randint(0, 2))
    return "\n".join(out) + "\n"


def test_transforms_do_something() -> None:
    f = random_func(3, allow_regions=False)
    while len(f.body) < 5:
        f = random_func(len(f.body) + 100, allow_regions=False)
    rng = random.Random(0)
    assert rename_values(f, rng) != f
    assert noisy_text(f, rng) != print_func(f)
    assert any(shuffle_body(f, random.Random(s)).body != f.body for s in range(20))


@_settings(2000)
@given(SEEDS)
def test_hash_invariance(seed: int) -> None:
    f = random_func(seed)
    rng = random.Random(seed)
    h = record(f)
    renamed = rename_values(f, rng)
    verify(renamed)
    assert record(renamed) == h
    if not f.regions:  # with regions, the statement order is a schedule and is hashed
        shuffled = shuffle_body(f, rng)
        assert record(shuffled) == h
        assert record(rename_values(shuffled, rng)) == h
    assert record(parse_func(noisy_text(f, rng))) == h


# --------------------------------------------------------------------------------------------
# Single changes of meaning

SWAPS: list[frozenset[Op]] = [
    frozenset(FLOAT_UNARY - {Op.GELU}) | {Op.NEG, Op.ABS, Op.RELU, Op.FLOOR},
    frozenset({Op.ADD, Op.SUB, Op.MUL, Op.MAXIMUM, Op.MINIMUM, Op.FLOORDIV, Op.MOD, Op.DIV}),
    frozenset({Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE}),
    frozenset({Op.LOGICAL_AND, Op.LOGICAL_OR}),
    frozenset({Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN, Op.REDUCE_MEAN}),
    frozenset({Op.SOFTMAX, Op.LOG_SOFTMAX}),
]


def retyped(f: Func, **changes: Any) -> Func | None:
    """``f`` with ``changes`` applied and every node type re-inferred; None if invalid."""
    g = f.with_(**changes)
    types = {a.name: a.type for a in g.args}
    body = []
    for n in g.body:
        try:
            t = infer_type(n.op, [types[o] for o in n.operands], n.attr_dict)
        except TypeRuleError:
            return None
        types[n.result] = t
        body.append(n.with_(type=t))
    g = g.with_(body=tuple(body))
    try:
        verify(g)
    except VerifyError:
        return None
    return g


def _set_node(f: Func, i: int, **changes: Any) -> Func | None:
    body = list(f.body)
    body[i] = body[i].with_(**changes)
    return retyped(f, body=tuple(body))


def _new_attr(kind: AttrKind, v: Any, rng: random.Random, rank: int) -> list[Any]:
    if kind is AttrKind.BOOL:
        return [not v]
    if kind is AttrKind.INT:
        return [v + 1, v - 1] if v > 0 else [v + 1]
    if kind is AttrKind.FLOAT:
        return [v * 2 + 1e-3]
    if kind is AttrKind.STR:
        return [{"none": "tanh", "tanh": "none"}.get(v, v + "x")]
    if kind is AttrKind.DTYPE:
        return [d for d in DType if d is not v]
    if kind is AttrKind.INTS:
        flips = [tuple(sorted(set(v) ^ {a})) for a in range(max(rank, 1))]
        return [t for t in flips if t] + [tuple(reversed(v))]
    if kind is AttrKind.SCALAR:
        return [not v] if isinstance(v, bool) else [v + 1, v - 1]
    return []


Thunk = Callable[[], "Func | None"]


def mut_op(f: Func, rng: random.Random) -> list[Thunk]:
    out = []
    for i, n in enumerate(f.body):
        for group in SWAPS:
            if n.op in group:
                op = rng.choice(sorted(group - {n.op}))
                out.append(partial(_set_node, f, i, op=op))
    return out


def mut_attr(f: Func, rng: random.Random) -> list[Thunk]:
    types = f.types()
    out = []
    for i, n in enumerate(f.body):
        rank = types[n.operands[0]].rank if n.operands else 0
        for k, v in n.attrs:
            for new in _new_attr(OPS[n.op].attrs[k], v, rng, rank):
                attrs = tuple((k2, new if k2 == k else v2) for k2, v2 in n.attrs)
                out.append(partial(_set_node, f, i, attrs=attrs))
    return out


def _with_arg(f: Func, i: int, arg: Arg) -> Func | None:
    return retyped(f, args=(*f.args[:i], arg, *f.args[i + 1 :]))


def mut_arg_type(f: Func, rng: random.Random) -> list[Thunk]:
    out = []
    for i, a in enumerate(f.args):
        for d in DType:
            if d is not a.type.dtype:
                out.append(partial(_with_arg, f, i, Arg(a.name, a.type.with_dtype(d), a.kind)))
        for j, dim in enumerate(a.type.shape):
            if isinstance(dim, int):
                shape = (*a.type.shape[:j], dim + 1, *a.type.shape[j + 1 :])
                out.append(partial(_with_arg, f, i, Arg(a.name, a.type.with_shape(shape), a.kind)))
        kind = "param" if a.kind == "input" else "input"
        out.append(partial(_with_arg, f, i, Arg(a.name, a.type, kind)))
    return out


def mut_signature(f: Func, rng: random.Random) -> list[Thunk]:
    out: list[Thunk] = []
    for i, d in enumerate(f.dims):
        wider = (*f.dims[:i], DimDecl(d.name, d.lo, d.hi + 1), *f.dims[i + 1 :])
        out.append(partial(retyped, f, dims=wider))
        if d.lo < d.hi:
            narrower = (*f.dims[:i], DimDecl(d.name, d.lo + 1, d.hi), *f.dims[i + 1 :])
            out.append(partial(retyped, f, dims=narrower))
    extra = BinOp(">=", Sym(f.dims[0].name), Num(2)) if f.dims else Num(True)
    out.append(partial(retyped, f, requires=(*f.requires, Require(extra))))
    if f.requires:
        out.append(partial(retyped, f, requires=f.requires[1:]))
    if len(f.results) > 1:
        out.append(partial(retyped, f, results=tuple(reversed(f.results))))
    others = [n.result for n in f.body if n.result not in f.results]
    if others:
        out.append(partial(retyped, f, results=(rng.choice(others), *f.results[1:])))
    return out


MUTATIONS = [mut_op, mut_attr, mut_arg_type, mut_signature]


def mutants(f: Func, rng: random.Random, k: int) -> list[Func]:
    """Up to ``k`` valid single-change mutants of ``f``, each of a different mutation kind."""
    kinds = list(MUTATIONS)
    rng.shuffle(kinds)
    out = []
    for mut in kinds:
        thunks = mut(f, rng)
        rng.shuffle(thunks)
        for thunk in thunks:
            g = thunk()
            if g is not None and g != f:
                out.append(g)
                break
        if len(out) == k:
            break
    return out


@_settings(2000)
@given(SEEDS)
def test_hash_sensitivity(seed: int) -> None:
    f = random_func(seed)
    rng = random.Random(seed)
    h = record(f)
    for g in mutants(f, rng, 2):
        assert record(g) != h, f"change not seen by the hash:\n{print_func(f)}\n{print_func(g)}"


def test_sensitivity_covers_every_kind() -> None:
    """Each mutation kind yields a valid mutant on some small graph, and changes its hash."""
    for mut in MUTATIONS:
        for seed in range(200):
            f = random_func(seed)
            cands = [g for t in mut(f, random.Random(seed)) if (g := t()) is not None and g != f]
            if cands:
                assert all(canonical_hash(g) != canonical_hash(f) for g in cands)
                break
        else:
            raise AssertionError(f"{mut.__name__} never applied")


# --------------------------------------------------------------------------------------------
# No collisions, and the count


def test_hash_no_collisions_over_10000_graphs() -> None:
    """Runs its own examples (so the count holds when run alone); checks all recorded graphs."""

    @_settings(2000)
    @given(SEEDS)
    def examples(seed: int) -> None:
        f = random_func(seed, max_nodes=12)
        rng = random.Random(seed)
        record(f)
        record(rename_values(f, rng))
        for g in mutants(f, rng, 3):
            record(g)

    before = len(DISTINCT)
    examples()
    assert len(DISTINCT) - before >= 4_000
    # Run alone (pytest -k), this test tops the count up itself; in the full module the
    # invariance and sensitivity tests have already hashed enough.
    seed = 0
    while len(DISTINCT) < 10_000:
        seed += 1
        f = random_func(2**40 + seed, max_nodes=12)
        record(f)
        for g in mutants(f, random.Random(seed), 3):
            record(g)
    assert len(DISTINCT) >= 10_000, f"only {len(DISTINCT)} distinct graphs hashed"
    assert len(SEEN) >= 5_000
