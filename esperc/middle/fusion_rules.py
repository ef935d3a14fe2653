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

A *column reduction* (a reduction over the leading axes of its operand, such as a bias gradient
summed over the batch) starts as a pointwise group over its operand's shape and joins the kernel
that computes the operand: a rows x cols pointwise kernel, a single-pass row reduction over the
same rows, or a 2-D matmul's epilogue. Nothing in the same kernel may read its result, which is
complete only after the finishing kernel (``column_verdict``).
"""

from __future__ import annotations

import math

from esperc.ir.graph import Node
from esperc.ir.ops import (
    COMPOSITES,
    CONTRACTIONS,
    DATA_MOVEMENT,
    ELEMENTWISE,
    REDUCTIONS,
    Op,
)
from esperc.ir.types import Dim, TypeRuleError, broadcast_shapes, normalize_axis, shape_str
from esperc.middle.fusion_graph import Group, Partition

POINTWISE_OPS = ELEMENTWISE | {Op.INDEX, Op.BROADCAST_TO, Op.CONSTANT}
VIEW_OPS = DATA_MOVEMENT - {Op.BROADCAST_TO}
# A row reduction holds a whole row in registers up to this length (the backend's single-pass
# limit, ``backend/triton/configs.MAX_PERSISTENT_N``); only such kernels take column reductions.
SINGLE_PASS_ROW = 16384


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


def column_axes(n: Node, rank: int) -> tuple[int, ...] | None:
    """The reduced axes of ``n`` when it is a column reduction of a rank-``rank`` operand: a
    reduction over a leading prefix of the axes that keeps at least one axis; else None."""
    if n.op not in REDUCTIONS or rank < 2:
        return None
    axes = tuple(sorted(normalize_axis(a, rank) for a in n.attr("axis")))  # type: ignore[union-attr]
    return axes if axes and axes == tuple(range(len(axes))) and len(axes) < rank else None


def seed(part: Partition, n: Node) -> Group:
    """The one-node group a node starts in."""
    types = part.func.types()
    if n.op in REDUCTIONS and column_axes(n, types[n.operands[0]].rank) is not None:
        x = types[n.operands[0]].shape
        return Group("pointwise", {n.result}, space=x, colsums={n.result: x})
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
        space = broadcast_shapes(space, g.colsums.get(m, part.nodes[m].type.shape))
    return space


def column_verdict(part: Partition, p: Group, c: Group) -> str | None:
    """Why groups with column reductions cannot merge (None: the other rules decide)."""
    for g, other in ((p, c), (c, p)):
        if g.colsums and any(o in g.colsums for m in other.members for o in part.nodes[m].operands):
            return "a column reduction's result is complete only after its kernel's finishing pass"
    spaces = set(p.colsums.values()) | set(c.colsums.values())
    if len(spaces) > 1:
        return "column reductions over different shapes do not share a kernel"
    (space,) = spaces
    kinds = {p.kind, c.kind}
    if kinds == {"pointwise"}:
        try:
            merged = broadcast_shapes(_pointwise_space(part, p), _pointwise_space(part, c))
        except TypeRuleError:
            merged = ()
        if merged != space:
            return f"a column reduction needs the iteration space {shape_str(space)}"
        return None
    lead = len(column_axes(part.nodes[next(iter(p.colsums or c.colsums))],
                           len(space)) or ())  # fmt: skip
    other = p if p.kind != "pointwise" else c
    if other.kind == "reduction":
        row = [other.space[a] for a in other.axes]
        if other.space != space or other.axes != tuple(range(lead, len(space))):
            return f"a column reduction of {shape_str(space)} needs the same rows"
        if not all(isinstance(d, int) for d in row) or math.prod(row) > SINGLE_PASS_ROW:  # type: ignore[arg-type]
            return "a column reduction fuses only into a single-pass row reduction"
        return None
    if other.kind == "matmul":
        anchor = part.nodes[other.anchor]
        if other is c:
            return "a column reduction does not fuse into a matmul's operands"
        if other.space != space or lead != len(space) - 1:
            return f"a column reduction of {shape_str(space)} needs the matmul's output rows"
        if part.func.types()[anchor.operands[1]].rank != 2:
            return "a column reduction fuses only into a matmul with one (2-D) B operand"
        return None
    return f"a column reduction does not fuse into a {other.kind} region"


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
    if (p.colsums or c.colsums) and "view" not in kinds:
        why = column_verdict(part, p, c)
        if why is not None:
            return why
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
