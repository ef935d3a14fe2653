"""What a kernel region reads and writes, and the parameter list of its kernel.

Region inputs are operands defined outside the region (function arguments or other regions'
values); rank-0 ``constant`` nodes defined outside are inlined as literals instead. Region outputs
are members used outside the region or returned. Data-movement members applied to inputs
(reshape, transpose, permute, broadcast_to, slice) become ``View``s: different strides over the
same pointer, no kernel code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from esperc.backend.triton.common import (
    TRITON_DTYPE,
    CodegenError,
    Namer,
    dim_max,
    dim_symbols,
    prod,
)
from esperc.backend.triton.plan import DimArg, KernelArg, StrideArg, TensorArg
from esperc.backend.triton.tiles import View, contiguous_strides
from esperc.ir.graph import Func, Node, Region
from esperc.ir.ops import COMPOSITES, CONTRACTIONS, DATA_MOVEMENT, REDUCTIONS, Op
from esperc.ir.types import Dim, TensorType, normalize_axis


@dataclass
class RegionInfo:
    """Members, inputs, outputs and types of one kernel region of ``func``."""

    func: Func
    region: Region
    kernel: str
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    consts: dict[str, Node]
    types: dict[str, TensorType]
    dim_his: dict[str, int]
    kind: str

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.result == name)


def analyze(func: Func, region: Region, kernel: str) -> RegionInfo:
    producers = func.producers()
    members = set(region.members)
    nodes = [producers[m] for m in region.members]
    inputs: list[str] = []
    consts: dict[str, Node] = {}
    for n in nodes:
        for o in n.operands:
            if o in members or o in inputs or o in consts:
                continue
            p = producers.get(o)
            if p is not None and p.op is Op.CONSTANT:
                consts[o] = p
            else:
                inputs.append(o)
    consts.update((n.result, n) for n in nodes if n.op is Op.CONSTANT)  # fuse clones them in
    used_outside = set(func.results)
    for n in func.body:
        if n.result not in members:
            used_outside.update(n.operands)
    outputs = [m for m in region.members if m in used_outside]
    his = {d.name: d.hi for d in func.dims}
    kind = region_kind(region, nodes)
    return RegionInfo(func, region, kernel, nodes, inputs, outputs, consts, func.types(), his, kind)


def column_reductions(region: Region) -> set[str]:
    """The results of the region's column reductions (its ``colsum`` attribute, set by the
    ``fuse`` pass; ``kernels/colsum.py``)."""
    return set(filter(None, str(region.attr("colsum") or "").split(",")))


def region_kind(region: Region, nodes: list[Node]) -> str:
    """The region's ``kind`` attribute, checked against its members (derived when missing or
    inconsistent): attention (two products around a softmax), matmul, reduction, view,
    pointwise."""
    columns = column_reductions(region)  # column reductions: an epilogue
    ops = {n.op for n in nodes if n.result not in columns}
    products = sum(1 for n in nodes if n.op in CONTRACTIONS)
    if products >= 2 and ops & {Op.SOFTMAX, Op.REDUCE_MAX}:
        derived = "attention"
    elif products:
        derived = "matmul"
    elif ops & (REDUCTIONS | COMPOSITES):
        derived = "reduction"
    elif len(ops) < len({n.op for n in nodes}) and ops <= DATA_MOVEMENT | {Op.CONSTANT}:
        derived = "pointwise"  # only column reductions (of a region input)
    elif ops <= DATA_MOVEMENT | {Op.CONSTANT}:
        derived = "view"
    else:
        derived = "pointwise"
    given = region.attr("kind")
    return given if given == derived else derived


@dataclass
class Params:
    """The kernel's runtime parameters (in order) with their Triton types and plan arguments."""

    namer: Namer
    names: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    args: list[KernelArg] = field(default_factory=list)
    dim_names: dict[str, str] = field(default_factory=dict)
    by_value: dict[str, str] = field(default_factory=dict)

    def tensor(self, value: str, ty: TensorType, layout: str = "contiguous",
               transpose_last: bool = False) -> str:  # fmt: skip
        if value in self.by_value:
            return self.by_value[value]
        p = self.namer.fresh(value + "_ptr")
        self.names.append(p)
        self.types[p] = "*" + TRITON_DTYPE[ty.dtype]
        self.args.append(TensorArg(p, value, layout, transpose_last))
        self.by_value[value] = p
        return p

    def dims(self, shapes: list[tuple[Dim, ...]]) -> None:
        """Add an ``i32`` parameter for every dynamic dim these shapes use (sorted by name)."""
        for s in dim_symbols([d for shape in shapes for d in shape]):
            if s not in self.dim_names:
                p = self.namer.fresh(s)
                self.dim_names[s] = p
                self.names.append(p)
                self.types[p] = "i32"
                self.args.append(DimArg(p, s))

    def stride(self, value: str, axis: int, label: str, transpose_last: bool = False) -> str:
        p = self.namer.fresh(label)
        self.names.append(p)
        self.types[p] = "i32"
        self.args.append(StrideArg(p, value, axis, transpose_last))
        return p


def input_views(
    info: RegionInfo, params: Params, emitted: list[Node] | None = None
) -> tuple[dict[str, View], list[Node]]:
    """Views of the inputs (and of data-movement members over inputs) that ``emitted`` nodes
    (default: all members) or the outputs read, each input getting a pointer parameter; and the
    members left to emit."""
    views: dict[str, View] = {}
    movers: dict[str, Node] = {}
    rest: list[Node] = []
    for n in info.nodes:
        if (
            n.op in DATA_MOVEMENT
            and n.op is not Op.CONCAT
            and (n.operands[0] in info.inputs or n.operands[0] in movers)
        ):
            movers[n.result] = n
        else:
            rest.append(n)
    needed = {o for n in (rest if emitted is None else emitted) for o in n.operands}
    needed |= set(info.outputs)
    for n in reversed(list(movers.values())):
        if n.result in needed:
            needed.add(n.operands[0])
    for name in info.inputs:
        if name in needed:
            t = info.types[name]
            views[name] = View(params.tensor(name, t), t.dtype, t.shape)
    for n in movers.values():
        if n.result in needed:
            views[n.result] = view_of(n, views[n.operands[0]], info.types[n.operands[0]])
    return views, rest


def view_of(n: Node, v: View, src: TensorType) -> View:
    """The view ``n`` (a data-movement node) makes of ``v``."""
    strides = v.stride_list()
    shape = n.type.shape
    if n.op is Op.RESHAPE:
        if v.strides is not None and v.strides != contiguous_strides(v.shape):
            raise CodegenError(f"%{n.result}: reshape of a strided view inside a kernel")
        return View(v.param, v.dtype, shape, None, v.offset)
    if n.op in (Op.TRANSPOSE, Op.PERMUTE):
        if n.op is Op.TRANSPOSE:
            perm = list(range(src.rank))
            i, j = (
                normalize_axis(n.attr("dim0"), src.rank),
                normalize_axis(n.attr("dim1"), src.rank),
            )
            perm[i], perm[j] = perm[j], perm[i]
        else:
            perm = [normalize_axis(d, src.rank) for d in n.attr("dims")]
        return View(v.param, v.dtype, shape, tuple(strides[p] for p in perm), v.offset)
    if n.op is Op.BROADCAST_TO:
        pad = len(shape) - src.rank
        padded = (0,) * pad + tuple(0 if d == 1 else s for d, s in zip(src.shape, strides))
        return View(v.param, v.dtype, shape, padded, v.offset)
    if n.op is Op.SLICE:
        axis = normalize_axis(n.attr("axis"), src.rank)
        start = n.attr("start")
        size = src.shape[axis]
        if start < 0:
            if not isinstance(size, int):
                raise CodegenError(f"%{n.result}: negative slice start on a dynamic dim")
            start = max(0, start + size)
        if isinstance(size, int):
            start = min(start, size)
        off = strides[axis] * start if not isinstance(strides[axis], int) else strides[axis] * start
        return View(v.param, v.dtype, shape, strides, off + v.offset if off else v.offset)
    raise CodegenError(f"%{n.result} = {n.op} cannot be a view inside a kernel")


def output_view(name: str, t: TensorType, params: Params) -> View:
    return View(params.tensor(name, t), t.dtype, t.shape)


def needs_i64(shapes: list[tuple[Dim, ...]], his: Mapping[str, int]) -> bool:
    """Whether an element offset of any of these tensors can exceed int32."""
    return any(dim_max(prod(s), his) >= 2**31 for s in shapes)
