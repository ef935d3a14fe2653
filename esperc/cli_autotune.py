"""``esperc autotune``: flags -> ``tune.package.autotune_package``; the progress bar and output.

The build steps are handed to the tuner as hooks (``tune`` sits below ``build_steps``); they are
imported only when a package must actually be built, so a repeated autotune answered from the
perf DB and the autotune cache imports neither torch nor triton.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from esperc.cli_io import UI

if TYPE_CHECKING:
    from esperc.ir.graph import Func

DEFAULT_VALUES = (64, 4096)


def parse_shapes(texts: list[str] | None, func: Func) -> tuple[dict[str, int], ...]:
    """Tuning shapes: the product of the values given per dynamic dim (``B=1,64,4096``; several
    dims in one option are separated by ``;``), defaults for the dims not given, each value
    clipped into the dim's range; combinations that break a ``require`` are dropped.

    Raises:
        typer.BadParameter: a malformed item, an unknown dim, or no combination left.
    """
    from esperc.ir.dimexpr import evaluate

    decl = {d.name: d for d in func.dims}
    given: dict[str, list[int]] = {}
    for item in (p.strip() for t in texts or [] for p in t.split(";") if p.strip()):
        name, eq, values = item.partition("=")
        name = name.strip()
        if not eq or name not in decl:
            known = ", ".join(decl) or "none"
            raise typer.BadParameter(f"'{item}': expected DIM=V1,V2,... with DIM one of {known}",
                                     param_hint="--shapes")  # fmt: skip
        try:
            given[name] = sorted({int(v) for v in values.split(",") if v.strip()})
        except ValueError:
            raise typer.BadParameter(f"'{item}': values must be integers",
                                     param_hint="--shapes") from None  # fmt: skip
        bad = [v for v in given[name] if not decl[name].lo <= v <= decl[name].hi]
        if bad:
            raise typer.BadParameter(f"{name}={bad[0]} is outside [{decl[name].lo}, "
                                     f"{decl[name].hi}]", param_hint="--shapes")  # fmt: skip
    per_dim = [given.get(d.name) or sorted({min(max(v, d.lo), d.hi) for v in DEFAULT_VALUES})
               for d in func.dims]  # fmt: skip
    out = []
    for combo in itertools.product(*per_dim):
        env = dict(zip(decl, combo))
        if all(evaluate(r.expr, env) for r in func.requires):
            out.append(env)
    if not out:
        raise typer.BadParameter("no tuning shape satisfies the blueprint's requires",
                                 param_hint="--shapes")  # fmt: skip
    return tuple(out)


@contextlib.contextmanager
def tune_progress(ui: UI) -> Iterator[Any]:
    """A rich bar on stderr: candidates done/total, best so far (in the text), elapsed, ETA."""
    if ui.json or not sys.stderr.isatty():
        yield lambda *_: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,  # fmt: skip
        TimeRemainingColumn,
    )

    with Progress(TextColumn("autotune: {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=ui.err, transient=True) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None)

        def report(desc: str, done: int, total: int) -> None:
            bar.update(task, description=desc, completed=done, total=max(total, 1))

        yield report


def _hooks(validate: bool) -> Any:
    from esperc.tune.package import Hooks

    def assemble(*args: Any) -> Any:
        from esperc.build_steps import assemble as build_assemble

        return build_assemble(*args)

    def versions() -> dict[str, str]:
        from esperc.build import _versions

        return _versions()

    def validate_all(*args: Any) -> Any:
        from esperc.build_steps import validate_all as build_validate

        return build_validate(*args)

    def backward_part(*args: Any) -> Any:
        from esperc.build_backward import part_table

        return part_table(*args)

    return Hooks(assemble, versions, validate_all if validate else None, backward_part)


def run_autotune(
    ui: UI, file: Path, shapes: list[str] | None, budget_s: float, target: str | None,
    output: Path | None, define: list[str] | None, blueprint: str | None, seed: int,
    timeout_s: float, validate: bool, backward: bool = False,
) -> None:  # fmt: skip
    """The command's body (user errors raise DiagnosticError / BadParameter / exit 1)."""
    from esperc import driver
    from esperc.cli_options import parse_defines
    from esperc.paths import state_paths
    from esperc.tune import PerfDB
    from esperc.tune.measure import gpu_identity
    from esperc.tune.package import Training, TuneOptions, autotune_package, load_package_input

    gpu = gpu_identity()
    (arch,) = driver.parse_targets(target or (gpu.arch if gpu else "sm_90"), None)[:1]
    overrides = parse_defines(define)
    training = None
    if file.suffix == ".kpkg":
        func, source, overrides, training = load_package_input(file)
    else:
        ui.add_source(file)
        opts = driver.Options(blueprint=blueprint, overrides=overrides, targets=(arch,),
                              backward=backward)  # fmt: skip
        if backward:
            from esperc.build_backward import plan_fields, prepare

            tf = prepare(driver.lower(file, opts), opts)
            func, training = tf.forward, Training(tf.backward, plan_fields(tf))
        else:
            func, _ = driver.compile_ir(file, opts)
        source = driver.read_source(file)
    try:
        tuning_shapes = parse_shapes(shapes, func)
    except typer.BadParameter as e:  # raised after parsing, so click does not report it
        sys.stderr.write(f"esperc: error: invalid value for '--shapes': {e.message}\n")
        sys.exit(2)
    tune_opts = TuneOptions(arch, tuning_shapes, budget_s, seed, timeout_s=timeout_s)
    paths = state_paths()
    cache = None if os.environ.get("ESPERC_NO_CACHE") == "1" else paths.cache_dir / "autotune"
    out = output or file.with_suffix(".kpkg")
    if out.resolve() == file.resolve():
        out = file.with_name(f"{file.stem}.tuned.kpkg")
    with PerfDB(paths.perfdb) as db, tune_progress(ui) as report:
        outcome = autotune_package(func, source, out, tune_opts, _hooks(validate), db, gpu, cache,
                                   report, overrides, training)  # fmt: skip
    if outcome.run.note:
        ui.note(f"esperc: note: {outcome.run.note}")
    if ui.json:
        ui.print_json(outcome.summary())
    else:
        ui.note(outcome.one_line())
