"""AST -> graph IR for one blueprint: file-level checks, declarations, statements, results.

Every user error is collected; ``lower`` raises one ``DiagnosticError`` holding all of them,
sorted by source position.
"""

from __future__ import annotations

from collections.abc import Mapping

from esperc.diagnostics import (
    Diagnostic,
    DiagnosticError,
    DiagnosticSink,
    Loc,
    Note,
    Severity,
    did_you_mean,
)
from esperc.frontend import ast
from esperc.frontend.calls import SIGS
from esperc.frontend.context import Ctx, Scope
from esperc.frontend.decls import declare
from esperc.frontend.exprs import materialize
from esperc.frontend.namecheck import check_returns, find_recursion
from esperc.frontend.stmts import lower_stmts
from esperc.frontend.values import Failed
from esperc.ir.builder import Builder
from esperc.ir.graph import Func


def _err(code: str, msg: str, loc: Loc | None, *notes: Note | None) -> Diagnostic:
    return Diagnostic(Severity.ERROR, code, msg, loc, tuple(n for n in notes if n))


def _pick(f: ast.File, name: str | None) -> ast.Blueprint:
    bps = f.blueprints
    names = [b.name for b in bps]
    if name is not None:
        for b in bps:
            if b.name == name:
                return b
        raise DiagnosticError(
            [
                _err(
                    "E0109",
                    f"no blueprint named '{name}' in {f.path}",
                    None,
                    did_you_mean(name, names),
                    Note("note", "blueprints: " + (", ".join(names) or "none")),
                )
            ]
        )
    if len(bps) == 1:
        return bps[0]
    if not bps:
        raise DiagnosticError([_err("E0109", f"{f.path} has no blueprint", Loc(f.path, 1, 1))])
    raise DiagnosticError(
        [
            _err(
                "E0109",
                f"{f.path} has {len(bps)} blueprints; name the one to compile",
                None,
                Note("note", "blueprints: " + ", ".join(names)),
                Note("help", "pass --blueprint NAME"),
            )
        ]
    )


def file_checks(
    f: ast.File, bp: ast.Blueprint, out: list[Diagnostic]
) -> tuple[dict[str, ast.FnDef], set[str]]:
    """Duplicate names, missing or misplaced returns, recursion. Returns (fns, recursive fns).

    Of the blueprints, only ``bp`` (the one lowered) is checked beyond its name.
    """
    fns: dict[str, ast.FnDef] = {}
    firsts: dict[str, Loc] = {}
    for item in f.items:
        kind = "fn" if isinstance(item, ast.FnDef) else "blueprint"
        key = f"{kind}:{item.name}"
        if key in firsts:
            out.append(
                _err(
                    "E0102",
                    f"{kind} '{item.name}' is defined twice",
                    item.name_span,
                    Note("note", "first defined here", firsts[key]),
                )
            )
            continue
        firsts[key] = item.name_span
        if isinstance(item, ast.Blueprint) and item is not bp:
            continue
        check_returns(item.body, out)
        if not item.body or not isinstance(item.body[-1], ast.Return):
            out.append(_err("E0107", f"{kind} '{item.name}' has no 'return'", item.name_span))
        if isinstance(item, ast.FnDef):
            if item.name in SIGS:
                out.append(_err("E0102", f"fn '{item.name}' has the name of an op", item.name_span))
                continue
            seen: set[str] = set()
            for p in item.params:
                if p.name in seen:
                    out.append(_err("E0102", f"parameter '{p.name}' appears twice", p.span))
                seen.add(p.name)
            fns[item.name] = item
    return fns, find_recursion(fns, out)


def lower(
    file: ast.File, blueprint: str | None = None, overrides: Mapping[str, str] | None = None
) -> Func:
    """Lower one blueprint of a parsed file to a verified ``Func``.

    Args:
        file: the parsed file (``parse_file``/``parse_source``).
        blueprint: which blueprint; may be None when the file holds exactly one.
        overrides: ``-D name=value`` attr overrides, values as written on the command line.

    Raises:
        DiagnosticError: every user error found (E01xx names, E02xx types and shapes, ...).
    """
    bp = _pick(file, blueprint)
    file_diags: list[Diagnostic] = []
    fns, recursive = file_checks(file, bp, file_diags)
    ctx = Ctx(Builder(bp.name, bp.span), DiagnosticSink(), fns, recursive)
    for d in file_diags:
        ctx.report(d)
    results: list[str] = []
    try:
        scope: Scope = {}
        declare(ctx, scope, bp, overrides or {})
        ret = lower_stmts(ctx, scope, bp.body)
        for e, v in ret or ():
            try:
                results.append(materialize(ctx, v, None, e))
            except Failed as f:
                if f.diag:
                    ctx.report(f.diag)
    except RecursionError:
        ctx.report(_err("E0005", "blueprint is nested too deeply to compile", bp.name_span))
    if ctx.sink.has_errors or not results:
        diags = ctx.sink.diagnostics or [
            _err("E0107", f"blueprint '{bp.name}' returns nothing", bp.name_span)
        ]
        raise DiagnosticError(sorted(diags, key=_pos))
    return ctx.builder.finish(results)


def _pos(d: Diagnostic) -> tuple[int, int]:
    return (d.loc.line, d.loc.col) if d.loc else (0, 0)
