"""Working state of the ``fuse`` pass: groups of nodes, byte costs, convexity and assembly.

A ``Group`` is a set of body nodes that will become one kernel region. Groups are merged across
producer -> consumer edges by ``fusion_rules``; this module keeps them convex (no path leaves a
group and comes back), and finally ``assemble`` orders the body so that every group is a
contiguous run, clones rank-0 constants (and other free values) into each region that uses them,
and builds the ``Region`` objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from esperc.ir.graph import Func, Node, Region, make_attrs
from esperc.ir.ops import Op
from esperc.ir.topo import topo_order
from esperc.ir.types import Dim, TensorType

NOMINAL_DIM = 4096  # a dynamic dim counts as min(its upper bound, this) when estimating bytes


@dataclass(eq=False)
class Group:
    """A growing kernel region (mutable working state, private to one ``fuse`` run).

    Attributes:
        kind: ``pointwise``, ``reduction``, ``matmul``, ``attention`` or ``view``.
        members: node names in the group.
        space: iteration space: pointwise: the broadcast shape of its members; reduction: the
            shape of the reduced input (rows); matmul: the output of the anchor.
        axes: reduced axes (reductions).
        anchor: the matmul/reduction node the group grew from.
        prologue: members computing the A operand of a matmul anchor.
        attrs: kind-specific facts for the code generator (``a``, ``b``, ``trans_b``...).
        reasons: why members joined, for the region's ``reason`` attribute.
        colsums: column reductions among the members (result -> operand shape): reductions
            over the leading axes that the kernel accumulates per program and a second
            (finishing) kernel completes (``backend/triton/kernels/colsum.py``).
    """

    kind: str
    members: set[str]
    space: tuple[Dim, ...] = ()
    axes: tuple[int, ...] = ()
    anchor: str = ""
    closed: bool = False
    prologue: set[str] = field(default_factory=set)
    attrs: dict[str, object] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    colsums: dict[str, tuple[Dim, ...]] = field(default_factory=dict)


def dim_size(d: Dim, hi: Mapping[str, int], nominal: int = NOMINAL_DIM) -> int:
    """A dimension's size for cost estimates: each symbol at min(upper bound, ``nominal``)."""
    if isinstance(d, int):
        return d
    total = 0
    for mono, coef in d.terms:
        v = coef
        for s in mono:
            v *= min(hi.get(s, nominal), nominal)
        total += v
    return max(total, 1)


def nbytes(t: TensorType, hi: Mapping[str, int]) -> int:
    """Estimated bytes of a tensor of type ``t`` (see ``dim_size``)."""
    n = t.dtype.itemsize
    for d in t.shape:
        n *= dim_size(d, hi)
    return n


def dim_bounds(func: Func) -> dict[str, int]:
    return {d.name: d.hi for d in func.dims}


class Partition:
    """Nodes -> groups, with the dependency edges needed to keep groups convex."""

    def __init__(self, func: Func, free: Iterable[str]) -> None:
        self.func = func
        self.nodes = {n.result: n for n in func.body}
        self.position = {n.result: i for i, n in enumerate(func.body)}
        self.free = set(free)  # cloned into each using region, never grouped
        self.users: dict[str, list[str]] = {n.result: [] for n in func.body}
        for n in func.body:
            for o in dict.fromkeys(n.operands):
                if o in self.users:
                    self.users[o].append(n.result)
        self.group_of: dict[str, Group] = {}

    def add(self, group: Group) -> Group:
        for m in group.members:
            self.group_of[m] = group
        return group

    def groups(self) -> list[Group]:
        seen: dict[int, Group] = {}
        for n in self.func.body:
            g = self.group_of.get(n.result)
            if g is not None:
                seen.setdefault(id(g), g)
        return list(seen.values())

    def preds(self, name: str) -> list[str]:
        return [o for o in self.nodes[name].operands if o in self.nodes and o not in self.free]

    def succs(self, name: str) -> list[str]:
        return self.users[name]

    def creates_cycle(self, a: Group, b: Group) -> bool:
        """Whether merging ``a`` and ``b`` would make the graph of groups cyclic: true iff a path
        leads from one to the other through a third group (the graph is acyclic before)."""
        pair = (id(a), id(b))
        stack = [
            g for m in a.members | b.members for g in self._succ_groups(m) if id(g) not in pair
        ]
        seen: set[int] = set()
        while stack:
            g = stack.pop()
            if id(g) in seen:
                continue
            seen.add(id(g))
            for m in g.members:
                for h in self._succ_groups(m):
                    if id(h) in pair:
                        return True
                    stack.append(h)
        return False

    def _succ_groups(self, name: str) -> list[Group]:
        return [self.group_of[s] for s in self.users[name] if s in self.group_of]

    def merge(self, keep: Group, other: Group) -> None:
        keep.members |= other.members
        keep.prologue |= other.prologue
        keep.colsums.update(other.colsums)
        keep.reasons.extend(r for r in other.reasons if r not in keep.reasons)
        for m in other.members:
            self.group_of[m] = keep


def fresh_name(base: str, taken: set[str]) -> str:
    i = 1
    while f"{base}.{i}" in taken:
        i += 1
    name = f"{base}.{i}"
    taken.add(name)
    return name


def assemble(
    func: Func, part: Partition, groups: list[Group], prefix: str
) -> tuple[Func, list[Group]]:
    """Order the body group by group, clone free nodes into their using groups, build regions.

    Returns the new function (body reordered, ``regions`` set, each with ``attrs`` built from
    the group's ``kind``/``reason``/``attrs``) and the groups in region order.
    """
    taken = {n.result for n in func.body} | {a.name for a in func.args}
    order = _group_order(func, part, groups)
    owner: dict[str, Group] = {}  # free node -> group that keeps the original name
    rename: dict[tuple[int, str], str] = {}
    extra: dict[int, list[Node]] = {id(g): [] for g in order}
    for g in order:
        for f in _free_used(part, g):
            if f not in owner:
                owner[f] = g
                g.members.add(f)
            else:
                rename[(id(g), f)] = fresh_name(f, taken)
    orphan = [n for n in func.body if n.result in part.free and n.result not in owner]
    for n in orphan:  # free nodes nobody uses (returned constants): a region of their own
        g = Group("pointwise", {n.result}, reasons=["returned constant"])
        order.append(g)
        extra[id(g)] = []
    body: list[Node] = []
    regions: list[Region] = []
    for i, g in enumerate(order):
        nodes = [part.nodes[m] for m in g.members]
        for (gid, f), new in sorted(rename.items(), key=lambda kv: kv[1]):
            if gid == id(g):
                nodes.append(_clone_free(part.nodes[f], new, rename, gid))
        ren = {f: new for (gid, f), new in rename.items() if gid == id(g)}
        nodes = [n if n.result in ren.values() else _rename_operands(n, ren) for n in nodes]
        nodes = _order_within(nodes, part.position)
        body.extend(nodes)
        attrs = {"kind": g.kind, "reason": "; ".join(g.reasons) or g.kind, **g.attrs}
        regions.append(Region(f"{prefix}_k{i}", tuple(n.result for n in nodes), make_attrs(attrs)))
    return replace(func, body=tuple(body), regions=tuple(regions)), order


def _free_used(part: Partition, g: Group) -> list[str]:
    """Free nodes (transitively) used by the group's members, in body order."""
    need: set[str] = set()
    stack = [o for m in g.members for o in part.nodes[m].operands if o in part.free]
    while stack:
        f = stack.pop()
        if f not in need:
            need.add(f)
            stack.extend(o for o in part.nodes[f].operands if o in part.free)
    return sorted(need, key=part.position.__getitem__)


def _clone_free(n: Node, new: str, rename: dict[tuple[int, str], str], gid: int) -> Node:
    ops = tuple(rename.get((gid, o), o) for o in n.operands)
    return replace(n, result=new, operands=ops)


def _rename_operands(n: Node, ren: dict[str, str]) -> Node:
    if not any(o in ren for o in n.operands):
        return n
    return replace(n, operands=tuple(ren.get(o, o) for o in n.operands))


def _order_within(nodes: list[Node], position: Mapping[str, int]) -> list[Node]:
    """Sources (constants) first, then a topological order stable in the original body order."""
    big = len(position) + 1
    names = {n.result for n in nodes}

    def key(n: Node) -> tuple[int, int, str]:
        src = 0 if n.op is Op.CONSTANT else 1
        return (src, position.get(n.result, big), n.result)

    return topo_order(nodes, {o for n in nodes for o in n.operands if o not in names}, key)


def _group_order(func: Func, part: Partition, groups: list[Group]) -> list[Group]:
    """Groups in a topological order of the group graph, ties by earliest member position."""
    first = {id(g): min(part.position[m] for m in g.members) for g in groups}
    preds: dict[int, set[int]] = {id(g): set() for g in groups}
    for g in groups:
        for m in g.members:
            for p in part.preds(m):
                pg = part.group_of[p]
                if pg is not g:
                    preds[id(g)].add(id(pg))
    by_id = {id(g): g for g in groups}
    done: set[int] = set()
    out: list[Group] = []
    while len(out) < len(groups):
        ready = [i for i in preds if i not in done and preds[i] <= done]
        nxt = min(ready, key=first.__getitem__)
        done.add(nxt)
        out.append(by_id[nxt])
    return out
