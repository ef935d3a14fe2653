"""Saved-value selection ("rematerialization"): which forward values the backward receives.

A gradient rule asks for forward values by name (``GradCtx.fwd``); the ``Rematerializer``
answers each request once, either by SAVING the value (the forward returns it as an extra result
and the backward takes it as an argument) or by RECOMPUTING it inside the backward from values
that are themselves saved or already available there. The rule weighs memory against work:

* Function arguments are saved (the caller holds them anyway; saving costs no new memory).
* Values a rule pins with ``GradCtx.aux`` are saved: per-row statistics the forward computes for
  the backward (LayerNorm's mean and rstd, RMSNorm's rstd: one f32 per row, tiny).
* The result of a reduction, composite (softmax, norms) or contraction (matmul, linear) is saved:
  recomputing it would repeat a whole pass over its input or a matrix product.
* Any other value (elementwise, data movement, literals, ``index``) is recomputed from its
  *closure*: the cheap producers back to the nearest saved or available values, when that closure
  holds at most ``RematPolicy.max_recompute_ops`` ops (literals do not count); otherwise the
  value itself is saved. Recomputed elementwise chains fuse into the backward kernels that use
  them, so they cost registers, not memory traffic. For example GELU's rule asks for its input
  and the chain ``x + bias`` before it is recomputed from the saved ``x`` and ``bias``; LayerNorm
  recomputes ``xhat = (x - mean) * rstd`` from ``x`` and the saved statistics.
* A dynamic dim the backward uses but no backward argument's shape carries (the gradient of
  ``mean`` over ``N`` needs ``N``; the IR passes dims only through shapes) is carried by saving
  the smallest function argument whose type mentions it: an argument costs no new memory.
* ``index`` reads only its operand's shape, so a recomputed ``index`` takes any backward value
  of that shape (typically the incoming gradient) instead of fetching its operand.

``BackwardPlan.saved`` lists the outcome and ``BackwardPlan.saved_bytes(dims)`` its size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from esperc.ir.graph import Func, Node
from esperc.ir.ops import DATA_MOVEMENT, ELEMENTWISE, SOURCES, Op
from esperc.ir.types import TensorType
from esperc.middle.gradients_base import Emitter

RECOMPUTABLE = ELEMENTWISE | DATA_MOVEMENT | SOURCES


@dataclass(frozen=True)
class RematPolicy:
    """Options of saved-value selection.

    Attributes:
        max_recompute_ops: the most ops (literals excluded) the backward may recompute to
            rebuild one requested value; a longer chain saves the value instead. 0 saves every
            requested value that is not an argument.
    """

    max_recompute_ops: int = 8


class Rematerializer:
    """Answers the gradient rules' requests for forward values (see the module docstring).

    Args:
        func: the forward function.
        policy: the options.
        backward: the emitter of the backward body (recomputed nodes go there).
        fwd_types: types of the forward values; aux values are added to it.
        used: every SSA name taken (shared with the backward emitter).
    """

    def __init__(
        self,
        func: Func,
        policy: RematPolicy,
        backward: Emitter,
        fwd_types: dict[str, TensorType],
        used: set[str],
    ) -> None:
        self.policy = policy
        self._bw = backward
        self._fwd_types = fwd_types
        self._used = used
        self._args = {a.name for a in func.args}
        self._producers: dict[str, Node] = func.producers()
        self._position: dict[str, float] = {n.result: i for i, n in enumerate(func.body)}
        self._cache: dict[str, str] = {}
        self._saved: set[str] = set()
        self._pinned: set[str] = set()
        self._aux: dict[tuple[str, str], str] = {}
        self.aux_nodes: dict[str, list[Node]] = {}  # anchor -> forward nodes placed after it

    # ------------------------------------------------------------------------------- public
    def get(self, name: str) -> str:
        """The backward name of forward value ``name``, saving or recomputing it."""
        if name in self._cache:
            return self._cache[name]
        node = self._producers.get(name)
        if node is None or name in self._pinned or node.op not in RECOMPUTABLE:
            return self.save(name)
        closure = self._closure(node)
        if closure is None:
            return self.save(name)
        for n in closure:
            operands = [self._operand(n, o) for o in n.operands]
            self._cache[n.result] = self._bw.emit(n.op, operands, n.attr_dict)
        return self._cache[name]

    def aux(self, anchor: Node, key: str, build: Callable[[Emitter], str]) -> str:
        """Emit ``build``'s nodes into the forward right after ``anchor``; the value is pinned
        (always saved). Returns its forward name; one value per ``(anchor, key)``."""
        k = (anchor.result, key)
        if k not in self._aux:
            fwd = Emitter(self._fwd_types, self._used)
            value = build(fwd)
            self.aux_nodes.setdefault(anchor.result, []).extend(fwd.nodes)
            pos = self._position[anchor.result]
            for i, n in enumerate(fwd.nodes):
                self._producers[n.result] = n
                self._position[n.result] = pos + (i + 1) / (len(fwd.nodes) + 1)
            self._pinned.add(value)
            self._aux[k] = value
        return self._aux[k]

    def saved_names(self) -> frozenset[str]:
        return frozenset(self._saved)

    def saved(self, order: Mapping[str, int]) -> tuple[str, ...]:
        """The saved forward values, in ``order`` (position in the extended forward)."""
        return tuple(sorted(self._saved, key=lambda s: order[s]))

    def save(self, name: str) -> str:
        """Save forward value ``name`` for the backward; returns its backward name."""
        self._saved.add(name)
        self._bw.types[name] = self._fwd_types[name]
        self._cache[name] = name
        return name

    # ------------------------------------------------------------------------------ helpers
    def _operand(self, node: Node, operand: str) -> str:
        if node.op is Op.INDEX and operand not in self._cache:
            shape = self._fwd_types[operand].shape
            for v, t in self._bw.types.items():
                if t.shape == shape:
                    return v
        return self.get(operand)

    def _is_boundary(self, name: str) -> bool:
        node = self._producers.get(name)
        return (
            name in self._cache
            or node is None
            or name in self._pinned
            or node.op not in RECOMPUTABLE
        )

    def _closure(self, root: Node) -> list[Node] | None:
        """The cheap nodes to re-emit for ``root`` (topological order), or None when they are
        more than the policy allows."""
        seen: dict[str, Node] = {}
        stack = [root]
        while stack:
            n = stack.pop()
            if n.result in seen:
                continue
            seen[n.result] = n
            if n.op is Op.INDEX:
                continue  # reads only a shape: see _operand
            for o in n.operands:
                if not self._is_boundary(o):
                    stack.append(self._producers[o])
        cost = sum(1 for n in seen.values() if n.op is not Op.CONSTANT)
        if cost > self.policy.max_recompute_ops:
            return None
        return sorted(seen.values(), key=lambda n: self._position[n.result])
