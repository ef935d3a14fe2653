"""Source locations, diagnostics and their rendering (rustc/clang style).

A diagnostic is data: ``Diagnostic(severity, code, message, loc, notes)``. Phases collect them in a
``DiagnosticSink`` and raise ``DiagnosticError`` with all of them at the end of the phase, so that
several errors in one file are all reported. Rendering is plain text (optionally ANSI-coloured) or
JSON; only ``cli.py`` decides where it goes.

Rendered form::

    samples/bad.esp:7:11: error: shapes [B, 1024] and [B, 512] cannot broadcast in '+' [E0203]
    7 |   y = x + h
      |       ^^^^^
      = help: 'h' comes from linear(x, w1) with w1: bf16[512, 1024] (line 6)
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Loc:
    """A half-open source span; lines and columns are 1-based, ``end_col`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line or self.line,
            "end_col": self.end_col or self.col + 1,
        }


@dataclass(frozen=True, slots=True)
class Note:
    """A ``help:`` or ``note:`` line under a diagnostic, optionally pointing at its own span."""

    kind: str  # "help" | "note"
    message: str
    loc: Loc | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    loc: Loc | None
    notes: tuple[Note, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "loc": self.loc.to_json() if self.loc else None,
            "notes": [
                {"kind": n.kind, "message": n.message, "loc": n.loc.to_json() if n.loc else None}
                for n in self.notes
            ],
        }


class DiagnosticError(Exception):
    """Raised by a phase that found user errors; carries every diagnostic it collected."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        first = self.diagnostics[0] if self.diagnostics else None
        super().__init__(f"{first.loc}: {first.message} [{first.code}]" if first else "error")


@dataclass
class DiagnosticSink:
    """Collects diagnostics for one phase; ``check()`` raises if any error was reported."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, message: str, loc: Loc | None, *notes: Note) -> None:
        self.diagnostics.append(Diagnostic(Severity.ERROR, code, message, loc, tuple(notes)))

    def warning(self, code: str, message: str, loc: Loc | None, *notes: Note) -> None:
        self.diagnostics.append(Diagnostic(Severity.WARNING, code, message, loc, tuple(notes)))

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)

    def check(self) -> None:
        if self.has_errors:
            raise DiagnosticError(self.diagnostics)


def error(code: str, message: str, loc: Loc | None, *notes: Note) -> DiagnosticError:
    """A ``DiagnosticError`` holding one error, for phases that stop at the first problem."""
    return DiagnosticError([Diagnostic(Severity.ERROR, code, message, loc, tuple(notes))])


def did_you_mean(name: str, candidates: Iterable[str]) -> Note | None:
    """A ``help:`` note naming the closest candidate (difflib ratio >= 0.6), or None."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return Note("help", f"did you mean '{close[0]}'?") if close else None


# --------------------------------------------------------------------------------------------
# Rendering

_COLORS = {
    "error": "\x1b[1;31m",
    "warning": "\x1b[1;33m",
    "note": "\x1b[1;36m",
    "help": "\x1b[1;32m",
}
_BOLD, _BLUE, _RESET = "\x1b[1m", "\x1b[1;34m", "\x1b[0m"


def _source_lines(loc: Loc, sources: dict[str, str]) -> list[str] | None:
    text = sources.get(loc.file)
    if text is None:
        return None
    # Lines as the parser counts them: only "\n" ends a line (not \r, \f or U+2028).
    return [line.removesuffix("\r") for line in text.split("\n")]


def _snippet(loc: Loc, sources: dict[str, str], color: bool) -> list[str]:
    lines = _source_lines(loc, sources)
    if lines is None or not 1 <= loc.line <= len(lines):
        return []
    src = lines[loc.line - 1].expandtabs(1)
    if len(src) > 200:  # keep huge generated lines readable
        src = src[:200] + " ..."
    gutter = str(loc.line)
    pad = " " * len(gutter)
    end_col = loc.end_col if loc.end_line in (0, loc.line) and loc.end_col > loc.col else 0
    if not end_col:  # multi-line or empty span: underline to the end of the first line
        end_col = (
            max(loc.col + 1, len(src.rstrip()) + 1) if loc.end_line > loc.line else loc.col + 1
        )
    width = max(1, min(end_col, len(src) + 2) - loc.col)
    caret = " " * (loc.col - 1) + "^" * width
    blue, reset = (_BLUE, _RESET) if color else ("", "")
    red = _COLORS["error"] if color else ""
    return [f"{blue}{gutter} |{reset} {src}", f"{blue}{pad} |{reset} {red}{caret}{reset}"]


def render(d: Diagnostic, sources: dict[str, str], color: bool = False) -> str:
    """Render one diagnostic as text, with the source line and a caret span when known."""
    sev = d.severity.value
    c = _COLORS.get(sev, "") if color else ""
    b, r = (_BOLD, _RESET) if color else ("", "")
    where = f"{d.loc}: " if d.loc else "esperc: "
    out = [f"{b}{where}{r}{c}{sev}:{r} {b}{d.message} [{d.code}]{r}"]
    if d.loc:
        out += _snippet(d.loc, sources, color)
    for n in d.notes:
        nc = _COLORS.get(n.kind, "") if color else ""
        pad = " " * (len(str(d.loc.line)) if d.loc else 1)
        at = f" ({n.loc})" if n.loc and n.loc != d.loc else ""
        out.append(f"{pad} = {nc}{n.kind}:{r} {n.message}{at}")
        if n.loc and n.loc != d.loc:
            out += ["  " + s for s in _snippet(n.loc, sources, color)]
    return "\n".join(out)


def render_all(diags: Sequence[Diagnostic], sources: dict[str, str], color: bool = False) -> str:
    """Render every diagnostic, then a one-line summary (``2 errors generated``)."""
    parts = [render(d, sources, color) for d in diags]
    n = sum(1 for d in diags if d.severity is Severity.ERROR)
    if n:
        parts.append(f"{n} error{'s' if n != 1 else ''} generated")
    return "\n".join(parts)


def to_json(diags: Sequence[Diagnostic]) -> str:
    """Machine-readable diagnostics: ``{"diagnostics": [...]}``, one object per diagnostic."""
    return json.dumps({"diagnostics": [d.to_json() for d in diags]}, indent=2)
