"""IR invariants, checked after construction, after parsing and after every pass.

A ``Func`` verifies when: names are unique (SSA: one definition per value); every operand is
defined earlier in the body or is an argument (dominance in a straight-line body); every node's
type is what the op table infers from its operands and attributes; the symbols used in types are
declared dims; results exist; and every kernel region is a contiguous run of the body, with no
node in two regions.
"""

from __future__ import annotations

from esperc.ir.dimexpr import symbols
from esperc.ir.graph import Func
from esperc.ir.ops import infer_type
from esperc.ir.types import TypeRuleError


class VerifyError(Exception):
    """The function breaks an IR invariant; the message names the value and the rule."""


def verify(func: Func) -> None:
    """Check every invariant of ``func``.

    Raises:
        VerifyError: with a message naming the first offending value.
    """
    dims = {d.name for d in func.dims}
    if len(dims) != len(func.dims):
        raise VerifyError(f"@{func.name}: a dim is declared twice")
    for d in func.dims:
        if not 0 <= d.lo <= d.hi:
            raise VerifyError(f"@{func.name}: dim {d.name} has an empty range [{d.lo}, {d.hi}]")
    for r in func.requires:
        unknown = symbols(r.expr) - dims
        if unknown:
            raise VerifyError(f"@{func.name}: require uses undeclared dims {sorted(unknown)}")
    types = {}
    for a in func.args:
        if a.name in types:
            raise VerifyError(f"%{a.name} is defined twice")
        if a.kind not in ("input", "param"):
            raise VerifyError(f"%{a.name} has unknown kind '{a.kind}'")
        _check_symbols(a.type.symbols, dims, a.name)
        types[a.name] = a.type
    for n in func.body:
        if n.result in types:
            raise VerifyError(f"%{n.result} is defined twice")
        for o in n.operands:
            if o not in types:
                raise VerifyError(f"%{n.result} uses %{o} before its definition")
        try:
            want = infer_type(n.op, [types[o] for o in n.operands], n.attr_dict)
        except TypeRuleError as e:
            raise VerifyError(f"%{n.result} = {n.op}: {e.message}") from None
        if want != n.type:
            raise VerifyError(f"%{n.result} = {n.op} has type {n.type}, the op rule gives {want}")
        _check_symbols(n.type.symbols, dims, n.result)
        types[n.result] = n.type
    if not func.results:
        raise VerifyError(f"@{func.name} returns nothing")
    for r in func.results:
        if r not in types:
            raise VerifyError(f"@{func.name} returns undefined %{r}")
    _verify_regions(func)


def _check_symbols(used: frozenset[str], dims: set[str], value: str) -> None:
    if not used <= dims:
        raise VerifyError(f"%{value} uses undeclared dims {sorted(used - dims)}")


def _verify_regions(func: Func) -> None:
    position = {n.result: i for i, n in enumerate(func.body)}
    seen: set[str] = set()
    names: set[str] = set()
    for r in func.regions:
        if r.name in names:
            raise VerifyError(f"kernel region @{r.name} is defined twice")
        names.add(r.name)
        if not r.members:
            raise VerifyError(f"kernel region @{r.name} is empty")
        for m in r.members:
            if m not in position:
                raise VerifyError(f"kernel region @{r.name} names unknown %{m}")
            if m in seen:
                raise VerifyError(f"%{m} belongs to two kernel regions")
            seen.add(m)
        idx = [position[m] for m in r.members]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise VerifyError(f"kernel region @{r.name} is not a contiguous run of the body")
