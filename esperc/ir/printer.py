"""The textual form of the IR. ``parser.parse_module(print_module(m)) == m``, and printing the
parsed text again gives the same characters (the round trip is identity).

::

    func @softmax {
      dim B in [1, 65536]
      input %x : f32[B,1024]
      %0 = reduce_max %x {axis = [1], keepdim = true} : f32[B,1]
      %1 = sub %x, %0 : f32[B,1024]
      kernel @softmax_k0 {kind = "reduction"} {
        %2 = exp %1 : f32[B,1024]
      }
      return %2
    }
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from esperc.diagnostics import Loc
from esperc.ir.dimexpr import to_str
from esperc.ir.graph import AttrValue, Func, Module, Node
from esperc.ir.types import DType, SymDim


def format_value(v: AttrValue) -> str:
    """One attribute value in its printed form (the parser reads each form back exactly)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, DType):
        return v.value
    if isinstance(v, int | SymDim):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v)  # shortest repr that reads back to the same double; 'inf', '-inf'
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def format_attrs(attrs: Iterable[tuple[str, AttrValue]]) -> str:
    items = [f"{k} = {format_value(v)}" for k, v in attrs]
    return " {" + ", ".join(items) + "}" if items else ""


def format_loc(loc: Loc | None) -> str:
    return f" loc({json.dumps(loc.file)}:{loc.line}:{loc.col})" if loc else ""


def format_node(n: Node, locs: bool = False) -> str:
    ops = " " + ", ".join(f"%{o}" for o in n.operands) if n.operands else ""
    loc = format_loc(n.loc) if locs else ""
    return f"%{n.result} = {n.op.value}{ops}{format_attrs(n.attrs)} : {n.type}{loc}"


def print_func(func: Func, locs: bool = False) -> str:
    """The printed form of one function; ``locs=True`` appends ``loc("file":line:col)``."""
    out = [f"func @{func.name} {{"]
    for d in func.dims:
        out.append(f"  dim {d.name} in [{d.lo}, {d.hi}]")
    for r in func.requires:
        out.append(f"  require {to_str(r.expr)}")
    for a in func.args:
        out.append(f"  {a.kind} %{a.name} : {a.type}{format_loc(a.loc) if locs else ''}")
    region_of = func.region_of()
    open_region = None
    for n in func.body:
        region = region_of.get(n.result)
        if region is not open_region:
            if open_region is not None:
                out.append("  }")
            if region is not None:
                out.append(f"  kernel @{region.name}{format_attrs(region.attrs)} {{")
            open_region = region
        indent = "    " if region is not None else "  "
        out.append(indent + format_node(n, locs))
    if open_region is not None:
        out.append("  }")
    out.append("  return " + ", ".join(f"%{r}" for r in func.results))
    out.append("}")
    return "\n".join(out) + "\n"


def print_module(module: Module | Func, locs: bool = False) -> str:
    """Every function of the module, separated by a blank line."""
    funcs = (module,) if isinstance(module, Func) else module.funcs
    return "\n".join(print_func(f, locs) for f in funcs)
