"""The SSA graph IR: arguments, nodes, kernel regions, functions and modules.

A ``Func`` is one blueprint: its dynamic dims with ranges, its dynamic ``require`` constraints,
its arguments (inputs and params), a topologically ordered body of ``Node``s (each defines exactly
one SSA value, named by ``result``), optional kernel ``Region``s (contiguous runs of the body that
the middle end fused into one GPU kernel) and the returned values. Everything is frozen; passes
build new objects. Source locations and name hints are excluded from equality.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from esperc.diagnostics import Loc
from esperc.ir.dimexpr import DimExpr
from esperc.ir.ops import Op
from esperc.ir.types import TensorType

AttrValue = Any  # int | float | bool | str | DType | tuple[int, ...] | tuple[Dim, ...]


@dataclass(frozen=True, slots=True)
class DimDecl:
    """A dynamic dimension and its inclusive range."""

    name: str
    lo: int
    hi: int
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Require:
    """A constraint over dynamic dims, checked by a guard at every call."""

    expr: DimExpr
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Arg:
    """A function argument: an ``input`` (passed at every call) or a ``param`` (owned weight)."""

    name: str
    type: TensorType
    kind: str  # "input" | "param"
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Node:
    """One SSA definition: ``%result = op %operands... {attrs} : type``.

    ``attrs`` is a sorted tuple of ``(name, value)`` pairs so that nodes hash and compare by value.
    """

    result: str
    op: Op
    operands: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...]
    type: TensorType
    loc: Loc | None = field(default=None, compare=False)

    def attr(self, name: str) -> AttrValue:
        for k, v in self.attrs:
            if k == name:
                return v
        raise KeyError(f"node %{self.result} ({self.op}) has no attribute '{name}'")

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    def with_(self, **changes: Any) -> Node:
        return replace(self, **changes)


def make_attrs(attrs: Mapping[str, AttrValue]) -> tuple[tuple[str, AttrValue], ...]:
    """Attributes in canonical (sorted by name) order, lists frozen to tuples."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(attrs.items()))


@dataclass(frozen=True, slots=True)
class Region:
    """A kernel region: a contiguous run of body nodes compiled as one GPU kernel.

    ``attrs`` holds the region's kind (``pointwise``, ``reduction``, ``matmul``, ``attention``),
    the reason it was formed and analysis results (divergence, shared-memory plan), sorted by name.
    """

    name: str
    members: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()

    def attr(self, name: str, default: AttrValue = None) -> AttrValue:
        return dict(self.attrs).get(name, default)


@dataclass(frozen=True, slots=True)
class Func:
    name: str
    dims: tuple[DimDecl, ...]
    requires: tuple[Require, ...]
    args: tuple[Arg, ...]
    body: tuple[Node, ...]
    results: tuple[str, ...]
    regions: tuple[Region, ...] = ()
    loc: Loc | None = field(default=None, compare=False)

    def with_body(self, body: Iterable[Node], regions: tuple[Region, ...] | None = None) -> Func:
        """A copy with a new body; regions are kept only for members still present."""
        nodes = tuple(body)
        if regions is None:
            alive = {n.result for n in nodes}
            regions = tuple(
                replace(r, members=tuple(m for m in r.members if m in alive))
                for r in self.regions
                if any(m in alive for m in r.members)
            )
        return replace(self, body=nodes, regions=regions)

    def with_(self, **changes: Any) -> Func:
        return replace(self, **changes)

    @property
    def inputs(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.kind == "input")

    @property
    def params(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.kind == "param")

    def types(self) -> dict[str, TensorType]:
        """Type of every SSA value (arguments and node results) by name."""
        out = {a.name: a.type for a in self.args}
        out.update((n.result, n.type) for n in self.body)
        return out

    def producers(self) -> dict[str, Node]:
        return {n.result: n for n in self.body}

    def users(self) -> dict[str, list[Node]]:
        """For each value, the nodes that use it (in body order, a node once per use)."""
        out: dict[str, list[Node]] = {a.name: [] for a in self.args}
        for n in self.body:
            out.setdefault(n.result, [])
            for o in n.operands:
                out.setdefault(o, []).append(n)
        return out

    def result_types(self) -> tuple[TensorType, ...]:
        t = self.types()
        return tuple(t[r] for r in self.results)

    def region_of(self) -> dict[str, Region]:
        return {m: r for r in self.regions for m in r.members}


@dataclass(frozen=True, slots=True)
class Module:
    """Every blueprint of one source file, in source order."""

    funcs: tuple[Func, ...]

    def __iter__(self) -> Iterator[Func]:
        return iter(self.funcs)

    def get(self, name: str) -> Func | None:
        return next((f for f in self.funcs if f.name == name), None)
