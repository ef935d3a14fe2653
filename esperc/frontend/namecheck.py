"""Checks that need no types: names in an arm of an ``if`` that is not lowered, helper-fn
recursion (E0104), and where ``return`` may appear (E0111)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from esperc.diagnostics import Diagnostic, Loc, Note, Severity, did_you_mean
from esperc.frontend import ast
from esperc.frontend.ast import sub_exprs
from esperc.frontend.calls import SIGS


def stmt_exprs(stmts: Sequence[ast.Stmt | ast.Decl]) -> Iterator[ast.Expr]:
    """Every expression node of a statement list, nested ``if`` arms included."""
    for s in stmts:
        if isinstance(s, ast.Assign | ast.Return):
            yield from sub_exprs(s.value)
        elif isinstance(s, ast.If):
            yield from sub_exprs(s.cond)
            yield from stmt_exprs(s.then)
            yield from stmt_exprs(s.orelse or ())


def _err(code: str, msg: str, loc: Loc, *notes: Note | None) -> Diagnostic:
    return Diagnostic(Severity.ERROR, code, msg, loc, tuple(n for n in notes if n))


def check_names(
    stmts: Sequence[ast.Stmt], known: set[str], fns: set[str], out: list[Diagnostic]
) -> set[str]:
    """Report unknown names (E0101) and calls (E0103) in statements that are not lowered.

    Returns the names the statements assign (for the caller's later statements).
    """
    known = set(known)
    assigned: set[str] = set()
    for s in stmts:
        if isinstance(s, ast.If):
            _check_expr(s.cond, known, fns, out)
            a = check_names(s.then, known, fns, out) | check_names(s.orelse or (), known, fns, out)
            known |= a
            assigned |= a
            continue
        _check_expr(s.value, known, fns, out)
        if isinstance(s, ast.Assign):
            known.add(s.target)
            assigned.add(s.target)
    return assigned


def _check_expr(e: ast.Expr, known: set[str], fns: set[str], out: list[Diagnostic]) -> None:
    for x in sub_exprs(e):
        if isinstance(x, ast.Name) and x.id not in known:
            out.append(_err("E0101", f"unknown name '{x.id}'", x.span, did_you_mean(x.id, known)))
        elif isinstance(x, ast.Call) and x.func not in fns and x.func not in SIGS:
            out.append(
                _err(
                    "E0103",
                    f"unknown op or function '{x.func}'",
                    x.name_span,
                    did_you_mean(x.func, [*SIGS, *fns]),
                )
            )


def check_returns(body: Sequence[ast.Stmt | ast.Decl], out: list[Diagnostic]) -> None:
    """A ``return`` must be the last statement of a body, never inside an ``if`` (E0111)."""
    last = len(body) - 1
    for i, s in enumerate(body):
        if isinstance(s, ast.Return) and i != last:
            out.append(
                _err(
                    "E0111",
                    "statements after 'return' are never run",
                    s.span,
                    Note("help", "'return' must be the last statement"),
                )
            )
        elif isinstance(s, ast.If):
            for arm in (s.then, s.orelse or ()):
                _nested_returns(arm, out)


def _nested_returns(stmts: Sequence[ast.Stmt], out: list[Diagnostic]) -> None:
    for s in stmts:
        if isinstance(s, ast.Return):
            out.append(
                _err(
                    "E0111",
                    "'return' inside an 'if' is not supported",
                    s.span,
                    Note("help", "assign the value in both arms and return it after the 'if'"),
                )
            )
        elif isinstance(s, ast.If):
            _nested_returns(s.then, out)
            _nested_returns(s.orelse or (), out)


def find_recursion(fns: dict[str, ast.FnDef], out: list[Diagnostic]) -> set[str]:
    """Report each call cycle among helper fns once (E0104); returns the fns on a cycle."""
    calls = {
        name: [(x.func, x) for x in stmt_exprs(f.body) if isinstance(x, ast.Call) and x.func in fns]
        for name, f in fns.items()
    }
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    on_cycle: set[str] = set()
    for root in fns:
        if root in state:
            continue
        path: list[str] = [root]
        iters = [iter(calls[root])]
        state[root] = 1
        while iters:
            step = next(iters[-1], None)
            if step is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            callee, site = step
            if state.get(callee) == 1:
                cycle = path[path.index(callee) :] + [callee]
                on_cycle |= set(cycle)
                first = fns[callee]
                out.append(
                    _err(
                        "E0104",
                        f"helper '{callee}' calls itself"
                        + ("" if len(cycle) == 2 else f" through {' -> '.join(cycle)}"),
                        site.span,
                        Note("note", "the cycle closes here"),
                        Note("note", f"'{callee}' is defined here", first.name_span),
                        Note("help", "helpers are inlined at each call, so they cannot recurse"),
                    )
                )
            elif callee not in state:
                state[callee] = 1
                path.append(callee)
                iters.append(iter(calls[callee]))
    return on_cycle
