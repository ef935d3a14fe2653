"""Turn a results dict (``results.json``) into ``results.md`` and ``results.png``.

Pure formatting: works on the JSON alone, so ``python -m bench.report results.json`` redraws
both from a finished run, and the unit tests feed it synthetic numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.specs import target_verdict

DASH = "–"
PEER_ORDER = ("eager", "torch.compile", "torch.compile max-autotune", "liger", "sdpa (flash)",
              "esperc")  # fmt: skip


def fmt(x: float | None, digits: int = 3, kind: str = "f") -> str:
    """A number for a table cell; None/NaN print as a dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if kind == "e":
        return "inf" if math.isinf(x) else f"{x:.1e}"
    return f"{x:.{digits}f}"


def rate_digits(unit: str) -> int:
    return 0 if unit == "GB/s" else 1


def peer_row(row: Mapping[str, Any], unit: str) -> list[str]:
    """One markdown row: peer, median, p95, rate, % ceiling, esperc speedup, compile, rel err."""
    name = row["peer"]
    if row.get("status") != "ok":
        note = row.get("note") or ""
        status = f"{row.get('status')}: {note}" if note else str(row.get("status"))
        cells = [status.replace("|", "/")] + [DASH] * 6
        return [name, *cells]
    err = fmt(row.get("rel_err"), kind="e")
    errs = (row.get("extra") or {}).get("rel_errs") or {}
    if len(errs) > 1:  # a training row: name the worst of the output and the gradients
        err += f" ({max(errs, key=lambda k: errs[k])})"
    verdict = row.get("numerics_ok")
    err += " ✓" if verdict else " ✗ FAIL" if verdict is False else ""
    sp = row.get("speedup")
    return [
        name,
        fmt(row.get("median_ms"), 4),
        fmt(row.get("p95_ms"), 4),
        fmt(row.get("rate"), rate_digits(unit)),
        fmt(row.get("pct_ceiling"), 1),
        f"{sp:.2f}×" if sp is not None else DASH,
        fmt(row.get("compile_s"), 1),
        err,
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A GitHub markdown table; ``align`` has one of 'l'/'r' per column."""
    seps = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(seps) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def blueprint_section(bp: Mapping[str, Any]) -> str:
    """The heading, table and notes of one blueprint."""
    unit = bp.get("unit", "GB/s")
    ceil_name = "copy" if bp.get("bound") == "memory" else "GEMM"
    moved = f", {bp['bytes'] / 1e6:.0f} MB moved" if bp.get("bytes") else ""
    flops = f", {bp['flops'] / 1e9:.1f} GFLOP" if bp.get("flops") else ""
    head = f"## {_label(bp)} — {bp.get('describe', '')} ({bp.get('bound')}-bound{moved}{flops})"
    if bp.get("error"):
        return f"{head}\n\nblueprint failed before any peer ran: {bp['error']}\n"
    header = ["peer", "median ms", "p95 ms", unit, f"% of {ceil_name}", "esperc speedup",
              "compile s", "rel err"]  # fmt: skip
    rows = sorted(bp.get("rows", []), key=lambda r: _order(r["peer"]))
    out = [head, "", table(header, [peer_row(r, unit) for r in rows], "lrrrrrrl")]
    notes = _notes(bp)
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


def _label(bp: Mapping[str, Any]) -> str:
    return bp.get("label") or bp["blueprint"]


def _order(peer: str) -> int:
    return PEER_ORDER.index(peer) if peer in PEER_ORDER else len(PEER_ORDER)


def _notes(bp: Mapping[str, Any]) -> list[str]:
    notes = []
    build = bp.get("build") or {}
    if build.get("note"):
        notes.append(f"- esperc build: {build['note']}")
    if build.get("wall_s") is not None:
        cli, wall = fmt(build.get("compile_s"), 2), fmt(build.get("wall_s"), 2)
        notes.append(f"- esperc compile: {cli} s in the CLI, {wall} s for the whole command "
                     "(cold caches)")  # fmt: skip
    if bp.get("esperc_kernel_ms") is not None:
        notes.append(f"- esperc kernel time (profiler, warm L2): {bp['esperc_kernel_ms']:.4f} ms")
    ho = bp.get("host_overhead_us") or {}
    parts = [f"{k} {ho[k]:.1f} µs" for k in ("esperc", "eager") if isinstance(ho.get(k), float)]
    if parts:
        dims = ", ".join(f"{k}={v}" for k, v in (ho.get("dims") or {}).items())
        notes.append(f"- host time per call at {dims}: " + ", ".join(parts))
    if bp.get("child_note"):
        notes.append(f"- {bp['child_note']}")
    if bp.get("input_sets", 1) > 1:
        notes.append(f"- {bp['input_sets']} input sets rotated (one set fits in L2)")
    return notes


def summary_table(blueprints: Sequence[Mapping[str, Any]]) -> str:
    """One line per row: esperc against eager and against the fastest other peer; and, when a
    row has one, the issue's target and whether this run met it."""
    with_target = any((bp.get("target") or {}).get("text") for bp in blueprints)
    rows = []
    for bp in blueprints:
        ok = {r["peer"]: r for r in bp.get("rows", []) if r.get("status") == "ok"}
        mine = ok.get("esperc")
        others = [r for p, r in ok.items() if p != "esperc" and r.get("median_ms")]
        best = min(others, key=lambda r: r["median_ms"]) if others else None
        rows.append([
            _label(bp),
            fmt(mine["median_ms"], 4) if mine else DASH,
            fmt(ok["eager"]["median_ms"], 4) if "eager" in ok else DASH,
            f"{best['peer']} {fmt(best['median_ms'], 4)}" if best else DASH,
            f"{best['median_ms'] / mine['median_ms']:.2f}×" if best and mine else DASH,
            fmt(mine.get("pct_ceiling"), 1) if mine else DASH,
            _verdict(mine),
        ])  # fmt: skip
        if with_target:
            rows[-1] += [(bp.get("target") or {}).get("text") or DASH, _target_met(bp, ok)]
    header = ["blueprint", "esperc ms", "eager ms", "fastest other peer (ms)",
              "esperc speedup vs it", "esperc % of ceiling", "esperc numerics"]  # fmt: skip
    if with_target:
        return table([*header, "target (issue)", "target met"], rows, "lrrlrrlll")
    return table(header, rows, "lrrlrrl")


def _target_met(bp: Mapping[str, Any], ok: Mapping[str, Mapping[str, Any]]) -> str:
    target = [tuple(t) for t in (bp.get("target") or {}).get("peers", [])]
    if not target:
        return DASH
    mine = ok.get("esperc")
    if mine is not None and mine.get("numerics_ok") is False:
        return "not met: esperc numerics FAIL"
    times = {p: r["median_ms"] for p, r in ok.items() if p != "esperc" and r.get("median_ms")}
    return target_verdict(target, mine["median_ms"] if mine else None, times)


def _verdict(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return DASH
    return "ok" if row.get("numerics_ok") else "FAIL" if row.get("numerics_ok") is False else DASH


def header_block(meta: Mapping[str, Any], ceil: Mapping[str, Any]) -> str:
    copy = ceil.get("copy", {})
    gemm = ceil.get("gemm", {})
    lines = [
        ("GPU", f"{meta.get('gpu', '?')} ({meta.get('arch', '?')}, {meta.get('sms', '?')} SMs, "
                f"{fmt(meta.get('l2_mb'), 0)} MB L2, {fmt(meta.get('memory_gb'), 0)} GB)"),
        ("driver / CUDA", f"{meta.get('driver', '?')} / {meta.get('cuda', '?')}"),
        ("torch / triton", f"{meta.get('torch', '?')} / {meta.get('triton', '?')}"),
        ("esperc", f"{meta.get('esperc', '?')} (commit {meta.get('commit', '?')})"),
        ("liger-kernel", meta.get("liger", "not available")),
        ("date", meta.get("date", "?")),
        ("ceilings", f"device copy {fmt(copy.get('gbps'), 0)} GB/s (read + write); "
                     f"bf16 GEMM 8192³ {fmt(gemm.get('tflops'), 0)} TFLOP/s"
                     + "".join(f"; {k} failed: {c['error']}" for k, c in ceil.items()
                               if isinstance(c, dict) and c.get("error"))),
        ("command", f"`{meta.get('command', '?')}`"),
        ("wall time", f"{fmt(meta.get('wall_s'), 0)} s"),
    ]  # fmt: skip
    return table(["run", ""], [[k, str(v)] for k, v in lines], "ll")


LEGEND = (
    "Timing: CUDA events around each call, L2 flushed (256 MiB written) before every call, "
    "warm-up first, random inputs; median and p95 of n calls. Rate: GB/s = (inputs + params "
    "read once + outputs written once) / median for memory-bound blueprints; TFLOP/s for "
    "matmul and attention (2·M·N·K per matmul; causal attention 2·B·H·S²·d). "
    "% of copy/GEMM: the rate over the ceiling measured in the same run. esperc speedup: "
    "peer median / esperc median (> 1: esperc is faster). compile s: cold first call of "
    "torch.compile; the esperc CLI's build time. rel err: ‖out − ref‖₂/‖ref‖₂ against the "
    "eager reference run in float64; ✓ within max(1e-2, 2 × eager's own error), ✗ FAIL "
    "otherwise."
)

TRAIN_LEGEND = (
    "Training rows (fwd+bwd): one call is one training step of the blueprint, "
    "`out = f(**tensors); out.backward(grad)`, every input and param requiring grad, a fixed "
    "random upstream gradient; the gradients are set to None before every timed call, outside "
    "the CUDA events, with the L2 flush. Peers: eager autograd, torch.compile (AOTAutograd "
    "compiles the backward with the forward; compile s covers both), Liger's autograd "
    "Functions, and the esperc training package (`esperc compile --backward`). rel err: the "
    "worst of the output and every gradient (named), each against the float64 reference's "
    "autograd result; ✓ when every one is within max(1e-2, 2 × eager's own error on it). "
    "TFLOP/s: 3 × the forward matmul FLOPs (the backward of a matmul is two of its size). "
    "GB/s: forward inputs and params read + outputs written, then output gradients read, inputs "
    "read again, every gradient written (layer_norm [N, D]: 5·N·D + 4·D elements)."
)


def costs_section(results: Mapping[str, Any]) -> str:
    out = ["## Per-call overhead and start-up", ""]
    floor = results.get("launch_floor_us") or {}
    rows = [[k, fmt(v, 1) if isinstance(v, float) else str(v)] for k, v in floor.items()]
    for bp in results.get("blueprints", []):
        ho = bp.get("host_overhead_us") or {}
        if isinstance(ho.get("esperc"), float):
            rows.append([f"esperc package call, {bp['blueprint']} (tiny)", fmt(ho["esperc"], 1)])
    if rows:
        out += [table(["host time per call (back-to-back, tiny input)", "µs"], rows, "lr"), ""]
    cold = results.get("cold_start") or {}
    if cold:
        crow = []
        for k in ("kpkg", "torch.compile cold", "torch.compile warm"):
            c = cold.get(k) or {}
            crow.append([k, fmt(c.get("first_result_s"), 2), fmt(c.get("process_s"), 2),
                         c.get("error", "")])  # fmt: skip
        out += [f"Load to first result, {cold.get('blueprint')} (new process each; from inputs "
                "on the GPU to the first output synchronized):", "",
                table(["path", "first result s", "whole process s", "error"], crow, "lrrl"),
                ""]  # fmt: skip
    return "\n".join(out) if len(out) > 2 else ""


def markdown(results: Mapping[str, Any]) -> str:
    """The whole ``results.md``."""
    meta = results.get("meta", {})
    bps = results.get("blueprints", [])
    forward = [bp for bp in bps if not bp.get("train")]
    train = [bp for bp in bps if bp.get("train")]
    parts = [f"# esperc benchmark — {meta.get('gpu', '?')}", "", header_block(meta,
             results.get("ceilings", {})), "", LEGEND, ""]  # fmt: skip
    if forward or not train:
        parts += ["## Summary", "", summary_table(forward), ""]
    if train:
        parts += ["## Summary: training (forward + backward)", "", TRAIN_LEGEND, "",
                  summary_table(train), ""]  # fmt: skip
    parts += [blueprint_section(bp) for bp in forward + train]
    costs = costs_section(results)
    if costs:
        parts.append(costs)
    if results.get("plot_note"):
        parts.append(f"Plot: {results['plot_note']}\n")
    return "\n".join(parts)


def plot(results: Mapping[str, Any], path: Path) -> str:
    """Grouped bars of each peer's rate per blueprint (GB/s and TFLOP/s panels, the ceilings as
    dashed lines) into ``path``; returns a note ("" when written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable here; no results.png"
    panels = [(u, [bp for bp in results.get("blueprints", []) if bp.get("unit") == u])
              for u in ("GB/s", "TFLOP/s")]  # fmt: skip
    panels = [(u, bps) for u, bps in panels if bps]
    if not panels:
        return "no blueprint results to plot"
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    ceil = results.get("ceilings", {})
    for ax, (unit, bps) in zip(axes[0], panels, strict=True):
        peers = [p for p in PEER_ORDER if any(_rate(bp, p) is not None for bp in bps)]
        width = 0.8 / max(len(peers), 1)
        for i, p in enumerate(peers):
            xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(bps))]
            ax.bar(xs, [_rate(bp, p) or 0.0 for bp in bps], width, label=p)
        c = (
            ceil.get("copy", {}).get("gbps")
            if unit == "GB/s"
            else ceil.get("gemm", {}).get("tflops")
        )
        if c:
            ax.axhline(
                c, ls="--", c="k", lw=1, label=f"{'copy' if unit == 'GB/s' else 'GEMM'} ceiling"
            )
        ax.set_xticks(range(len(bps)), [_label(bp) for bp in bps], rotation=20, ha="right")
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.suptitle(f"esperc vs peers — {results.get('meta', {}).get('gpu', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


def _rate(bp: Mapping[str, Any], peer: str) -> float | None:
    for r in bp.get("rows", []):
        if r["peer"] == peer and r.get("status") == "ok":
            return r.get("rate")
    return None


def write_all(results: dict[str, Any], out_dir: Path, with_plot: bool = True) -> None:
    """Write results.json, results.md and (``with_plot``) results.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if with_plot:
        try:
            results["plot_note"] = plot(results, out_dir / "results.png")
        except Exception as e:  # noqa: BLE001 - a broken plot never loses the numbers
            results["plot_note"] = f"plot failed: {type(e).__name__}: {e}"
    _write(out_dir / "results.json", json.dumps(results, indent=1, default=_json_default))
    _write(out_dir / "results.md", markdown(results))


def _json_default(o: Any) -> Any:
    return str(o)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Redraw results.md/.png from a results.json.")
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, help="folder (default: the results.json's folder)")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    write_all(results, args.out or args.results.parent)


if __name__ == "__main__":
    main()
