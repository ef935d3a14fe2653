"""The ordered stages of the compiler, as plain functions the CLI (and tests) call.

    parse -> lower -> middle (pass pipeline) -> codegen -> AOT compile -> validate -> pack

Each stage takes explicit options and returns data; nothing here prints. User errors surface as
``DiagnosticError``; anything else is an internal compiler error for the CLI to report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from esperc.diagnostics import DiagnosticError, Loc, error
from esperc.middle.registry import DEFAULT_PIPELINE

if TYPE_CHECKING:  # the IR and the pass manager load when first used (the CLI's fast path
    # answers a cache hit with Options, read_source and parse_targets only)
    from esperc.ir.graph import Func, Module
    from esperc.middle.pass_manager import PassContext

MAX_SOURCE_BYTES = 8 << 20


@dataclass
class Options:
    """Everything a compile depends on besides the source (one object, no ambient state)."""

    blueprint: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    pipeline: str = DEFAULT_PIPELINE
    targets: tuple[str, ...] = ("sm_90",)
    verify_each: bool = True
    explain_fusion: bool = False
    validate: bool = True
    after_pass: Callable[[str, Func], None] | None = None
    backward: bool = False  # training package: forward + backward kernels (build_backward.py)


def read_source(path: str | Path) -> bytes:
    """The raw bytes of a source file.

    Raises:
        DiagnosticError: E0005 when larger than 8 MiB; E0502 when it cannot be read.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise error("E0005", f"source is {size} bytes, larger than 8 MiB", Loc(str(p), 1, 1))
        return p.read_bytes()
    except OSError as e:
        raise error("E0502", f"cannot read '{p}': {e.strerror or e}", None) from None


def parse(path: str | Path):  # noqa: ANN201 - returns the front end's ast.File
    """Parse one .esp file into its AST (raises DiagnosticError)."""
    from esperc.frontend import parse_source

    return parse_source(read_source(path), str(path))


def lower(path: str | Path, opts: Options) -> Func:
    """Parse and lower the selected blueprint of a .esp file to verified IR."""
    from esperc.frontend import lower as lower_ast

    return lower_ast(parse(path), opts.blueprint, dict(opts.overrides))


def read_ir(path: str | Path) -> Module:
    """Parse a textual IR (.eir) file (raises DiagnosticError E0601/E0602)."""
    from esperc.ir.parser import parse_module

    raw = read_source(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            "E0004", f"IR is not valid UTF-8 (byte {e.start})", Loc(str(path), 1, 1)
        ) from None
    return parse_module(text, str(path))


def optimize(func: Func, pipeline: str, ctx: PassContext) -> Func:
    """Run a pass pipeline string over ``func`` (empty string: no passes, only verify).

    Raises:
        DiagnosticError: E0603 for a bad pipeline; pass diagnostics such as E0301.
        PassCrash: a pass crashed (internal error naming the pass).
    """
    from esperc.middle.pass_manager import parse_pipeline, run_pipeline
    from esperc.middle.registry import load_passes

    passes = parse_pipeline(pipeline, load_passes()) if pipeline.strip() else []
    if ctx.target and ctx.target not in _known_targets():
        raise error("E0401", f"unknown target '{ctx.target}'", None)
    return run_pipeline(func, passes, ctx)


def _known_targets() -> frozenset[str]:
    return frozenset({"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_120"})


def parse_targets(text: str, local_arch: str | None) -> tuple[str, ...]:
    """``"sm_90,sm_80"`` or ``"auto"`` (the local GPU, else sm_90) as a tuple of targets.

    Raises:
        DiagnosticError: E0401 for an unknown target name.
    """
    if text.strip() == "auto":
        return (local_arch or "sm_90",)
    out = []
    for t in (s.strip() for s in text.split(",")):
        if t not in _known_targets():
            from esperc.diagnostics import did_you_mean

            note = did_you_mean(t, _known_targets())
            raise error("E0401", f"unknown target '{t}'", None, *([note] if note else []))
        if t not in out:
            out.append(t)
    if not out:
        raise error("E0401", "no target given", None)
    return tuple(out)


def compile_ir(path: str | Path, opts: Options) -> tuple[Func, PassContext]:
    """Source to optimised IR with kernel regions (the middle end's output)."""
    from esperc.middle.pass_manager import PassContext

    func = lower(path, opts)
    ctx = PassContext(
        target=opts.targets[0] if opts.targets else "sm_90",
        verify_each=opts.verify_each,
        after_pass=opts.after_pass,
    )
    pipeline = opts.pipeline
    if opts.explain_fusion:
        pipeline = (
            pipeline.replace("fuse,", "fuse{explain=true},").replace(
                "fuse", "fuse{explain=true}", 1
            )
            if "fuse{" not in pipeline
            else pipeline
        )
    return optimize(func, pipeline, ctx), ctx


__all__ = [
    "DiagnosticError",
    "Options",
    "compile_ir",
    "lower",
    "optimize",
    "parse",
    "parse_targets",
    "read_ir",
    "read_source",
]
