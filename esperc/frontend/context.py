"""The state of lowering one blueprint, passed explicitly to every lowering function."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from esperc.diagnostics import Diagnostic, DiagnosticSink, Loc, Note
from esperc.frontend import ast
from esperc.ir.builder import Builder
from esperc.ir.types import Dim

Scope = dict  # str -> values.Binding; a plain dict, copied for each arm of a runtime `if`


@dataclass
class Ctx:
    """Everything one blueprint's lowering reads and writes.

    Attributes:
        builder: receives the IR.
        sink: collects diagnostics (deduplicated: a helper fn inlined twice reports once).
        fns: file-level helper functions by name.
        recursive: helper fns on a call cycle (reported once; calls to them are poisoned).
        dims: every declared dim's value (int for static, SymDim for dynamic).
        decls: declared name -> (kind, where) for inputs, params, dims and attrs.
        inline: the chain of helper-fn calls being inlined, outermost first: (fn, call site).
        unbound: why a name is not bound here although assigned somewhere (for E0101 notes).
    """

    builder: Builder
    sink: DiagnosticSink
    fns: dict[str, ast.FnDef]
    recursive: set[str] = field(default_factory=set)
    dims: dict[str, Dim] = field(default_factory=dict)
    decls: dict[str, tuple[str, Loc]] = field(default_factory=dict)
    inline: list[tuple[str, Loc]] = field(default_factory=list)
    unbound: dict[str, Note] = field(default_factory=dict)
    _seen: set[tuple[str, str, Loc | None]] = field(default_factory=set)

    def report(self, diag: Diagnostic) -> None:
        """Record a diagnostic, noting the inlining chain when inside a helper fn."""
        key = (diag.code, diag.message, diag.loc)
        if key in self._seen:
            return
        self._seen.add(key)
        notes = list(diag.notes)
        for fn, site in reversed(self.inline):
            notes.append(Note("note", f"in helper '{fn}', inlined here", site))
        self.sink.diagnostics.append(replace(diag, notes=tuple(notes)))
