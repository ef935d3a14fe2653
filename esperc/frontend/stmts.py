"""Statement lowering: SSA renaming of assignments, ``if`` (compile-time or uniform runtime
branch), ``return``, and inlining of helper ``fn`` calls.

Each statement is lowered on its own: when it fails, its diagnostic is recorded and the name it
assigns is bound to POISON, so later statements are still checked without cascading errors.
"""

from __future__ import annotations

from collections.abc import Sequence

from esperc.diagnostics import Note
from esperc.frontend import ast
from esperc.frontend.calls import P, bind_args
from esperc.frontend.context import Ctx, Scope
from esperc.frontend.exprs import emit, lower_expr, materialize, short
from esperc.frontend.namecheck import check_names
from esperc.frontend.values import POISON, Failed, Tensor, Value, Weak, fail
from esperc.ir.ops import Op
from esperc.ir.types import DType

MAX_INLINE_DEPTH = 64


def _report(ctx: Ctx, f: Failed, scope: Scope | None = None, s: ast.Stmt | None = None) -> None:
    """Record a failure; a silent one (a poisoned operand) still gets its unknown names checked."""
    if f.diag is not None:
        ctx.report(f.diag)
    elif scope is not None and s is not None:
        diags: list = []
        check_names([s], set(scope), set(ctx.fns), diags)
        for d in diags:
            ctx.report(d)


def lower_stmts(
    ctx: Ctx, scope: Scope, stmts: Sequence[ast.Stmt | ast.Decl]
) -> list[tuple[ast.Expr, Value]] | None:
    """Lower statements in order; returns the returned values (None without a ``return``)."""
    for s in stmts:
        if isinstance(s, ast.Assign):
            _assign(ctx, scope, s)
        elif isinstance(s, ast.If):
            _if(ctx, scope, s)
        elif isinstance(s, ast.Return):
            items = s.value.items if isinstance(s.value, ast.TupleExpr) else (s.value,)
            out: list[tuple[ast.Expr, Value]] = []
            for e in items:
                try:
                    out.append((e, lower_expr(ctx, scope, e)))
                except Failed as f:
                    _report(ctx, f, scope, ast.Return(e, s.span))
            return out if len(out) == len(items) else []
    return None


def _assign(ctx: Ctx, scope: Scope, s: ast.Assign) -> None:
    if not ctx.inline and s.target in ctx.decls:
        kind, where = ctx.decls[s.target]
        _report(
            ctx,
            fail(
                "E0110",
                f"cannot assign to '{s.target}', which is declared as {kind}",
                s.name_span,
                Note("note", f"'{s.target}' is declared here", where),
                Note("help", "choose a new name; every assignment defines a new value"),
            ),
        )
        return
    try:
        v = lower_expr(ctx, scope, s.value, hint=s.target)
    except Failed as f:
        _report(ctx, f, scope, s)
        scope[s.target] = POISON
        return
    if isinstance(v, Tensor):
        v = Tensor(v.name, s.span, short(s.value))
    scope[s.target] = v
    ctx.unbound.pop(s.target, None)


def _assigned(stmts: Sequence[ast.Stmt]) -> list[str]:
    out: list[str] = []
    for s in stmts:
        names = [s.target] if isinstance(s, ast.Assign) else []
        if isinstance(s, ast.If):
            names = _assigned(s.then) + _assigned(s.orelse or ())
        out += [n for n in names if n not in out]
    return out


def _if(ctx: Ctx, scope: Scope, s: ast.If) -> None:
    names = _assigned(s.then) + _assigned(s.orelse or ())
    try:
        c = lower_expr(ctx, scope, s.cond)
        if isinstance(c, Weak):
            if type(c.value) is not bool:
                raise fail(
                    "E0208", f"the condition of 'if' must be bool, got {c.value!r}", s.cond.span
                )
            _static_if(ctx, scope, s, c.value)
            return
        t = ctx.builder.type_of(c.name)
        if t.dtype is not DType.BOOL or t.rank != 0:
            raise fail(
                "E0208",
                f"the condition of 'if' must be a bool attr or a rank-0 bool value, got {t}",
                s.cond.span,
                Note("help", "for an elementwise choice use where(cond, a, b)"),
            )
    except Failed as f:
        _report(ctx, f)
        for n in names:
            scope[n] = POISON
        return
    _runtime_if(ctx, scope, s, c)


def _static_if(ctx: Ctx, scope: Scope, s: ast.If, value: bool) -> None:
    taken, other = (s.then, s.orelse or ()) if value else (s.orelse or (), s.then)
    diags: list = []
    check_names(other, set(scope), set(ctx.fns), diags)
    for d in diags:
        ctx.report(d)
    lower_stmts(ctx, scope, taken)
    why = Note(
        "note",
        f"it is only assigned in the arm that is not taken: '{short(s.cond)}' is "
        f"{'true' if value else 'false'} (line {s.span.line})",
    )
    for n in _assigned(other):
        if n not in scope:
            ctx.unbound[n] = why


def _runtime_if(ctx: Ctx, scope: Scope, s: ast.If, c: Tensor) -> None:
    arms = (dict(scope), dict(scope))
    lower_stmts(ctx, arms[0], s.then)
    lower_stmts(ctx, arms[1], s.orelse or ())
    for n in dict.fromkeys(_assigned(s.then) + _assigned(s.orelse or ())):
        if n in scope and arms[0].get(n) is scope[n] and arms[1].get(n) is scope[n]:
            continue
        tv, ev = arms[0].get(n), arms[1].get(n)
        if tv is None or ev is None:
            ctx.unbound[n] = Note(
                "note",
                f"'{n}' is assigned in only one arm of the runtime 'if' at line {s.span.line}",
            )
            continue
        if tv is POISON or ev is POISON:
            scope[n] = POISON
            continue
        if isinstance(tv, Weak) and isinstance(ev, Weak) and tv == ev:
            scope[n] = tv
            continue
        try:
            scope[n] = _select(ctx, s, c, n, tv, ev)
        except Failed as f:
            _report(ctx, f)
            scope[n] = POISON


def _select(ctx: Ctx, s: ast.If, c: Tensor, n: str, tv: Value, ev: Value) -> Tensor:
    """``select(c, then, else)`` for one name; a scalar takes the other arm's dtype."""

    def dt(v: Value) -> DType | None:
        return ctx.builder.type_of(v.name).dtype if isinstance(v, Tensor) else None

    a = materialize(ctx, tv, dt(ev) if isinstance(tv, Weak) else None, s.cond)
    b = materialize(ctx, ev, dt(tv) if isinstance(ev, Weak) else None, s.cond)
    ta, tb = ctx.builder.type_of(a), ctx.builder.type_of(b)
    if ta != tb:
        notes = [
            Note("note", f"the then-arm makes '{n}' {ta}", getattr(tv, "origin", None)),
            Note("note", f"the else-arm makes '{n}' {tb}", getattr(ev, "origin", None)),
        ]
        if n in _assigned(s.then) and n not in _assigned(s.orelse or ()):
            notes[1] = Note("note", f"'{n}' keeps its value from before the 'if': {tb}")
        elif n not in _assigned(s.then):
            notes[0] = Note("note", f"'{n}' keeps its value from before the 'if': {ta}")
        raise fail(
            "E0207", f"the arms of this runtime 'if' give '{n}' different types", s.span, *notes
        )
    sel = emit(ctx, Op.SELECT, [c.name, a, b], {}, s, n)
    return Tensor(sel.name, s.span, f"select({short(s.cond)}, ...)")


def inline_call(ctx: Ctx, scope: Scope, e: ast.Call, hint: str | None) -> Value:
    """Inline a helper fn at a call: bind arguments, lower its body, return its result."""
    fn = ctx.fns[e.func]
    if e.func in ctx.recursive or any(name == e.func for name, _ in ctx.inline):
        raise Failed()  # the cycle is reported once, by namecheck.find_recursion
    if len(ctx.inline) >= MAX_INLINE_DEPTH:
        raise fail("E0005", f"helper calls nested more than {MAX_INLINE_DEPTH} deep", e.span)
    bound = bind_args(e.func, tuple(P(p.name) for p in fn.params), e)
    fscope: Scope = {}
    for p in fn.params:
        x = bound[p.name]
        assert x is not None
        fscope[p.name] = lower_expr(ctx, scope, x)
    ctx.inline.append((fn.name, e.span))
    saved = dict(ctx.unbound)
    ctx.unbound.clear()
    try:
        body = list(fn.body)
        ret = body.pop() if body and isinstance(body[-1], ast.Return) else None
        lower_stmts(ctx, fscope, body)
        if ret is None:
            raise Failed()  # E0107 is reported once for the definition
        try:
            if isinstance(ret.value, ast.TupleExpr):
                raise fail("E0214", "a helper fn returns one value, not a tuple", ret.value.span)
            return lower_expr(ctx, fscope, ret.value, hint)
        except Failed as f:
            _report(ctx, f)
            raise Failed() from None
    finally:
        ctx.inline.pop()
        ctx.unbound.clear()
        ctx.unbound.update(saved)
