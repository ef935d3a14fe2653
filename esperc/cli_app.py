"""The ``esperc`` typer app: every command's flags, handed to the ``cli_*`` runners.

``esperc.cli.main`` (the console entry point) calls ``run`` for every command line that the
kernel-cache fast path (``esperc.cli_fast``) does not answer. Exit statuses: ``esperc.cli``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from esperc import __version__
from esperc.cli_io import UI, ColorMode

app = typer.Typer(
    name="esperc",
    help="Compile neural-network blueprints (.esp) into autotuned Triton kernels (.kpkg).",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ColorOpt = Annotated[
    ColorMode,
    typer.Option(
        "--color", help="Colour diagnostics: auto (a terminal and no NO_COLOR), always, never."
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Machine-readable output and diagnostics (JSON).")
]


class Emit(str, Enum):
    ast = "ast"
    ir = "ir"
    opt_ir = "opt-ir"
    backward_ir = "backward-ir"
    triton = "triton"
    kpkg = "kpkg"


def _version(value: bool) -> None:
    if value:
        import platform

        print(f"esperc {__version__} (python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """esperc: a compiler from blueprint files to GPU kernel packages.

    Stages: parse -> IR -> passes -> Triton -> cubins -> .kpkg. Try `esperc compile FILE.esp --emit ir`.
    """


def _overrides(defines: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in defines or []:
        key, eq, value = d.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(f"expected NAME=VALUE, got {d!r}", param_hint="-D")
        out[key.strip()] = value.strip()
    return out


@app.command("compile")
def compile_cmd(
    file: Annotated[Path, typer.Argument(help="The blueprint source (.esp).", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Output file (default: stdout for text, FILE.kpkg for packages)."
        ),
    ] = None,
    emit: Annotated[
        Emit,
        typer.Option(
            "--emit",
            help="Stop after a stage and print it: ast, ir, opt-ir, backward-ir, triton or kpkg.",
        ),
    ] = Emit.kpkg,
    define: Annotated[
        list[str] | None,
        typer.Option(
            "-D",
            help="Override an attr or resize a static dim: -D eps=1e-6, -D D=512 (repeatable).",
        ),
    ] = None,
    blueprint: Annotated[
        str | None, typer.Option("--blueprint", help="Which blueprint of the file to compile.")
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target", help="GPU targets: sm_90,sm_80 or auto (the local GPU, else sm_90)."
        ),
    ] = "auto",
    pipeline: Annotated[
        str | None,
        typer.Option(
            "-p",
            "--pipeline",
            help="Pass pipeline (default: the standard one; see `esperc passes`).",
        ),
    ] = None,
    print_ir_after: Annotated[
        str | None,
        typer.Option(
            "--print-ir-after", help="Print the IR after pass NAME, or after all passes, to stderr."
        ),
    ] = None,
    time_passes: Annotated[
        bool, typer.Option("--time-passes", help="Print the time each pass took.")
    ] = False,
    dump_dir: Annotated[
        Path | None,
        typer.Option("--dump-dir", help="Write the IR after every pass into this folder."),
    ] = None,
    explain_fusion: Annotated[
        bool, typer.Option("--explain-fusion", help="Explain each kernel-region boundary.")
    ] = False,
    print_loc: Annotated[
        bool, typer.Option("--print-loc", help="Print source locations in IR output.")
    ] = False,
    no_validate: Annotated[
        bool,
        typer.Option("--no-validate", help="Skip running each kernel against the eager reference."),
    ] = False,
    backward: Annotated[
        bool,
        typer.Option(
            "--backward", help="Training package: also derive, compile and pack backward kernels."
        ),
    ] = False,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Compile a blueprint: to a .kpkg package, or to an intermediate form with --emit."""
    from esperc.cli_compile import run_compile

    ui = UI.make(color, json_)
    with ui.guard():
        run_compile(
            ui, file, output, emit.value, _overrides(define), blueprint, target, pipeline,
            print_ir_after, time_passes, dump_dir, explain_fusion, print_loc, not no_validate,
            backward,
        )  # fmt: skip


@app.command("opt")
def opt_cmd(
    file: Annotated[
        Path, typer.Argument(help="Textual IR input (.eir), like mlir-opt.", show_default=False)
    ],
    pipeline: Annotated[
        str,
        typer.Option(
            "-p",
            "--pipeline",
            help="Comma-separated passes with options: canonicalize,cse,fuse{max-ops=32}.",
        ),
    ] = "",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the IR here instead of stdout.")
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="Target the analyses plan for.")
    ] = "sm_90",
    print_ir_after: Annotated[
        str | None,
        typer.Option("--print-ir-after", help="Print the IR after pass NAME, or all, to stderr."),
    ] = None,
    time_passes: Annotated[
        bool, typer.Option("--time-passes", help="Print the time each pass took.")
    ] = False,
    dump_dir: Annotated[
        Path | None,
        typer.Option("--dump-dir", help="Write the IR after every pass into this folder."),
    ] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Do not run the verifier after every pass.")
    ] = False,
    explain_fusion: Annotated[
        bool, typer.Option("--explain-fusion", help="Print the fusion remarks to stderr.")
    ] = False,
    print_loc: Annotated[bool, typer.Option("--print-loc", help="Print source locations.")] = False,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Run a pass pipeline over textual IR and print the result (IR in, IR out)."""
    from esperc.cli_compile import run_opt

    ui = UI.make(color, json_)
    with ui.guard():
        run_opt(ui, file, pipeline, output, target, print_ir_after, time_passes, dump_dir,
                not no_verify, explain_fusion, print_loc)  # fmt: skip


@app.command("run")
def run_cmd(
    file: Annotated[
        Path, typer.Argument(help="A blueprint (.esp) or a package (.kpkg).", show_default=False)
    ],
    eager: Annotated[
        bool, typer.Option("--eager", help="Run the eager PyTorch reference interpreter only.")
    ] = False,
    inputs: Annotated[
        str,
        typer.Option(
            "--inputs", help="'random' or a .safetensors file of inputs and params by name."
        ),
    ] = "random",
    dims: Annotated[
        list[str] | None,
        typer.Option("--dim", help="Value of a dynamic dim: --dim B=4 (repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    define: Annotated[
        list[str] | None,
        typer.Option("-D", help="Override an attr or a static dim (for .esp input)."),
    ] = None,
    blueprint: Annotated[
        str | None, typer.Option("--blueprint", help="Which blueprint of the file.")
    ] = None,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Run a blueprint or package on inputs; print output shapes, a checksum and the error vs eager."""
    from esperc.cli_run import run_run

    ui = UI.make(color, json_)
    with ui.guard():
        run_run(ui, file, eager, inputs, _overrides(dims), seed, _overrides(define), blueprint)


@app.command("passes")
def passes_cmd(json_: JsonOpt = False) -> None:
    """List the registered passes, their options and the default pipeline."""
    from esperc.cli_compile import run_passes

    ui = UI.make(ColorMode.auto, json_)
    with ui.guard():
        run_passes(ui)


def _register_commands() -> None:
    """Commands that live in their own modules: inspect, cache, perfdb, autotune, bench."""
    from esperc import cli_bench, cli_kpkg, cli_tune

    if any(c.name == "inspect" for c in app.registered_commands):
        return  # main() ran before in this process (tests call it in-process)
    cli_kpkg.register(app)
    cli_tune.register(app)
    cli_bench.register(app)


def run(argv: list[str]) -> None:
    """Parse ``argv`` (without the program name) and run the command; exits through
    ``SystemExit`` (typer's standalone mode maps misuse to exit 2)."""
    _register_commands()
    app(args=argv, prog_name="esperc")
