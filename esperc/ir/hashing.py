"""Canonical hash of a function: SHA-256 of a canonical print.

The canonical print renames every value by position (``%a0..`` for arguments, ``%0..`` for nodes),
drops source locations, comments and the function's name, and orders independent statements by
a structural (Merkle) key, so the hash ignores value names, whitespace and the order of
independent statements, and changes with any change of meaning: an op, an attribute, a dtype, a
shape, a constant, a dim range, a ``require``, argument order or kind, or kernel regions.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from esperc.ir.graph import Arg, Func, Node, Region
from esperc.ir.printer import format_attrs, print_func


def _structural_keys(func: Func) -> dict[str, str]:
    keys: dict[str, str] = {}
    for i, a in enumerate(func.args):
        keys[a.name] = f"arg{i}"
    for n in func.body:  # the body is topologically ordered: operands are keyed first
        text = "|".join(
            [n.op.value, format_attrs(n.attrs), str(n.type), *(keys[o] for o in n.operands)]
        )
        keys[n.result] = hashlib.sha256(text.encode()).hexdigest()[:32]
    return keys


def canonicalize_names(func: Func) -> Func:
    """``func`` with canonical statement order and positional names (what the hash prints)."""
    keys = _structural_keys(func)
    region_of = {m: r.name for r in func.regions for m in r.members}
    # Order by (depth, structural key): a topological order in which only structurally equal
    # nodes tie, and those are adjacent (Kahn's algorithm with a key tie-break is not enough:
    # which of two equal nodes comes first decides which of their users become ready first).
    depth = {a.name: 0 for a in func.args}
    for n in func.body:
        depth[n.result] = 1 + max((depth[o] for o in n.operands), default=0)
    body = sorted(func.body, key=lambda n: (depth[n.result], keys[n.result]))
    if func.regions:
        body = list(func.body)  # regions are contiguous already; their order is meaningful
    rename = {a.name: f"a{i}" for i, a in enumerate(func.args)}
    for i, n in enumerate(body):
        rename[n.result] = str(i)
    # Nodes with equal structural keys compute the same value and keep their original relative
    # order; without regions, uses refer to the first of them, so swapping two identical nodes
    # (e.g. two equal constants with different users) leaves the print unchanged.
    use = dict(rename)
    if not func.regions:
        first: dict[str, str] = {}
        for n in body:
            use[n.result] = rename[first.setdefault(keys[n.result], n.result)]
    args = tuple(Arg(rename[a.name], a.type, a.kind) for a in func.args)
    nodes = tuple(
        Node(rename[n.result], n.op, tuple(use[o] for o in n.operands), n.attrs, n.type)
        for n in body
    )
    region_names = {}
    for n in body:
        r = region_of.get(n.result)
        if r is not None and r not in region_names:
            region_names[r] = f"k{len(region_names)}"
    regions = tuple(
        Region(region_names[r.name], tuple(rename[m] for m in r.members), r.attrs)
        for r in sorted(func.regions, key=lambda r: region_names.get(r.name, r.name))
    )
    return replace(
        func,
        name="f",
        args=args,
        body=nodes,
        results=tuple(use[r] for r in func.results),
        regions=regions,
        loc=None,
        dims=tuple(replace(d, loc=None) for d in func.dims),
    )


def canonical_text(func: Func) -> str:
    return print_func(canonicalize_names(func))


def canonical_hash(func: Func) -> str:
    """Hex SHA-256 of the canonical print (64 characters)."""
    return hashlib.sha256(canonical_text(func).encode()).hexdigest()
