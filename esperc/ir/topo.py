"""Topological order of a function body (Kahn's algorithm), with a caller-chosen tie-break."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from esperc.ir.graph import Node


class CycleError(Exception):
    """The body has a dependency cycle or uses a value nothing defines."""


def topo_order(
    body: Sequence[Node], defined: set[str], key: Callable[[Node], object] | None = None
) -> list[Node]:
    """Nodes in an order where every operand is defined before use.

    Args:
        body: the nodes, in any order.
        defined: values available before the body (the function's arguments).
        key: tie-break among ready nodes (smallest first); default: original position, which
            makes the sort stable (an already ordered body comes back unchanged).

    Raises:
        CycleError: some node can never become ready.
    """
    index = {id(n): i for i, n in enumerate(body)}
    tie = key or (lambda n: index[id(n)])
    producers = {n.result for n in body}
    waiting: dict[str, list[int]] = {}
    missing = [0] * len(body)
    for i, n in enumerate(body):
        deps = {o for o in n.operands if o not in defined}
        for o in deps:
            if o not in producers:
                raise CycleError(f"%{n.result} uses %{o}, which is never defined")
            waiting.setdefault(o, []).append(i)
        missing[i] = len(deps)
    ready = [(tie(n), i) for i, n in enumerate(body) if missing[i] == 0]
    heapq.heapify(ready)
    out: list[Node] = []
    while ready:
        _, i = heapq.heappop(ready)
        n = body[i]
        out.append(n)
        for j in waiting.get(n.result, []):
            missing[j] -= 1
            if missing[j] == 0:
                heapq.heappush(ready, (tie(body[j]), j))
    if len(out) != len(body):
        stuck = sorted(f"%{body[i].result}" for i in range(len(body)) if missing[i])
        raise CycleError("dependency cycle through " + ", ".join(stuck[:5]))
    return out
