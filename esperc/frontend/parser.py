""".esp source text -> AST (the only module that imports lark).

The grammar lives in ``grammar/esp.lark``. Lark's LALR(1) parser is iterative, so deep input cannot
overflow the stack there; the parse tree's depth is measured iteratively before it is converted,
and anything deeper than ``MAX_DEPTH`` is reported as E0005, as is a source over ``MAX_BYTES``.
Every lark error becomes a diagnostic (E0001-E0003) with the expected tokens in user terms.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from pathlib import Path

import lark
from lark import Token, Tree

from esperc.diagnostics import Loc, Note, error
from esperc.frontend import ast

MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 200


def _grammar_text() -> str:
    """grammar/esp.lark: inside an installed wheel it is the package ``esperc.grammar``
    (pyproject's package-dir); in a plain source checkout on PYTHONPATH, the folder itself."""
    try:
        return importlib.resources.files("esperc.grammar").joinpath("esp.lark").read_text("utf-8")
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parents[2] / "grammar" / "esp.lark").read_text("utf-8")


# Terminal names lark generates -> how the user writes them.
_KEYWORDS = (
    "fn blueprint dim attr input param require if else return in and or not true false inf"
).split()
_USER_TERMS: dict[str, str] = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "$END": "end of file",
    **{k.upper(): f"'{k}'" for k in _KEYWORDS},
}


@functools.cache
def _lark() -> lark.Lark:
    return lark.Lark(
        _grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


def _term_text(name: str) -> str:
    if name in _USER_TERMS:
        return _USER_TERMS[name]
    for t in _lark().terminals:
        if t.name == name and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return name.lower()


_EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE", "INF"}
_BINARY = {"PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "AT", "LESSTHAN", "MORETHAN", "AND", "OR"}


def _expected_note(expected: object) -> Note | None:
    want = {str(e) for e in expected or ()}  # type: ignore[attr-defined]
    names: list[str] = []
    if _EXPR_START <= want | {"STRING"}:
        want -= _EXPR_START | {"NOT"}
        names.append("an expression")
    if _BINARY <= want:
        want -= _BINARY | {t.name for t in _lark().terminals if t.name.startswith("__ANON")}
        want -= {"DOUBLESTAR", "STAR"}
        names.append("an operator")
    names += sorted({_term_text(w) for w in want})
    if not names:
        return None
    if len(names) > 8:
        names = names[:8] + ["..."]
    return Note(
        "help", "expected " + (names[0] if len(names) == 1 else "one of " + ", ".join(names))
    )


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _decode(data: bytes, filename: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        prefix = data[: e.start].decode("utf-8", errors="replace")
        line, col = _line_col(prefix, len(prefix))
        raise error(
            "E0004",
            f"source is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start}",
            Loc(filename, line, col, line, col + 1),
        ) from None
    return text


def parse_file(path: str | Path) -> ast.File:
    """Read and parse a .esp file.

    Raises:
        DiagnosticError: E0005 if unreadable or too large, else as ``parse_source``.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise error("E0005", f"cannot read '{p}': {e.strerror}", None) from None
    return parse_source(data, str(path))


def parse_source(source: str | bytes, filename: str = "<input>") -> ast.File:
    """Parse .esp source text into an ``ast.File``.

    Args:
        source: the text, or its bytes (decoded as strict UTF-8; a leading BOM is dropped).
        filename: the name diagnostics print.

    Raises:
        DiagnosticError: E0001-E0003 syntax errors, E0004 bad UTF-8, E0005 too large or deep.
    """
    size = len(source.encode("utf-8", "surrogatepass")) if isinstance(source, str) else len(source)
    if size > MAX_BYTES:
        raise error(
            "E0005", f"source is {size} bytes, over the limit of {MAX_BYTES}", Loc(filename, 1, 1)
        )
    text = _decode(source, filename) if isinstance(source, bytes) else source
    text = text.removeprefix("\ufeff")
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, text, filename) from None
    deep = _too_deep(tree)
    if deep is not None:
        raise error(
            "E0005",
            f"expression or block nested more than {MAX_DEPTH} levels deep",
            _loc(deep, filename),
            Note("help", "split it into several statements"),
        )
    items = tuple(_Convert(filename).items(tree))
    for item in items:
        for e in _top_exprs(item):
            deep_expr = _expr_too_deep(e)
            if deep_expr is not None:
                raise error(
                    "E0005",
                    f"expression nested more than {MAX_DEPTH} levels deep",
                    deep_expr.span,
                    Note("help", "split it into several statements"),
                )
    return ast.File(filename, items, text)


def _top_exprs(item: ast.FnDef | ast.Blueprint) -> list[ast.Expr]:
    out: list[ast.Expr] = []
    stack: list[object] = list(item.body)
    while stack:
        s = stack.pop()
        if isinstance(s, ast.If):
            out.append(s.cond)
            stack += [*s.then, *(s.orelse or ())]
        elif isinstance(s, ast.Assign | ast.Return | ast.AttrDecl):
            out.append(s.value)
        elif isinstance(s, ast.Require):
            out.append(s.expr)
        elif isinstance(s, ast.TensorDecl):
            out += s.dims
        elif isinstance(s, ast.DimDecl):
            out += [e for e in (s.lo, s.hi, s.value) if e is not None]
    return out


def _expr_too_deep(e: ast.Expr) -> ast.Expr | None:
    """The first node deeper than MAX_DEPTH (chains like a+b+c+... nest left in the AST)."""
    stack: list[tuple[ast.Expr, int]] = [(e, 0)]
    while stack:
        x, d = stack.pop()
        if d > MAX_DEPTH:
            return x
        kids: list[ast.Expr] = []
        if isinstance(x, ast.BinOp):
            kids = [x.lhs, x.rhs]
        elif isinstance(x, ast.UnaryOp):
            kids = [x.operand]
        elif isinstance(x, ast.Call):
            kids = [*x.args, *(k.value for k in x.kwargs)]
        elif isinstance(x, ast.ListExpr | ast.TupleExpr):
            kids = list(x.items)
        stack += [(k, d + 1) for k in kids]
    return None


def _syntax_error(e: lark.exceptions.UnexpectedInput, text: str, filename: str) -> Exception:
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        line, col = e.line, e.column
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        shown = repr(ch) if ch.isprintable() and ch else f"U+{ord(ch):04X}" if ch else "?"
        return error(
            "E0002",
            f"unexpected character {shown}",
            Loc(filename, line, col, line, col + 1),
        )
    tok = getattr(e, "token", None)
    if isinstance(e, lark.exceptions.UnexpectedEOF) or tok is None or tok.type == "$END":
        if tok is not None and tok.end_line:  # lark's $END borrows the last token's position
            line, col = tok.end_line, tok.end_column
        else:
            line, col = _line_col(text, len(text.rstrip()))
        return error(
            "E0003",
            "unexpected end of file",
            Loc(filename, line, col, line, col + 1),
            *[n for n in [_expected_note(e.expected)] if n],  # type: ignore[attr-defined]
        )
    assert isinstance(e, lark.exceptions.UnexpectedToken)
    word = str(tok)
    what = f"keyword '{word}'" if word in _KEYWORDS else f"'{word}'"
    end = tok.end_column if tok.end_line == tok.line and tok.end_column else tok.column + len(word)
    notes = [n for n in [_expected_note(e.accepts or e.expected)] if n]
    if tok.type in {k.upper() for k in _KEYWORDS} and "NAME" in (e.accepts or e.expected):
        notes.append(Note("note", f"'{word}' is a keyword and cannot be used as a name"))
    return error(
        "E0001", f"unexpected {what}", Loc(filename, tok.line, tok.column, tok.line, end), *notes
    )


def _too_deep(tree: Tree) -> Tree | None:
    stack: list[tuple[Tree, int]] = [(tree, 0)]
    while stack:
        t, d = stack.pop()
        if d > MAX_DEPTH:
            return t
        stack += [(c, d + 1) for c in t.children if isinstance(c, Tree)]
    return None


def _loc(node: Tree | Token, filename: str) -> Loc:
    if isinstance(node, Token):
        return Loc(
            filename, node.line or 0, node.column or 0, node.end_line or 0, node.end_column or 0
        )
    m = node.meta
    if getattr(m, "empty", True):
        return Loc(filename, 0, 0)
    return Loc(filename, m.line, m.column, m.end_line, m.end_column)


def _join(a: ast.Loc, b: ast.Loc) -> Loc:
    return Loc(a.file, a.line, a.col, b.end_line, b.end_col)


class _Convert:
    """Lark parse tree -> AST. Recursion depth is bounded by ``MAX_DEPTH`` (checked before)."""

    def __init__(self, filename: str) -> None:
        self.file = filename

    def loc(self, node: Tree | Token) -> Loc:
        return _loc(node, self.file)

    def items(self, tree: Tree) -> list[ast.FnDef | ast.Blueprint]:
        return [self.fn_def(t) if t.data == "fn_def" else self.blueprint(t) for t in tree.children]

    def fn_def(self, t: Tree) -> ast.FnDef:
        name, *rest = t.children
        params: tuple[ast.Param, ...] = ()
        if len(rest) == 2:
            params = tuple(ast.Param(str(p), self.loc(p)) for p in rest[0].children)
        return ast.FnDef(str(name), params, self.block(rest[-1]), self.loc(t), self.loc(name))

    def blueprint(self, t: Tree) -> ast.Blueprint:
        name, *body = t.children
        items = tuple(self.bp_item(c) for c in body)
        return ast.Blueprint(str(name), items, self.loc(t), self.loc(name))

    def bp_item(self, t: Tree) -> ast.Decl | ast.Stmt:
        c = t.children
        span = self.loc(t)
        match t.data:
            case "dim_dynamic":
                return ast.DimDecl(str(c[0]), span=span, name_span=self.loc(c[0]))
            case "dim_range":
                lo, hi = self.expr(c[1]), self.expr(c[2])
                return ast.DimDecl(str(c[0]), lo, hi, span=span, name_span=self.loc(c[0]))
            case "dim_static":
                v = self.expr(c[1])
                return ast.DimDecl(str(c[0]), value=v, span=span, name_span=self.loc(c[0]))
            case "attr_decl":
                return ast.AttrDecl(
                    str(c[0]), str(c[1]), self.expr(c[2]), span, self.loc(c[0]), self.loc(c[1])
                )
            case "input_decl" | "param_decl":
                ty = c[1]
                dtype = ty.children[0]
                dims = (
                    tuple(self.expr(d) for d in ty.children[1].children)
                    if len(ty.children) > 1
                    else ()
                )
                kind = t.data.removesuffix("_decl")
                return ast.TensorDecl(
                    kind, str(c[0]), str(dtype), dims, span, self.loc(c[0]), self.loc(dtype)
                )
            case "require_decl":
                return ast.Require(self.expr(c[0]), span)
        return self.stmt(t)

    def block(self, t: Tree) -> tuple[ast.Stmt, ...]:
        return tuple(self.stmt(c) for c in t.children)

    def stmt(self, t: Tree) -> ast.Stmt:
        c = t.children
        span = self.loc(t)
        if t.data == "assign":
            return ast.Assign(str(c[0]), self.expr(c[1]), span, self.loc(c[0]))
        if t.data == "return_stmt":
            return ast.Return(self.expr(c[0]), span)
        assert t.data == "if_stmt", t.data
        orelse: tuple[ast.Stmt, ...] | None = None
        if len(c) == 3:
            orelse = self.block(c[2]) if c[2].data == "block" else (self.stmt(c[2]),)
        return ast.If(self.expr(c[0]), self.block(c[1]), orelse, span)

    def expr(self, t: Tree | Token) -> ast.Expr:  # noqa: C901 - one case per grammar rule
        span = self.loc(t)
        if isinstance(t, Token):  # only reachable through a rule inlined by '?'
            raise AssertionError(f"unexpected token {t!r}")
        c = t.children
        match t.data:
            case "int_lit":
                if len(c[0]) > 40:
                    raise error("E0215", "integer literal is too long", span)
                return ast.IntLit(int(c[0]), span)
            case "float_lit":
                return ast.FloatLit(float(c[0]), span)
            case "inf_lit":
                return ast.FloatLit(math.inf, span)
            case "true_lit" | "false_lit":
                return ast.BoolLit(t.data == "true_lit", span)
            case "string_lit":
                return ast.StrLit(str(c[0])[1:-1], span)
            case "name":
                return ast.Name(str(c[0]), span)
            case "tuple_lit":
                return ast.TupleExpr(tuple(self.expr(x) for x in c), span)
            case "list_lit":
                return ast.ListExpr(tuple(self.expr(x) for x in c), span)
            case "neg":
                return ast.UnaryOp("-", self.expr(c[0]), span)
            case "not_op":
                return ast.UnaryOp("not", self.expr(c[0]), span)
            case "power":
                return ast.BinOp("**", self.expr(c[0]), self.expr(c[1]), span)
            case "or_expr" | "and_expr":
                op = t.data.removesuffix("_expr")
                return self.chain([self.expr(x) for x in c], [op] * (len(c) - 1))
            case "comparison" | "arith" | "term":
                operands = [self.expr(x) for x in c[0::2]]
                return self.chain(operands, [str(x) for x in c[1::2]])
            case "call":
                return self.call(t)
        raise AssertionError(f"unknown rule {t.data}")

    def chain(self, operands: list[ast.Expr], ops: list[str]) -> ast.Expr:
        lhs = operands[0]
        for op, rhs in zip(ops, operands[1:]):
            lhs = ast.BinOp(op, lhs, rhs, _join(lhs.span, rhs.span))
        return lhs

    def call(self, t: Tree) -> ast.Call:
        name, *rest = t.children
        args: list[ast.Expr] = []
        kwargs: list[ast.Keyword] = []
        for a in rest[0].children if rest else ():
            if isinstance(a, Tree) and a.data == "kwarg":
                k, v = a.children
                kwargs.append(ast.Keyword(str(k), self.expr(v), self.loc(a), self.loc(k)))
            elif kwargs:
                raise error(
                    "E0001",
                    "positional argument follows keyword argument",
                    self.loc(a),
                    Note("help", f"pass it before '{kwargs[0].name}='"),
                )
            else:
                args.append(self.expr(a))
        return ast.Call(str(name), tuple(args), tuple(kwargs), self.loc(t), self.loc(name))
