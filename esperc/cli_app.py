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
from esperc.cli_options import (
    BlueprintOpt,
    ColorOpt,
    DefineOpt,
    DumpDirOpt,
    ExplainFusionOpt,
    JsonOpt,
    PrintIrAfterOpt,
    PrintLocOpt,
    TimePassesOpt,
    parse_defines,
)

app = typer.Typer(
    name="esperc",
    help="Compile neural-network blueprints (.esp) into autotuned Triton kernels (.kpkg).",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    define: DefineOpt = None,
    blueprint: BlueprintOpt = None,
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
    print_ir_after: PrintIrAfterOpt = None,
    time_passes: TimePassesOpt = False,
    dump_dir: DumpDirOpt = None,
    explain_fusion: ExplainFusionOpt = False,
    print_loc: PrintLocOpt = False,
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
            ui, file, output, emit.value, parse_defines(define), blueprint, target, pipeline,
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
    print_ir_after: PrintIrAfterOpt = None,
    time_passes: TimePassesOpt = False,
    dump_dir: DumpDirOpt = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Do not run the verifier after every pass.")
    ] = False,
    explain_fusion: ExplainFusionOpt = False,
    print_loc: PrintLocOpt = False,
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
    define: DefineOpt = None,
    blueprint: BlueprintOpt = None,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Run a blueprint or package on inputs; print output shapes, a checksum and the error vs eager."""
    from esperc.cli_run import run_run

    ui = UI.make(color, json_)
    with ui.guard():
        run_run(
            ui, file, eager, inputs, parse_defines(dims), seed, parse_defines(define), blueprint
        )


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
