"""Machinery of the source fuzz tests (tests/unit/test_fuzz_source.py).

- ``check_source``: the oracle. Source either lowers to IR that verifies and round-trips through
  the IR text form, or raises ``DiagnosticError`` whose diagnostics have known codes and point
  inside the source. Anything else (another exception, a bad diagnostic, running past the time
  bound) raises ``FuzzFailure`` carrying the input.
- Grammar-driven generation from the front end's own Lark object: ``BoundedLarkStrategy`` (a
  hypothesis ``from_lark`` strategy biased towards expansions that terminate) and
  ``GrammarWalker`` (the same expansion tables walked with ``random.Random``, for volume).
- ``MUTATORS``: byte-level and token-level mutations of a source file.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis.extra.lark import LarkStrategy
from lark.grammar import Terminal

from esperc.codes import CODES
from esperc.diagnostics import Diagnostic, DiagnosticError, Loc
from esperc.frontend import lower, parse_source
from esperc.frontend.parser import _lark
from esperc.ir.parser import parse_func
from esperc.ir.printer import print_func
from esperc.ir.verifier import verify

CASE_TIMEOUT_S = 2.0
# Diagnostics about the whole file rather than a place in it (no blueprint to pick).
_FILE_LEVEL_CODES = frozenset({"E0109"})


class CaseTimeout(BaseException):
    """A case ran past its time bound (a BaseException so no `except Exception` swallows it)."""


class FuzzFailure(AssertionError):
    """The compiler broke the oracle on ``data``; the message says how."""

    def __init__(self, data: bytes, what: str) -> None:
        super().__init__(f"{what}\ninput ({len(data)} bytes): {data[:600]!r}")
        self.data = data


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``CaseTimeout`` in the main thread after ``seconds`` of wall time (SIGALRM).

    The alarm repeats every 50 ms once due: an exception raised inside a gc callback (hypothesis
    installs one) is swallowed by the interpreter, and the next alarm must still stop the case.
    """

    def _fire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class Outcome:
    """How a case ended: compiled (``codes`` empty) or rejected with these diagnostic codes."""

    compiled: bool
    codes: tuple[str, ...] = ()


def _check_loc(loc: Loc, lines: list[str], filename: str) -> str | None:
    """Why ``loc`` is not a span inside the source (lines split on '\\n' only, as lark counts)."""
    if loc.file != filename:
        return f"file {loc.file!r} is not {filename!r}"
    if not (1 <= loc.line <= len(lines) and 1 <= loc.col <= len(lines[loc.line - 1]) + 1):
        return f"start {loc.line}:{loc.col} is outside the source ({len(lines)} lines)"
    if loc.end_line == 0:
        return None
    if not loc.line <= loc.end_line <= len(lines):
        return f"end line {loc.end_line} is outside the source"
    if loc.end_line == loc.line and loc.end_col < loc.col:
        return f"end {loc.end_line}:{loc.end_col} is before start {loc.line}:{loc.col}"
    if not 1 <= loc.end_col <= len(lines[loc.end_line - 1]) + 2:
        return f"end column {loc.end_col} is outside line {loc.end_line}"
    return None


def check_diagnostics(diags: tuple[Diagnostic, ...], text: str, filename: str) -> str | None:
    """Why ``diags`` are not well-formed user errors about ``text``, or None if they are."""
    if not diags:
        return "DiagnosticError without diagnostics"
    lines = text.split("\n")
    for d in diags:
        if d.code not in CODES:
            return f"unknown code {d.code} in {d}"
        if d.loc is None:
            if d.code not in _FILE_LEVEL_CODES:
                return f"{d.code} '{d.message}' has no location"
            continue
        for loc in [d.loc, *(n.loc for n in d.notes if n.loc is not None)]:
            why = _check_loc(loc, lines, filename)
            if why:
                return f"{d.code} '{d.message}' at {loc} ({loc.end_line}:{loc.end_col}): {why}"
    return None


def _roundtrip(data: bytes, func: object) -> None:
    verify(func)  # type: ignore[arg-type]
    for locs in (False, True):
        text = print_func(func, locs)  # type: ignore[arg-type]
        again = parse_func(text, "<roundtrip>")
        if again != func or print_func(again, locs) != text:
            raise FuzzFailure(data, f"IR text does not round-trip (locs={locs}):\n{text[:2000]}")


def check_source(
    source: str | bytes,
    filename: str = "fuzz.esp",
    timeout_s: float = CASE_TIMEOUT_S,
    roundtrip: bool = True,
) -> Outcome:
    """Compile ``source`` in-process and check the outcome against the robustness contract.

    A file with several blueprints is compiled once without a name (E0109) and once with its
    first blueprint's name, so generated multi-blueprint files still reach lowering.
    ``roundtrip=False`` skips the IR text round trip (for huge inputs; the IR still verifies).

    Raises:
        FuzzFailure: any exception other than a well-formed ``DiagnosticError``, a time-out,
            or IR that does not verify or round-trip.
    """
    data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    try:
        with time_limit(timeout_s):
            try:
                tree = parse_source(source, filename)
                names = [b.name for b in tree.blueprints]
                func = lower(tree, names[0] if len(names) > 1 else None)
            except DiagnosticError as e:
                why = check_diagnostics(e.diagnostics, text, filename)
                if why:
                    raise FuzzFailure(data, f"bad diagnostic: {why}") from e
                return Outcome(False, tuple(d.code for d in e.diagnostics))
            if roundtrip:
                _roundtrip(data, func)
            else:
                verify(func)
    except CaseTimeout as e:
        raise FuzzFailure(data, f"time-out: {e}") from None
    except FuzzFailure:
        raise
    except Exception as e:  # noqa: BLE001 - the point: any other exception is a crash
        raise FuzzFailure(data, f"crash: {type(e).__name__}: {e}") from e
    return Outcome(True)


# --------------------------------------------------------------------------------------------
# Grammar-driven generation

KEYWORDS = frozenset(
    "fn blueprint dim attr input param require if else return in and or not true false inf".split()
)
# Names a blueprint is likely to use: declared values, dims, dtypes, ops, keyword arguments.
VALUE_NAMES = ("x", "y", "m", "c", "w", "b", "s", "v0", "v1", "a", "f", "g")
DIM_NAMES = ("N", "D", "E")
ATTR_NAMES = ("eps", "flag", "k")
TYPE_NAMES = ("f32", "bf16", "f16", "i32", "i64", "bool")
OP_NAMES = ("add", "sum", "mean", "softmax", "linear", "matmul", "reshape", "permute", "transpose",
            "where", "cast", "slice", "concat", "index", "layer_norm", "rms_norm", "gelu", "max",
            "exp", "relu", "clamp", "broadcast_to", "pow", "var", "log_softmax")  # fmt: skip
KWARG_NAMES = ("axis", "keepdim", "eps", "approximate", "start", "end", "dtype", "min", "max")
INTS = ("0", "1", "2", "3", "4", "16", "64", "4096", "65536", "2147483647", "2147483648",
        "9223372036854775808", "99999999999999999999999999999", "007")  # fmt: skip
FLOATS = ("0.5", "1.0", "1e-5", "0.0", ".5", "5.", "3.2e4", "1e308", "1e309", "1e-400")
STRINGS = ('"tanh"', '"none"', '""', '"f32"', '"x y"', '"\\"')
SPACES = (" ", "\n", "\t", "\r\n", "\x0c", " # a comment\n", "\n#\n")


def vocabulary(names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The text each terminal of the grammar may take (padded, so tokens never merge)."""
    vocab = {
        t.name: (f" {t.pattern.value} ",) for t in _lark().terminals if t.pattern.type == "str"
    }
    assert not set(names) & KEYWORDS
    vocab.update(
        NAME=tuple(f" {n} " for n in names),
        INT=tuple(f" {n} " for n in INTS),
        FLOAT=tuple(f" {n} " for n in FLOATS),
        STRING=tuple(f" {s} " for s in STRINGS),
        WS=SPACES,
        COMMENT=("# comment\n", "#\n", "# é ✓ \u2028 ok\n"),
    )
    return vocab


@dataclass(frozen=True)
class Tables:
    """A start rule's expansions, and for each rule the expansions that terminate soonest."""

    expansions: dict[str, tuple[tuple[object, ...], ...]]
    shortest: dict[str, tuple[tuple[object, ...], ...]]
    terminals: frozenset[str]


def grammar_tables(start: str) -> Tables:
    """Expansion tables of the front end's grammar from ``start`` (lark's compiled rules)."""
    _, rules, _ = _lark().grammar.compile([start], ())
    exps: dict[str, list[tuple[object, ...]]] = {}
    for r in rules:
        exps.setdefault(r.origin.name, []).append(tuple(r.expansion))
    height: dict[str, int] = {}
    changed = True
    while changed:  # least fixpoint of height(rule) = 1 + min over expansions of max(height)
        changed = False
        for name, alts in exps.items():
            hs = [_height(e, height) for e in alts]
            best = min(h for h in hs if h is not None) if any(h is not None for h in hs) else None
            if best is not None and height.get(name) != best:
                height[name], changed = best, True
    shortest = {}
    for name, alts in exps.items():
        hs = [_height(e, height) for e in alts]
        low = min(h for h in hs if h is not None)
        shortest[name] = tuple(e for e, h in zip(alts, hs) if h == low)
    terms = {s.name for alts in exps.values() for e in alts for s in e if isinstance(s, Terminal)}
    return Tables({k: tuple(v) for k, v in exps.items()}, shortest, frozenset(terms))


def _height(expansion: tuple[object, ...], height: dict[str, int]) -> int | None:
    hs = [0 if isinstance(s, Terminal) else height.get(s.name) for s in expansion]  # type: ignore[attr-defined]
    return None if None in hs else 1 + max(hs, default=0)  # type: ignore[type-var]


class BoundedLarkStrategy(LarkStrategy):
    """hypothesis's ``from_lark`` strategy over the front end's grammar, bounded in depth.

    Plain ``from_lark`` expands rules uniformly; this grammar's expressions branch faster than
    they terminate, so most draws exceed hypothesis's depth limit and are thrown away (about 80%,
    at ~75 ms per kept example). This takes the expansions that terminate soonest with
    probability ``p_short + depth / max_depth`` at a rule ``depth`` levels down.
    """

    def __init__(
        self, start: str, names: tuple[str, ...], max_depth: int = 40, p_short: float = 0.5
    ) -> None:
        self.tables = grammar_tables(start)
        vocab = vocabulary(names)
        explicit = {t: st.sampled_from(vocab[t]) for t in self.tables.terminals | {"WS", "COMMENT"}}
        super().__init__(_lark(), start, explicit, st.characters(codec="utf-8"))
        self.max_depth = max_depth
        self.p_short = p_short
        self._all = {k: st.sampled_from(v) for k, v in self.tables.expansions.items()}
        self._short = {k: st.sampled_from(v) for k, v in self.tables.shortest.items()}

    def do_draw(self, data: object) -> str:
        out: list[str] = []
        self._draw(data, data.draw(self.start), out, 0)  # type: ignore[attr-defined]
        return "".join(out)

    def _draw(self, data: object, symbol: object, out: list[str], depth: int) -> None:
        if isinstance(symbol, Terminal):
            out.append(data.draw(self.terminal_strategies[symbol.name]))  # type: ignore[attr-defined]
            return
        name = symbol.name  # type: ignore[attr-defined]
        data.start_span(self.rule_label(name))  # type: ignore[attr-defined]
        try:
            short = data.draw_boolean(min(1.0, self.p_short + depth / self.max_depth))  # type: ignore[attr-defined]
            for sym in data.draw((self._short if short else self._all)[name]):  # type: ignore[attr-defined]  # type: ignore[attr-defined]
                self._draw(data, sym, out, depth + 1)
                self.gen_ignore(data, out)  # type: ignore[arg-type]
        finally:
            data.stop_span()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GrammarWalker:
    """The same expansion tables walked with ``random.Random``: ~50x faster than hypothesis."""

    tables: Tables
    vocab: dict[str, tuple[str, ...]]
    max_depth: int = 40
    p_short: float = 0.5

    @classmethod
    def make(
        cls, start: str, names: tuple[str, ...], max_depth: int = 40, p_short: float = 0.5
    ) -> GrammarWalker:
        return cls(grammar_tables(start), vocabulary(names), max_depth, p_short)

    def generate(self, rng: random.Random, start: str) -> str:
        out: list[str] = []
        self._walk(rng, start, out, 0)
        return "".join(out)

    def _walk(self, rng: random.Random, name: str, out: list[str], depth: int) -> None:
        short = rng.random() < self.p_short + depth / self.max_depth
        table = self.tables.shortest if short else self.tables.expansions
        for sym in rng.choice(table[name]):
            if isinstance(sym, Terminal):
                out.append(rng.choice(self.vocab[sym.name]))
            else:
                self._walk(rng, sym.name, out, depth + 1)  # type: ignore[attr-defined]
            if rng.random() < 0.1:
                out.append(rng.choice(self.vocab["WS"]))


# --------------------------------------------------------------------------------------------
# Mutations of existing sources (bytes in, bytes out)

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
BAD_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xef\xbb")  # fmt: skip
ODD_TEXT = ("\x00", "\ufeff", "\u2028", "\r", "\x0b", "\x0c", "\x1c", "\u00a0", "\u200b", "é",
            "\U0001f600", "\u0301", "ｘ", "\t", "\\", '"', "#", "'", "`", "$", "%", "@")  # fmt: skip
BRACKETS = b"(){}[]"


def _span(rng: random.Random, n: int, most: int = 64) -> tuple[int, int]:
    i = rng.randrange(n + 1)
    return i, min(n, i + rng.randint(1, most))


def delete_span(rng: random.Random, d: bytes) -> bytes:
    i, j = _span(rng, len(d))
    return d[:i] + d[j:]


def duplicate_span(rng: random.Random, d: bytes) -> bytes:
    i, j = _span(rng, len(d), 400)
    k = rng.randrange(len(d) + 1)
    return d[:k] + d[i:j] + d[k:]


def swap_chars(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    b = bytearray(d)
    i, j = rng.randrange(len(b)), rng.randrange(len(b))
    b[i], b[j] = b[j], b[i]
    return bytes(b)


def truncate(rng: random.Random, d: bytes) -> bytes:
    return d[: rng.randrange(len(d) + 1)]


def insert_bytes(rng: random.Random, d: bytes) -> bytes:
    k = rng.randrange(len(d) + 1)
    if rng.random() < 0.5:
        junk = rng.randbytes(rng.randint(1, 8))
    else:
        junk = "".join(rng.choices(ODD_TEXT, k=rng.randint(1, 4))).encode("utf-8")
    return d[:k] + junk + d[k:]


def invalid_utf8(rng: random.Random, d: bytes) -> bytes:
    k = rng.randrange(len(d) + 1)
    return d[:k] + rng.choice(BAD_UTF8) + d[k:]


def flip_bytes(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    b = bytearray(d)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def replace_identifier(rng: random.Random, d: bytes) -> bytes:
    """Replace one occurrence (or, half the time, every occurrence) of a name with another."""
    spots = list(_IDENT.finditer(d))
    if not spots:
        return d
    words = sorted({m.group() for m in spots})
    old = rng.choice(spots)
    new = rng.choice(words)
    if rng.random() < 0.5:
        return re.sub(rb"\b" + re.escape(old.group()) + rb"\b", new.replace(b"\\", b"\\\\"), d)
    return d[: old.start()] + new + d[old.end() :]


def insert_bracket(rng: random.Random, d: bytes) -> bytes:
    k = rng.randrange(len(d) + 1)
    return d[:k] + bytes([rng.choice(BRACKETS)]) + d[k:]


def remove_bracket(rng: random.Random, d: bytes) -> bytes:
    spots = [i for i, c in enumerate(d) if c in BRACKETS]
    if not spots:
        return d
    i = rng.choice(spots)
    return d[:i] + d[i + 1 :]


def insert_token(rng: random.Random, d: bytes) -> bytes:
    """Insert a keyword, operator or literal of the language at a token boundary."""
    toks = [*KEYWORDS, *TYPE_NAMES, *INTS, *FLOATS, "**", "//", "@", "==", "<=", "!=", "-",
            "=", ":", ",", ";", "not", "[]", "()", "{}", "x", "N"]  # fmt: skip
    spots = [
        0,
        len(d),
        *(m.start() for m in _IDENT.finditer(d)),
        *(m.end() for m in _IDENT.finditer(d)),
    ]
    k = rng.choice(spots)
    return d[:k] + f" {rng.choice(toks)} ".encode() + d[k:]


def swap_lines(rng: random.Random, d: bytes) -> bytes:
    lines = d.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


MUTATORS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    f.__name__: f
    for f in (
        delete_span,
        duplicate_span,
        swap_chars,
        truncate,
        insert_bytes,
        invalid_utf8,
        flip_bytes,
        replace_identifier,
        insert_bracket,
        remove_bracket,
        insert_token,
        swap_lines,
    )  # fmt: skip
}


def stacked(rng: random.Random, d: bytes) -> bytes:
    """One to five mutations in a row."""
    for _ in range(rng.randint(1, 5)):
        d = rng.choice(list(MUTATORS.values()))(rng, d)
    return d


# --------------------------------------------------------------------------------------------
# Blueprints with fixed declarations and generated statements (they get far into lowering)

TEMPLATE_NAMES = VALUE_NAMES + DIM_NAMES + ATTR_NAMES + TYPE_NAMES + OP_NAMES + KWARG_NAMES
TEMPLATE_HEAD = """fn f(a, b) { return a + b }
blueprint t {
  dim N in [1, 64]
  dim D = 16
  attr eps: f32 = 1e-5
  attr flag: bool = true
  attr k: i32 = 2
  input x: f32[N, D]
  input y: bf16[N, D]
  input m: bool[N, D]
  input c: bool[]
  param w: f32[D, D]
  param b: f32[D]
  param s: f32[]
"""


def template_program(dim_expr: str | None, require: str | None, fn_def: str | None,
                     stmts: list[str], result: str) -> str:  # fmt: skip
    """A blueprint around generated pieces: ``dim E = dim_expr``, ``require``, a second ``fn``,
    statements and the returned expression."""
    lines = [TEMPLATE_HEAD]
    if dim_expr is not None:
        lines.append(f"  dim E = {dim_expr}\n")
    if require is not None:
        lines.append(f"  require {require}\n")
    lines += [f"  {s}\n" for s in stmts]
    lines.append(f"  return {result}\n}}\n")
    return (fn_def or "") + "\n" + "".join(lines)
