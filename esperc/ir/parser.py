"""Parser for the textual IR (``.eir``), the inverse of ``printer``.

The text is line-oriented (one declaration or node per line), so this is a small hand-written
tokenizer and recursive-descent reader; lark stays the front end's alone. Every error is a
``DiagnosticError`` with code E0601 at the offending line and column; the parsed functions are
verified (E0602 on failure).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from esperc.diagnostics import DiagnosticSink, Loc
from esperc.ir.dimexpr import BinOp, DimExpr, Num, Sym, UnaryOp, parse_dimexpr
from esperc.ir.graph import Arg, DimDecl, Func, Module, Node, Region, Require
from esperc.ir.ops import OPS, AttrKind, Op
from esperc.ir.types import Dim, DType, SymDim, TensorType, TypeRuleError
from esperc.ir.verifier import VerifyError, verify

_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#.*)
    |(?P<value>%[A-Za-z0-9_.]+)|(?P<symbol>@[A-Za-z0-9_.]+)
    |(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf\b|nan\b))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>//|<=|>=|==|!=|[{}\[\]()=,:<>+\-*%])""",
    re.VERBOSE,
)
MAX_IR_BYTES = 64 << 20


class _ParseError(Exception):
    def __init__(self, col: int, message: str) -> None:
        super().__init__(message)
        self.col = col
        self.message = message


class _Line:
    """Tokens of one line with a cursor; ``col`` values are 1-based."""

    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise _ParseError(pos + 1, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind not in ("ws", "comment"):
                self.toks.append((kind, m.group(0), pos + 1))
            pos = m.end()
        self.i = 0
        self.end_col = len(text) + 1

    def peek(self, k: int = 0) -> tuple[str, str, int] | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def col(self) -> int:
        t = self.peek()
        return t[2] if t else self.end_col

    def next(self, kind: str | None = None, text: str | None = None) -> str:
        t = self.peek()
        if t is None or (kind and t[0] != kind) or (text and t[1] != text):
            want = text or kind or "token"
            got = repr(t[1]) if t else "end of line"
            raise _ParseError(self.col(), f"expected {want!r}, got {got}")
        self.i += 1
        return t[1]

    def accept(self, text: str) -> bool:
        t = self.peek()
        if t is not None and t[1] == text:
            self.i += 1
            return True
        return False

    def done(self) -> None:
        if self.peek() is not None:
            raise _ParseError(self.col(), f"unexpected {self.peek()[1]!r}")  # type: ignore[index]


def dim_from_expr(e: DimExpr) -> Dim:
    """A ``DimExpr`` of ints, symbols and ``+ - * //`` as a (possibly symbolic) dim."""
    if isinstance(e, Num):
        return int(e.value)
    if isinstance(e, Sym):
        return SymDim.symbol(e.name)
    if isinstance(e, UnaryOp) and e.op == "-":
        return 0 - dim_from_expr(e.operand)
    if isinstance(e, BinOp) and e.op in ("+", "-", "*", "//"):
        a, b = dim_from_expr(e.lhs), dim_from_expr(e.rhs)
        ops: dict[str, Callable[[Any, Any], Dim]] = {
            "+": lambda x, y: x + y,
            "-": lambda x, y: x - y,
            "*": lambda x, y: x * y,
            "//": lambda x, y: x // y,
        }
        try:
            return ops[e.op](a, b)
        except TypeError:
            raise TypeRuleError("E0209", f"'{a} {e.op} {b}' is not a dimension") from None
    raise TypeRuleError("E0209", "not a dimension expression")


def _dims(line: _Line) -> tuple[Dim, ...]:
    line.next(text="[")
    dims: list[Dim] = []
    while not line.accept("]"):
        col, parts = line.col(), []
        while (t := line.peek()) is not None and t[1] not in (",", "]"):
            parts.append(line.next())
        if not parts:
            raise _ParseError(col, "expected a dimension")
        try:
            dims.append(dim_from_expr(parse_dimexpr(" ".join(parts))))
        except (ValueError, TypeRuleError) as e:
            raise _ParseError(col, f"bad dimension {' '.join(parts)!r}: {e}") from None
        if not line.accept(","):
            line.next(text="]")
            break
    return tuple(dims)


def _type(line: _Line) -> TensorType:
    col = line.col()
    name = line.next("ident")
    try:
        dtype = DType(name)
    except ValueError:
        raise _ParseError(col, f"unknown dtype {name!r}") from None
    return TensorType(dtype, _dims(line))


def _generic(line: _Line) -> Any:
    kind, text, col = line.peek() or ("", "", line.col())
    if text == "[":
        line.next()
        items = []
        while not line.accept("]"):
            items.append(_generic(line))
            if not line.accept(","):
                line.next(text="]")
                break
        return tuple(items)
    line.next()
    if kind == "string":
        return json.loads(text)
    if text in ("true", "false"):
        return text == "true"
    if kind == "number":
        return float(text) if re.search(r"[.eEn]", text) else int(text)
    if kind == "ident":
        try:
            return DType(text)
        except ValueError:
            raise _ParseError(col, f"unexpected {text!r} in attribute value") from None
    raise _ParseError(col, f"unexpected {text!r} in attribute value")


def _attr_value(line: _Line, kind: AttrKind | None) -> Any:
    col = line.col()
    if kind is AttrKind.SHAPE:
        return _dims(line)
    value = _generic(line)
    ok = {
        AttrKind.INT: lambda v: type(v) is int,
        AttrKind.FLOAT: lambda v: type(v) is float,
        AttrKind.BOOL: lambda v: type(v) is bool,
        AttrKind.STR: lambda v: type(v) is str,
        AttrKind.DTYPE: lambda v: isinstance(v, DType),
        AttrKind.INTS: lambda v: isinstance(v, tuple) and all(type(x) is int for x in v),
        AttrKind.SCALAR: lambda v: type(v) in (int, float, bool),
    }
    if kind is not None and not ok[kind](value):
        raise _ParseError(col, f"expected a value of kind {kind.value}")
    return value


def _attrs(line: _Line, schema: dict[str, AttrKind] | None) -> tuple[tuple[str, Any], ...]:
    if not line.accept("{"):
        return ()
    out: list[tuple[str, Any]] = []
    while not line.accept("}"):
        col = line.col()
        key = line.next("ident")
        if schema is not None and key not in schema:
            raise _ParseError(col, f"unknown attribute {key!r}")
        line.next(text="=")
        out.append((key, _attr_value(line, schema.get(key) if schema is not None else None)))
        if not line.accept(","):
            line.next(text="}")
            break
    if [k for k, _ in out] != sorted({k for k, _ in out}):
        raise _ParseError(line.col(), "attributes must be sorted by name and not repeated")
    return tuple(out)


def _loc(line: _Line) -> Loc | None:
    if not line.accept("loc"):
        return None
    line.next(text="(")
    file = json.loads(line.next("string"))
    line.next(text=":")
    ln = int(line.next("number"))
    line.next(text=":")
    col = int(line.next("number"))
    line.next(text=")")
    return Loc(file, ln, col)


class _FuncReader:
    def __init__(self, name: str, loc: Loc) -> None:
        self.name, self.loc = name, loc
        self.dims: list[DimDecl] = []
        self.requires: list[Require] = []
        self.args: list[Arg] = []
        self.body: list[Node] = []
        self.regions: list[Region] = []
        self.region: tuple[str, tuple[tuple[str, Any], ...], list[str]] | None = None
        self.results: tuple[str, ...] | None = None

    def line(self, line: _Line, loc: Loc) -> bool:
        """Consume one line; True when the function's closing brace was read."""
        head = line.peek()
        assert head is not None
        if self.results is not None and head[1] != "}":
            raise _ParseError(head[2], "nothing may follow 'return' in a function")
        if head[1] == "}":
            line.next()
            line.done()
            if self.region is not None:
                name, attrs, members = self.region
                self.regions.append(Region(name, tuple(members), attrs))
                self.region = None
                return False
            if self.results is None:
                raise _ParseError(head[2], f"function @{self.name} has no 'return'")
            return True
        if head[1] == "dim":
            line.next()
            name = line.next("ident")
            line.next(text="in")
            line.next(text="[")
            lo = int(line.next("number"))
            line.next(text=",")
            hi = int(line.next("number"))
            line.next(text="]")
            self.dims.append(DimDecl(name, lo, hi, loc))
        elif head[1] == "require":
            line.next()
            text = " ".join(t[1] for t in line.toks[line.i :])
            line.i = len(line.toks)
            try:
                self.requires.append(Require(parse_dimexpr(text), loc))
            except ValueError as e:
                raise _ParseError(head[2], str(e)) from None
        elif head[1] in ("input", "param"):
            kind = line.next()
            name = line.next("value")[1:]
            line.next(text=":")
            ty = _type(line)
            self.args.append(Arg(name, ty, kind, _loc(line) or loc))
        elif head[1] == "kernel":
            line.next()
            if self.region is not None:
                raise _ParseError(head[2], "kernel regions do not nest")
            name = line.next("symbol")[1:]
            attrs = _attrs(line, None)
            line.next(text="{")
            self.region = (name, attrs, [])
        elif head[1] == "return":
            line.next()
            results = [line.next("value")[1:]]
            while line.accept(","):
                results.append(line.next("value")[1:])
            self.results = tuple(results)
        elif head[0] == "value":
            self.body.append(self._node(line, loc))
            if self.region is not None:
                self.region[2].append(self.body[-1].result)
        else:
            raise _ParseError(head[2], f"unexpected {head[1]!r}")
        line.done()
        return False

    def _node(self, line: _Line, loc: Loc) -> Node:
        result = line.next("value")[1:]
        line.next(text="=")
        col = line.col()
        opname = line.next("ident")
        try:
            op = Op(opname)
        except ValueError:
            raise _ParseError(col, f"unknown op {opname!r}") from None
        operands: list[str] = []
        if (t := line.peek()) is not None and t[0] == "value":
            operands.append(line.next()[1:])
            while line.accept(","):
                operands.append(line.next("value")[1:])
        attrs = _attrs(line, dict(OPS[op].attrs))
        line.next(text=":")
        ty = _type(line)
        return Node(result, op, tuple(operands), attrs, ty, _loc(line) or loc)

    def finish(self) -> Func:
        return Func(
            self.name,
            tuple(self.dims),
            tuple(self.requires),
            tuple(self.args),
            tuple(self.body),
            self.results or (),
            tuple(self.regions),
            self.loc,
        )


def parse_module(text: str, filename: str = "<ir>") -> Module:
    """Parse and verify IR text.

    Raises:
        DiagnosticError: E0601 for a syntax error, E0602 when a function does not verify.
    """
    sink = DiagnosticSink()
    if len(text) > MAX_IR_BYTES:
        sink.error("E0601", f"IR text is larger than {MAX_IR_BYTES >> 20} MiB", Loc(filename, 1, 1))
        return _fail(sink)
    funcs: list[Func] = []
    reader: _FuncReader | None = None
    lines = text.split("\n")
    for lineno, raw in enumerate(lines, 1):
        loc = Loc(filename, lineno, 1)
        try:
            line = _Line(raw)
            if line.peek() is None:
                continue
            if reader is None:
                line.next(text="func")
                name = line.next("symbol")[1:]
                line.next(text="{")
                line.done()
                reader = _FuncReader(name, loc)
            elif reader.line(line, Loc(filename, lineno, line.col())):
                funcs.append(reader.finish())
                reader = None
        except _ParseError as e:
            sink.error("E0601", e.message, Loc(filename, lineno, e.col, lineno, e.col + 1))
            return _fail(sink)
    if reader is not None:
        sink.error("E0601", f"function @{reader.name} is not closed with '}}'", reader.loc)
        return _fail(sink)
    if not funcs:
        sink.error("E0601", "no function in IR text", Loc(filename, 1, 1))
        return _fail(sink)
    for f in funcs:
        try:
            verify(f)
        except VerifyError as e:
            sink.error("E0602", str(e), f.loc)
    sink.check()
    return Module(tuple(funcs))


def _fail(sink: DiagnosticSink) -> Module:
    sink.check()
    raise AssertionError("unreachable")


def parse_func(text: str, filename: str = "<ir>") -> Func:
    """Parse IR text holding exactly one function (see ``parse_module``)."""
    module = parse_module(text, filename)
    return module.funcs[0]
