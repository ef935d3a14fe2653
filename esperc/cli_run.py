"""``esperc run``: run a blueprint (eager reference) or a package and summarise the outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from esperc import driver
from esperc.cli_io import UI
from esperc.diagnostics import Loc, error


def _dims(func, given: dict[str, str]) -> dict[str, int]:  # noqa: ANN001
    """Values for the dynamic dims: given ones, else a small size inside the range."""
    out: dict[str, int] = {}
    names = {d.name for d in func.dims}
    for k, v in given.items():
        if k not in names:
            raise error("E0101", f"'{k}' is not a dynamic dim of '{func.name}'", None)
        try:
            out[k] = int(v)
        except ValueError:
            raise error("E0212", f"--dim {k}={v}: not an integer", None) from None
    for d in func.dims:
        out.setdefault(d.name, min(max(d.lo, 8), d.hi))
    return out


def load_inputs(path: str, func) -> dict:  # noqa: ANN001
    """Tensors by name from a .safetensors file (E0502 when unreadable)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise error("E0502", f"cannot read inputs from '{path}': {e}", Loc(path, 1, 1)) from None
    missing = [a.name for a in func.args if a.name not in tensors]
    if missing:
        raise error("E0502", f"'{path}' lacks tensors for {', '.join(missing)}", Loc(path, 1, 1))
    return {a.name: tensors[a.name] for a in func.args}


def summarize(outputs) -> list[dict]:  # noqa: ANN001
    """Shape, dtype, sum, mean |x| and a SHA-256 prefix of each output's bytes."""
    rows = []
    for i, t in enumerate(outputs):
        t = t.detach().cpu().contiguous()
        raw = (
            t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b""
        )
        f = t.double()
        rows.append({
            "output": i,
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "sum": float(f.sum()),
            "mean_abs": float(f.abs().mean()) if t.numel() else 0.0,
            "sha256": hashlib.sha256(raw).hexdigest()[:16],
        })  # fmt: skip
    return rows


def run_run(
    ui: UI,
    file: Path,
    eager: bool,
    inputs: str,
    dims: dict[str, str],
    seed: int,
    overrides: dict[str, str],
    blueprint: str | None,
) -> None:
    from esperc.ir.interpreter import random_inputs, run_func

    if file.suffix == ".kpkg":
        from esperc.cli_kpkg import run_package

        run_package(ui, file, eager, inputs, dims, seed)
        return
    ui.add_source(file)
    func = driver.lower(file, driver.Options(blueprint=blueprint, overrides=overrides))
    if inputs == "random":
        args = random_inputs(func, _dims(func, dims), seed=seed)
    else:
        args = load_inputs(inputs, func)
    outs = run_func(func, args)
    rows = summarize(outs)
    if ui.json:
        ui.print_json({"blueprint": func.name, "mode": "eager", "outputs": rows})
        return
    ui.print(f"{func.name}: eager reference, {len(rows)} output(s)")
    for r in rows:
        ui.print(
            f"  out{r['output']}: {r['dtype']}{r['shape']}  sum={r['sum']:.6g}  "
            f"mean|x|={r['mean_abs']:.6g}  sha256={r['sha256']}"
        )
