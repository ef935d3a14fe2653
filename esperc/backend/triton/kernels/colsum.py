"""Column reductions: reductions over a kernel's row axes, finished by a second kernel.

A column reduction reduces an ``[R, C]`` value (rows = its leading axes, flattened) over its
rows: a bias or norm-weight gradient, ``sum(dy, axis=0)``. The ``fuse`` pass puts it into the
kernel that computes its operand (``fusion_rules.column_verdict``). No program of that kernel
sees every row, so each one reduces the rows it covers into one row of a *partials* buffer
``[P, C]`` (fp32; i64 for integers), and a finishing kernel ``<kernel>_fin`` reduces the
partials over ``P`` and stores the result in its own dtype. This is the two-stage scheme of
Liger-Kernel's LayerNorm backward and of Inductor's split reductions: deterministic (a fixed
order, no atomics), and the ``[R, C]`` operand never reaches memory.

How the rows map to partials, so that ``P`` depends on the dims only (every autotuned variant
of the kernel fits one plan and one finishing kernel):

* pointwise and single-pass row-reduction kernels loop over row blocks (``for rb in
  range(pid, cdiv(R, BLOCK_M), num_programs)``) on ``P = min(ceil(R / 16), 256)`` programs
  (``ROW_UNIT``, ``MAX_PARTS``), whatever ``BLOCK_M`` is; program ``pid`` writes row ``pid``;
* a matmul's epilogue reduces each 16-row slice of its ``BLOCK_M x BLOCK_N`` tile
  (``P = ceil(M / 16)``, ``BLOCK_M >= 16``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from esperc.backend.triton.common import (
    STORE_DTYPE,
    CodegenError,
    Namer,
    Writer,
    dim_py,
    next_pow2,
)
from esperc.backend.triton.configs import make_config
from esperc.backend.triton.kernels.assemble import Emitted, finish
from esperc.backend.triton.lowering import (
    LOWERING,
    REDUCE_FN,
    Reduction,
    combine_expr,
    identity_text,
)
from esperc.backend.triton.plan import Alloc, DimArg
from esperc.backend.triton.regions import Params, RegionInfo, column_reductions, output_view
from esperc.backend.triton.tiles import Cls, TileEmitter
from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import Dim, DType, TensorType

ROW_UNIT = 16  # rows per partial row at least (the matmul's slice height)
MAX_PARTS = 256  # most partial rows of a looping kernel: ~2 programs per SM of an H100/H200
FULL = Cls(True, True)


def column_nodes(info: RegionInfo) -> list[Node]:
    """The region's column reductions (its ``colsum`` attribute), in body order."""
    names = column_reductions(info.region)
    return [n for n in info.nodes if n.result in names]


def looping_parts(rows: Dim) -> str:
    """``P`` of a looping kernel as a dim expression: ``min(ceil(rows / 16), 256)``."""
    if isinstance(rows, int):
        return str(max(1, min(-(-rows // ROW_UNIT), MAX_PARTS)))
    units = f"(({rows}) + {ROW_UNIT - 1}) // {ROW_UNIT}"
    return f"{MAX_PARTS} + ({units} < {MAX_PARTS}) * ({units} - {MAX_PARTS})"


def slice_parts(rows: Dim) -> str:
    """``P`` of a matmul epilogue as a dim expression: ``ceil(rows / 16)``."""
    if isinstance(rows, int):
        return str(-(-rows // ROW_UNIT))
    return f"(({rows}) + {ROW_UNIT - 1}) // {ROW_UNIT}"


def acc_dtype(node: Node) -> DType:
    """The partials' dtype of a column reduction: f32 for floats, i64 for integers."""
    return DType.F32 if node.type.dtype.is_float else DType.I64


@dataclass(frozen=True)
class ColumnSum:
    """One column reduction of a kernel: its node, how it combines, its partials buffer."""

    node: Node
    operand: str
    combine: str
    part: str  # the plan value of the partials buffer
    param: str  # the partials pointer parameter of the region's kernel
    acc: str  # the per-program accumulator of a looping kernel

    @property
    def acc_dtype(self) -> DType:
        return acc_dtype(self.node)

    @property
    def ident(self) -> str:
        return identity_text(self.combine, self.acc_dtype)


class Partials:
    """The column reductions of one kernel: parameters, accumulation and the partial stores.

    Args:
        info: the region.
        params: the kernel's parameters (a pointer per partials buffer is added).
        namer: the kernel's identifiers.
        nodes: the column reductions (``column_nodes``).
        rows: the row count ``R`` (the reduced axes' product).
        cols: the column count ``C`` (the kept axes' product).
        parts: ``P`` as a dim expression (``looping_parts`` or ``slice_parts``).
    """

    def __init__(self, info: RegionInfo, params: Params, namer: Namer, nodes: list[Node],
                 rows: Dim, cols: Dim, parts: str) -> None:  # fmt: skip
        self.info, self.rows, self.cols, self.parts = info, rows, cols, parts
        self.dim_names = params.dim_names  # filled by the template's ``params.dims`` call
        self.sums: list[ColumnSum] = []
        self._before_loop: dict = {}  # the emitter's values outside the row loop (open_rows)
        for n in nodes:
            low = LOWERING[n.op]
            if not isinstance(low, Reduction) or n.attr_dict.get("_correction"):
                raise CodegenError(f"%{n.result} = {n.op} is not a column reduction")
            part = f"{n.result}.partials"
            param = params.tensor(part, TensorType(acc_dtype(n), (1, 1)))
            self.sums.append(ColumnSum(n, n.operands[0], low.combine, part, param,
                                       namer.fresh(f"acc_{n.result}")))  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.sums)

    @property
    def results(self) -> set[str]:
        return {s.node.result for s in self.sums}

    @property
    def operands(self) -> set[str]:
        return {s.operand for s in self.sums}

    def allocs(self) -> tuple[Alloc, ...]:
        return tuple(
            Alloc(s.part, s.acc_dtype.value, (self.parts, str(self.cols)), partial_of=s.node.result)
            for s in self.sums
        )

    def open_rows(self, em: TileEmitter, first: str, rows_py: str, i64: bool) -> None:
        """Before a looping kernel's body: load the column-only inputs once, start the
        per-program accumulators over the program's columns (``[BLOCK_N]``) and open the loop
        over its row blocks (``row_loop``). ``close_rows`` ends it."""
        preload_columns(em)
        for s in self.sums:
            em.w(f"{s.acc} = tl.full((BLOCK_N,), {s.ident}, {_reg(s.acc_dtype)})")
        row_loop(em.w, first, rows_py, i64)
        self._before_loop = dict(em.vals)

    def close_rows(self, em: TileEmitter, prow: str, rmask: str | None, cmask: str | None) -> None:
        """After the body: fold the row block into the accumulators, close the loop (values
        computed inside it go out of scope) and store the accumulators as partial row
        ``prow``."""
        self.accumulate(em, rmask)
        em.w.indent -= 1
        em.vals = self._before_loop
        self.store_rows(em.w, prow, "cols", cmask)

    def then(self, main: Emitted, info: RegionInfo) -> Emitted:
        """``main`` followed by the finishing kernel, when the kernel has column reductions."""
        return replace(main, then=finish_kernel(info, self)) if self.sums else main

    def _masked(self, em: TileEmitter, s: ColumnSum, rmask: str | None) -> str:
        expr = em.broadcast(em.value(s.operand), FULL)
        if not s.node.type.dtype.is_float:
            expr = f"{expr}.to(tl.int64)"
        return f"tl.where({rmask}[:, None], {expr}, {s.ident})" if rmask else expr

    def accumulate(self, em: TileEmitter, rmask: str | None) -> None:
        """Fold this row block's tile into the accumulators (masked-out rows contribute the
        identity)."""
        for s in self.sums:
            em.w.comment_loc(s.node.loc)
            red = f"{REDUCE_FN[s.combine]}({self._masked(em, s, rmask)}, 0)"
            em.w(f"{s.acc} = " + combine_expr(s.combine, s.acc, red))

    def store_rows(self, w: Writer, prow: str, cols: str, cmask: str | None) -> None:
        """Store each accumulator as partial row ``prow`` (columns ``cols``)."""
        stride = dim_py(self.cols, self.dim_names)
        for s in self.sums:
            mask = f", mask={cmask}" if cmask else ""
            w(f"tl.store({s.param} + {prow} * {stride} + {cols}, {s.acc}{mask})")

    def store_slices(self, em: TileEmitter, rmask: str, cmask: str | None, rows_py: str) -> None:
        """Matmul epilogue: reduce each 16-row slice of the tile, store partial rows
        ``pid_m * BLOCK_M / 16 + i`` (those below ``ceil(M / 16)``)."""
        w = em.w
        stride = dim_py(self.cols, self.dim_names)
        w(f"prow = pid_m * (BLOCK_M // {ROW_UNIT}) + tl.arange(0, BLOCK_M // {ROW_UNIT})")
        pmask = f"(prow < ({rows_py} + {ROW_UNIT - 1}) // {ROW_UNIT})[:, None]"
        mask = f"{pmask} & {cmask}[None, :]" if cmask else pmask
        for s in self.sums:
            em.w.comment_loc(s.node.loc)
            tile = f"tl.reshape({self._masked(em, s, rmask)}, (BLOCK_M // {ROW_UNIT}, {ROW_UNIT}, BLOCK_N))"
            w(f"{s.acc} = {REDUCE_FN[s.combine]}({tile}, 1)")
            w(f"tl.store({s.param} + prow[:, None] * {stride} + rn[None, :], {s.acc}, mask={mask})")


def preload_columns(em: TileEmitter) -> None:
    """Load the inputs that vary along columns only (``[C]`` weights) before a row loop, so
    each program reads them once rather than once per row block."""
    for name, view in em.views.items():
        if name not in em.vals and em.space.cls_of(view.shape) == Cls(False, True):
            em.load(name)


def row_loop(w: Writer, first: str, rows_n: str, i64: bool) -> None:
    """The loop header of a looping kernel: this program's row blocks."""
    w(f"for rb in range({first}, tl.cdiv({rows_n}, BLOCK_M), tl.num_programs(0)):")
    w.indent += 1
    # the row index fits i32; offsets from it may not (``i64``): widen the arange, not ``rb``
    w(f"rows = rb * BLOCK_M + tl.arange(0, BLOCK_M){'.to(tl.int64)' if i64 else ''}")


def _reg(dtype: DType) -> str:
    return "tl.float32" if dtype.is_float else "tl.int64"


def finish_kernel(info: RegionInfo, partials: Partials) -> Emitted:
    """The finishing kernel ``<kernel>_fin``: reduce each ``[P, C]`` partials buffer over P,
    divide means by ``R``, store each result (``[C]`` or keepdim ``[1.., C]``) in its dtype.

    Grid ``cdiv(C, BLOCK_C)``; each program walks ``P`` in ``BLOCK_P`` steps.
    """
    namer = Namer()
    params = Params(namer)
    pairs = []
    for s in partials.sums:
        src = params.tensor(s.part, TensorType(s.acc_dtype, (1, 1)))
        out = output_view(s.node.result, info.types[s.node.result], params)
        pairs.append((s, src, out))
    means = any(s.node.op is Op.REDUCE_MEAN for s in partials.sums)
    params.dims([(partials.cols,)] + ([(partials.rows,)] if means else []))
    p_param = namer.fresh("P")
    params.names.append(p_param)
    params.types[p_param] = "i32"
    params.args.append(DimArg(p_param, partials.parts))
    c_py = dim_py(partials.cols, params.dim_names)
    cols_static = partials.cols if isinstance(partials.cols, int) else None
    block_c = min(64, next_pow2(cols_static)) if cols_static else 64
    cfg = make_config(num_warps=4, BLOCK_C=block_c, BLOCK_P=32)
    even = cols_static is not None and cols_static % block_c == 0
    w = Writer()
    w("pid = tl.program_id(0)")
    w("cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)")
    if not even:
        w(f"cmask = cols < {c_py}")
    for s, _, _ in pairs:
        w(f"{s.acc} = tl.full((BLOCK_P, BLOCK_C), {s.ident}, {_reg(s.acc_dtype)})")
    w(f"for p0 in range(0, {p_param}, BLOCK_P):")
    w.indent += 1
    w("prow = p0 + tl.arange(0, BLOCK_P)")
    w(f"pmask = (prow < {p_param})[:, None]" + ("" if even else " & cmask[None, :]"))
    for s, src, _ in pairs:
        load = (
            f"tl.load({src} + prow[:, None] * {c_py} + cols[None, :], mask=pmask, other={s.ident})"
        )
        w(f"{s.acc} = " + combine_expr(s.combine, s.acc, load))
    w.indent -= 1
    mask = "" if even else ", mask=cmask"
    for s, _, out in pairs:
        red = f"{REDUCE_FN[s.combine]}({s.acc}, 0)"
        if s.node.op is Op.REDUCE_MEAN:
            red = f"({red} / {dim_py(partials.rows, params.dim_names)})"
        w(f"tl.store({out.param} + cols, {red}.to({STORE_DTYPE[out.dtype]}){mask})")
    outs = {s.node.result: out for s, _, out in pairs}
    grid = ((("cdiv", str(partials.cols), "BLOCK_C"),),)
    doc = (f"Column-reduction finish of @{info.region.name}: [P, {partials.cols}] partials -> "
           f"{len(pairs)} result(s).")  # fmt: skip
    return finish(info, params, outs, [], w, ["BLOCK_C", "BLOCK_P"], dict(cfg.blocks), cfg, grid,
                  [], doc, name=f"{info.kernel}_fin", finishes=info.kernel)  # fmt: skip
