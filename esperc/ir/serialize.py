"""JSON serialization of the IR: ``from_json(to_json(f)) == f``.

The JSON form is a nested dict of plain values; dims and attribute values use their printed
forms, so the JSON stays readable and needs no custom decoder.
"""

from __future__ import annotations

import json
from typing import Any

from esperc.ir.dimexpr import parse_dimexpr, to_str
from esperc.ir.graph import Arg, DimDecl, Func, Module, Node, Region, Require
from esperc.ir.ops import OPS, Op
from esperc.ir.parser import _attr_value, _Line, _type
from esperc.ir.printer import format_value


def _type_json(t: Any) -> str:
    return str(t)


def func_to_json(f: Func) -> dict[str, Any]:
    return {
        "name": f.name,
        "dims": [{"name": d.name, "lo": d.lo, "hi": d.hi} for d in f.dims],
        "requires": [to_str(r.expr) for r in f.requires],
        "args": [{"name": a.name, "kind": a.kind, "type": str(a.type)} for a in f.args],
        "body": [
            {
                "result": n.result,
                "op": n.op.value,
                "operands": list(n.operands),
                "attrs": {k: format_value(v) for k, v in n.attrs},
                "type": str(n.type),
            }
            for n in f.body
        ],
        "results": list(f.results),
        "regions": [
            {
                "name": r.name,
                "members": list(r.members),
                "attrs": {k: format_value(v) for k, v in r.attrs},
            }
            for r in f.regions
        ],
    }


def _parse_type(text: str) -> Any:
    return _type(_Line(text))


def func_from_json(d: dict[str, Any]) -> Func:
    """Inverse of ``func_to_json`` (raises ValueError/KeyError on malformed input)."""
    body = []
    for n in d["body"]:
        op = Op(n["op"])
        schema = OPS[op].attrs
        attrs = tuple((k, _attr_value(_Line(v), schema[k])) for k, v in sorted(n["attrs"].items()))
        body.append(Node(n["result"], op, tuple(n["operands"]), attrs, _parse_type(n["type"])))
    regions = tuple(
        Region(
            r["name"],
            tuple(r["members"]),
            tuple((k, _attr_value(_Line(v), None)) for k, v in sorted(r["attrs"].items())),
        )
        for r in d.get("regions", [])
    )
    return Func(
        d["name"],
        tuple(DimDecl(x["name"], int(x["lo"]), int(x["hi"])) for x in d["dims"]),
        tuple(Require(parse_dimexpr(r)) for r in d["requires"]),
        tuple(Arg(a["name"], _parse_type(a["type"]), a["kind"]) for a in d["args"]),
        tuple(body),
        tuple(d["results"]),
        regions,
    )


def to_json(m: Module | Func) -> str:
    funcs = (m,) if isinstance(m, Func) else m.funcs
    return json.dumps(
        {"format": "esperc-ir", "version": 1, "funcs": [func_to_json(f) for f in funcs]}, indent=2
    )


def from_json(text: str) -> Module:
    data = json.loads(text)
    return Module(tuple(func_from_json(f) for f in data["funcs"]))
