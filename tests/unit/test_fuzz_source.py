"""Hostile and broken .esp source never crashes esperc: it compiles to IR that verifies and
round-trips, or it ends in diagnostics with known codes pointing inside the source, within a
time bound. Deterministic (seeded ``random.Random``; hypothesis derandomized, no database).

Cases per run (each class prints its count and outcomes, shown with ``-rA``; each asserts how many
ran): grammar-generated 4,300 (hypothesis ``from_lark``-based 500, random walks of the same
expansion tables 3,800), mutations of samples/*.esp 6,000 (12 mutators x 400, stacked 1,200),
stress and odd-text inputs ~25, CLI end to end 51, plus the corpus. Runtime ~60 s with
``-n 2``, ~40 s of it the 100,000-statement case.
Every input that once broke the oracle lives in tests/unit/fuzz_corpus/ and is replayed.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fuzz_helpers import (
    MUTATORS,
    TEMPLATE_NAMES,
    BoundedLarkStrategy,
    FuzzFailure,
    GrammarWalker,
    check_source,
    stacked,
    template_program,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLES = sorted((REPO / "samples").glob("*.esp"))
CORPUS = HERE / "fuzz_corpus"
FILE_NAMES = TEMPLATE_NAMES + ("rotate_half", "layer_norm", "t", "_", "a1")
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,  # the per-case bound is check_source's SIGALRM time limit
    suppress_health_check=list(HealthCheck),
)


def _tally(outcomes: Counter[str], n: int, what: str) -> None:
    """Print the outcomes of a class of cases and assert how many ran."""
    total = outcomes["compiled"] + outcomes["rejected"]
    print(f"{what}: {total} cases, {dict(outcomes.most_common(10))}")
    assert total >= n, f"{what}: only {total} of {n} cases ran"


def _record(outcomes: Counter[str], source: str | bytes) -> None:
    """Count the case once as "compiled" or "rejected", and each distinct code it produced."""
    o = check_source(source)
    outcomes["compiled" if o.compiled else "rejected"] += 1
    outcomes.update(set(o.codes))


# ------------------------------------------------------------------ scale


def test_many_statements() -> None:
    """100,000 statements compile or fail with a diagnostic within 120 s (~40 s unloaded: the
    front end is linear, ~0.4 ms a statement, mostly lark). First in the file so that xdist
    starts it at once and the other worker runs the rest meanwhile."""
    n = 100_000
    lines = [f"  v{i} = x * 2.0" if i % 2 else f"  v{i} = x + 1.0" for i in range(n)]
    sample = (REPO / "samples" / "layer_norm.esp").read_text()
    src = sample.replace("  return layer_norm", "\n".join(lines) + "\n  return layer_norm")
    t0 = time.perf_counter()
    codes = check_source(src, timeout_s=120.0, roundtrip=False).codes
    elapsed = time.perf_counter() - t0
    print(f"{n} statements: {elapsed:.1f} s, codes {codes}")
    assert codes == ()


# ------------------------------------------------------------------ 1. grammar-driven


@pytest.mark.parametrize("start,n", [("start", 200), ("blueprint", 200)])
def test_grammar_hypothesis_files(start: str, n: int) -> None:
    outcomes: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=n)
    @given(BoundedLarkStrategy(start, FILE_NAMES, p_short=0.3))
    def run(source: str) -> None:
        _record(outcomes, source)

    run()
    _tally(outcomes, n * 9 // 10, f"grammar/hypothesis/{start}")


def _template(w: dict[str, GrammarWalker], rng: random.Random) -> str:
    def gen(start: str) -> str:
        return w[start].generate(rng, start)

    def maybe(start: str, p: float) -> str | None:
        return gen(start) if rng.random() < p else None

    stmts = [gen(rng.choice(["assign", "assign", "if_stmt"])) for _ in range(rng.randint(0, 4))]
    return template_program(maybe("expr", 0.1), maybe("expr", 0.1), maybe("fn_def", 0.2),
                            stmts, gen("expr"))  # fmt: skip


_WALKERS = {
    s: GrammarWalker.make(s, TEMPLATE_NAMES, p_short=0.45)
    for s in ("expr", "fn_def", "assign", "if_stmt")
}
_FILE_WALKERS = {s: GrammarWalker.make(s, FILE_NAMES) for s in ("blueprint", "fn_def")}


def _with_return(rng: random.Random, item: str) -> str:
    """Most random bodies lack the final `return` (E0107 and little else): add one, mostly."""
    body = item.rstrip()
    if rng.random() < 0.25 or not body.endswith("}"):
        return item
    return f"{body[:-1]} return {_WALKERS['expr'].generate(rng, 'expr')} }}"


@pytest.mark.parametrize("chunk", range(4))
def test_grammar_walk_files(chunk: int) -> None:
    """Whole files: fns and blueprints from the grammar alone (names from a small pool)."""
    rng, outcomes = random.Random(1000 + chunk), Counter[str]()
    for _ in range(600):
        items = rng.choices(["blueprint", "fn_def"], [2, 1], k=rng.randint(1, 3))
        _record(
            outcomes, "\n".join(_with_return(rng, _FILE_WALKERS[s].generate(rng, s)) for s in items)
        )
    _tally(outcomes, 600, f"grammar/walk/files/{chunk}")


@pytest.mark.parametrize("chunk", range(4))
def test_grammar_walk_template(chunk: int) -> None:
    """Generated statements inside a blueprint with real declarations: reaches type checking."""
    rng, outcomes = random.Random(2000 + chunk), Counter[str]()
    for _ in range(350):
        _record(outcomes, _template(_WALKERS, rng))
    _tally(outcomes, 350, f"grammar/walk/template/{chunk}")


@settings(SETTINGS, max_examples=100)
@given(
    st.lists(BoundedLarkStrategy("assign", TEMPLATE_NAMES, p_short=0.45), max_size=3),
    BoundedLarkStrategy("expr", TEMPLATE_NAMES, p_short=0.45),
)
def test_grammar_hypothesis_template(stmts: list[str], result: str) -> None:
    o = check_source(template_program(None, None, None, stmts, result))
    assert o.compiled or o.codes


# ------------------------------------------------------------------ 2. mutations


def _mutations(name: str, n: int, seed: int) -> Counter[str]:
    rng, outcomes = random.Random(seed), Counter[str]()
    mutate = stacked if name == "stacked" else MUTATORS[name]
    originals = [p.read_bytes() for p in SAMPLES]
    for i in range(n):
        _record(outcomes, mutate(rng, originals[i % len(originals)]))
    return outcomes


@pytest.mark.parametrize("name", sorted(MUTATORS))
def test_mutations(name: str) -> None:
    _tally(_mutations(name, 400, seed=hash_seed(name)), 400, f"mutation/{name}")


@pytest.mark.parametrize("chunk", range(2))
def test_mutations_stacked(chunk: int) -> None:
    _tally(_mutations("stacked", 600, seed=3000 + chunk), 600, f"mutation/stacked/{chunk}")


def hash_seed(name: str) -> int:
    """A stable seed per name (Python's hash() is salted per process)."""
    return sum((i + 1) * b for i, b in enumerate(name.encode()))


# ------------------------------------------------------------------ stress inputs

_SAMPLE = (REPO / "samples" / "layer_norm.esp").read_text()


def _codes(source: str | bytes, bound_s: float = 10.0) -> tuple[str, ...]:
    """Stress inputs are 10-1000x a sample; their bound is 10 s (~1 s unloaded)."""
    t0 = time.perf_counter()
    o = check_source(source, timeout_s=bound_s)
    assert time.perf_counter() - t0 < bound_s
    return o.codes


def test_ten_megabytes_is_rejected_quickly() -> None:
    big = _SAMPLE.encode() + b"#" + b"x" * (10 << 20)
    assert _codes(big, 1.0) == ("E0005",)


@pytest.mark.parametrize("depth", [201, 10_000])
def test_deep_parentheses(depth: int) -> None:
    """Parentheses leave no node in the parse tree, so any depth compiles (or is E0005)."""
    nested = "(" * depth + "x" + ")" * depth
    src = _SAMPLE.replace("return layer_norm", f"z = {nested}\n return layer_norm")
    assert _codes(src) in {(), ("E0005",)}


@pytest.mark.parametrize("depth", [201, 10_000])
def test_deep_if_blocks(depth: int) -> None:
    body = "if true {\n" * depth + "z = x\n" + "}\n" * depth
    src = _SAMPLE.replace("  return layer_norm", body + "  return layer_norm")
    assert _codes(src) == ("E0005",)


@pytest.mark.parametrize("depth", [10_000])
def test_deep_unary_and_calls(depth: int) -> None:
    for inner in ("-" * depth + "x", "not " * depth + "x", "exp(" * depth + "x" + ")" * depth,
                  "[" * depth + "x" + "]" * depth, "x" + " ** x" * depth):  # fmt: skip
        assert _codes(_SAMPLE.replace("return layer_norm", f"z = {inner}\n return layer_norm")) == (
            "E0005",
        )


def test_long_operator_chain_is_not_a_crash() -> None:
    """a + a + ... is a flat list in the parse tree but nests in the AST."""
    src = _SAMPLE.replace("return layer_norm", "z = x" + " + x" * 5000 + "\n return layer_norm")
    assert _codes(src) in {(), ("E0005",)}


_ODD_TEXT = {  # id: (transform of layer_norm.esp, expected: "compiles", "rejected" or "either")
    "long-identifier": (lambda s: s.replace("weight", "w" * 100_000), "compiles"),
    "long-line": (lambda s: s.replace("\n", " ", 12) + "#" + "y" * 1_000_000, "either"),
    "long-line-code": (lambda s: re.sub("#.*", "", s).replace("\n", " "), "compiles"),
    "crlf": (lambda s: s.replace("\n", "\r\n"), "compiles"),
    "cr-only": (lambda s: s.replace("\n", "\r"), "either"),
    "bom": (lambda s: "\ufeff" + s, "compiles"),
    "double-bom": (lambda s: "\ufeff\ufeff" + s, "rejected"),
    "nul-in-code": (lambda s: s.replace("input", "\x00input", 1), "rejected"),
    "nul-in-comment": (lambda s: s.replace("# tokens", "# tok\x00ens", 1), "either"),
    "nul-at-end": (lambda s: s + "\x00", "rejected"),
    "empty": (lambda s: "", "rejected"),
    "only-newlines": (lambda s: "\n" * 100_000, "rejected"),
    "form-feeds-and-tabs": (lambda s: s.replace(" ", "\t\x0c"), "compiles"),
    "unicode-line-separators": (lambda s: s.replace("# ", "# \u2028\u0085\x1c "), "compiles"),
}


@pytest.mark.parametrize("name", sorted(_ODD_TEXT))
def test_odd_text(name: str) -> None:
    transform, expected = _ODD_TEXT[name]
    for source in (transform(_SAMPLE), transform(_SAMPLE).encode("utf-8")):
        codes = _codes(source)
        assert expected == "either" or (codes == ()) == (expected == "compiles"), codes


# ------------------------------------------------------------------ regression corpus


def _corpus() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".md")


def test_corpus_is_not_empty() -> None:
    assert len(_corpus()) >= 1


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_corpus(path: Path) -> None:
    check_source(path.read_bytes(), filename=path.name)


# ------------------------------------------------------------------ 4. CLI end to end

_ERROR_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): error: .* \[E\d{4}\]$")
_FILE_ERROR_LINE = re.compile(r"^esperc: error: .* \[E0109\]$")


def _cli(path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cmd = [sys.executable, "-m", "esperc", "compile", str(path), "--emit", "ir", "--color", "never"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60,
                          cwd=REPO)  # fmt: skip
    return path, proc


@pytest.mark.parametrize("chunk", range(2))
def test_cli_end_to_end(chunk: int, tmp_path: Path) -> None:
    rng = random.Random(4000 + chunk)
    paths = []
    for i in range(25):
        data = stacked(rng, SAMPLES[rng.randrange(len(SAMPLES))].read_bytes())
        paths.append(tmp_path / f"case{i}.esp")
        paths[-1].write_bytes(data)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_cli, paths))
    statuses = Counter(p.returncode for _, p in results)
    print(f"cli/{chunk}: 25 files, exit statuses {dict(statuses)}")
    for path, proc in results:
        where = f"{path.name}: {path.read_bytes()[:400]!r}\n{proc.stderr[-2000:]}"
        assert proc.returncode in (0, 1), where
        assert "Traceback" not in proc.stderr and "internal compiler error" not in proc.stderr, (
            where
        )
        errors = [
            ln for ln in proc.stderr.splitlines() if "error:" in ln and not ln.startswith(" ")
        ]
        if proc.returncode == 1:
            assert errors, where
        for ln in errors:
            m = _ERROR_LINE.match(ln)
            assert (m and m["file"] == str(path)) or _FILE_ERROR_LINE.match(ln), where
    assert sum(statuses.values()) == 25


def test_cli_ten_megabytes(tmp_path: Path) -> None:
    path = tmp_path / "big.esp"
    path.write_bytes(b"blueprint b {}\n#" + b"x" * (10 << 20))
    _, proc = _cli(path)
    assert proc.returncode == 1 and "[E0005]" in proc.stderr, proc.stderr


def test_require_div_zero_runs() -> None:
    """A fuzz find past compilation: `require N // 0 == 1` compiles, and `esperc run` must then
    end in a diagnostic (exit 1), not an internal compiler error."""
    path = CORPUS / "require_div_zero.esp"
    cmd = [sys.executable, "-m", "esperc", "run", str(path), "--eager", "--dim", "N=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode in (0, 1), proc.stderr
    assert "internal compiler error" not in proc.stderr


def test_oracle_catches_a_crash() -> None:
    """The oracle itself reports a time-out (a hang) as a failure, with the input."""
    with pytest.raises(FuzzFailure, match="time-out"):
        check_source(b"blueprint t { input x: f32[] return x }" * 50, timeout_s=1e-4)
