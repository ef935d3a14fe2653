"""Common-subexpression elimination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esperc.ir.graph import Func, Node
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register
from esperc.middle.rewrites import swappable


def _attr_key(value: Any) -> Any:
    """A hashable key that tells apart what Python's ``==`` merges: ``0.0`` and ``-0.0``, and
    that lets equal NaN literals match (``float.hex`` of NaN is ``'nan'``)."""
    if isinstance(value, float):
        return ("f", value.hex())
    if isinstance(value, tuple):
        return tuple(_attr_key(v) for v in value)
    return (type(value).__name__, value)


@register
@dataclass(frozen=True)
class CommonSubexpressionElimination(FunctionPass):
    """Merge nodes that compute the same op on the same operands with the same attributes.

    Two nodes match when op, operands, attributes (floats compared by their bits) and result
    type are equal; operands of a commutative op match in either order (not ``maximum`` and
    ``minimum`` of floats, which return their first operand for ``0.0`` vs ``-0.0``), and equal
    constants merge. The first node is kept (its name and location); later ones are removed
    and their uses and the function's results renamed. Nodes of different kernel regions are not
    merged (fuse clones constants into each region on purpose).
    Preserves: semantics, bit for bit. Requires: a verified function. Idempotent.
    """

    name = "cse"

    def run(self, func: Func, ctx: PassContext) -> Func:
        region_of = {m: r.name for r in func.regions for m in r.members}
        types = func.types()
        rename: dict[str, str] = {}
        seen: dict[tuple[Any, ...], str] = {}
        body: list[Node] = []
        for node in func.body:
            node = node.with_(operands=tuple(rename.get(o, o) for o in node.operands))
            operands: tuple[str, ...] = node.operands
            if len(operands) == 2 and swappable(node, types[operands[0]].dtype):
                operands = tuple(sorted(operands))
            key = (region_of.get(node.result), node.op, operands, _attr_key(node.attrs), node.type)
            first = seen.get(key)
            if first is None:
                seen[key] = node.result
                body.append(node)
            else:
                rename[node.result] = first
                ctx.stat("nodes-removed")
        results = tuple(rename.get(r, r) for r in func.results)
        return func.with_body(body).with_(results=results)
