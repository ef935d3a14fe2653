"""``esperc compile``, ``esperc opt`` and ``esperc passes``: the compiler stages behind flags."""

from __future__ import annotations

import sys
from pathlib import Path

from esperc import driver
from esperc.cli_fast import kernel_cache, package_hit, resolve_targets
from esperc.cli_io import UI, progress_bar, write_text_atomic
from esperc.ir.graph import Func
from esperc.ir.printer import print_func, print_module
from esperc.middle.pass_manager import PassContext


def _emit_text(ui: UI, text: str, output: Path | None) -> None:
    if output is None:
        ui.print(text)
    else:
        write_text_atomic(output, text)


def _after_pass_hook(
    ui: UI, print_after: str | None, dump_dir: Path | None, locs: bool
) -> tuple[object, list[int]]:
    counter = [0]

    def hook(name: str, func: Func) -> None:
        counter[0] += 1
        if print_after in ("all", name):
            sys.stderr.write(f"// -----// IR after {name} //----- //\n{print_func(func, locs)}")
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(dump_dir / f"{counter[0]:02d}-{name}.eir", print_func(func, locs))

    return hook, counter


def _report_ctx(ui: UI, ctx: PassContext, time_passes: bool, explain: bool) -> None:
    if explain:
        for pass_name in ("fuse", "divergence", "smem-plan"):
            for line in ctx.remarks.get(pass_name, []):
                ui.note(f"remark: {pass_name}: {line}")
    if time_passes:
        from rich.table import Table

        total = sum(ms for _, ms in ctx.timings) or 1e-9
        table = Table(title="pass timing", show_edge=False)
        for col in ("pass", "ms", "%"):
            table.add_column(col, justify="left" if col == "pass" else "right")
        for name, ms in ctx.timings:
            table.add_row(name, f"{ms:.3f}", f"{100 * ms / total:.1f}")
        table.add_row("total", f"{total:.3f}", "100.0")
        ui.err.print(table)


def run_compile(
    ui: UI,
    file: Path,
    output: Path | None,
    emit: str,
    overrides: dict[str, str],
    blueprint: str | None,
    target: str,
    pipeline: str | None,
    print_ir_after: str | None,
    time_passes: bool,
    dump_dir: Path | None,
    explain_fusion: bool,
    print_loc: bool,
    validate: bool,
    backward: bool = False,
) -> None:
    ui.add_source(file)
    opts = driver.Options(
        blueprint=blueprint, overrides=overrides, validate=validate, backward=backward
    )
    if emit == "ast":
        from esperc.frontend import dump_ast

        _emit_text(ui, dump_ast(driver.parse(file)), output)
        return
    if emit == "ir":
        func = driver.lower(file, opts)
        _emit_text(ui, _func_json(func) if ui.json else print_func(func, print_loc), output)
        return
    if emit == "backward-ir":
        from esperc.middle.autodiff import differentiate, print_plan

        _emit_text(ui, print_plan(differentiate(driver.lower(file, opts))), output)
        return
    opts.targets = resolve_targets(target)
    if pipeline is not None:
        opts.pipeline = pipeline
    if emit == "kpkg" and _cached_package(ui, file, output, opts):
        return
    opts.explain_fusion = explain_fusion
    hook, _ = _after_pass_hook(ui, print_ir_after, dump_dir, print_loc)
    opts.after_pass = hook  # type: ignore[assignment]
    training = None
    if opts.backward and emit == "kpkg":
        from esperc.build_backward import prepare

        training = prepare(driver.lower(file, opts), opts)
        func, ctx = training.forward, PassContext()
    else:
        func, ctx = driver.compile_ir(file, opts)
    _report_ctx(ui, ctx, time_passes, explain_fusion)
    if emit == "opt-ir":
        _emit_text(ui, _func_json(func) if ui.json else print_func(func, print_loc), output)
        return
    from esperc import build

    if emit == "triton":
        _emit_text(ui, build.generate_source(func), output)
        return
    out = output or file.with_suffix(".kpkg")
    with progress_bar(ui, "build") as report:
        result = build.build_package(
            file, func, opts, out, report, cache=kernel_cache(), training=training
        )
    if ui.json:
        ui.print_json(result.summary())
    else:
        ui.note(result.one_line())


def _cached_package(ui: UI, file: Path, output: Path | None, opts: driver.Options) -> bool:
    """On a kernel-cache hit, write the stored package and report it; False on a miss."""
    result = package_hit(file, output, opts)
    if result is None:
        return False
    if ui.json:
        ui.print_json(result.summary())
    else:
        ui.note(result.one_line())
    return True


def _func_json(func: Func) -> str:
    from esperc.ir.serialize import to_json

    return to_json(func)


def run_opt(
    ui: UI,
    file: Path,
    pipeline: str,
    output: Path | None,
    target: str,
    print_ir_after: str | None,
    time_passes: bool,
    dump_dir: Path | None,
    verify_each: bool,
    explain_fusion: bool,
    print_loc: bool,
) -> None:
    ui.add_source(file)
    module = driver.read_ir(file)
    hook, _ = _after_pass_hook(ui, print_ir_after, dump_dir, print_loc)
    if explain_fusion and "fuse" in pipeline and "fuse{" not in pipeline:
        pipeline = pipeline.replace("fuse", "fuse{explain=true}", 1)
    funcs = []
    for func in module:
        ctx = PassContext(target=target, verify_each=verify_each, after_pass=hook)  # type: ignore[arg-type]
        funcs.append(driver.optimize(func, pipeline, ctx))
        _report_ctx(ui, ctx, time_passes, explain_fusion)
    from esperc.ir.graph import Module

    result = Module(tuple(funcs))
    if ui.json:
        from esperc.ir.serialize import to_json

        _emit_text(ui, to_json(result), output)
    else:
        _emit_text(ui, print_module(result, print_loc), output)


def run_passes(ui: UI) -> None:
    from esperc.middle.registry import DEFAULT_PIPELINE, load_passes

    passes = load_passes()
    if ui.json:
        ui.print_json(
            {
                "default_pipeline": DEFAULT_PIPELINE,
                "passes": [
                    {"name": n, "summary": c.summary(), "options": [
                        {"name": o, "type": t, "default": d} for o, t, d in c.options()
                    ]}
                    for n, c in sorted(passes.items())
                ],
            }
        )  # fmt: skip
        return
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("pass", style="bold")
    table.add_column("summary")
    table.add_column("options")
    for name, cls in sorted(passes.items()):
        opts = ", ".join(f"{o}: {t} = {d!r}" for o, t, d in cls.options())
        table.add_row(name, cls.summary(), opts)
    ui.out.print(table)
    ui.out.print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
