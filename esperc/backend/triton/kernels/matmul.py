"""The matmul kernel template: (batched) matrix product with a fused epilogue.

The anchor is the region's ``matmul``/``linear`` node (attribute ``anchor``, else the first
product). ``C[z] = A[z] @ B[z]`` is tiled ``BLOCK_M x BLOCK_N`` with ``BLOCK_K`` steps of
``tl.dot`` into an fp32 accumulator, programs ordered in groups of ``GROUP_M`` row-tiles so that
neighbouring programs reuse B tiles in L2 (Triton's matmul tutorial). ``B`` given as a transpose
of a weight (``linear``, or ``matmul`` by ``transpose(w)``) is read through swapped strides, never
materialised. Every member after the anchor (bias, activation, residual, cast) is applied to the
accumulator tile before the single store, loading extra operands as broadcast tiles; unary
members before the anchor (e.g. a cast of A) are applied to the loaded tiles.

fp32 operands use ``input_precision="ieee"`` (full fp32 products, matching PyTorch's default
``allow_tf32=False``); bf16/f16 operands use tensor cores with fp32 accumulation.
"""

from __future__ import annotations

from collections.abc import Mapping

from esperc.backend.triton.common import STORE_DTYPE, CodegenError, Namer, Writer, dim_py, prod
from esperc.backend.triton.configs import Config, default_matmul, require_blocks
from esperc.backend.triton.kernels.assemble import Emitted, finish, outputs
from esperc.backend.triton.kernels.colsum import Partials, column_nodes, slice_parts
from esperc.backend.triton.kernels.pointwise import store_guard
from esperc.backend.triton.lowering import LOWERING, Elementwise, Operand, literal
from esperc.backend.triton.regions import Params, RegionInfo, input_views, needs_i64
from esperc.backend.triton.tiles import Cls, TileEmitter, TileSpace, TVal
from esperc.ir.graph import Node
from esperc.ir.ops import CONTRACTIONS, ELEMENTWISE, Op
from esperc.ir.types import Dim, DType

_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")


def find_anchor(info: RegionInfo) -> Node:
    name = info.region.attr("anchor")
    for n in info.nodes:
        if n.op in CONTRACTIONS and (name is None or n.result == name):
            return n
    return next(n for n in info.nodes if n.op in CONTRACTIONS)


def _chain(info: RegionInfo, value: str, members: dict[str, Node]) -> tuple[str, list[Node]]:
    """The external tensor a product operand is computed from and the elementwise members
    (a DAG, in body order: e.g. silu's cast, sigmoid, mul) applied to it on the loaded tile."""
    cone: set[str] = set()
    roots: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v in info.consts:
            continue
        if v not in members:
            roots.add(v)
            continue
        n = members[v]
        if n.op not in ELEMENTWISE:
            raise CodegenError(f"%{n.result} = {n.op} cannot be a matmul prologue")
        if v not in cone:
            cone.add(v)
            stack.extend(n.operands)
    if len(roots) != 1 or (cone and info.types[next(iter(roots))].shape != info.types[value].shape):
        raise CodegenError(f"matmul operand %{value} is not elementwise in one tensor")
    return next(iter(roots)), [n for n in info.nodes if n.result in cone]


def _untransposed(info: RegionInfo, value: str) -> str | None:
    """The tensor ``value`` is a last-two-axes transpose of (a view: read with swapped
    strides), or None."""
    p = info.func.producers().get(value)
    if p is None or p.op is not Op.TRANSPOSE:
        return None
    rank = info.types[value].rank
    if {p.attr("dim0") % rank, p.attr("dim1") % rank} != {rank - 2, rank - 1}:
        return None
    return p.operands[0]


def operands_of(
    info: RegionInfo, anchor: Node
) -> tuple[str, str, bool, bool, list[Node], list[Node]]:
    """``(a, b, trans_a, trans_b, a_prologue, b_prologue)``: the tensors the kernel loads."""
    members = {n.result: n for n in info.nodes if n.result != anchor.result}
    b, trans_b = anchor.operands[1], anchor.op is Op.LINEAR
    src = None if trans_b else _untransposed(info, b)
    if src is not None:
        members.pop(b, None)
        b, trans_b = src, True
    a, trans_a = anchor.operands[0], False
    src = _untransposed(info, a)
    fold = all(d == 1 for d in info.types[b].shape[:-2])
    if src is not None and (not fold or info.types[a].rank == 2):
        members.pop(a, None)
        a, trans_a = src, True
    a, a_pro = _chain(info, a, members)
    b, b_pro = _chain(info, b, members)
    return a, b, trans_a, trans_b, a_pro, b_pro


def generate(info: RegionInfo, config: Config | None, sources: Mapping[str, str]) -> Emitted:
    """The matmul (+ epilogue) kernel of ``info``'s region."""
    anchor = find_anchor(info)
    a, b, trans_a, trans_b, a_pro, b_pro = operands_of(info, anchor)
    pos = info.nodes.index(anchor)
    colnodes = column_nodes(info)
    skip = {anchor.result} | {n.result for n in a_pro + b_pro + colnodes}
    skip |= {n.result for n in info.nodes[:pos] if n.op is Op.TRANSPOSE}
    epilogue = [n for n in info.nodes[pos + 1 :] if n.result not in skip]
    stray = [n for n in info.nodes[:pos] if n.result not in skip and n.op is not Op.CONSTANT]
    if stray:
        raise CodegenError(f"%{stray[0].result} = {stray[0].op} precedes the matmul anchor")
    ta, tb, tout = info.types[a], info.types[b], anchor.type
    k_dim = ta.shape[-2] if trans_a else ta.shape[-1]
    n_dim = tb.shape[-2] if trans_b else tb.shape[-1]
    b_batch = tb.shape[:-2]
    fold = all(d == 1 for d in b_batch)  # one B for every batch: rows of A are all "M"
    if fold:
        m_dim, batch = (ta.shape[-1] if trans_a else prod(ta.shape[:-1])), ()
    else:
        m_dim, batch = ta.shape[-1 if trans_a else -2], tout.shape[:-2]
    z_dim = prod(batch)

    namer = Namer()
    namer.used |= {"M", "N", "K"}  # the kernel's own locals: a dim named N becomes N_1
    params = Params(namer)
    a_ptr, b_ptr = params.tensor(a, ta), params.tensor(b, tb)
    bias = [anchor] if anchor.op is Op.LINEAR and len(anchor.operands) == 3 else []
    views, _ = input_views(info, params, epilogue + bias + colnodes)
    outs, extra = outputs(info, views, params, exclude={n.result for n in colnodes})
    params.dims([ta.shape, tb.shape, tout.shape] + [v.shape for v in views.values()])
    if colnodes and batch:
        raise CodegenError(f"column reductions in the batched matmul @{info.region.name}")
    partials = Partials(info, params, namer, colnodes, m_dim, n_dim, slice_parts(m_dim))
    space = TileSpace(tuple(tout.shape[:-1]), (n_dim,), params.dim_names, full_mask="mask")
    py = space.py
    cfg = config or default_matmul(m_dim if isinstance(m_dim, int) else None,
                                   _int(n_dim, 128), _int(k_dim, 64), ta.dtype.itemsize)  # fmt: skip
    require_blocks(cfg, _BLOCKS[:3], info.kernel)
    requires = []
    even_k = isinstance(k_dim, int) and k_dim % cfg["BLOCK_K"] == 0
    if even_k:
        requires.append(f"{k_dim} % BLOCK_K == 0")
    i64 = needs_i64([ta.shape, tb.shape, tout.shape], info.dim_his)
    w = Writer(sources)
    w.comment_loc(anchor.loc)
    w(f"M = {dim_py(m_dim, params.dim_names, atom=False)}")
    w(f"N = {dim_py(n_dim, params.dim_names, atom=False)}")
    w(f"K = {dim_py(k_dim, params.dim_names, atom=False)}")
    w("pid = tl.program_id(0)")
    if batch:
        w("z = tl.program_id(1)")
    w("# grouped ordering: GROUP_M row-tiles share each column of B tiles in L2")
    w("num_pid_m = tl.cdiv(M, BLOCK_M)")
    w("num_pid_n = tl.cdiv(N, BLOCK_N)")
    w("num_pid_in_group = GROUP_M * num_pid_n")
    w("first_pid_m = (pid // num_pid_in_group) * GROUP_M")
    w("group_size_m = min(num_pid_m - first_pid_m, GROUP_M)")
    w("pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)")
    w("pid_n = (pid % num_pid_in_group) // group_size_m")
    w(f"rm = pid_m{'.to(tl.int64)' if i64 else ''} * BLOCK_M + tl.arange(0, BLOCK_M)")
    w("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    w("rk = tl.arange(0, BLOCK_K)")
    w("# wrap out-of-range rows/cols instead of masking the loads; the store is masked")
    w("ram = tl.max_contiguous(tl.multiple_of(rm % M, BLOCK_M), BLOCK_M)")
    w("rbn = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)")
    a_z = _batch_offset(ta.shape[:-2], batch, ta.shape[-2] * ta.shape[-1], py)
    b_z = _batch_offset(b_batch, batch, k_dim * n_dim, py)
    if trans_a:
        w(f"a_ptrs = {a_ptr}{a_z} + ram[:, None] + rk[None, :] * M  # A^T of a row-major [K, M]")
    else:
        w(f"a_ptrs = {a_ptr}{a_z} + ram[:, None] * K + rk[None, :]")
    if trans_b:
        w(f"b_ptrs = {b_ptr}{b_z} + rbn[None, :] * K + rk[:, None]  # B^T of a row-major [N, K]")
    else:
        w(f"b_ptrs = {b_ptr}{b_z} + rk[:, None] * N + rbn[None, :]")
    w("acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)")
    w("for k in range(0, tl.cdiv(K, BLOCK_K)):")
    w.indent += 1
    dot_dt = ta.dtype
    for name, root, ptrs, mask, pro in (
        ("a", a, "a_ptrs", "rk[None, :] < K - k * BLOCK_K", a_pro),
        ("b", b, "b_ptrs", "rk[:, None] < K - k * BLOCK_K", b_pro),
    ):
        load = f"tl.load({ptrs})" if even_k else f"tl.load({ptrs}, mask={mask}, other=0.0)"
        w(f"{name} = {load}")
        dot_dt = _prologue(w, name, root, pro, info, namer)
    precision = ', input_precision="ieee"' if dot_dt is DType.F32 else ""
    w(f"acc = tl.dot(a, b, acc{precision})")
    w("a_ptrs += BLOCK_K * M" if trans_a else "a_ptrs += BLOCK_K")
    w("b_ptrs += BLOCK_K" if trans_b else "b_ptrs += BLOCK_K * N")
    w.indent -= 1
    w("# epilogue on the fp32 accumulator")
    w("rows = z * M + rm" if batch else "rows = rm")
    w("cols = rn")
    w("rmask = rm < M")
    w("cmask = rn < N")
    w("mask = rmask[:, None] & cmask[None, :]")
    em = TileEmitter(space, namer, w, views, info.types, info.consts)
    em.consumed |= partials.operands
    em.bind(anchor.result, TVal("acc", Cls(True, True), anchor.type.dtype))
    if bias:
        w("acc = acc + " + em.value(anchor.operands[2]).expr)
    em.emit_all(epilogue, set(outs) | partials.operands)
    for name, view in outs.items():
        em.store(name, view, store_guard(space, view, grid_cols=False))
    if partials:
        partials.store_slices(em, "rmask", "cmask", "M")
    grid_m = (("cdiv", str(m_dim), "BLOCK_M"), ("cdiv", str(n_dim), "BLOCK_N"))
    grid = (grid_m, (("dim", str(z_dim)),)) if batch else (grid_m,)
    cvals = {k: cfg.get(k, 8) for k in _BLOCKS}
    doc = (f"Matmul @{info.region.name}: [{m_dim}, {k_dim}] @ [{k_dim}, {n_dim}]"
           f"{' (A transposed)' if trans_a else ''}{' (B transposed)' if trans_b else ''}{f', batch {z_dim}' if batch else ''}"
           f" + {len(epilogue)} epilogue ops.")  # fmt: skip
    main = finish(info, params, outs, extra, w, list(_BLOCKS), cvals, cfg, grid, requires, doc,
                  scratch=partials.allocs())  # fmt: skip
    return partials.then(main, info)


def _int(d: Dim, default: int) -> int:
    return d if isinstance(d, int) else default


def _batch_offset(own: tuple, batch: tuple, size: Dim, py) -> str:  # noqa: ANN001
    """`` + z * <matrix size>`` when this operand has the batch dims, ``""`` when broadcast."""
    if not batch or all(d == 1 for d in own):
        return ""
    padded = (1,) * (len(batch) - len(own)) + tuple(own)
    if tuple(padded) != tuple(batch):
        raise CodegenError(f"batch dims {list(own)} broadcast partially against {list(batch)}")
    return f" + z * {py(size)}"


def _prologue(w: Writer, var: str, root: str, chain: list[Node], info: RegionInfo,
              namer: Namer) -> DType:  # fmt: skip
    """Apply prologue members (e.g. silu) to a loaded tile ``var`` of ``root`` in fp32, and
    convert the result back to the dot's input type; returns that type."""
    if not chain:
        return info.types[root].dtype
    names = {root: f"{var}.to(tl.float32)"}
    for n in chain:
        low = LOWERING[n.op]
        assert isinstance(low, Elementwise)
        ops = []
        for o in n.operands:
            c = info.consts.get(o)
            if c is not None:
                dt = DType(c.attr("dtype"))
                ops.append(Operand(literal(c.attr("value"), dt), dt, c.attr("value")))
            else:
                ops.append(Operand(names[o], info.types[o].dtype))
        names[n.result] = namer.fresh(f"{var}_{n.result}")
        w(f"{names[n.result]} = {low.emit(ops, n)}")
    dtype = chain[-1].type.dtype
    w(f"{var} = {names[chain[-1].result]}.to({STORE_DTYPE[dtype]})")
    return dtype
