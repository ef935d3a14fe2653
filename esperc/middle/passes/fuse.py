"""Kernel formation: partition the body into fused GPU kernel regions."""

from __future__ import annotations

from dataclasses import dataclass

from esperc.ir.graph import Func, Node
from esperc.ir.ops import COMPOSITES, CONTRACTIONS, REDUCTIONS, Op
from esperc.ir.types import numel, shape_str
from esperc.middle.fusion_graph import Group, Partition, assemble, dim_bounds, nbytes
from esperc.middle.fusion_patterns import is_last_two_transpose, match_attention
from esperc.middle.fusion_rules import absorb, merge_verdict, seed
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register


@register
@dataclass(frozen=True)
class Fuse(FunctionPass):
    """Partition the body into kernel regions: pointwise, reduction, matmul, attention, view.

    Attention patterns are matched first and closed; every other node starts in a group of its
    own, and groups merge across producer -> consumer edges in order of the bytes the merge saves
    (an intermediate written once and read once saves twice its size; one with other readers
    only its read and a share of the write), when ``fusion_rules`` allows it and the merge keeps the region graph acyclic.
    Rank-0 constants, and transposes of arguments read as a matmul's B operand, are cloned into
    every region that uses them; everything else computed once is materialised. The body is
    reordered topologically so that each region is contiguous.

    Preserves: semantics (nodes are only reordered, and free nodes cloned). Requires: verified
    SSA. Recomputes regions from scratch, so running it twice gives the same result.
    """

    name = "fuse"
    max_ops: int = 64
    explain: bool = False

    def run(self, func: Func, ctx: PassContext) -> Func:
        func = func.with_(regions=())
        hi = dim_bounds(func)
        part = Partition(func, _free_nodes(func))
        _match_attention(part)
        for n in func.body:
            if n.result not in part.free and n.result not in part.group_of:
                part.add(_seed(part, n))
        boundaries = self._merge(part, hi)
        groups = part.groups()
        for g in groups:
            _finish(part, g)
        out, order = assemble(func, part, groups, func.name)
        ctx.stat("regions", len(order))
        for g in order:
            ctx.stat(f"regions-{g.kind}")
        if self.explain:
            _explain(ctx, out, part, boundaries)
        return out

    def _merge(self, part: Partition, hi: dict[str, int]) -> dict[tuple[str, str], str]:
        types = part.func.types()
        results = set(part.func.results)
        # Ties go to the edge nearest the inputs; depth (longest path from the arguments) and
        # names do not depend on the body order, so a second run forms the same regions.
        depth: dict[str, int] = {}
        for n in part.func.body:
            depth[n.result] = 1 + max((depth.get(o, 0) for o in n.operands), default=0)
        edges = []
        for c in part.func.body:
            if c.result in part.free:
                continue
            for p in dict.fromkeys(part.preds(c.result)):
                # A value read by k kernels costs its write once plus k reads: fusing one edge
                # saves a read and a k-th share of the write (the whole write if it is returned).
                k = len(part.users[p])
                size = nbytes(types[p], hi)
                w = 0 if c.op is Op.INDEX else size + (0 if p in results else size // k)
                edges.append((-w, depth[p], depth[c.result], p, c.result))
        edges.sort()
        why: dict[tuple[str, str], str] = {}
        for prologue in (False, True):
            for _, _, _, p, c in edges:
                gp, gc = part.group_of[p], part.group_of[c]
                if gp is gc:
                    continue
                verdict = merge_verdict(part, gp, gc, self.max_ops, prologue)
                if verdict is None and part.creates_cycle(gp, gc):
                    verdict = "merging would create a cycle through another region"
                if verdict is None:
                    absorb(part, gp, gc)
                else:
                    why[(p, c)] = verdict
        return why


def _free_nodes(func: Func) -> set[str]:
    """Nodes cloned into each using region: rank-0 constants, and transposes of arguments that
    only feed matmuls as operand B (the matmul kernel reads the weight transposed)."""
    args = {a.name for a in func.args}
    users = func.users()
    free = set()
    for n in func.body:
        if n.op is Op.CONSTANT:
            free.add(n.result)
        elif is_last_two_transpose(n) and n.operands[0] in args and users[n.result]:
            if all(u.op is Op.MATMUL and u.operands[1] == n.result != u.operands[0]
                   for u in users[n.result]):  # fmt: skip
                free.add(n.result)
    return free


def _match_attention(part: Partition) -> None:
    types = part.func.types()
    for n in part.func.body:
        if n.op is not Op.MATMUL or n.result in part.group_of:
            continue
        m = match_attention(n, part.nodes, types, part.users, part.free)
        if m is None or any(x in part.group_of for x in m.members):
            continue
        if any(x in part.func.results for x in m.members - {n.result}):
            continue  # a returned intermediate (p, s) must be materialised: no flash attention
        mask = m.attrs["mask"]
        how = "causal mask" if m.attrs["causal"] else f"mask {mask}"
        reason = f"attention softmax(q @ k^T * scale, {how}) @ v"
        part.add(Group("attention", set(m.members), closed=True, attrs=m.attrs, reasons=[reason]))


def _seed(part: Partition, n: Node) -> Group:
    g = seed(part, n)
    if g.kind != "matmul" or n.op not in CONTRACTIONS:
        return g
    a = part.nodes.get(n.operands[0])
    if a is not None and is_last_two_transpose(a) and a.result not in part.free:
        if part.users[a.result] == [n.result] and a.result not in part.group_of:
            g.members.add(a.result)  # read through swapped strides (a weight gradient x^T dy)
            g.attrs.update(trans_a=True)
            g.reasons.append("A read transposed")
    if n.op is Op.LINEAR:
        return g
    b = part.nodes.get(n.operands[1])
    if b is not None and is_last_two_transpose(b):
        if b.result in part.free or (
            part.users[b.result] == [n.result] and b.result not in part.group_of
        ):
            if b.result not in part.free:
                g.members.add(b.result)
            g.attrs.update(b=b.operands[0], trans_b=True)
            g.reasons.append("B read transposed")
    return g


def _finish(part: Partition, g: Group) -> None:
    """Kind-specific region attributes and a readable reason."""
    nodes = [part.nodes[m] for m in sorted(g.members, key=part.position.__getitem__)]
    cols = [n.result for n in nodes if n.result in g.colsums]
    if cols:
        g.attrs["colsum"] = ",".join(cols)
    if g.kind == "reduction":
        reds = [
            n
            for n in nodes
            if (n.op in REDUCTIONS or n.op in COMPOSITES) and n.result not in g.colsums
        ]
        axes = list(g.axes)
        row = numel(tuple(g.space[a] for a in g.axes if a < len(g.space)))
        g.attrs.update(axis=axes[0] if len(axes) == 1 else axes, row=str(row))
        ops = ", ".join(dict.fromkeys(n.op.value for n in reds))
        g.reasons = [
            f"{len(reds)} row reduction(s) ({ops}) over axis {axes} of {shape_str(g.space)} "
            f"with {len(nodes) - len(reds) - len(cols)} pointwise ops"
        ]
    elif g.kind == "matmul":
        epi = int(g.attrs.get("epilogue", 0))
        g.attrs["epilogue"] = epi
        if g.prologue:
            g.attrs["prologue"] = len(g.prologue)
        if epi:
            g.reasons.append(
                f"epilogue of {epi} ops: "
                + ", ".join(
                    dict.fromkeys(
                        n.op.value
                        for n in nodes
                        if n.result not in g.prologue
                        and n.result not in g.colsums
                        and n.op not in CONTRACTIONS
                        and n.op is not Op.TRANSPOSE
                    )
                )
            )
    elif g.kind == "pointwise":
        space = shape_str(g.space) if g.space else "[]"
        g.reasons = [f"pointwise chain of {len(nodes) - len(cols)} ops over {space}"]
    elif g.kind == "view":
        g.reasons = ["data movement: " + ", ".join(dict.fromkeys(n.op.value for n in nodes))]
    if cols:
        g.reasons.append(
            f"{len(cols)} column reduction(s) over the rows, finished by a second kernel"
        )


def _explain(
    ctx: PassContext, func: Func, part: Partition, why: dict[tuple[str, str], str]
) -> None:
    region_of = func.region_of()
    for r in func.regions:
        ctx.remark(
            f"@{r.name}: {r.attr('kind')} region of {len(r.members)} ops: {r.attr('reason')}"
        )
    for (p, c), reason in sorted(
        why.items(), key=lambda kv: (part.position[kv[0][0]], part.position[kv[0][1]])
    ):
        rp, rc = region_of.get(p), region_of.get(c)
        if rp is None or rc is None or rp is rc:
            continue
        ctx.remark(f"boundary %{p} -> %{c} (@{rp.name} -> @{rc.name}): {reason}")
