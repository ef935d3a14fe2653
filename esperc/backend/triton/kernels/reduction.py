"""The row-reduction kernel template: reductions over the trailing axes with prologue/epilogue.

Rows are the flattened leading dims, a row is the flattened reduced (trailing, contiguous) dims.
Composites (softmax, log_softmax, layer_norm, rms_norm, var) are first rewritten into primitive
nodes (``lowering.expand_composites``); the region may hold several reductions (mean and var),
elementwise ops before and after them, ``[N]`` weights (loaded as ``[1, BLOCK_N]``) and per-row
values (``[R, 1]``, loaded as ``[BLOCK_M, 1]``). Accumulation is fp32.

* single pass (``BLOCK_N >= N``): each program holds ``BLOCK_M`` whole rows in registers.
* looped (``N > BLOCK_N``): one loop over the row per reduction *stage* (a reduction whose
  operand needs another reduction's result is one stage later), each loop recomputing the
  elementwise prologue from the inputs and accumulating a ``[BLOCK_M, BLOCK_N]`` fp32 partial;
  then one more loop writes the full-size outputs. layer_norm: sum, centred sum of squares,
  normalise-and-store (three passes); softmax: max, sum of exp, store.
"""

from __future__ import annotations

from collections.abc import Mapping

from esperc.backend.triton.common import (
    REG_DTYPE,
    CodegenError,
    Namer,
    Writer,
    dim_max,
    next_pow2,
    prod,
)
from esperc.backend.triton.configs import Config, default_reduction, row_blocks
from esperc.backend.triton.kernels.assemble import Emitted, finish, outputs
from esperc.backend.triton.kernels.colsum import (
    Partials,
    column_nodes,
    looping_parts,
)
from esperc.backend.triton.kernels.pointwise import store_guard
from esperc.backend.triton.lowering import (
    LOWERING,
    REDUCE_FN,
    Reduction,
    combine_expr,
    expand_composites,
    identity_text,
)
from esperc.backend.triton.regions import Params, RegionInfo, input_views, needs_i64
from esperc.backend.triton.tiles import SCALAR, Cls, TileEmitter, TileSpace, TVal, View
from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import Dim, TensorType, normalize_axis


def _domain(nodes: list[Node], types: Mapping[str, TensorType]) -> tuple[tuple, tuple]:
    """``(lead, inner)`` dims: the reduced operand's shape split before the reduced axes."""
    reds = [n for n in nodes if isinstance(LOWERING[n.op], Reduction)]
    if not reds:
        raise CodegenError("a reduction region without a reduction")
    first = types[reds[0].operands[0]]
    axes = tuple(normalize_axis(a, first.rank) for a in reds[0].attr("axis"))
    if axes != tuple(range(first.rank - len(axes), first.rank)):
        raise CodegenError(f"%{reds[0].result}: reduction axes {list(axes)} are not trailing")
    lead, inner = first.shape[: -len(axes)], first.shape[-len(axes) :]
    for r in reds[1:]:
        t = types[r.operands[0]]
        raxes = tuple(normalize_axis(a, t.rank) for a in r.attr("axis"))
        if t.shape[t.rank - len(raxes) :] != inner or raxes != tuple(
            range(t.rank - len(raxes), t.rank)
        ):
            raise CodegenError(f"%{r.result}: reduces other axes than %{reds[0].result}")
    return tuple(lead), tuple(inner)


def _classes(nodes: list[Node], space: TileSpace, views: Mapping[str, View],
             types: Mapping[str, TensorType]) -> dict[str, Cls]:  # fmt: skip
    cls = {name: space.cls_of(v.shape) for name, v in views.items()}
    for n in nodes:
        if isinstance(LOWERING[n.op], Reduction):
            cls[n.result] = Cls(True, False)
        elif n.op is Op.INDEX:
            src = types[n.operands[0]]
            pos = n.attr("axis") % src.rank + space.rank - src.rank
            cls[n.result] = Cls(pos < len(space.lead), pos >= len(space.lead))
        else:
            c = SCALAR
            for o in n.operands:
                c = c | cls.get(o, SCALAR)
            cls[n.result] = c
    return cls


def _stages(nodes: list[Node]) -> dict[str, int]:
    stage: dict[str, int] = {}
    for n in nodes:
        s = max((stage.get(o, 0) for o in n.operands), default=0)
        stage[n.result] = s + 1 if isinstance(LOWERING[n.op], Reduction) else s
    return stage


class _Reducer:
    """Emits reductions: directly over a whole-row tile, or as a looped accumulator."""

    def __init__(self, em: TileEmitter, n_expr: str) -> None:
        self.em, self.n_expr = em, n_expr

    def operand(self, node: Node) -> str:
        v = self.em.value(node.operands[0])
        expr = v.expr if v.cls.col else self.em.broadcast(v, Cls(True, True))
        if not node.type.dtype.is_float:
            expr = f"{expr}.to({REG_DTYPE[node.type.dtype]})"
        low = LOWERING[node.op]
        assert isinstance(low, Reduction)
        if self.em.space.cmask:
            ident = identity_text(low.combine, node.type.dtype)
            expr = f"tl.where({self.em.space.cmask}[None, :], {expr}, {ident})"
        return expr

    def finish(self, node: Node, reduced: str) -> TVal:
        em = self.em
        var = em.namer.value(node.result)
        text = f"{reduced}[:, None]"
        if node.op is Op.REDUCE_MEAN:
            corr = dict(node.attrs).get("_correction", 0)
            count = self.n_expr if not corr else f"({self.n_expr} - {corr})"
            text = f"{text} / {count}"
        em.w(f"{var} = {text}")
        val = TVal(var, Cls(True, False), node.type.dtype)
        em.bind(node.result, val)
        return val

    def single(self, node: Node) -> TVal:
        self.em.w.comment_loc(node.loc)
        low = LOWERING[node.op]
        assert isinstance(low, Reduction)
        return self.finish(node, f"{REDUCE_FN[low.combine]}({self.operand(node)}, 1)")


def generate(info: RegionInfo, config: Config | None, sources: Mapping[str, str]) -> Emitted:
    """The row-reduction kernel of ``info``'s region."""
    namer = Namer()
    params = Params(namer)
    views, nodes = input_views(info, params)
    colnodes = column_nodes(info)
    outs, extra = outputs(info, views, params, exclude={n.result for n in colnodes})
    types = dict(info.types)
    nodes = expand_composites([n for n in nodes if n not in colnodes], types)
    lead, inner = _domain(nodes, types)
    params.dims(
        [v.shape for v in views.values()] + [v.shape for v in outs.values()] + [lead + inner]
    )
    space = TileSpace(lead, inner, params.dim_names)
    rows_n, n = prod(lead), prod(inner)
    n_max = dim_max(n, info.dim_his)
    static_rows = rows_n if isinstance(rows_n, int) else None
    cfg = default_reduction(static_rows, n if isinstance(n, int) else None, n_max)
    if config is not None:
        given = row_blocks(config)
        if "BLOCK_M" not in dict(config.blocks):
            # smem-plan sizes the row (BLOCK); rows per program follow the heuristic (short
            # rows share a program so that each thread still loads 16 bytes)
            bm = max(1, min(16, 1024 // given["BLOCK_N"]))
            bm = min(bm, next_pow2(static_rows)) if static_rows else bm
            warps = max(given.num_warps, cfg.num_warps if cfg["BLOCK_N"] == given["BLOCK_N"] else 1)
            given = Config(given.with_blocks(BLOCK_M=bm).blocks, warps, given.num_stages)
        cfg = given
    bm, bn = cfg.get("BLOCK_M", 1), cfg["BLOCK_N"]
    looped = bn < n_max
    requires = [f"BLOCK_N {'<' if looped else '>='} {n_max}"]
    if isinstance(n, int) and n % bn == 0:
        space.cmask = None
        requires.append(f"{n} % BLOCK_N == 0")
    if isinstance(rows_n, int) and rows_n % bm == 0:
        space.rmask = None
        requires.append(f"{rows_n} % BLOCK_M == 0")
    # outputs of keepdim=False reductions ([R]) are stored like [R, 1]
    for name, v in list(outs.items()):
        if tuple(v.shape) == lead and lead:
            outs[name] = View(v.param, v.dtype, lead + (1,) * len(inner))
    i64 = needs_i64([v.shape for v in views.values()] + [lead + inner], info.dim_his)
    partials = Partials(info, params, namer, colnodes, rows_n, n, looping_parts(rows_n))
    if partials and looped:
        raise CodegenError(f"column reductions in the looped row reduction @{info.region.name}")
    w = Writer(sources)
    em = TileEmitter(space, namer, w, views, types, info.consts)
    em.consumed = {o for x in nodes for o in x.operands} | partials.operands
    w("pid = tl.program_id(0)")
    if partials:  # the program's row blocks in a loop; the columns first (one tile per row)
        _cols_lines(w, space, n, "", full=False)
        partials.open_rows(em, "pid", space.py(rows_n), i64)
    else:
        w(f"rows = pid{'.to(tl.int64)' if i64 else ''} * BLOCK_M + tl.arange(0, BLOCK_M)")
    if space.rmask:
        w(f"rmask = rows < {space.py(rows_n)}")
    reducer = _Reducer(em, space.py(n))
    if not looped:
        _single_pass(em, reducer, nodes, outs, w, space, n, cols=not partials)
        if partials:
            partials.close_rows(em, "pid", space.rmask, space.cmask)
    else:
        _looped(em, reducer, nodes, outs, w, space, n, _classes(nodes, space, views, types))
    grid: tuple = ((("cdiv", str(rows_n), "BLOCK_M"),),)
    if partials:
        grid = ((("dim", partials.parts),),)
    cvals = {"BLOCK_M": bm, "BLOCK_N": bn}
    form = "looped" if looped else "single pass"
    doc = f"Row reduction @{info.region.name}: rows={rows_n}, N={n} ({form})."
    main = finish(info, params, outs, extra, w, ["BLOCK_M", "BLOCK_N"], cvals, cfg, grid,
                  requires, doc, scratch=partials.allocs())  # fmt: skip
    return partials.then(main, info)


def _cols_lines(w: Writer, space: TileSpace, n: Dim, start: str, full: bool = True,
                cols: bool = True) -> None:  # fmt: skip
    """``cols``/``cmask`` (unless ``cols=False``) and the full tile mask (unless ``full=False``:
    a row loop writes it once ``rows`` exists)."""
    if cols:
        w(f"cols = {start}tl.arange(0, BLOCK_N)")
        if space.cmask:
            w(f"cmask = cols < {space.py(n)}")
    if full and space.cmask and space.rmask:
        w("mask = rmask[:, None] & cmask[None, :]")
        space.full_mask = "mask"


def _single_pass(em: TileEmitter, reducer: _Reducer, nodes: list[Node],
                 outs: Mapping[str, View], w: Writer, space: TileSpace, n: Dim,
                 cols: bool = True) -> None:  # fmt: skip
    _cols_lines(w, space, n, "", cols=cols)
    em.reduce_hook = reducer.single
    em.emit_all(nodes, set(outs))
    for name, view in outs.items():
        em.store(name, view, store_guard(space, view, grid_cols=False))


def _looped(em: TileEmitter, reducer: _Reducer, nodes: list[Node], outs: Mapping[str, View],
            w: Writer, space: TileSpace, n: Dim, cls: Mapping[str, Cls]) -> None:  # fmt: skip
    stage = _stages(nodes)
    by_name = {x.result: x for x in nodes}
    reds = [x for x in nodes if isinstance(LOWERING[x.op], Reduction)]
    done: set[str] = set()

    def emit_rows(upto: int) -> None:
        for x in nodes:
            if x.result not in done and not cls[x.result].col and stage[x.result] <= upto:
                if not isinstance(LOWERING[x.op], Reduction):
                    em.emit(x)
                    done.add(x.result)

    def cone(roots: list[str]) -> list[Node]:
        need: set[str] = set()
        stack = [r for r in roots if r in by_name and cls[r].col]
        while stack:
            r = stack.pop()
            if r in need:
                continue
            need.add(r)
            stack += [o for o in by_name[r].operands if o in by_name and cls[o].col]
        return [x for x in nodes if x.result in need]

    for p in range(1, max(stage[r.result] for r in reds) + 1):
        emit_rows(p - 1)
        group = [r for r in reds if stage[r.result] == p]
        accs = {}
        for r in group:
            low = LOWERING[r.op]
            assert isinstance(low, Reduction)
            acc = em.namer.fresh(f"acc_{r.result}")
            accs[r.result] = acc
            dt = REG_DTYPE[r.type.dtype] if not r.type.dtype.is_float else "tl.float32"
            init = identity_text(low.combine, r.type.dtype)
            w(f"{acc} = tl.full((BLOCK_M, BLOCK_N), {init}, {dt})")
        w.comment_loc(group[0].loc)
        w(f"for off in range(0, {space.py(n)}, BLOCK_N):")
        with em.scope():
            _cols_lines(w, space, n, "off + ")
            for x in cone([r.operands[0] for r in group]):
                em.emit(x)
            for r in group:
                low = LOWERING[r.op]
                assert isinstance(low, Reduction)
                v = reducer.operand(r)
                w(f"{accs[r.result]} = " + combine_expr(low.combine, accs[r.result], v))
        for r in group:
            low = LOWERING[r.op]
            assert isinstance(low, Reduction)
            reducer.finish(r, f"{REDUCE_FN[low.combine]}({accs[r.result]}, 1)")
            done.add(r.result)
    emit_rows(max(stage.values()))
    full = [name for name in outs if cls.get(name, SCALAR).col]
    if full:
        w(f"for off in range(0, {space.py(n)}, BLOCK_N):")
        with em.scope():
            _cols_lines(w, space, n, "off + ")
            for x in cone(full):
                em.emit(x)
            for name in full:
                em.store(name, outs[name])
    for name, view in outs.items():
        if name not in full:
            em.store(name, view, store_guard(space, view, grid_cols=False))
