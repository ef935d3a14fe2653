"""Random valid IR functions for property tests (hypothesis), reusable by every IR/middle test.

``funcs(max_nodes=30, allow_regions=True, float_only=False)`` is a hypothesis strategy of
verified ``Func``s built with ``esperc.ir.builder.Builder``: 0-2 dynamic dims (sometimes with a
``require``), inputs and params of random dtypes and shapes (rank 0-3), and a random DAG of ops
drawn from the whole op table: elementwise ops (with casts so operand dtypes agree, and rank-0
constants), reductions, softmax, norms, matmul/linear with compatible shapes, reshape, transpose,
permute, broadcast_to, concat, slice, index, where, clamp and select on a rank-0 bool input.
Sometimes several results, sometimes contiguous kernel regions. ``float_only=True``: every
argument and every result is floating point (intermediates may be int or bool).

``random_func(seed, ...)`` builds the same kind of function from a plain seed (fast, no
shrinking). ``concrete_inputs(func, seed)`` gives small random tensors for a function (dynamic
dims bound to small values that satisfy the requires), ready for ``run_func``.

Integer ``floordiv``/``mod`` divisors are wrapped in ``maximum(d, 1)`` and dynamic-dim slices
end within the dim's lower bound, so every generated function evaluates without error on
``concrete_inputs``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

from esperc.ir.builder import Builder
from esperc.ir.dimexpr import BinOp, Num, Sym
from esperc.ir.graph import Func, Region
from esperc.ir.ops import FLOAT_UNARY, Op
from esperc.ir.types import Dim, DType, SymDim, TensorType, TypeRuleError, eval_dim
from esperc.ir.verifier import verify

T = TypeVar("T")
FLOATS = (DType.F32, DType.F32, DType.BF16, DType.F16)
ALL_DTYPES = (*FLOATS, DType.I32, DType.I64, DType.BOOL)
STATIC = (1, 2, 3, 4, 5, 8)
CONST_FLOATS = (0.0, 0.5, 1.0, -1.0, 2.0, 3.0, 1e-5, -0.25, 10.0)
REGION_KINDS = ("pointwise", "reduction", "matmul", "view")


@functools.lru_cache(maxsize=4096)
def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


class Chooser:
    """Random choices, backed by hypothesis ``draw`` (shrinkable) or by ``random.Random``."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any] | None, rng=None) -> None:
        self._draw, self._rng = draw, rng

    def int(self, lo: int, hi: int) -> int:
        """An int in ``[lo, hi]``."""
        if self._draw is not None:
            return self._draw(_ints(lo, hi))
        return self._rng.randint(lo, hi)

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        """True with probability about ``p`` (in steps of 1/8)."""
        return self.int(0, 7) < round(p * 8)

    def shuffle(self, seq: Sequence[T]) -> list[T]:
        items = list(seq)
        for i in range(len(items) - 1, 0, -1):
            j = self.int(0, i)
            items[i], items[j] = items[j], items[i]
        return items


class _Gen:
    """Builds one random function: holds the builder, the value pool and the dims."""

    def __init__(self, c: Chooser, float_only: bool) -> None:
        self.c, self.float_only = c, float_only
        self.b = Builder("g")
        self.values: list[str] = []
        self.dims: list[Dim] = list(STATIC)
        self.lo_env: dict[str, int] = {}
        self.n_args = 0
        self.cond: str | None = None

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        c = self.c
        for name in ("B", "S")[: c.int(0, 2)]:
            lo, hi = c.pick((1, 1, 2)), c.pick((16, 64, 65536))
            self.b.add_dim(name, lo, hi)
            self.lo_env[name] = lo
            self.dims += [SymDim.symbol(name)] * 2
        names = list(self.lo_env)
        if names and c.chance(0.25):
            n = c.pick(names)
            req = c.pick(
                (
                    BinOp("==", BinOp("%", Sym(n), Num(2)), Num(0)),
                    BinOp("<=", Sym(n), Num(4096)),
                    BinOp("or", BinOp(">=", Sym(n), Num(1)), BinOp("<", Sym(n), Num(0))),
                )
            )
            self.b.add_require(req)
            if req.op == "==":  # B % 2 == 0 excludes an odd lower bound
                self.lo_env[n] = max(2, self.lo_env[n] + self.lo_env[n] % 2)
        for _ in range(c.int(1, 3)):
            dt = c.pick(FLOATS if self.float_only else ALL_DTYPES)
            self.new_arg(self.rand_type(dt), c.pick(("input", "input", "param")))
        for name in self.lo_env:  # every dim is bound by some argument's shape
            if not any(name in a.type.symbols for a in self.b._args):
                self.new_arg(TensorType(c.pick(FLOATS), (SymDim.symbol(name),)), "input")
        if not self.float_only and c.chance(0.25):
            self.cond = self.new_arg(TensorType(DType.BOOL, ()), "input")

    def rand_shape(self, lo: int = 0, hi: int = 3) -> tuple[Dim, ...]:
        return tuple(self.c.pick(self.dims) for _ in range(self.c.int(lo, hi)))

    def rand_type(self, dt: DType, lo: int = 0) -> TensorType:
        return TensorType(dt, self.rand_shape(lo))

    def new_arg(self, t: TensorType, kind: str) -> str:
        self.n_args += 1
        name = self.b.add_arg(("x", "w", "p", "c")[self.n_args % 4] + str(self.n_args), t, kind)
        self.values.append(name)
        return name

    def ty(self, v: str) -> TensorType:
        return self.b.type_of(v)

    def emit(self, op: Op, operands: Sequence[str], attrs: dict[str, Any] | None = None) -> str:
        v = self.b.emit(op, operands, attrs)
        self.values.append(v)
        return v

    def pick_value(self, pred: Callable[[TensorType], bool] = lambda t: True) -> str | None:
        cands = [v for v in self.values if pred(self.ty(v))]
        if not cands:
            return None
        # Prefer recent values so graphs grow deep as well as wide.
        if self.c.chance(0.5):
            return cands[-1 - self.c.int(0, min(3, len(cands) - 1))]
        return self.c.pick(cands)

    def to_dtype(self, v: str, dt: DType) -> str:
        if self.ty(v).dtype is dt:
            return v
        return self.emit(Op.CAST, [v], {"dtype": dt})

    def constant(self, dt: DType) -> str:
        c = self.c
        value: Any = (
            c.pick(CONST_FLOATS) if dt.is_float
            else c.int(-3, 5) if dt.is_int
            else c.chance(0.5)
        )  # fmt: skip
        return self.emit(Op.CONSTANT, [], {"dtype": dt, "value": value})

    def min_value(self, d: Dim) -> int:
        return eval_dim(d, self.lo_env)

    # -- one step: a family of ops ---------------------------------------------------------

    def step(self) -> None:
        fam = self.c.pick(FAMILIES)
        try:
            fam(self)
        except _Skip:
            pass


class _Skip(Exception):
    """The drawn op family does not apply to the current values."""


def _need(v: str | None) -> str:
    if v is None:
        raise _Skip
    return v


def _unary(g: _Gen) -> None:
    x = _need(g.pick_value())
    dt = g.ty(x).dtype
    if g.c.chance(0.2) or (dt is DType.BOOL and g.c.chance(0.5)):
        target = g.c.pick(FLOATS if g.float_only and g.c.chance(0.7) else ALL_DTYPES)
        if target is not dt:
            g.emit(Op.CAST, [x], {"dtype": target})
        return
    if dt.is_float:
        op = g.c.pick(sorted(FLOAT_UNARY | {Op.NEG, Op.ABS, Op.RELU, Op.FLOOR}))
    elif dt.is_int:
        op = g.c.pick((Op.NEG, Op.ABS, Op.RELU, Op.FLOOR))
    else:
        op = Op.LOGICAL_NOT
    attrs = {"approximate": g.c.pick(("none", "tanh"))} if op is Op.GELU else {}
    g.emit(op, [x], attrs)


def _broadcastable(a: TensorType, b: TensorType) -> bool:
    n = max(a.rank, b.rank)
    pa = (1,) * (n - a.rank) + a.shape
    pb = (1,) * (n - b.rank) + b.shape
    return all(x == y or x == 1 or y == 1 for x, y in zip(pa, pb))


def _partner(g: _Gen, x: str) -> str:
    """A value whose shape broadcasts with ``x``, cast to ``x``'s dtype (or a constant)."""
    dt = g.ty(x).dtype
    y = None if g.c.chance(0.3) else g.pick_value(lambda t: _broadcastable(t, g.ty(x)))
    if y is None:
        return g.constant(dt)
    return g.to_dtype(y, dt)


def _binary(g: _Gen) -> None:
    x = _need(g.pick_value())
    y = _partner(g, x)
    dt = g.ty(x).dtype
    if dt.is_float:
        ops = [Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM, Op.MINIMUM, Op.FLOORDIV, Op.MOD]
    elif dt.is_int:
        ops = [Op.ADD, Op.SUB, Op.MUL, Op.MAXIMUM, Op.MINIMUM, Op.FLOORDIV, Op.MOD]
    else:
        ops = [Op.LOGICAL_AND, Op.LOGICAL_OR, Op.MAXIMUM, Op.MINIMUM]
    if g.c.chance(0.25):
        ops = [Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE]
    op = g.c.pick(ops)
    if op in (Op.FLOORDIV, Op.MOD) and dt.is_int:  # keep the divisor >= 1
        one = g.emit(Op.CONSTANT, [], {"dtype": dt, "value": 1})
        y = g.emit(Op.MAXIMUM, [y, one])
    if op is Op.POW:  # keep pow defined: a positive base
        x = g.emit(Op.ADD, [g.emit(Op.ABS, [x]), g.constant(dt)])
    g.emit(op, [x, y])


def _ternary(g: _Gen) -> None:
    x = _need(g.pick_value(lambda t: t.dtype is not DType.BOOL))
    kind = g.c.int(0, 2)
    if kind == 0:
        cond = g.pick_value(lambda t: t.dtype is DType.BOOL and _broadcastable(t, g.ty(x)))
        if cond is None or g.c.chance(0.4):
            cond = g.emit(g.c.pick((Op.LT, Op.GT)), [x, _partner(g, x)])
        g.emit(Op.WHERE, [cond, x, _partner(g, x)])
    elif kind == 1:
        dt = g.ty(x).dtype
        g.emit(Op.CLAMP, [x, g.constant(dt), _partner(g, x)])
    else:
        if g.cond is None:
            raise _Skip
        other = g.emit(g.c.pick((Op.NEG, Op.ABS)), [x])
        g.emit(Op.SELECT, [g.cond, x, other] if g.c.chance(0.5) else [g.cond, other, x])


def _axes(g: _Gen, rank: int) -> list[int]:
    if rank == 0:
        return [0]
    axes = [a for a in range(rank) if g.c.chance(0.5)] or [g.c.int(0, rank - 1)]
    return [a - rank if g.c.chance(0.25) else a for a in axes]


def _reduce(g: _Gen) -> None:
    x = _need(g.pick_value())
    t = g.ty(x)
    ops = [Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN]
    if t.dtype.is_float:
        ops += [Op.REDUCE_MEAN, Op.VAR]
    op = g.c.pick(ops)
    if t.rank == 0 and g.c.chance(0.5):
        raise _Skip
    attrs: dict[str, Any] = {"axis": _axes(g, t.rank), "keepdim": g.c.chance(0.5)}
    if op is Op.VAR:
        attrs["correction"] = g.c.int(0, 1)
    g.emit(op, [x], attrs)


def _rowwise(g: _Gen) -> None:
    x = _need(g.pick_value(lambda t: t.dtype.is_float and t.rank >= 1))
    t = g.ty(x)
    kind = g.c.int(0, 3)
    if kind <= 1:
        axis = g.c.int(-t.rank, t.rank - 1)
        g.emit(Op.SOFTMAX if kind == 0 else Op.LOG_SOFTMAX, [x], {"axis": axis})
        return
    op = Op.LAYER_NORM if kind == 2 else Op.RMS_NORM
    n_extra = g.c.int(0, 2 if op is Op.LAYER_NORM else 1)
    wt = TensorType(t.dtype, (t.shape[-1],))
    extra = [g.pick_value(lambda u: u == wt) or g.new_arg(wt, "param") for _ in range(n_extra)]
    g.emit(op, [x, *extra], {"eps": g.c.pick((1e-5, 1e-6, 0.1))})


def _contraction(g: _Gen) -> None:
    x = _need(g.pick_value(lambda t: t.dtype is not DType.BOOL and t.rank >= 1))
    t = g.ty(x)
    k = t.shape[-1]
    if g.c.chance(0.5) and t.dtype.is_float:  # linear
        wt = TensorType(t.dtype, (g.c.pick(STATIC), k))
        w = g.pick_value(lambda u: u == wt) or g.new_arg(wt, "param")
        ops = [x, w]
        if g.c.chance(0.5):
            bt = TensorType(t.dtype, (wt.shape[0],))
            ops.append(g.pick_value(lambda u: u == bt) or g.new_arg(bt, "param"))
        g.emit(Op.LINEAR, ops)
        return
    if t.rank < 2:
        raise _Skip
    batch = t.shape[:-2]
    y = g.pick_value(
        lambda u: (
            u.rank >= 2
            and u.shape[-2] == k
            and _broadcastable(TensorType(u.dtype, u.shape[:-2]), TensorType(u.dtype, batch))
        )
    )
    if y is None:
        lead = batch[len(batch) - g.c.int(0, len(batch)) :]
        dt = DType.F32 if g.float_only and not t.dtype.is_float else t.dtype
        y = g.new_arg(TensorType(dt, (*lead, k, g.c.pick(g.dims))), "param")
    g.emit(Op.MATMUL, [x, g.to_dtype(y, t.dtype)])


def _reshape(g: _Gen) -> None:
    x = _need(g.pick_value())
    shape = list(g.ty(x).shape)
    for _ in range(g.c.int(1, 2)):
        choice = g.c.int(0, 2)
        if choice == 0 and len(shape) >= 2:  # merge two neighbours
            i = g.c.int(0, len(shape) - 2)
            shape[i : i + 2] = [shape[i] * shape[i + 1]]
        elif choice == 1 and len(shape) < 4:  # insert a 1
            shape.insert(g.c.int(0, len(shape)), 1)
        elif 1 in shape:  # drop a 1
            shape.remove(1)
        elif shape and isinstance(shape[0], int) and shape[0] % 2 == 0:  # split an even dim
            shape[0:1] = [2, shape[0] // 2]
    g.emit(Op.RESHAPE, [x], {"shape": shape})


def _layout(g: _Gen) -> None:
    x = _need(g.pick_value())
    t = g.ty(x)
    kind = g.c.int(0, 2)
    if kind == 0 and t.rank >= 2:
        g.emit(Op.TRANSPOSE, [x], {"dim0": g.c.int(0, t.rank - 1), "dim1": g.c.int(-1, t.rank - 1)})
    elif kind == 1:
        g.emit(Op.PERMUTE, [x], {"dims": g.c.shuffle(range(t.rank))})
    else:
        shape = [d if d != 1 or g.c.chance(0.5) else g.c.pick(g.dims) for d in t.shape]
        shape = list(g.rand_shape(0, 4 - len(shape) if len(shape) < 4 else 0)) + shape
        g.emit(Op.BROADCAST_TO, [x], {"shape": shape})


def _concat_slice(g: _Gen) -> None:
    x = _need(g.pick_value(lambda t: t.rank >= 1))
    t = g.ty(x)
    axis = g.c.int(0, t.rank - 1)
    kind = g.c.int(0, 2)
    if kind == 0:

        def fits(u: TensorType) -> bool:
            return u.rank == t.rank and all(
                u.shape[i] == t.shape[i] for i in range(t.rank) if i != axis
            )

        others = [g.to_dtype(_need(g.pick_value(fits)), t.dtype) for _ in range(g.c.int(0, 2))]
        g.emit(Op.CONCAT, [x, *others], {"axis": axis - t.rank if g.c.chance(0.3) else axis})
    elif kind == 1:
        size = t.shape[axis]
        if isinstance(size, int):
            start = g.c.int(-size, size - 1)
            s = start + size if start < 0 else start
            end = g.c.int(s + 1, size + 1)
            if g.c.chance(0.3) and end < size:
                end -= size
        else:
            lo = g.min_value(size)
            if lo < 1:
                raise _Skip
            start = g.c.int(0, lo - 1)
            end = g.c.int(start + 1, lo)
        g.emit(Op.SLICE, [x], {"axis": axis, "start": start, "end": end})
    else:
        v = g.emit(Op.INDEX, [x], {"axis": axis})
        if g.float_only or g.c.chance(0.5):
            g.emit(Op.CAST, [v], {"dtype": g.c.pick(FLOATS)})


FAMILIES: tuple[Callable[[_Gen], None], ...] = (
    _unary, _unary, _binary, _binary, _binary, _ternary, _reduce, _rowwise, _contraction,
    _reshape, _layout, _concat_slice,
)  # fmt: skip


def _regions(c: Chooser, func: Func) -> Func:
    """Cover some contiguous runs of the body with kernel regions."""
    regions, i, n = [], 0, len(func.body)
    while i < n:
        length = c.int(1, min(4, n - i))
        if c.chance(0.6):
            members = tuple(node.result for node in func.body[i : i + length])
            attrs: tuple[tuple[str, Any], ...] = (("kind", c.pick(REGION_KINDS)),)
            if c.chance(0.3):
                attrs += (("reason", "fused by test"),)
            regions.append(Region(f"k{len(regions)}", members, attrs))
        i += length
    return func.with_(regions=tuple(regions))


def build_func(
    c: Chooser, max_nodes: int = 30, allow_regions: bool = True, float_only: bool = False
) -> Func:
    """One random verified function, every choice made by ``c``."""
    g = _Gen(c, float_only)
    g.setup()
    target = c.int(1, max_nodes)
    tries = 0
    while len(g.b._body) < target and tries < 4 * target + 8:
        tries += 1
        try:
            g.step()
        except TypeRuleError:
            # The families aim for valid operands; an odd corner (e.g. a transposed rank-0
            # value) that the op table rejects is simply skipped.
            pass
    if not g.b._body:
        g.constant(DType.F32)
    body = list(g.b._body[:max_nodes])
    ok = [n.result for n in body if not float_only or n.type.dtype.is_float]
    if not ok:
        x = g.b.emit(Op.CONSTANT, [], {"dtype": DType.F32, "value": 1.0})
        body = body[: max_nodes - 1] + [g.b._body[-1]]
        ok = [x]
    results = [ok[-1]]
    for _ in range(c.int(0, 2) if c.chance(0.3) else 0):
        r = c.pick(ok)
        if r not in results:
            results.append(r)
    func = Func(
        g.b.name, tuple(g.b._dims), tuple(g.b._requires), tuple(g.b._args), tuple(body),
        tuple(results),
    )  # fmt: skip
    if allow_regions and c.chance(0.3):
        func = _regions(c, func)
    verify(func)
    return func


@st.composite
def funcs(
    draw: st.DrawFn, max_nodes: int = 30, allow_regions: bool = True, float_only: bool = False
) -> Func:
    """Hypothesis strategy of random valid functions (see the module docstring)."""
    return build_func(Chooser(draw), max_nodes, allow_regions, float_only)


def random_func(
    seed: int, max_nodes: int = 30, allow_regions: bool = True, float_only: bool = False
) -> Func:
    """The same distribution as ``funcs`` from a plain seed (no shrinking, ~10x faster)."""
    return build_func(Chooser(None, random.Random(seed)), max_nodes, allow_regions, float_only)


def concrete_inputs(func: Func, seed: int) -> dict[str, Any]:
    """Small random tensors for every argument of ``func`` (dynamic dims bound small)."""
    from esperc.ir.interpreter import random_inputs, small_dims

    return random_inputs(func, small_dims(func), seed)
