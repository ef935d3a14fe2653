"""``esperc cache ...`` and ``esperc perfdb ...``: the persistent state behind flags.

``register(app)`` adds the command groups; each group has its own ``_register_*`` function so
that later ones (``autotune``, ``bench``) are one more function and one more line in
``register``. ``cache_key_for`` is the one way to build a compile's ``CacheKey``: the compile
path and ``cache explain`` both call it. Locations come from ``esperc.paths.state_paths``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from esperc.cli_io import UI, ColorMode
from esperc.cli_options import BlueprintOpt, ColorOpt, DefineOpt, JsonOpt, parse_defines

if TYPE_CHECKING:
    from esperc.cache import CacheKey, KernelCache
    from esperc.cache.key import CompileOptions
    from esperc.tune import PerfDB

__all__ = ["cache_key_for", "register"]

_SUB = {
    "no_args_is_help": True,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
cache_app = typer.Typer(name="cache", help="Inspect or clear the kernel cache.", **_SUB)
perfdb_app = typer.Typer(name="perfdb", help="Inspect the autotuning performance database.", **_SUB)


def register(app: typer.Typer) -> None:
    """Add the ``cache`` and ``perfdb`` command groups and ``autotune`` to the main app."""
    app.add_typer(cache_app, name="cache")
    app.add_typer(perfdb_app, name="perfdb")
    _register_autotune(app)


def cache_key_for(file: Path, opts: CompileOptions, source: bytes | None = None) -> CacheKey:
    """The kernel cache key of compiling ``file`` with ``opts`` (a ``driver.Options``).

    Args:
        file: The blueprint source.
        opts: The options, with ``targets`` already resolved (no "auto").
        source: The file's bytes when the caller has read them already.

    Raises:
        DiagnosticError: E0005/E0502 when the source is too large or cannot be read.
    """
    from esperc import driver
    from esperc.cache import CacheKey

    return CacheKey.build(driver.read_source(file) if source is None else source, opts)


def _start(color: ColorMode, json_: bool) -> UI:
    """The command's UI, with the library's warnings (``esperc.*`` loggers) sent to stderr."""
    logger = logging.getLogger("esperc")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("esperc: warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
    return UI.make(color, json_)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Report a user error and exit (``sys.exit``: ``UI.guard`` passes SystemExit through)."""
    sys.stderr.write(f"esperc: error: {message}\n")
    sys.exit(code)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _cache() -> KernelCache:
    from esperc.cache import KernelCache
    from esperc.paths import state_paths

    return KernelCache(state_paths().cache_dir)


# ----- esperc cache -------------------------------------------------------------------------


@cache_app.command("ls")
def cache_ls(color: ColorOpt = ColorMode.auto, json_: JsonOpt = False) -> None:
    """List the cached packages: key prefix, blueprint, size, created, hits."""
    ui = _start(color, json_)
    with ui.guard():
        cache = _cache()
        entries = cache.ls()
        if ui.json:
            ui.print_json({"dir": str(cache.dir), "entries": [
                {"digest": e.digest, "path": str(e.path), "size": e.size, "hits": e.hits,
                 "created": _when(e.created), "blueprint": e.blueprint, "source": e.source,
                 "key": e.key.to_dict() if e.key else None}
                for e in entries
            ]})  # fmt: skip
            return
        if not entries:
            ui.print(f"the kernel cache {cache.dir} is empty")
            return
        from rich.table import Table

        table = Table(show_edge=False, box=None, pad_edge=False)
        for col in ("key", "blueprint", "size", "created", "hits"):
            table.add_column(col, justify="right" if col in ("size", "hits") else "left")
        for e in entries:
            name = e.blueprint or (Path(e.source).stem if e.source else "?")
            table.add_row(e.digest[:12], name, _human(e.size), _when(e.created), str(e.hits))
        ui.out.print(table)
        total = sum(e.size for e in entries)
        ui.out.print(f"\n{len(entries)} entries, {_human(total)} in {cache.dir}")


@cache_app.command("clear")
def cache_clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Remove every cached package (the performance database is kept)."""
    ui = _start(color, json_)
    with ui.guard():
        cache = _cache()
        if not yes:
            if not sys.stdin.isatty():
                _fail("stdin is not a terminal; pass --yes to clear the cache", code=2)
            if not typer.confirm(f"remove {len(cache.ls())} entries from {cache.dir}?"):
                _fail("not cleared")
        count, nbytes = cache.clear()
        if ui.json:
            ui.print_json({"dir": str(cache.dir), "removed": count, "bytes": nbytes})
        else:
            ui.print(f"removed {count} entries ({_human(nbytes)}) from {cache.dir}")


@cache_app.command("explain")
def cache_explain(
    file: Annotated[Path, typer.Argument(help="The blueprint source (.esp).", show_default=False)],
    define: DefineOpt = None,
    blueprint: BlueprintOpt = None,
    target: Annotated[str, typer.Option("--target", help="GPU targets, as for compile.")] = "auto",
    pipeline: Annotated[
        str | None, typer.Option("-p", "--pipeline", help="Pass pipeline, as for compile.")
    ] = None,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="As for compile.")] = False,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Would `esperc compile` with these flags hit the cache? If not, why not."""
    ui = _start(color, json_)
    with ui.guard():
        from esperc import driver
        from esperc.cli_fast import resolve_targets

        ui.add_source(file)
        opts = driver.Options(blueprint=blueprint, overrides=parse_defines(define),
                              validate=not no_validate)  # fmt: skip
        opts.targets = resolve_targets(target)  # as compile resolves them
        if pipeline is not None:
            opts.pipeline = pipeline
        key = cache_key_for(file, opts)
        cache = _cache()
        text = cache.explain(key)
        if ui.json:
            ui.print_json({"digest": key.digest(), "hit": text.startswith("hit"),
                           "key": key.to_dict(), "explanation": text})  # fmt: skip
        else:
            ui.print(text)
            ui.print("key:\n  " + key.describe().replace("\n", "\n  "))


# ----- esperc perfdb ------------------------------------------------------------------------


def _perfdb(ui: UI) -> PerfDB:
    from esperc.paths import state_paths
    from esperc.tune import PerfDB

    path = state_paths().perfdb
    if not path.exists():
        ui.note(f"note: no performance database at {path} yet")
        return PerfDB(":memory:")
    return PerfDB(path)


def _row_json(row: Any) -> dict[str, Any]:
    out = row.to_dict()
    out["config"] = json.loads(row.config)
    return out


@perfdb_app.command("stats")
def perfdb_stats(color: ColorOpt = ColorMode.auto, json_: JsonOpt = False) -> None:
    """Counts of rows, kernels, archs, GPUs, statuses, and best() hits and misses."""
    ui = _start(color, json_)
    with ui.guard():
        with _perfdb(ui) as db:
            stats = db.stats()
        if db.path == ":memory:":
            from esperc.paths import state_paths

            stats.update(path=str(state_paths().perfdb), mode="absent")
        if ui.json:
            ui.print_json(stats)
            return
        for name, value in stats.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {n}" for k, n in sorted(value.items())) or "-"
            ui.print(f"{name:>15}: {value}")


@perfdb_app.command("query")
def perfdb_query(
    kernel: Annotated[
        str | None, typer.Argument(help="A kernel hash prefix or kernel name.", show_default=False)
    ] = None,
    family: Annotated[str | None, typer.Option("--family", help="Kernel family.")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Target arch, e.g. sm_90.")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Shape bucket: B=4096.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="ok, timeout, fault...")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most rows shown.")] = 50,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """List measured rows matching the filters, fastest ok rows first per key."""
    ui = _start(color, json_)
    with ui.guard():
        with _perfdb(ui) as db:
            rows = db.query(kernel, family, arch, bucket, status, limit)
        if ui.json:
            ui.print_json([_row_json(r) for r in rows])
            return
        if not rows:
            _fail("no rows match")
        from rich.table import Table

        table = Table(show_edge=False, box=None, pad_edge=False)
        for col in ("kernel", "name", "arch", "gpu", "bucket", "config", "median ms", "p95 ms",
                    "n", "status"):  # fmt: skip
            table.add_column(col, justify="right" if col.endswith("ms") or col == "n" else "left")
        for r in rows:
            ms = lambda v: "-" if v is None else f"{v:.4g}"
            table.add_row(r.kernel_hash[:12], r.kernel_name or r.family, r.arch, r.gpu, r.bucket,
                          r.config, ms(r.median_ms), ms(r.p95_ms), str(r.samples),
                          r.status if not r.error else f"{r.status}: {r.error[:40]}")  # fmt: skip
        ui.out.print(table)


@perfdb_app.command("explain")
def perfdb_explain(
    kernel: Annotated[
        str, typer.Argument(help="A kernel hash prefix or kernel name.", show_default=False)
    ],
    arch: Annotated[str | None, typer.Option("--arch", help="Target arch, e.g. sm_90.")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Shape bucket: B=4096.")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPU name.")] = None,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Why does a kernel's lookup hit or miss? (Narrows its rows one key field at a time.)"""
    ui = _start(color, json_)
    with ui.guard():
        with _perfdb(ui) as db:
            hashes = db.resolve_kernel(kernel)
            if not hashes:
                _fail(f"no kernel in the performance database matches '{kernel}'")
            if len(hashes) > 1:
                shown = ", ".join(h[:12] for h in hashes[:5])
                _fail(f"'{kernel}' matches {len(hashes)} kernels ({shown}); be more precise")
            text = db.explain(hashes[0], arch, bucket, None, gpu)
        if ui.json:
            ui.print_json({"kernel": hashes[0], "hit": "\nhit:" in text, "explanation": text})
        else:
            ui.print(text)


# ----- esperc autotune ----------------------------------------------------------------------


def _register_autotune(app: typer.Typer) -> None:
    """Add ``esperc autotune`` (the runner is ``esperc.cli_autotune.run_autotune``)."""

    @app.command("autotune")
    def autotune_cmd(
        file: Annotated[
            Path,
            typer.Argument(help="A blueprint (.esp) or a package (.kpkg).", show_default=False),
        ],
        shapes: Annotated[
            list[str] | None,
            typer.Option(
                "--shapes",
                help="Tuning values of a dynamic dim: B=1,64,4096 (repeat "
                "per dim; default 64 and 4096 within each range).",
            ),
        ] = None,
        budget_s: Annotated[
            float, typer.Option("--budget-s", help="Wall-clock budget for measuring, seconds.")
        ] = 45.0,
        target: Annotated[
            str | None,
            typer.Option("--target", help="GPU target (default: the local GPU, else sm_90)."),
        ] = None,
        output: Annotated[
            Path | None, typer.Option("-o", "--output", help="The package (default FILE.kpkg).")
        ] = None,
        define: DefineOpt = None,
        blueprint: BlueprintOpt = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
        timeout_s: Annotated[
            float, typer.Option("--timeout-s", help="Per-candidate time limit, seconds.")
        ] = 10.0,
        no_validate: Annotated[
            bool,
            typer.Option("--no-validate", help="Untuned packages: skip the interpreter check."),
        ] = False,
        backward: Annotated[
            bool,
            typer.Option(
                "--backward",
                help="A training package: tune the backward kernels "
                "too (a .kpkg with a backward part always is).",
            ),
        ] = False,
        color: ColorOpt = ColorMode.auto,
        json_: JsonOpt = False,
    ) -> None:
        """Search kernel configs per shape bucket on the local GPU and write a tuned package."""
        ui = _start(color, json_)
        with ui.guard():
            from esperc.cli_autotune import run_autotune

            run_autotune(ui, file, shapes, budget_s, target, output, define, blueprint, seed,
                         timeout_s, not no_validate, backward)  # fmt: skip
