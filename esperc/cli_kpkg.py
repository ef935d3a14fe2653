"""``esperc inspect`` and ``esperc run x.kpkg``: what is in a package, and running it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esperc.cli_io import UI, ColorMode
from esperc.cli_options import ColorOpt

if TYPE_CHECKING:
    from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        file: Annotated[Path, typer.Argument(help="A package (.kpkg).", show_default=False)],
        source: Annotated[
            str | None,
            typer.Option("--source", help="Print the Triton source of KERNEL, highlighted."),
        ] = None,
        ir: Annotated[bool, typer.Option("--ir", help="Print the packaged IR.")] = False,
        json_: Annotated[
            bool, typer.Option("--json", help="Print the whole manifest as JSON.")
        ] = False,
        verify: Annotated[
            bool,
            typer.Option("--verify", help="Check every checksum; non-zero exit on any mismatch."),
        ] = False,
        color: ColorOpt = ColorMode.auto,
    ) -> None:
        """Summarise a .kpkg: blueprint, signature, guards, targets, kernels, validation, perf."""
        ui = UI.make(color, json_)
        with ui.guard():
            run_inspect(ui, file, source, ir, verify)


def _read(file: Path, verify: bool) -> Any:
    from esperc.kpkg import read_kpkg

    pkg = read_kpkg(file, verify=verify)
    return pkg


@contextlib.contextmanager
def _malformed(file: Path) -> Iterator[None]:
    """Free-form manifest tables of the wrong shape are a bad package (exit 17), not a crash:
    only the container's own keys are checked when reading (docs/kpkg.md)."""
    from esperc.kpkg import KpkgError, KpkgFormatError

    try:
        yield
    except KpkgError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = f"{type(e).__name__}: {e}"
        raise KpkgFormatError(f"manifest content is malformed ({what})", path=str(file)) from None


def run_inspect(ui: UI, file: Path, source: str | None, ir: bool, verify: bool) -> None:
    pkg = _read(file, verify)
    if verify:
        ui.note(
            f"{file}: ok: header, manifest, {len(pkg.member_names())} members and whole-file SHA-256 verified"
        )
    with _malformed(file):
        _show(ui, pkg, source, ir)


def _show(ui: UI, pkg: Any, source: str | None, ir: bool) -> None:
    m = pkg.manifest
    if source is not None:
        from rich.syntax import Syntax

        ui.out.print(
            Syntax(kernel_source(pkg, source), "python", line_numbers=False, word_wrap=True)
        )
        return
    if ir:
        ui.print(pkg.member(m["blueprint"]["ir"]).decode("utf-8", errors="replace"))
        return
    if ui.json:
        ui.print_json(m)
        return
    _summary(ui, m)


def kernel_source(pkg: Any, kernel: str) -> str:
    """The ``@triton.jit`` function ``kernel`` cut out of the packaged module.

    Raises:
        KeyError (as a user error in the CLI): no kernel of that name.
    """
    kernels = pkg.manifest.get("kernels", {})
    if kernel not in kernels:
        from esperc.diagnostics import did_you_mean, error

        note = did_you_mean(kernel, kernels)
        raise error(
            "E0101", f"no kernel '{kernel}' in the package", None, *([note] if note else [])
        )
    text = pkg.member(kernels[kernel]["source"]).decode("utf-8", errors="replace")
    blocks = re.split(r"(?m)^(?=@triton\.jit)", text)
    for b in blocks:
        if re.search(rf"(?m)^def {re.escape(kernel)}\(", b):
            return b.rstrip() + "\n"
    return text


def _sig(rows: list[dict]) -> str:
    return ", ".join(
        f"{r['name']}: {r['dtype']}[{', '.join(str(d) for d in r['shape'])}]" for r in rows
    )


def _summary(ui: UI, m: dict) -> None:
    bp = m["blueprint"]
    out = ui.out
    out.print(
        f"blueprint @{bp['name']}  ir {bp.get('ir_hash', '?')[:16]}  format v{m['format_version']}"
    )
    out.print(
        f"built by esperc {m.get('esperc_version')} with triton {m.get('triton_version')}, "
        f"torch {m.get('torch_version')}; targets: {', '.join(m.get('targets', []))}"
    )
    out.print(f"inputs:  {_sig(m.get('inputs', []))}")
    out.print(f"params:  {_sig(m.get('params', []))}")
    out.print(f"outputs: {_sig(m.get('outputs', []))}")
    g = m.get("guards", {})
    dims = ", ".join(f"{k} in [{lo}, {hi}]" for k, (lo, hi) in g.get("dims", {}).items())
    out.print(
        f"guards:  dims {dims or '(none)'}; require {', '.join(g.get('require', [])) or '(none)'}"
    )
    out.print(_kernels_table("kernels", m.get("kernels", {})))
    bw = m.get("backward")
    if bw:
        sb = bw.get("saved_bytes", {})
        out.print(
            f"backward: @{bw.get('name')}  wrt {', '.join(bw.get('wrt', []))}; saved "
            f"{', '.join(bw.get('saved', []))} ({sb.get('bytes', '?')} B at {sb.get('dims', {})})"
        )
        out.print(_kernels_table("backward kernels", bw.get("kernels", {})))
    val = m.get("validation", {})
    out.print(
        f"validation: {val.get('status', 'skipped')} ({val.get('mode', '')}; shapes {val.get('shapes', [])})"
    )
    perf = m.get("perf", [])
    if not perf:
        out.print("performance: not tuned (esperc autotune fills this table)")
        return
    from rich.table import Table

    pt = Table(title="performance", show_edge=False)
    for col in ("kernel", "target", "bucket", "p50 ms", "p95 ms", "config"):
        pt.add_column(col)
    for row in perf:
        pt.add_row(str(row.get("kernel")), str(row.get("target")), str(row.get("bucket")),
                   str(row.get("ms")), str(row.get("p95_ms", "")), str(row.get("config", "")))  # fmt: skip
    out.print(pt)


def _kernels_table(title: str, kernels: dict) -> Table:
    from rich.table import Table

    table = Table(title=title, show_edge=False)
    for col in (
        "kernel",
        "kind",
        "config",
        "smem B",
        "regs",
        "spill B",
        "divergence",
        "valid",
        "rel err",
    ):
        table.add_column(
            col, justify="right" if col in ("smem B", "regs", "spill B", "rel err") else "left"
        )
    for name, k in kernels.items():
        cfg = ",".join(f"{a}={b}" for a, b in k.get("config", {}).items())
        tgts = k.get("targets", {})
        smem = "/".join(str(t.get("shared_bytes", "?")) for t in tgts.values())
        regs = "/".join(str(t.get("registers", "?")) for t in tgts.values())
        spill = "/".join(str(t.get("spill_frame_bytes", "?")) for t in tgts.values())
        ra = k.get("region_attrs", {})
        div = ra.get("divergence", "-").strip('"')
        if "tiles_mixed" in ra:
            div += f" (mixed {ra['tiles_mixed']}/{ra.get('tiles_visited', '?')})"
        v = k.get("validation", {})
        table.add_row(name, k.get("kind", "?"), cfg, smem, regs, spill, div, v.get("status", "-"),
                      str(v.get("rel_err", "-")))  # fmt: skip
    return table


def run_package(
    ui: UI, file: Path, eager: bool, inputs: str, dims: dict[str, str], seed: int
) -> None:
    """Run a package on random (or given) inputs; print outputs and the error vs eager."""
    import torch

    from esperc.cli_run import _dims, load_inputs, summarize
    from esperc.ir.interpreter import random_inputs, run_func
    from esperc.ir.numerics import rel_err
    from esperc.runtime import load

    art = load(file)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if inputs == "random":
        args = random_inputs(art.func, _dims(art.func, dims), seed=seed, device=device)
    else:
        args = {k: v.to(device) for k, v in load_inputs(inputs, art.func).items()}
    ref = run_func(art.func, args)
    if eager:
        outs = ref
    else:
        got = art(**args)
        outs = got if isinstance(got, tuple) else (got,)
    errs = [rel_err(o, r) for o, r in zip(outs, ref)]
    rows = summarize(outs)
    mode = "eager" if eager else ("cubin" if device == "cuda" else "triton interpreter")
    if ui.json:
        ui.print_json(
            {"blueprint": art.name, "mode": mode, "outputs": rows, "rel_err_vs_eager": errs}
        )
        return
    ui.print(f"{art.name}: {mode} on {device}, {len(rows)} output(s)")
    for r, e in zip(rows, errs):
        ui.print(
            f"  out{r['output']}: {r['dtype']}{r['shape']}  sum={r['sum']:.6g}  rel err vs eager = {e:.3e}"
        )
