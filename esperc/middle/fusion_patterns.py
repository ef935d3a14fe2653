"""Pattern matchers of the ``fuse`` pass: attention, softmax (composite or decomposed), and the
transposed weight operand of a matmul.

The attention pattern is ``softmax(q @ transpose(k) * scale [+ mask | where(mask, s, -inf)]) @ v``
with any casts in between, the scale as ``mul``/``div`` by a rank-0 value, and the softmax either
the ``softmax`` op or its decomposition ``div(exp(x - reduce_max x), reduce_sum exp(...))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.middle import fusion_masks as masks


@dataclass
class AttentionMatch:
    """One attention pattern: its member nodes and the facts the code generator needs."""

    members: set[str]
    attrs: dict[str, object] = field(default_factory=dict)


def through_casts(v: str, nodes: Mapping[str, Node], seen: set[str]) -> str:
    while v in nodes and nodes[v].op is Op.CAST:
        seen.add(v)
        v = nodes[v].operands[0]
    return v


def is_last_two_transpose(n: Node) -> bool:
    r = n.type.rank
    return n.op is Op.TRANSPOSE and (n.attr("dim0"), n.attr("dim1")) == (r - 2, r - 1)


def match_softmax(p: str, nodes: Mapping[str, Node], seen: set[str]) -> str | None:
    """The input of a last-axis softmax producing ``p`` (adds its nodes to ``seen``)."""
    p = through_casts(p, nodes, seen)
    n = nodes.get(p)
    if n is None:
        return None
    last = n.type.rank - 1
    if n.op is Op.SOFTMAX and n.attr("axis") == last:
        seen.add(p)
        return n.operands[0]
    if n.op is not Op.DIV:
        return None
    e, z = (nodes.get(o) for o in n.operands)
    if e is None or z is None or e.op is not Op.EXP or z.op is not Op.REDUCE_SUM:
        return None
    if z.operands[0] != e.result or tuple(z.attr("axis")) != (last,):
        return None
    d = nodes.get(e.operands[0])
    if d is None or d.op is not Op.SUB:
        return None
    m = nodes.get(d.operands[1])
    if m is None or m.op is not Op.REDUCE_MAX or m.operands[0] != d.operands[0]:
        return None
    if tuple(m.attr("axis")) != (last,):
        return None
    seen.update({n.result, e.result, z.result, d.result, m.result})
    return d.operands[0]


def _neg_inf(v: str, nodes: Mapping[str, Node]) -> bool:
    n = nodes.get(v)
    return n is not None and n.op is Op.CONSTANT and n.attr("value") == -math.inf


def _rank0(v: str, nodes: Mapping[str, Node], types: Mapping[str, object]) -> bool:
    return types[v].rank == 0  # type: ignore[attr-defined]


def match_attention(
    m2: Node,
    nodes: Mapping[str, Node],
    types: Mapping[str, object],
    users: Mapping[str, list[str]],
    free: set[str],
) -> AttentionMatch | None:
    """Match the attention pattern ending at the matmul ``m2`` (``p @ v``)."""
    if m2.op is not Op.MATMUL:
        return None
    seen: set[str] = {m2.result}
    x = match_softmax(m2.operands[0], nodes, seen)
    if x is None:
        return None
    attrs: dict[str, object] = {"mask": "none", "causal": False, "scale": 1.0}
    cond = None
    while True:
        x = through_casts(x, nodes, seen)
        n = nodes.get(x)
        if n is None:
            return None
        if n.op is Op.MATMUL:
            break
        seen.add(x)
        if n.op is Op.WHERE and _neg_inf(n.operands[2], nodes):
            cond, x = n.operands[0], n.operands[1]
        elif n.op is Op.ADD and attrs["mask"] == "none":
            a, b = n.operands
            mask, x = (b, a) if _leads_to_matmul(a, nodes) else (a, b)
            attrs["mask"], attrs["mask_value"] = "additive", mask
        elif n.op in (Op.MUL, Op.DIV) and _rank0(n.operands[1], nodes, types):
            s = n.operands[1]
            c = nodes.get(s)
            if c is not None and c.op is Op.CONSTANT:
                val = float(c.attr("value"))
                attrs["scale"] = val if n.op is Op.MUL else 1.0 / val
            else:
                attrs["scale"] = s
            x = n.operands[0]
        else:
            return None
    s_mm = nodes[x]
    seen.add(x)
    q, kt = s_mm.operands
    attrs.update(q=q, v=m2.operands[1], out=m2.result, trans_k=False, k=kt)
    ktn = nodes.get(kt)
    if ktn is not None and is_last_two_transpose(ktn) and users[kt] == [x]:
        seen.add(kt)
        attrs.update(k=ktn.operands[0], trans_k=True)
    if cond is not None:
        _mask_attrs(cond, nodes, types, seen, attrs)
    for m in seen - {m2.result}:  # flash attention never materialises the intermediates
        if any(u not in seen for u in users[m]):
            return None
    return AttentionMatch(seen - free, attrs)


def _leads_to_matmul(v: str, nodes: Mapping[str, Node]) -> bool:
    for _ in range(16):
        n = nodes.get(v)
        if n is None:
            return False
        if n.op is Op.MATMUL:
            return True
        if n.op not in (Op.CAST, Op.MUL, Op.DIV, Op.ADD, Op.WHERE):
            return False
        v = n.operands[1] if n.op is Op.WHERE else n.operands[0]
    return False


def _mask_attrs(
    cond: str,
    nodes: Mapping[str, Node],
    types: Mapping[str, object],
    seen: set[str],
    attrs: dict[str, object],
) -> None:
    cls = masks.classify(cond, nodes, types)  # type: ignore[arg-type]
    expr = masks.build(cond, nodes) if cls == "index-affine" else None
    if expr is None:
        attrs["mask"] = "where"
        attrs["mask_value"] = cond
        return
    attrs["mask"] = "causal-index"
    stack = [cond]
    while stack:  # the coordinate computation joins the kernel
        v = stack.pop()
        if v in nodes and v not in seen:
            seen.add(v)
            if nodes[v].op is not Op.INDEX:
                stack.extend(nodes[v].operands)
    if masks.axes_of(expr) - {-1, -2}:
        return
    n = 9
    rows, cols = np.arange(n).reshape(-1, 1), np.arange(n).reshape(1, -1)
    got = masks.evaluate(expr, {-2: rows, -1: cols})
    attrs["causal"] = bool(np.array_equal(np.broadcast_to(got, (n, n)), cols <= rows))
