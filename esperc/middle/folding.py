"""Constant evaluation of elementwise ops on rank-0 literals, with the dtype's exact semantics.

Folding must give the value the program would have computed, bit for bit, or a folded graph is
not the same program. Python's ``float`` is an f64: ``0.1 + 0.2`` in f64 differs from the f32 or
bf16 sum, and integer overflow, ``//`` and ``%`` of negatives, int-to-float rounding and NaN
propagation all differ in detail. So a fold runs the op's PyTorch meaning
(``esperc.ir.reference``, the rules the eager interpreter runs) on 0-dim CPU tensors of the
operands' dtypes, bf16/f16 arithmetic included (computed in f32, rounded once, as PyTorch does).
The result is stored as the Python scalar of the rounded value, which is exact: every f32, bf16
and f16 value is an f64.

torch is imported lazily, on the first fold, so importing the middle end stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

from esperc.ir.graph import Node
from esperc.ir.ops import ELEMENTWISE, Op

Scalar = int | float | bool

FOLDABLE = ELEMENTWISE


def fold(node: Node, operands: Sequence[Node]) -> Scalar | None:
    """The value of a rank-0 elementwise ``node`` whose operands are the ``constant`` nodes
    ``operands``, or None when it must not be folded.

    Returns:
        The Python scalar for the node's dtype (``float`` for every float dtype), or None when
        evaluation raises (integer division by zero): the node stays, and fails at run time as
        it would have.
    """
    from esperc.ir.reference import evaluate_node

    assert node.op in FOLDABLE and node.type.rank == 0, node
    assert all(c.op is Op.CONSTANT for c in operands)
    args = [evaluate_node(c, [], {}) for c in operands]
    try:
        out = evaluate_node(node, args, {})
    except (RuntimeError, ValueError):
        return None
    value: Scalar = out.item()
    dtype = node.type.dtype
    if dtype.is_float:
        return float(value)
    return bool(value) if not dtype.is_int else int(value)
