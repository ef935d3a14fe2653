"""Dead-code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from esperc.ir.graph import Func
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register


@register
@dataclass(frozen=True)
class DeadCodeElimination(FunctionPass):
    """Remove nodes whose results are never used.

    Preserves: semantics and source locations of every kept node. Requires: verified SSA.
    Idempotent.
    """

    name = "dce"

    def run(self, func: Func, ctx: PassContext) -> Func:
        live = set(func.results)
        kept = []
        for node in reversed(func.body):
            if node.result in live:
                live.update(node.operands)
                kept.append(node)
            else:
                ctx.stat("nodes-removed")
        return func.with_body(reversed(kept))
