"""Gradient rules of the contractions (matmul, linear) and of the data-movement ops.

``matmul``: ``da = g @ b^T``, ``db = a^T @ g``, summed by the driver over batch dims the operand
was broadcast along. When one operand is a plain matrix and the other is batched (a weight
applied to a batch of rows), the rows are flattened so that the weight's gradient is ONE matrix
product over all rows, as PyTorch's ``matmul`` folds the batch into M. ``linear``:
``dx = g @ w``, ``dw = g^T @ x`` over all rows, ``db = g`` (summed over rows, in f32). Matrix
products keep the operand dtype (they accumulate in f32 internally on every backend).

Data movement: the gradient is moved back (``reshape``, the inverse ``permute``, the same
``transpose``); ``broadcast_to`` is undone by the driver's sum; ``concat`` slices the gradient;
``slice`` pads it back with zeros (``concat`` of broadcast zero literals).
"""

from __future__ import annotations

from collections.abc import Sequence

from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import Dim, SymDim, numel
from esperc.middle.gradients_base import AutodiffError, GradCtx

Grads = Sequence[str | None]


def _t(ctx: GradCtx, v: str) -> str:
    """Swap the last two axes."""
    r = ctx.type(v).rank
    return ctx.op(Op.TRANSPOSE, v, dim0=r - 2, dim1=r - 1)


def _rows(ctx: GradCtx, v: str) -> str:
    """``v`` as a matrix: every leading axis flattened into the rows."""
    shape = ctx.shape(v)
    return ctx.reshape(v, [numel(shape[:-1]), shape[-1]])


def matmul(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    a_name, b_name = node.operands
    a_ty, b_ty = ctx.fwd_type(a_name), ctx.fwd_type(b_name)
    batch = node.type.shape[:-2]
    da = db = None
    if needs[0]:
        b = ctx.fwd(b_name)
        da = ctx.op(Op.MATMUL, g, _t(ctx, b))
    if needs[1]:
        a = ctx.fwd(a_name)
        if b_ty.rank == 2 and batch and a_ty.shape[:-2] == batch:
            db = ctx.op(Op.MATMUL, _t(ctx, _rows(ctx, a)), _rows(ctx, g))
        else:
            db = ctx.op(Op.MATMUL, _t(ctx, a), g)
    return [da, db]


def linear(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    x_ty = ctx.fwd_type(node.operands[0])
    out: list[str | None] = [None] * len(node.operands)
    if needs[0]:
        w = ctx.fwd(node.operands[1])
        if x_ty.rank == 1:
            row = ctx.op(Op.MATMUL, ctx.reshape(g, [1, node.type.shape[0]]), w)
            out[0] = ctx.reshape(row, x_ty.shape)
        else:
            out[0] = ctx.op(Op.MATMUL, g, w)
    if needs[1]:
        x = ctx.fwd(node.operands[0])
        if x_ty.rank == 1:
            x = ctx.reshape(x, [1, x_ty.shape[0]])
            g2 = ctx.reshape(g, [1, node.type.shape[0]])
        else:
            x, g2 = _rows(ctx, x), _rows(ctx, g)
        out[1] = ctx.op(Op.MATMUL, _t(ctx, g2), x)
    if len(node.operands) > 2 and needs[2]:
        out[2] = g
    return out


# ---------------------------------------------------------------------------- data movement


def reshape(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    return [ctx.reshape(g, ctx.fwd_type(node.operands[0]).shape)]


def transpose(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    return [ctx.op(Op.TRANSPOSE, g, dim0=node.attr("dim0"), dim1=node.attr("dim1"))]


def permute(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    dims = node.attr("dims")
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d] = i
    return [ctx.op(Op.PERMUTE, g, dims=tuple(inverse))]


def broadcast_to(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """The driver sums the gradient over the broadcast axes."""
    return [g]


def concat(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """Each operand's piece of the gradient, sliced out at its static offset.

    Raises:
        AutodiffError: an operand that needs a gradient starts or ends at a dynamic offset.
    """
    axis = node.attr("axis")
    out: list[str | None] = []
    start: Dim = 0
    for o, need in zip(node.operands, needs):
        size = ctx.fwd_type(o).shape[axis]
        end = start + size
        if need:
            if isinstance(start, SymDim) or isinstance(end, SymDim):
                raise AutodiffError(
                    f"%{node.result} = concat: the gradient of %{o} is at a dynamic offset "
                    f"[{start}:{end}] along axis {axis}"
                )
            out.append(ctx.op(Op.SLICE, g, axis=axis, start=start, end=end))
        else:
            out.append(None)
        start = end
    return out


def slice_(ctx: GradCtx, node: Node, g: str, needs: tuple[bool, ...]) -> Grads:
    """The gradient padded with zeros before and after, along the sliced axis."""
    x_ty = ctx.fwd_type(node.operands[0])
    axis = node.attr("axis")
    size = x_ty.shape[axis]
    start, end = node.attr("start"), node.attr("end")
    if isinstance(size, int):  # Python slice semantics: negative bounds count from the end
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
    after = size - end
    pieces = []
    for length in (start, None, after):
        if length is None:
            pieces.append(g)
        elif not (isinstance(length, int) and length == 0):
            shape = list(x_ty.shape)
            shape[axis] = length
            pieces.append(ctx.zeros(shape, ctx.type(g).dtype))
    if len(pieces) == 1:
        return [g]
    return [ctx.op(Op.CONCAT, *pieces, axis=axis)]
