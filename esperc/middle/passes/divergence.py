"""Divergence analysis: classify each kernel's conditionals and estimate divergent tiles."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from esperc.ir.graph import Func, Node, Region, make_attrs
from esperc.ir.ops import Op
from esperc.ir.types import Dim, eval_dim
from esperc.middle import fusion_masks as masks
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register

ATTRS = (
    "divergence", "lowering", "tile", "tiles_total", "tiles_visited", "tiles_mixed",
    "tiles_skipped", "conditionals",
)  # fmt: skip
_NEUTRAL = (-math.inf, 0.0)  # a branch that is the identity of the max/sum that follows


@register
@dataclass(frozen=True)
class Divergence(FunctionPass):
    """Classify conditionals (where/select) per kernel region and choose their lowering.

    Each condition is compile-time (constants: ``fold``), uniform (rank-0 runtime values:
    ``branch``), index-affine (affine comparisons of ``index()`` coordinates, e.g. causal masks:
    ``tile-skip``, skipping all-false tiles and predicating only mixed ones) or data-dependent
    (``predicate`` with ``tl.where``). For the region's most divergent condition it counts tiles
    of shape ``tile`` over the last axes of the condition's shape, with dynamic dims at
    ``nominal`` (clamped to their range): ``tiles_total``, ``tiles_visited`` (not skipped),
    ``tiles_mixed`` (visited and needing a mask) and ``tiles_skipped``. All-false tiles count as
    skipped only where the false branch is a neutral constant (``-inf`` or ``0``) feeding a
    reduction (attention and reduction regions); elsewhere they are visited without a mask.
    Data-dependent conditions count every tile as mixed (the worst case).

    Preserves: the body and the regions' members; adds attributes to regions with conditionals.
    Requires: kernel regions (run after ``fuse``). Idempotent.
    """

    name = "divergence"
    tile: str = "64x64"
    nominal: int = 1024

    def run(self, func: Func, ctx: PassContext) -> Func:
        tile = tuple(int(t) for t in self.tile.lower().split("x"))
        nodes = func.producers()
        types = func.types()
        ranges = {d.name: (d.lo, d.hi) for d in func.dims}
        regions = []
        for r in func.regions:
            base = {k: v for k, v in r.attrs if k not in ATTRS}
            conds = [nodes[m] for m in r.members if nodes[m].op in (Op.WHERE, Op.SELECT)]
            if not conds:
                regions.append(replace(r, attrs=make_attrs(base)))
                continue
            classes = [masks.classify(n.operands[0], nodes, types) for n in conds]
            cls = masks.worst(classes)
            main = conds[classes.index(cls)]
            sizes, t = _grid(main, tile, ranges, self.nominal)
            counts = _count(main, cls, sizes, t, nodes, str(r.attr("kind")))
            attrs = {**base, "divergence": cls, "lowering": masks.LOWERING[cls], "tile": list(t),
                     "conditionals": len(conds), **counts}  # fmt: skip
            regions.append(replace(r, attrs=make_attrs(attrs)))
            ctx.stat(f"conditionals-{cls}", len(conds))
            ctx.remark(_remark(r, main, cls, sizes, t, counts))
        return func.with_(regions=tuple(regions))


def _grid(
    n: Node, tile: tuple[int, ...], ranges: dict[str, tuple[int, int]], nominal: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sizes of the tiled (last) axes of the condition's result and the tile over them."""
    shape = n.type.shape
    k = min(len(tile), len(shape))
    t = tile[len(tile) - k :]
    sizes = []
    for d in shape[len(shape) - k :]:
        if isinstance(d, int):
            sizes.append(d)
        else:
            env = {s: min(max(nominal, ranges.get(s, (1, nominal))[0]),
                          ranges.get(s, (1, nominal))[1]) for s in d.symbols}  # fmt: skip
            sizes.append(_eval(d, env))
    return tuple(sizes), t


def _eval(d: Dim, env: dict[str, int]) -> int:
    return max(1, eval_dim(d, env))


def _count(
    n: Node,
    cls: str,
    sizes: tuple[int, ...],
    tile: tuple[int, ...],
    nodes: dict[str, Node],
    kind: str,
) -> dict[str, int]:
    total = math.prod(-(-s // t) for s, t in zip(sizes, tile))
    if cls != "index-affine":
        mixed = total if cls == "data-dependent" else 0
        return _counts(total, total, mixed, 0)
    expr = masks.build(n.operands[0], nodes)
    assert expr is not None  # classify() said index-affine
    skip_false = kind in ("attention", "reduction") and _neutral(n.operands[2], nodes)
    skip_true = kind in ("attention", "reduction") and _neutral(n.operands[1], nodes)
    states = masks.tile_states(expr, sizes, tile)
    mixed = sum(s is masks.Truth.MIXED for s in states)
    skipped = sum(
        (s is masks.Truth.FALSE and skip_false) or (s is masks.Truth.TRUE and skip_true)
        for s in states
    )
    return _counts(total, total - skipped, mixed, skipped)


def _counts(total: int, visited: int, mixed: int, skipped: int) -> dict[str, int]:
    return {"tiles_total": total, "tiles_visited": visited, "tiles_mixed": mixed,
            "tiles_skipped": skipped}  # fmt: skip


def _neutral(v: str, nodes: dict[str, Node]) -> bool:
    n = nodes.get(v)
    return n is not None and n.op is Op.CONSTANT and float(n.attr("value")) in _NEUTRAL


def _remark(
    r: Region, n: Node, cls: str, sizes: tuple[int, ...], tile: tuple[int, ...], c: dict[str, int]
) -> str:
    size = "x".join(map(str, sizes)) or "scalar"
    t = "x".join(map(str, tile)) or "1"
    plain = c["tiles_visited"] - c["tiles_mixed"]
    pct = 100.0 * c["tiles_mixed"] / max(c["tiles_total"], 1)
    return (
        f"@{r.name}: {n.op} %{n.result} is {cls} -> {masks.LOWERING[cls]}; {size} in {t} tiles: "
        f"{c['tiles_total']} total, {c['tiles_visited']} visited ({c['tiles_mixed']} mixed "
        f"need a mask, {plain} do not), {c['tiles_skipped']} skipped; {pct:.1f}% divergent"
    )
