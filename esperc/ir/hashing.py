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
from esperc.ir.topo import topo_order


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
    # Keep each region's members together: order by (region key, structural key).
    body = topo_order(func.body, {a.name for a in func.args}, key=lambda n: keys[n.result])
    if func.regions:
        body = list(func.body)  # regions are contiguous already; their order is meaningful
    rename = {a.name: f"a{i}" for i, a in enumerate(func.args)}
    for i, n in enumerate(body):
        rename[n.result] = str(i)
    args = tuple(Arg(rename[a.name], a.type, a.kind) for a in func.args)
    nodes = tuple(
        Node(rename[n.result], n.op, tuple(rename[o] for o in n.operands), n.attrs, n.type)
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
        results=tuple(rename[r] for r in func.results),
        regions=regions,
        loc=None,
        dims=tuple(replace(d, loc=None) for d in func.dims),
    )


def canonical_text(func: Func) -> str:
    return print_func(canonicalize_names(func))


def canonical_hash(func: Func) -> str:
    """Hex SHA-256 of the canonical print (64 characters)."""
    return hashlib.sha256(canonical_text(func).encode()).hexdigest()
