"""Canonicalization: constant folding and exact algebraic identities."""

from __future__ import annotations

from dataclasses import dataclass

from esperc.ir.graph import Func, Node
from esperc.ir.ops import Op
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register
from esperc.middle.rewriter import BodyRewriter
from esperc.middle.rewrites import rewrite_once

# A node is rewritten in place at most this many times; every rule shrinks or canonicalises the
# node, so a longer chain means two rules undo each other (a bug worth a crash, not a hang).
_MAX_REWRITES = 64


@register
@dataclass(frozen=True)
class Canonicalize(FunctionPass):
    """Fold constants, apply exact algebraic identities, and drop unused nodes.

    Folds elementwise ops on rank-0 literals through PyTorch in the node's dtype (bit-exact,
    see ``esperc.middle.folding``), rewrites with the rule table of ``esperc.middle.rewrites``
    (``x * 1``, ``--x``, cast, transpose/permute, reshape and broadcast chains, ``where`` with
    equal arms or a literal condition, redundant ``broadcast_to`` operands) and keeps one
    ``constant`` per dtype, value and kernel region. Every rewrite keeps each value bit for bit
    (signed zeros and NaN included) and the node's type; a node rewritten in place keeps its SSA
    name, location and kernel region, and a node replaced by an existing value has its uses and
    the function's results renamed. Finally, nodes left without users are removed, as MLIR's
    canonicalizer erases trivially dead ops.
    Requires: a verified function. Idempotent.
    """

    name = "canonicalize"

    def run(self, func: Func, ctx: PassContext) -> Func:
        rw = BodyRewriter(func)
        constants: dict[tuple[object, ...], str] = {}
        for node in func.body:
            self._rewrite(rw.begin(node), rw, ctx, constants)
        out = rw.finish(drop_dead=True)
        removed = len(func.body) - len(out.body)
        if removed:
            ctx.stat("nodes-removed", removed)
        return out

    def _rewrite(
        self,
        node: Node,
        rw: BodyRewriter,
        ctx: PassContext,
        constants: dict[tuple[object, ...], str],
    ) -> None:
        for _ in range(_MAX_REWRITES):
            rule, result = rewrite_once(node, rw)
            if result is None:
                if node.op is Op.CONSTANT:
                    self._unique(node, rw, ctx, constants)
                else:
                    rw.keep(node)
                return
            ctx.stat(rule.replace("_", "-"))
            if isinstance(result, str):
                rw.replace_with(node, result)
                return
            assert result.result == node.result and result.type == node.type, rule
            node = result.with_(loc=node.loc)
        raise AssertionError(f"canonicalize: rewrites of %{node.result} do not converge")

    @staticmethod
    def _unique(
        node: Node, rw: BodyRewriter, ctx: PassContext, constants: dict[tuple[object, ...], str]
    ) -> None:
        """Keep one constant per dtype, value (by bits: 0.0 and -0.0 differ) and region, as
        MLIR's folder does, so that folded literals meet the rules that compare operands."""
        value = node.attr("value")
        bits = value.hex() if isinstance(value, float) else value
        key = (node.type.dtype, type(value), bits, rw.region)
        first = constants.get(key)
        if first is None:
            constants[key] = node.result
            rw.keep(node)
        else:
            ctx.stat("constants-merged")
            rw.replace_with(node, first)
