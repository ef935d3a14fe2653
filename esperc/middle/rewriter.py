"""A forward body rewriter shared by the passes that replace nodes (canonicalize, decompose).

The rewriter walks a verified body once, in order. For each node the pass either keeps it (with
its operands renamed), replaces it by an existing value (every later use and the function's
results are renamed to that value, and the node is dropped), or emits new nodes in its place.
New nodes get fresh SSA names that clash with nothing in the function and join the kernel region
of the node they stand for, so a rewritten function keeps its regions contiguous. Every emitted
node is typed by the op table, so a pass cannot produce an ill-typed node silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from esperc.diagnostics import Loc
from esperc.ir.builder import normalize_attrs
from esperc.ir.graph import Func, Node, make_attrs
from esperc.ir.ops import Op, infer_type
from esperc.ir.types import DType, TensorType


class BodyRewriter:
    """Builds the new body of one function; see the module docstring.

    Args:
        func: the verified function being rewritten (not modified).
    """

    def __init__(self, func: Func) -> None:
        self.func = func
        self.types: dict[str, TensorType] = {a.name: a.type for a in func.args}
        self.producers: dict[str, Node] = {}
        self.out: list[Node] = []
        self._rename: dict[str, str] = {}
        self._used: set[str] = set(self.types) | {n.result for n in func.body}
        self._old_region = {m: r.name for r in func.regions for m in r.members}
        self._region: dict[str, str] = {}
        self._current: str | None = None

    # ---------------------------------------------------------------------------------------
    # Walking

    def begin(self, node: Node) -> Node:
        """Start rewriting ``node``: returns it with its operands renamed to current values."""
        self._current = self._old_region.get(node.result)
        return node.with_(operands=tuple(self.resolve(o) for o in node.operands))

    def resolve(self, value: str) -> str:
        """The value that now stands for ``value`` (follows replacements)."""
        while value in self._rename:
            value = self._rename[value]
        return value

    def keep(self, node: Node) -> None:
        """Append ``node`` (already renamed by ``begin``) to the new body."""
        self.out.append(node)
        self.producers[node.result] = node
        self.types[node.result] = node.type
        if self._current is not None:
            self._region[node.result] = self._current

    def replace_with(self, node: Node, value: str) -> None:
        """Drop ``node``; its uses and the function's results now read ``value``."""
        assert self.types[value] == node.type, (node.result, value)
        self._rename[node.result] = value

    # ---------------------------------------------------------------------------------------
    # Emitting

    def emit(
        self,
        op: Op,
        operands: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        loc: Loc | None = None,
        hint: str = "t",
    ) -> str:
        """Append a new typed node with a fresh name derived from ``hint``; returns the name.

        Raises:
            TypeRuleError: the op table rejects the operands (a bug in the calling pass).
        """
        node = self.make(op, operands, attrs, self.fresh(hint), loc)
        self.keep(node)
        return node.result

    def make(
        self,
        op: Op,
        operands: Sequence[str],
        attrs: Mapping[str, Any] | None,
        result: str,
        loc: Loc | None,
    ) -> Node:
        """A typed node (not appended): attributes normalised as the builder does."""
        types = [self.types[o] for o in operands]
        norm = normalize_attrs(op, types, attrs or {})
        ty = infer_type(op, types, norm)
        return Node(result, op, tuple(operands), make_attrs(norm), ty, loc)

    def constant(self, value: int | float | bool, dtype: DType, loc: Loc | None) -> str:
        return self.emit(Op.CONSTANT, [], {"dtype": dtype, "value": value}, loc, "c")

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self._used:
            i += 1
            name = f"{hint}.{i}"
        self._used.add(name)
        return name

    def rename_last(self, value: str, result: str) -> str:
        """Give the just-emitted node ``value`` the name ``result`` (a replaced node's name).

        Returns the name now standing for ``value``: ``result`` when ``value`` was the last
        emitted node (nothing uses it yet), else ``value`` unchanged.
        """
        if not self.out or self.out[-1].result != value or value == result:
            return value
        node = self.out.pop()
        del self.producers[value]
        self._region.pop(value, None)
        self.keep(node.with_(result=result))
        return result

    # ---------------------------------------------------------------------------------------
    # Queries used by rewrite rules

    @property
    def region(self) -> str | None:
        """The kernel region of the node being rewritten (None outside regions)."""
        return self._current

    def producer(self, value: str) -> Node | None:
        """The node defining ``value`` in the new body (None for an argument)."""
        return self.producers.get(value)

    def constant_value(self, value: str) -> int | float | bool | None:
        """The literal of a ``constant`` node, or None when ``value`` is not one."""
        node = self.producers.get(value)
        if node is None or node.op is not Op.CONSTANT:
            return None
        v: int | float | bool = node.attr("value")
        return v

    # ---------------------------------------------------------------------------------------

    def finish(self, drop_dead: bool = False) -> Func:
        """The rewritten function; ``drop_dead`` also removes nodes whose results are unused."""
        results = tuple(self.resolve(r) for r in self.func.results)
        body = self.out
        if drop_dead:
            live = set(results)
            kept = []
            for node in reversed(body):
                if node.result in live:
                    live.update(node.operands)
                    kept.append(node)
            body = kept[::-1]
        regions = []
        for r in self.func.regions:
            members = tuple(n.result for n in body if self._region.get(n.result) == r.name)
            if members:
                regions.append(replace(r, members=members))
        return self.func.with_(body=tuple(body), results=results, regions=tuple(regions))
