"""Conditions of ``where``/``select`` as data: their divergence class and per-tile truth.

A condition is *compile-time* (only constants), *uniform* (rank-0 runtime values: one value per
kernel launch), *index-affine* (only ``index()`` coordinates and constants combined by affine
arithmetic, comparisons and logic, e.g. the causal ``col <= row``) or *data-dependent*.

For index-affine conditions ``tile_states`` decides, for every tile of a tile grid, whether the
condition is all-true, all-false or mixed on the tile. An ordering comparison of an affine form
is decided exactly from the form's minimum and maximum over the tile (an affine function on a box
attains them at corners); anything else that comes out mixed (``==`` on a lattice, ``and``/``or``
of two mixed parts) is decided by evaluating the condition on every element of that tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import TensorType

CLASSES = ("compile-time", "uniform", "index-affine", "data-dependent")
LOWERING = {
    "compile-time": "fold",
    "uniform": "branch",
    "index-affine": "tile-skip",
    "data-dependent": "predicate",
}
_CMP = {Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">=", Op.EQ: "==", Op.NE: "!="}
_AFFINE_OPS = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.NEG, Op.CAST})
_LOGIC = frozenset({Op.LOGICAL_AND, Op.LOGICAL_OR, Op.LOGICAL_NOT})


class Truth(str, Enum):
    TRUE = "true"
    FALSE = "false"
    MIXED = "mixed"


def worst(classes: list[str]) -> str:
    """The most divergent class of several (data-dependent > index-affine > uniform > ...)."""
    return max(classes, key=CLASSES.index) if classes else "compile-time"


# --------------------------------------------------------------------------------------------
# Classification


def classify(value: str, nodes: Mapping[str, Node], types: Mapping[str, TensorType]) -> str:
    """Divergence class of a bool condition ``value`` (walks its backward slice)."""
    memo: dict[str, str] = {}

    def go(v: str) -> str:
        if v in memo:
            return memo[v]
        n = nodes.get(v)
        if n is None:  # an argument: one value per launch if it has one element
            c = "uniform" if all(d == 1 for d in types[v].shape) else "data-dependent"
        elif n.op is Op.CONSTANT:
            c = "compile-time"
        elif n.op is Op.INDEX:
            c = "index-affine"
        else:
            parts = [go(o) for o in n.operands]
            c = worst(parts)
            if c == "index-affine" and n.op not in _AFFINE_OPS | _LOGIC | set(_CMP):
                c = "data-dependent"  # a non-affine function of coordinates: predicate it
        memo[v] = c
        return c

    cls = go(value)
    if cls == "index-affine" and build(value, nodes) is None:
        return "data-dependent"
    return cls


# --------------------------------------------------------------------------------------------
# Index-affine expressions


@dataclass(frozen=True, slots=True)
class Affine:
    """``const + sum(coef * coordinate[axis])``; axes are negative (counted from the right)."""

    coef: tuple[tuple[int, float], ...]
    const: float

    def combine(self, other: Affine, sign: float) -> Affine:
        c = dict(self.coef)
        for a, k in other.coef:
            c[a] = c.get(a, 0.0) + sign * k
        return Affine(
            tuple(sorted((a, k) for a, k in c.items() if k)), self.const + sign * other.const
        )

    def scale(self, k: float) -> Affine:
        return Affine(tuple((a, c * k) for a, c in self.coef if c * k), self.const * k)

    def bounds(self, box: Mapping[int, tuple[int, int]]) -> tuple[float, float]:
        lo = hi = self.const
        for a, c in self.coef:
            x0, x1 = box[a]
            lo += min(c * x0, c * x1)
            hi += max(c * x0, c * x1)
        return lo, hi


Expr = tuple  # ("cmp", op, Affine) | ("and"|"or", e, e) | ("not", e) | ("const", bool)


def build(value: str, nodes: Mapping[str, Node]) -> Expr | None:
    """The condition as a small expression tree, or None if it is not index-affine."""
    n = nodes.get(value)
    if n is None:
        return None
    if n.op is Op.CONSTANT:
        return ("const", bool(n.attr("value")))
    if n.op in _CMP:
        a, b = _affine(n.operands[0], nodes), _affine(n.operands[1], nodes)
        if a is None or b is None:
            return None
        return ("cmp", _CMP[n.op], a.combine(b, -1.0))
    if n.op in (Op.LOGICAL_AND, Op.LOGICAL_OR):
        x, y = build(n.operands[0], nodes), build(n.operands[1], nodes)
        return None if x is None or y is None else (n.op.value.split("_")[1], x, y)
    if n.op is Op.LOGICAL_NOT:
        x = build(n.operands[0], nodes)
        return None if x is None else ("not", x)
    return None


def _affine(value: str, nodes: Mapping[str, Node]) -> Affine | None:
    n = nodes.get(value)
    if n is None:
        return None
    if n.op is Op.CONSTANT:
        v = n.attr("value")
        return Affine((), float(v)) if abs(float(v)) != float("inf") else None
    if n.op is Op.INDEX:
        return Affine(((n.attr("axis") - n.type.rank, 1.0),), 0.0)
    if n.op is Op.CAST and n.type.dtype.value != "bool":
        return _affine(n.operands[0], nodes)
    if n.op is Op.NEG:
        a = _affine(n.operands[0], nodes)
        return None if a is None else a.scale(-1.0)
    if n.op in (Op.ADD, Op.SUB):
        a, b = _affine(n.operands[0], nodes), _affine(n.operands[1], nodes)
        if a is None or b is None:
            return None
        return a.combine(b, 1.0 if n.op is Op.ADD else -1.0)
    if n.op is Op.MUL:
        a, b = _affine(n.operands[0], nodes), _affine(n.operands[1], nodes)
        if a is None or b is None:
            return None
        if not a.coef:
            return b.scale(a.const)
        if not b.coef:
            return a.scale(b.const)
    return None


def axes_of(e: Expr) -> set[int]:
    if e[0] == "cmp":
        return {a for a, _ in e[2].coef}
    if e[0] == "const":
        return set()
    return set().union(*(axes_of(x) for x in e[1:]))


_DECIDE = {
    "<": lambda lo, hi: (hi < 0, lo >= 0),
    "<=": lambda lo, hi: (hi <= 0, lo > 0),
    ">": lambda lo, hi: (lo > 0, hi <= 0),
    ">=": lambda lo, hi: (lo >= 0, hi < 0),
    "==": lambda lo, hi: (lo == hi == 0, lo > 0 or hi < 0),
    "!=": lambda lo, hi: (lo > 0 or hi < 0, lo == hi == 0),
}


def _interval(e: Expr, box: Mapping[int, tuple[int, int]]) -> tuple[Truth, bool]:
    """Three-valued truth on a box, and whether a MIXED answer is exact."""
    if e[0] == "const":
        return (Truth.TRUE if e[1] else Truth.FALSE), True
    if e[0] == "cmp":
        lo, hi = e[2].bounds(box)
        t, f = _DECIDE[e[1]](lo, hi)
        return (Truth.TRUE if t else Truth.FALSE if f else Truth.MIXED), e[1] not in ("==", "!=")
    if e[0] == "not":
        t, exact = _interval(e[1], box)
        flip = {Truth.TRUE: Truth.FALSE, Truth.FALSE: Truth.TRUE, Truth.MIXED: Truth.MIXED}
        return flip[t], exact
    (ta, ea), (tb, eb) = _interval(e[1], box), _interval(e[2], box)
    absorbing, neutral = (Truth.FALSE, Truth.TRUE) if e[0] == "and" else (Truth.TRUE, Truth.FALSE)
    if absorbing in (ta, tb):
        return absorbing, True
    if ta == neutral:
        return tb, eb
    if tb == neutral:
        return ta, ea
    return Truth.MIXED, False


def evaluate(e: Expr, coords: Mapping[int, np.ndarray]) -> np.ndarray:
    """Elementwise truth of the condition on coordinate arrays (one per axis, broadcastable)."""
    if e[0] == "const":
        return np.asarray(e[1])
    if e[0] == "cmp":
        aff: Affine = e[2]
        acc = np.asarray(aff.const, dtype=np.float64)
        for a, c in aff.coef:
            acc = acc + c * coords[a]
        return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                "==": np.equal, "!=": np.not_equal}[e[1]](acc, 0.0)  # fmt: skip
    if e[0] == "not":
        return np.logical_not(evaluate(e[1], coords))
    f = np.logical_and if e[0] == "and" else np.logical_or
    return f(evaluate(e[1], coords), evaluate(e[2], coords))


def tile_states(e: Expr, sizes: tuple[int, ...], tile: tuple[int, ...]) -> list[Truth]:
    """Truth of ``e`` on every tile of a grid over the last ``len(sizes)`` axes.

    Args:
        e: an index-affine condition (axes negative, counted from the right).
        sizes: extent of each tiled axis (the last axes of the iteration space).
        tile: tile extent per tiled axis; edge tiles are clipped (non-multiples).

    Returns:
        One ``Truth`` per tile, row-major over the tile grid. Axes the condition uses outside
        the tiled ones range over their whole (nominal) extent, so such tiles may read MIXED.
    """
    nd = len(sizes)
    grid = [-(-s // t) for s, t in zip(sizes, tile)]
    out: list[Truth] = []
    tiled = range(-nd, 0)
    other = {a: (0, 1 << 20) for a in axes_of(e) if a not in tiled}
    for idx in np.ndindex(*grid):
        box = dict(other)
        for ax, i, s, t in zip(tiled, idx, sizes, tile):
            box[ax] = (i * t, min(s, (i + 1) * t) - 1)
        truth, exact = _interval(e, box)
        if truth is Truth.MIXED and not exact and not other:
            coords = {
                ax: np.arange(box[ax][0], box[ax][1] + 1).reshape(
                    [-1 if k == j else 1 for k in range(nd)]
                )
                for j, ax in enumerate(tiled)
            }
            vals = evaluate(e, coords)
            truth = Truth.TRUE if vals.all() else Truth.FALSE if not vals.any() else Truth.MIXED
        out.append(truth)
    return out
