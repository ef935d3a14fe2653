"""Which groups may merge: the legality table of the ``fuse`` pass.

Kinds and what each may absorb (``merge_verdict`` returns the merged kind or a reason why not):

- pointwise + pointwise -> pointwise, when one iteration space broadcasts into the other;
- reduction + pointwise -> reduction, when the pointwise space broadcasts into the rows (the
  prologue and epilogue of a row reduction) or is the reduced shape itself;
- reduction + reduction -> reduction, only over the same rows and axes;
- matmul + pointwise consumer -> matmul epilogue, when its space broadcasts into the output tile;
- pointwise producer of operand A -> matmul prologue, when all it computes is A;
- views merge with views; attention regions are closed; everything else stays apart (two
  matmuls, a reduction into a matmul prologue, a matmul into a reduction).
"""

from __future__ import annotations

from esperc.ir.graph import Node
from esperc.ir.ops import (
    COMPOSITES,
    CONTRACTIONS,
    DATA_MOVEMENT,
    ELEMENTWISE,
    REDUCTIONS,
    Op,
)
from esperc.ir.types import Dim, TypeRuleError, broadcast_shapes, shape_str
from esperc.middle.fusion_graph import Group, Partition

POINTWISE_OPS = ELEMENTWISE | {Op.INDEX, Op.BROADCAST_TO, Op.CONSTANT}
VIEW_OPS = DATA_MOVEMENT - {Op.BROADCAST_TO}


def fits(shape: tuple[Dim, ...], space: tuple[Dim, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts into ``space`` without enlarging it."""
    try:
        return broadcast_shapes(shape, space) == tuple(space)
    except TypeRuleError:
        return False


def reduction_axes(n: Node) -> tuple[int, ...]:
    """Reduced axes of a reduction or row-wise composite (normalised, sorted)."""
    if n.op in REDUCTIONS:
        return tuple(n.attr("axis"))
    if n.op in (Op.SOFTMAX, Op.LOG_SOFTMAX):
        return (n.attr("axis"),)
    return (n.type.rank - 1,)  # layer_norm / rms_norm: the last axis


def seed(part: Partition, n: Node) -> Group:
    """The one-node group a node starts in."""
    types = part.func.types()
    if n.op in CONTRACTIONS:
        a, b = n.operands[0], n.operands[1]
        g = Group("matmul", {n.result}, space=n.type.shape, anchor=n.result)
        g.attrs.update(anchor=n.result, a=a, b=b, trans_b=n.op is Op.LINEAR, epilogue=0)
        g.reasons.append(f"{n.op} %{n.result}")
        return g
    if n.op in REDUCTIONS or n.op in COMPOSITES:
        x = types[n.operands[0]]
        axes = reduction_axes(n)
        g = Group("reduction", {n.result}, space=x.shape, axes=axes, anchor=n.result)
        g.reasons.append(f"rows of {shape_str(x.shape)} over axis {list(axes)}")
        return g
    if n.op in VIEW_OPS:
        return Group("view", {n.result}, space=n.type.shape, reasons=[f"{n.op} (no compute)"])
    return Group("pointwise", {n.result}, space=n.type.shape)


def _pointwise_space(part: Partition, g: Group) -> tuple[Dim, ...]:
    space: tuple[Dim, ...] = ()
    for m in g.members:
        space = broadcast_shapes(space, part.nodes[m].type.shape)
    return space


def _reduced_shape(space: tuple[Dim, ...], axes: tuple[int, ...]) -> tuple[Dim, ...]:
    return tuple(d for i, d in enumerate(space) if i not in axes)


def merge_verdict(
    part: Partition, p: Group, c: Group, max_ops: int, prologue: bool = True
) -> str | None:
    """Why producer-side group ``p`` and consumer-side group ``c`` cannot merge (None: they can).

    ``prologue=False`` refuses matmul prologues (the pass tries them last, so that pointwise
    producers first join the epilogue of the kernel that computes their inputs).
    """
    if p.closed or c.closed:
        return f"{'producer' if p.closed else 'consumer'} is a closed {p.kind if p.closed else c.kind} region"
    size = len(p.members) + len(c.members)
    if size > max_ops:
        return f"region would have {size} ops (max-ops is {max_ops})"
    kinds = {p.kind, c.kind}
    if kinds == {"view"}:
        return None
    if "view" in kinds:
        return "data movement stays in its own view region"
    if kinds == {"matmul"}:
        return "two matrix products do not share a kernel"
    if kinds == {"reduction", "matmul"}:
        return (
            "a reduction's output does not feed a matmul prologue" if p.kind == "reduction"
            else "a reduction needs whole rows; a matmul tile holds only BLOCK_N columns"
        )  # fmt: skip
    if kinds == {"reduction"}:
        if p.axes != c.axes or p.space != c.space:
            return (
                f"reductions over different rows ({shape_str(p.space)} axis {list(p.axes)} vs "
                f"{shape_str(c.space)} axis {list(c.axes)})"
            )
        return None
    if "reduction" in kinds:
        r, pw = (p, c) if p.kind == "reduction" else (c, p)
        space = _pointwise_space(part, pw)
        if fits(space, r.space) or space == _reduced_shape(r.space, r.axes):
            return None
        return f"{shape_str(space)} does not fit the rows {shape_str(r.space)}"
    if "matmul" in kinds:
        return _matmul_verdict(part, p, c, prologue)
    space_p, space_c = _pointwise_space(part, p), _pointwise_space(part, c)
    if fits(space_p, space_c) or fits(space_c, space_p):
        return None
    return f"iteration spaces {shape_str(space_p)} and {shape_str(space_c)} differ"


def _matmul_verdict(part: Partition, p: Group, c: Group, prologue: bool) -> str | None:
    mm, pw = (p, c) if p.kind == "matmul" else (c, p)
    space = _pointwise_space(part, pw)
    if mm is p:  # epilogue: consumers of the matmul group
        if fits(space, mm.space):
            return None
        return f"{shape_str(space)} does not fit the output tile {shape_str(mm.space)}"
    # the pointwise group produces something the matmul group reads
    anchor = part.nodes[mm.anchor]
    outs = {m for m in pw.members if any(u not in pw.members for u in part.succs(m))}
    feeds_a = outs == {anchor.operands[0]} and all(
        u == anchor.result and anchor.operands[1] != m for m in outs for u in part.succs(m)
    )
    a_shape = part.nodes[anchor.operands[0]].type.shape if feeds_a else ()
    if feeds_a and fits(space, a_shape):
        return None if prologue else "prologue fusion is tried after epilogues"
    if not any(u == anchor.result for m in outs for u in part.succs(m)) and fits(space, mm.space):
        return None  # computes an epilogue input inside the output tile
    return "only a pure prologue of operand A fuses into a matmul"


def absorb(part: Partition, p: Group, c: Group) -> Group:
    """Merge two groups; the survivor is the one of the stronger kind (matmul, reduction...)."""
    keep, other = (c, p) if p.kind == "pointwise" and c.kind != "pointwise" else (p, c)
    if keep.kind == "matmul" and other.kind == "pointwise":
        anchor = part.nodes[keep.anchor]
        if anchor.operands[0] in other.members:
            keep.prologue |= other.members
            keep.reasons.append("prologue on operand A")
        else:
            keep.attrs["epilogue"] = int(keep.attrs.get("epilogue", 0)) + len(other.members)
    if keep.kind == "pointwise":
        keep.space = broadcast_shapes(keep.space, other.space)
    part.merge(keep, other)
    return keep
