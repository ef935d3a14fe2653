"""Move reduced axes last where no kernel template reduces them in place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esperc.ir.graph import Func, Node, make_attrs
from esperc.ir.ops import REDUCTIONS, Op, infer_type
from esperc.ir.types import SymDim, TensorType, normalize_axis
from esperc.middle.fusion_rules import column_axes
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register


def in_place(n: Node, axes: tuple[int, ...], rank: int) -> bool:
    """Whether reduction ``n`` over ``axes`` (normalised, sorted) of a rank-``rank`` tensor has
    a template of its own: trailing axes (a row reduction) or a leading prefix that keeps an axis
    (a column reduction, ``fusion_rules.column_axes``)."""
    return axes == tuple(range(rank - len(axes), rank)) or column_axes(n, rank) is not None


@register
@dataclass(frozen=True)
class ReduceLast(FunctionPass):
    """Rewrite reductions over middle axes as permute, reshape, reduce the last axis, reshape.

    A reduction over axes that are neither trailing nor a leading prefix (``sum(x, axis=1)`` of
    ``[B, S, D]``) becomes: permute the reduced axes last -> reshape them into one -> reduce
    that axis (keepdim) -> reshape to the original result. Row and column reductions stay.

    Preserves: the value and name of every reduction's result. Requires: verified SSA.
    Idempotent.
    """

    name = "reduce-last"

    def run(self, func: Func, ctx: PassContext) -> Func:
        used = {a.name for a in func.args} | {n.result for n in func.body}
        types = func.types()
        body: list[Node] = []
        for n in func.body:
            if n.op not in REDUCTIONS:
                body.append(n)
                continue
            t = types[n.operands[0]]
            axes = tuple(sorted(normalize_axis(a, t.rank) for a in n.attr("axis")))  # type: ignore[union-attr]
            if in_place(n, axes, t.rank):
                body.append(n)
                continue
            ctx.stat("reductions-moved")
            body.extend(_to_trailing(n, t, axes, used))
        return func.with_body(body)


def _to_trailing(n: Node, t: TensorType, axes: tuple[int, ...], used: set[str]) -> list[Node]:
    shape = t.shape
    kept = [i for i in range(len(shape)) if i not in axes]
    out: list[Node] = []
    types_of = {n.operands[0]: t}

    def emit(op: Op, operand: str, attrs: Mapping[str, Any], result: str | None = None) -> str:
        name = result
        if name is None:
            name = f"{n.result}.{op.value}"
            while name in used:
                name += "_"
            used.add(name)
        a = make_attrs(attrs)
        rt = infer_type(op, [types_of[operand]], dict(a))
        types_of[name] = rt
        out.append(Node(name, op, (operand,), a, rt, n.loc))
        return name

    v = emit(Op.PERMUTE, n.operands[0], {"dims": [*kept, *axes]})
    if len(axes) > 1:
        size: Any = 1
        for i in axes:
            size = shape[i] * size if isinstance(shape[i], SymDim) else size * shape[i]
        v = emit(Op.RESHAPE, v, {"shape": [*(shape[i] for i in kept), size]})
    v = emit(n.op, v, {**n.attr_dict, "axis": [len(kept)], "keepdim": True})
    emit(Op.RESHAPE, v, {"shape": list(n.type.shape)}, result=n.result)
    return out
