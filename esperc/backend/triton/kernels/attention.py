"""The attention kernel template: FlashAttention-2 forward (Dao 2023, arXiv:2307.08691).

Recognises ``softmax(where(mask, (q @ transpose(k)) * scale, -inf)) @ v`` in a region (the region
facts ``q``/``k``/``v``/``scale``/``causal``/``mask`` are hints; the members decide). Each program
owns ``BLOCK_M`` queries of one (batch, head) and streams ``BLOCK_N`` keys at a time with the
online softmax: running max ``m_i``, running sum ``l_i`` and an fp32 ``acc``, rescaled by
``alpha = exp2(m_old - m_new)``; scores are scaled by ``scale * log2(e)`` so that ``exp2`` is used.

Causal (``index(s, -1) <= index(s, -2)``, top-left aligned like the IR's index comparison):
key tiles entirely above the diagonal are never visited (the loop stops at the query block's
last row), tiles entirely below it run unmasked in a first loop, and only the diagonal tiles
(and a ragged key tail) are predicated in a second loop: the divergence pass's "tile-skip".

Layouts ``[B, H, S, d]`` and ``[B, S, d]`` (any strides, the head dim contiguous: a permuted
``[B, S, H, d]`` projection is read in place) come through stride parameters. An explicit bool
mask tensor broadcastable to the scores is loaded per tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from esperc.backend.triton.common import (
    STORE_DTYPE,
    CodegenError,
    Namer,
    Writer,
    dim_py,
    next_pow2,
    prod,
)
from esperc.backend.triton.configs import Config, default_attention
from esperc.backend.triton.kernels.assemble import Emitted, finish
from esperc.backend.triton.regions import Params, RegionInfo, needs_i64
from esperc.backend.triton.tiles import View
from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import DType

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Facts:
    q: str
    k: str  # a [.., Sk, d] tensor (the transpose's source), or kt when k_is_kt
    k_is_kt: bool
    v: str
    out: str
    scale: float
    causal: bool
    mask: str | None


def recognise(info: RegionInfo) -> tuple[Facts, set[str]]:
    """The attention facts of the region and the members they account for.

    Raises:
        CodegenError: the members are not a (masked, scaled) softmax attention.
    """
    producers = info.func.producers()
    members = {n.result: n for n in info.nodes}
    mms = [n for n in info.nodes if n.op is Op.MATMUL]
    if len(mms) != 2:
        raise CodegenError(f"attention region @{info.region.name} needs two matmuls")
    mm1, mm2 = mms
    used = {mm1.result, mm2.result}
    q, kt = mm1.operands
    p = producers.get(kt)
    k, k_is_kt = kt, True
    rank = info.types[kt].rank
    if (
        p is not None
        and p.op is Op.TRANSPOSE
        and {p.attr("dim0") % rank, p.attr("dim1") % rank} == {rank - 2, rank - 1}
    ):
        k, k_is_kt = p.operands[0], False
        used.add(p.result)
    users = {}
    for n in info.nodes:
        for o in n.operands:
            users.setdefault(o, []).append(n)
    scale, causal, mask = 1.0, False, None
    cur = mm1.result
    while True:
        nxt = [u for u in users.get(cur, []) if u.op not in (Op.INDEX,)]
        decomposed = _decomposed_softmax(cur, nxt, users, info)
        if decomposed is not None:
            used.update(decomposed)
            cur = decomposed[-1]
            break
        if len(nxt) != 1:
            raise CodegenError(f"attention scores %{cur} have {len(nxt)} users")
        n = nxt[0]
        used.add(n.result)
        if n.op is Op.SOFTMAX:
            if n.attr("axis") % info.types[cur].rank != info.types[cur].rank - 1:
                raise CodegenError("attention softmax must run over the keys (last axis)")
            cur = n.result
            break
        other = [o for o in n.operands if o != cur]
        if n.op in (Op.MUL, Op.DIV) and len(other) == 1 and other[0] in info.consts | members:
            c = _const(info, other[0])
            scale = scale * c if n.op is Op.MUL else scale / c
            used.add(other[0])
        elif n.op is Op.CAST:
            pass
        elif n.op is Op.WHERE and n.operands[1] == cur and _const(info, n.operands[2]) <= -1e4:
            used.add(n.operands[2])
            if _is_causal(n.operands[0], members, info, used):
                causal = True
            elif n.operands[0] not in members:
                mask = n.operands[0]
            else:
                raise CodegenError(
                    f"attention mask %{n.operands[0]} is neither causal nor a tensor"
                )
        else:
            raise CodegenError(f"%{n.result} = {n.op} is not part of an attention pattern")
        cur = n.result
    while cur != mm2.operands[0]:
        (n,) = [u for u in users.get(cur, [])]
        if n.op is not Op.CAST:
            raise CodegenError(f"%{n.result} = {n.op} between softmax and the second matmul")
        used.add(n.result)
        cur = n.result
    fact = Facts(q, k, k_is_kt, mm2.operands[1], mm2.result, scale, causal, mask)
    stray = [m for m in members if m not in used and members[m].op is not Op.CONSTANT]
    if stray:
        raise CodegenError(
            f"%{stray[0]} = {members[stray[0]].op} does not fit the attention template"
        )
    return fact, used


def _decomposed_softmax(
    x: str, users_x: list[Node], users: Mapping[str, list[Node]], info: RegionInfo
) -> list[str] | None:
    """``m = reduce_max(x); e = exp(x - m); e / reduce_sum(e)`` over the last axis (the
    ``decompose`` pass's softmax): its node names ending with the result, or None."""
    last = (info.types[x].rank - 1,)
    by_op = {u.op: u for u in users_x}
    mx, sub = by_op.get(Op.REDUCE_MAX), by_op.get(Op.SUB)
    if len(users_x) != 2 or mx is None or sub is None or tuple(mx.attr("axis")) != last:
        return None
    if sub.operands != (x, mx.result):
        return None
    (e,) = users.get(sub.result, [None])  # type: ignore[list-item]
    if e is None or e.op is not Op.EXP:
        return None
    by_op = {u.op: u for u in users.get(e.result, [])}
    total, div = by_op.get(Op.REDUCE_SUM), by_op.get(Op.DIV)
    if total is None or div is None or div.operands != (e.result, total.result):
        return None
    if tuple(total.attr("axis")) != last:
        return None
    return [mx.result, sub.result, e.result, total.result, div.result]


def _const(info: RegionInfo, name: str) -> float:
    n = info.consts.get(name) or next((x for x in info.nodes if x.result == name), None)
    if n is None or n.op is not Op.CONSTANT:
        raise CodegenError(f"%{name} is not a constant")
    return float(n.attr("value"))


def _is_causal(cond: str, members: Mapping[str, Node], info: RegionInfo, used: set[str]) -> bool:
    """``index(s, -1) <= index(s, -2)`` (or ``index(s, -2) >= index(s, -1)``)."""
    n = members.get(cond)
    if n is None or n.op not in (Op.LE, Op.GE):
        return False
    idx = [members.get(o) for o in n.operands]
    if any(i is None or i.op is not Op.INDEX for i in idx):
        return False
    axes = [i.attr("axis") % info.types[i.operands[0]].rank - info.types[i.operands[0]].rank
            for i in idx]  # type: ignore[union-attr]  # fmt: skip
    if axes != ([-1, -2] if n.op is Op.LE else [-2, -1]):
        return False
    used.update([cond, *n.operands])
    return True


def generate(info: RegionInfo, config: Config | None, sources: Mapping[str, str]) -> Emitted:
    """The flash-attention kernel of ``info``'s region."""
    f, _ = recognise(info)
    tq, tk, tv, to = (info.types[x] for x in (f.q, f.k, f.v, f.out))
    batch = tuple(tq.shape[:-2])
    if len(batch) > 2:
        raise CodegenError(f"attention with {len(batch)} batch dims (at most 2: batch, heads)")
    head_d = tq.shape[-1]
    if not isinstance(head_d, int):
        raise CodegenError("attention head dim must be static")
    block_d = max(16, next_pow2(head_d))
    sk_dim = tk.shape[-1] if f.k_is_kt else tk.shape[-2]
    namer = Namer()
    namer.used |= {"SQ", "SK"}  # the kernel's own locals
    params = Params(namer)
    ptr = {
        "q": params.tensor(f.q, tq, "strided"),
        "k": params.tensor(f.k, tk, "strided", transpose_last=f.k_is_kt),
        "v": params.tensor(f.v, tv, "strided"),
    }
    if f.mask:
        ptr["mask"] = params.tensor(f.mask, info.types[f.mask], "strided")
    ptr["o"] = params.tensor(f.out, to)
    params.dims([tq.shape, tk.shape, tv.shape, to.shape])
    py = lambda d: dim_py(d, params.dim_names)  # noqa: E731
    strides: dict[str, list[str]] = {}
    for key, value, t, tr in (("q", f.q, tq, False), ("k", f.k, tk, f.k_is_kt), ("v", f.v, tv, False),
                              ("o", f.out, to, False)):  # fmt: skip
        strides[key] = [
            params.stride(value, ax, f"stride_{key}{ax}", tr) for ax in range(t.rank - 1)
        ]
    cfg = config or default_attention(head_d)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    w = Writer(sources)
    w.comment_loc(info.nodes[-1].loc)
    w(f"SQ = {dim_py(tq.shape[-2], params.dim_names, atom=False)}")
    w(f"SK = {dim_py(sk_dim, params.dim_names, atom=False)}")
    i64 = needs_i64([tq.shape, tk.shape, tv.shape, to.shape], info.dim_his)
    if f.causal:  # the longest query blocks (most key tiles) first: less tail imbalance
        w("start_m = tl.num_programs(0) - 1 - tl.program_id(0)")
    else:
        w("start_m = tl.program_id(0)")
    w(f"off_z = tl.program_id(1){'.to(tl.int64)' if i64 else ''}")
    zidx = ["off_z"] if len(batch) == 1 else [f"off_z // {py(batch[1])}", f"off_z % {py(batch[1])}"]
    for key, t in (("q", tq), ("k", tk), ("v", tv), ("o", to)):
        own = (1,) * (len(batch) - (t.rank - 2)) + tuple(t.shape[:-2])
        terms = [f"{z} * {s}" for z, s, d in zip(zidx, strides[key][: len(batch)], own) if d != 1]
        w(f"{key}_base = {ptr[key]}" + "".join(f" + {t}" for t in terms))
    w("offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    w("offs_n = tl.arange(0, BLOCK_N)")
    w(f"offs_d = tl.arange(0, {block_d})")
    dmask = f" & (offs_d < {head_d})[None, :]" if block_d != head_d else ""
    sq_s, k_s, v_s, o_s = (strides[x][-1] for x in ("q", "k", "v", "o"))
    w(f"q = tl.load(q_base + offs_m[:, None] * {sq_s} + offs_d[None, :], "
      f"mask=(offs_m < SQ)[:, None]{dmask}, other=0.0)")  # fmt: skip
    w('m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)')
    w("l_i = tl.zeros((BLOCK_M,), tl.float32)")
    w(f"acc = tl.zeros((BLOCK_M, {block_d}), tl.float32)")
    w(f"qk_scale = {f.scale!r} * {_LOG2E}  # softmax scale and log2(e): exp2 below")
    if f.causal:
        w("# causal: key tiles above the diagonal are skipped (loop bound), tiles below it run")
        w("# unmasked, only the diagonal tiles are predicated")
        w("mid = tl.minimum((start_m * BLOCK_M + 1) // BLOCK_N, SK // BLOCK_N) * BLOCK_N")
        w("hi = tl.minimum((start_m + 1) * BLOCK_M, SK)")
    else:
        w("mid = (SK // BLOCK_N) * BLOCK_N  # whole key tiles need no mask")
        w("hi = SK")
    dot_prec = ', input_precision="ieee"' if tq.dtype is DType.F32 else ""
    mask_view = None
    if f.mask:
        mt = info.types[f.mask]
        mstr = [params.stride(f.mask, ax, f"stride_mask{ax}") for ax in range(mt.rank)]
        mask_view = (mt, mstr, ptr["mask"])
    for masked, lo, hi in ((False, "0", "mid"), (True, "mid", "hi")):
        w(
            f"for start_n in range({lo}, {hi}, BLOCK_N):"
            + ("  # diagonal / ragged tiles" if masked else "")
        )
        w.indent += 1
        _tile(w, masked, f, k_s, v_s, dmask, dot_prec, tv.dtype, mask_view, batch, zidx, py)
        w.indent -= 1
    w("acc = acc / l_i[:, None]")
    w(f"tl.store(o_base + offs_m[:, None] * {o_s} + offs_d[None, :], acc.to({STORE_DTYPE[to.dtype]}), "
      f"mask=(offs_m < SQ)[:, None]{dmask})")  # fmt: skip
    grid = ((("cdiv", str(tq.shape[-2]), "BLOCK_M"),), (("dim", str(prod(batch))),))
    cvals = {"BLOCK_M": bm, "BLOCK_N": bn}
    requires: list[str] = []
    doc = (f"Flash attention @{info.region.name}: q {tq}, k {tk}, v {tv}; scale {f.scale:g}"
           f"{', causal' if f.causal else ''}{', mask' if f.mask else ''}.")  # fmt: skip
    outs = {f.out: View(ptr["o"], to.dtype, to.shape)}
    emitted = finish(info, params, outs, [], w, ["BLOCK_M", "BLOCK_N"], cvals, cfg, grid,
                     requires, doc)  # fmt: skip
    if head_d % 16:
        return emitted
    # strides of views of contiguous tensors whose last dim is a multiple of 16 are multiples of
    # 16 too: promising it keeps the AOT cubin's row loads 16-byte vectors (the runtime checks)
    div = emitted.kernel.divisible_by_16 + tuple(
        n for n in params.names if n.startswith("stride_") and not n.startswith("stride_mask")
    )
    return replace(emitted, kernel=replace(emitted.kernel, divisible_by_16=div))


def _tile(w: Writer, masked: bool, f: Facts, k_s: str, v_s: str, dmask: str, prec: str,
          v_dtype: DType, mask_view, batch, zidx, py) -> None:  # noqa: ANN001  # fmt: skip
    """One step of the online softmax over keys ``start_n .. start_n + BLOCK_N``."""
    w("cols = start_n + offs_n")
    kmask = "(cols < SK)[:, None]" + dmask if masked else (dmask[3:] if dmask else "")
    kl = f", mask={kmask}, other=0.0" if kmask else ""
    w(f"k = tl.load(k_base + cols[:, None] * {k_s} + offs_d[None, :]{kl})")
    w(f"s = tl.dot(q, tl.trans(k){prec}) * qk_scale")
    keep = []
    if masked:
        keep.append("(cols < SK)[None, :]")
        if f.causal:
            keep.append("(cols[None, :] <= offs_m[:, None])")
    if mask_view is not None:
        mt, mstr, mptr = mask_view
        nb = mt.rank - 2
        parts = []
        for i in range(nb):
            zi = zidx[len(zidx) - nb + i] if len(zidx) - nb + i >= 0 else None
            if mt.shape[i] != 1 and zi is not None:
                parts.append(f"{zi} * {mstr[i]}")
        if mt.shape[-2] != 1:
            parts.append(f"offs_m[:, None] * {mstr[-2]}")
        if mt.shape[-1] != 1:
            parts.append(f"cols[None, :] * {mstr[-1]}")
        bounds = "(offs_m < SQ)[:, None] & (cols < SK)[None, :]"
        w(f"keep = tl.load({mptr} + {' + '.join(parts) or '0'}, mask={bounds}, other=0) != 0")
        keep.append("keep")
    if keep:
        w(f's = tl.where({" & ".join(keep)}, s, float("-inf"))')
    w("m_ij = tl.maximum(m_i, tl.max(s, 1))")
    w("p = tl.exp2(s - m_ij[:, None])")
    w("alpha = tl.exp2(m_i - m_ij)")
    w("l_i = l_i * alpha + tl.sum(p, 1)")
    vl = f", mask={kmask}, other=0.0" if kmask else ""
    w(f"v = tl.load(v_base + cols[:, None] * {v_s} + offs_d[None, :]{vl})")
    w(f"acc = tl.dot(p.to({STORE_DTYPE[v_dtype]}), v, acc * alpha[:, None]{prec})")
    w("m_i = m_ij")
