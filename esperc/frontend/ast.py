"""Abstract syntax tree of a .esp file: one frozen dataclass per construct, each with a source span.

Spans (``span``, ``name_span``) are excluded from equality, so two parses of the same program
with different layout compare equal. ``dump_ast`` prints a stable, indented dump (one node per
line, ``@line:col`` spans) used by ``esperc compile --emit ast`` and the lit tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Union

from esperc.diagnostics import Loc

_NOLOC = Loc("<none>", 0, 0)


def _span() -> Loc:
    return field(default=_NOLOC, compare=False, repr=False)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Expressions


@dataclass(frozen=True, slots=True)
class IntLit:
    value: int
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class FloatLit:
    value: float  # may be math.inf (``inf``); ``-inf`` is Neg(FloatLit(inf))
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class BoolLit:
    value: bool
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class StrLit:
    value: str  # without the quotes
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class BinOp:
    """A binary operator: ``+ - * / // % @ ** < <= > >= == != and or``."""

    op: str
    lhs: Expr
    rhs: Expr
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class UnaryOp:
    """A unary operator: ``-`` or ``not``."""

    op: str
    operand: Expr
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class Keyword:
    """A keyword argument ``name=value`` of a call."""

    name: str
    value: Expr
    span: Loc = _span()
    name_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args..., key=value...)``; ``func`` is an op or an ``fn`` name."""

    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    span: Loc = _span()
    name_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class ListExpr:
    """``[a, b, ...]``: only meaningful as a call argument (dim lists, axis lists, concat)."""

    items: tuple[Expr, ...]
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class TupleExpr:
    """``(a, b, ...)``: only meaningful as the value of ``return``."""

    items: tuple[Expr, ...]
    span: Loc = _span()


Expr = Union[IntLit, FloatLit, BoolLit, StrLit, Name, BinOp, UnaryOp, Call, ListExpr, TupleExpr]

# --------------------------------------------------------------------------------------------
# Statements


@dataclass(frozen=True, slots=True)
class Assign:
    target: str
    value: Expr
    span: Loc = _span()
    name_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class If:
    """``if cond { then } else { orelse }``; ``else if`` nests an ``If`` as the only else stmt."""

    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] | None
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class Return:
    value: Expr  # a TupleExpr for several results
    span: Loc = _span()


Stmt = Union[Assign, If, Return]

# --------------------------------------------------------------------------------------------
# Declarations (blueprint level only)


@dataclass(frozen=True, slots=True)
class DimDecl:
    """``dim N`` (both bounds None, value None), ``dim N in [lo, hi]`` or ``dim N = value``."""

    name: str
    lo: Expr | None = None
    hi: Expr | None = None
    value: Expr | None = None
    span: Loc = _span()
    name_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class AttrDecl:
    """``attr N: TYPE = VALUE``; the type name is checked by sema (f32, i32 or bool)."""

    name: str
    type_name: str
    value: Expr
    span: Loc = _span()
    name_span: Loc = _span()
    type_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """``input N: DTYPE[DIMS]`` or ``param N: DTYPE[DIMS]`` (``kind`` is "input" or "param")."""

    kind: str
    name: str
    dtype: str
    dims: tuple[Expr, ...]
    span: Loc = _span()
    name_span: Loc = _span()
    dtype_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class Require:
    expr: Expr
    span: Loc = _span()


Decl = Union[DimDecl, AttrDecl, TensorDecl, Require]

# --------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    span: Loc = _span()


@dataclass(frozen=True, slots=True)
class FnDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Loc = _span()
    name_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class Blueprint:
    name: str
    body: tuple[Decl | Stmt, ...]
    span: Loc = _span()
    name_span: Loc = _span()


@dataclass(frozen=True, slots=True)
class File:
    """A parsed .esp file; ``source`` is kept to render diagnostics of later phases."""

    path: str
    items: tuple[FnDef | Blueprint, ...]
    source: str = field(default="", compare=False, repr=False)

    @property
    def fns(self) -> tuple[FnDef, ...]:
        return tuple(i for i in self.items if isinstance(i, FnDef))

    @property
    def blueprints(self) -> tuple[Blueprint, ...]:
        return tuple(i for i in self.items if isinstance(i, Blueprint))


Node = Union[Expr, Stmt, Decl, Keyword, Param, FnDef, Blueprint, File]

# --------------------------------------------------------------------------------------------
# Dump

_SKIP = frozenset({"span", "name_span", "type_span", "dtype_span", "source"})


def _scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "inf" if v == math.inf else repr(v)
    if isinstance(v, str):
        return repr(v)
    return str(v)


def _is_node(v: object) -> bool:
    return hasattr(v, "__dataclass_fields__")


def dump_ast(node: Node) -> str:
    """A stable, readable dump of an AST: one node per line, children indented two spaces.

    Each line reads ``[label: ]Class field=value ... @line:col``; child nodes are labelled with
    their field name (``body[0]``, ``lhs``). Iterative, so deep trees cannot overflow the stack.
    """
    out: list[str] = []
    stack: list[tuple[int, str, object]] = [(0, "", node)]
    while stack:
        depth, label, n = stack.pop()
        if n is None:
            out.append("  " * depth + f"{label}: none")
            continue
        cls = type(n).__name__
        attrs: list[str] = []
        children: list[tuple[str, object]] = []
        for f in fields(n):  # type: ignore[arg-type]
            if f.name in _SKIP:
                continue
            v = getattr(n, f.name)
            if isinstance(v, tuple) and any(_is_node(x) for x in v):
                children += [(f"{f.name}[{i}]", x) for i, x in enumerate(v)]
            elif _is_node(v) or (v is None and f.name in ("orelse", "lo", "hi", "value")):
                if v is not None:
                    children.append((f.name, v))
            elif isinstance(v, tuple) and not v:
                continue
            elif isinstance(v, tuple):
                attrs.append(f"{f.name}=[{', '.join(_scalar(x) for x in v)}]")
            else:
                attrs.append(f"{f.name}={_scalar(v)}")
        span = getattr(n, "span", None)
        at = f" @{span.line}:{span.col}" if span is not None and span.line else ""
        prefix = f"{label}: " if label else ""
        out.append("  " * depth + prefix + " ".join([cls, *attrs]) + at)
        for lab, child in reversed(children):
            stack.append((depth + 1, lab, child))
    return "\n".join(out)


def sub_exprs(e: Expr) -> Iterator[Expr]:
    """Every expression node inside ``e`` (``e`` included), pre-order, iteratively."""
    stack = [e]
    while stack:
        x = stack.pop()
        yield x
        if isinstance(x, BinOp):
            stack += [x.rhs, x.lhs]
        elif isinstance(x, UnaryOp):
            stack.append(x.operand)
        elif isinstance(x, Call):
            stack += [k.value for k in reversed(x.kwargs)] + list(reversed(x.args))
        elif isinstance(x, ListExpr | TupleExpr):
            stack += list(reversed(x.items))
