"""The pointwise kernel template: any rank, NumPy broadcasting, dynamic dims, uniform branches.

Two index spaces (see ``tiles.py``):

* flat: every operand is either the full output shape or a single element. One program handles
  ``BLOCK_N`` consecutive elements; only the tail is masked, and not at all when ``BLOCK_N``
  divides a static element count (``EVEN``).
* rows x cols: the last axis is the column axis (contiguous), leading axes are flattened into
  rows; broadcast operands are loaded as ``[BLOCK_M, 1]``/``[1, BLOCK_N]`` tiles. Grid
  ``(cdiv(rows, BLOCK_M), cdiv(cols, BLOCK_N))``.

A ``select`` on a runtime bool (an ``if`` in the blueprint) loads the flag once and branches
(``if flag:``); the loads and math only one side needs are inside that side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from esperc.backend.triton.common import Namer, Writer, prod
from esperc.backend.triton.configs import Config, default_pointwise, row_blocks
from esperc.backend.triton.kernels.assemble import Emitted, finish, outputs
from esperc.backend.triton.kernels.colsum import (
    Partials,
    column_nodes,
    looping_parts,
)
from esperc.backend.triton.regions import (
    Params,
    RegionInfo,
    input_views,
    needs_i64,
)
from esperc.backend.triton.tiles import TileEmitter, TileSpace, View, contiguous_strides
from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import Dim, broadcast_shapes


def store_guard(space: TileSpace, view: View, grid_cols: bool) -> str | None:
    """Extra store mask so that an output smaller than the index space is written once."""
    if space.flat:
        return "pid == 0" if not space.cls_of(view.shape).col and prod(space.inner) != 1 else None
    lead, _ = space.split(view.shape)
    c = space.cls_of(view.shape)
    conds = []
    if not c.row and prod(space.lead) != 1:
        conds.append("pid_m == 0")
    elif c.row:
        conds += [
            f"({space.row_index(k)} == 0)[:, None]"
            for k, (d, full) in enumerate(zip(lead, space.lead))
            if d == 1 and full != 1
        ]
    if grid_cols and not c.col and prod(space.inner) != 1:
        conds.append("pid_n == 0")
    return " & ".join(conds) or None


def domain_of(info: RegionInfo, nodes: list[Node], outs: Mapping[str, View],
              extra: Sequence[tuple[Dim, ...]] = ()) -> tuple[Dim, ...]:  # fmt: skip
    shape: tuple[Dim, ...] = ()
    for e in extra:
        shape = broadcast_shapes(shape, e)
    for n in nodes:
        if n.op is not Op.CONSTANT:
            shape = broadcast_shapes(shape, n.type.shape)
    for v in outs.values():
        shape = broadcast_shapes(shape, v.shape)
    return shape


def _split_point(domain: tuple[Dim, ...], views: Mapping[str, View], info: RegionInfo,
                 nodes: list[Node]) -> int:  # fmt: skip
    """Where the column axes start: the longest run of trailing dims on which every operand and
    output is either the whole domain (contiguously) or broadcast, so that one program's columns
    are as long and contiguous as possible (``[B,C,H,W] * [B,C,1,1]``: columns are ``H*W``).
    0 means flat: no row axis at all."""
    rank = len(domain)
    if rank == 0:
        return 0
    used = {o for n in nodes for o in n.operands} | set(info.outputs)
    shapes: list[tuple[tuple[Dim, ...], tuple[Dim, ...] | None]] = [
        (tuple(v.shape), v.strides) for name, v in views.items() if name in used
    ]
    shapes += [(tuple(info.types[o].shape), None) for o in info.outputs]
    k = rank - 1
    while k > 0 and all(_uniform(shape, strides, domain, k - 1) for shape, strides in shapes):
        k -= 1
    if any(n.op is Op.INDEX for n in nodes) and k == 0:
        return 0 if rank <= 1 else 1
    return k


def _uniform(shape: tuple[Dim, ...], strides: tuple[Dim, ...] | None, domain: tuple[Dim, ...],
             k: int) -> bool:  # fmt: skip
    """Whether ``shape`` (right-aligned in ``domain``) is all-domain or all-1 on dims ``k:``."""
    rank = len(domain)
    pad = rank - len(shape)
    tail = tuple((1,) * pad + shape)[k:]
    if all(d == 1 for d in tail):
        return True
    if tail != domain[k:]:
        return False
    if strides is None:
        return True
    own = strides[max(0, k - pad) :]
    return own == contiguous_strides(shape[max(0, k - pad) :])


def _fit(given: Config, two_d: bool, default: Config, flat: bool) -> Config:
    """A 1-D config (``BLOCK``: elements per program, as smem-plan writes it) used for a
    rows x cols kernel keeps its element budget, shaped like the default tile."""
    if flat or two_d:
        return given
    budget = given["BLOCK_N"]
    bn = min(default["BLOCK_N"], budget)
    return given.with_blocks(BLOCK_M=max(1, budget // bn), BLOCK_N=bn)


def generate(info: RegionInfo, config: Config | None, sources: Mapping[str, str]) -> Emitted:
    """The pointwise kernel of ``info``'s region (and, with column reductions, the kernel that
    finishes them: a rows x cols space whose programs loop over row blocks)."""
    namer = Namer()
    params = Params(namer)
    views, nodes = input_views(info, params)
    colnodes = column_nodes(info)
    cols_of = {n.result for n in colnodes}
    outs, extra = outputs(info, views, params, exclude=cols_of)
    nodes = [n for n in nodes if n.result not in cols_of]
    domain = domain_of(info, nodes, outs, [info.types[n.operands[0]].shape for n in colnodes])
    if colnodes:  # rows are the reduced axes, columns the kept ones
        split = len(colnodes[0].attr("axis"))  # type: ignore[arg-type]
    else:
        split = _split_point(domain, views, info, nodes)
    flat = split == 0
    params.dims([v.shape for v in views.values()] + [v.shape for v in outs.values()] + [domain])
    lead, inner = domain[:split], domain[split:]
    space = TileSpace(lead, inner, params.dim_names, flat=flat, cols="offs" if flat else "cols",
                      cmask="mask" if flat else "cmask")  # fmt: skip
    rows_n, cols_n = prod(lead), prod(inner)
    partials = Partials(info, params, namer, colnodes, rows_n, cols_n, looping_parts(rows_n))
    static = lambda d: d if isinstance(d, int) else None  # noqa: E731
    cfg = default_pointwise(static(rows_n), static(cols_n), flat)
    if config is not None:
        cfg = _fit(row_blocks(config), "BLOCK_M" in dict(config.blocks), cfg, flat)
    bn, bm = cfg["BLOCK_N"], cfg.get("BLOCK_M", 1)
    requires = []
    if isinstance(cols_n, int) and cols_n % bn == 0:
        space.cmask = None
        requires.append(f"{cols_n} % BLOCK_N == 0")
    if flat or (isinstance(rows_n, int) and rows_n % bm == 0):
        space.rmask = None
        if not flat:
            requires.append(f"{rows_n} % BLOCK_M == 0")
    i64 = needs_i64([v.shape for v in views.values()] + [domain], info.dim_his)
    w = Writer(sources)
    em = TileEmitter(space, namer, w, views, info.types, info.consts)
    em.consumed |= partials.operands
    if flat:
        w("pid = tl.program_id(0)")
        w(f"offs = pid{'.to(tl.int64)' if i64 else ''} * BLOCK_N + tl.arange(0, BLOCK_N)")
        if space.cmask:
            w(f"mask = offs < {space.py(cols_n)}")
    else:
        w("pid_m = tl.program_id(0)")
        w("pid_n = tl.program_id(1)")
        if not partials:
            w(f"rows = pid_m{'.to(tl.int64)' if i64 else ''} * BLOCK_M + tl.arange(0, BLOCK_M)")
        w("cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
        if partials:  # the columns first, then this program's row blocks in a loop
            if space.cmask:
                w(f"cmask = cols < {space.py(cols_n)}")
            partials.open_rows(em, "pid_m", space.py(rows_n), i64)
        if space.rmask:
            w(f"rmask = rows < {space.py(rows_n)}")
        if space.cmask and not partials:
            w(f"cmask = cols < {space.py(cols_n)}")
        if space.rmask and space.cmask:
            w("mask = rmask[:, None] & cmask[None, :]")
            space.full_mask = "mask"
    em.emit_all(nodes, set(outs) | partials.operands)
    for name, view in outs.items():
        em.store(name, view, store_guard(space, view, grid_cols=True))
    constexprs = ["BLOCK_N"] if flat else ["BLOCK_M", "BLOCK_N"]
    cvals = {c: cfg[c] if c in dict(cfg.blocks) else 1 for c in constexprs}
    if flat:
        grid: tuple = (((("cdiv", str(cols_n), "BLOCK_N"),)),)
    else:
        grid = ((("cdiv", str(rows_n), "BLOCK_M"),), (("cdiv", str(cols_n), "BLOCK_N"),))
    if partials:
        partials.close_rows(em, "pid_m", space.rmask, space.cmask)
        grid = (((("dim", partials.parts),)), grid[1])
    main = finish(info, params, outs, extra, w, constexprs, cvals, cfg, grid, requires,
                  f"Pointwise region @{info.region.name} over {list(map(str, domain))}.",
                  scratch=partials.allocs())  # fmt: skip
    return partials.then(main, info)
