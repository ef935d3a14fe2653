"""The benchmark harness: every reference blueprint against its peers on the local GPU, one run.

    python bench/run.py --out $OUT/bench            # everything, about 8 minutes on an H200
    python bench/run.py --quick --only layer_norm   # smoke test
    python bench/run.py --dry-run --only layer_norm --esperc-kpkg-dir kpkgs   # CPU wiring check

Rows: every blueprint forward, then the training rows (forward + backward of layer_norm,
residual_mlp and swiglu_mlp; ``--no-train`` / ``--only-train`` choose). Order: build the esperc
packages (cold CLI compiles) -> measure the copy and GEMM ceilings -> each row in its own child
process (a sticky CUDA error or a leak stays in that child) ->
per-call launch floor -> load-to-first-result in new processes -> results.json/.md/.png, which
are rewritten after every peer so that a run cut short keeps what it measured. bench/README.md
says what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the root, on sys.path
    sys.path.insert(0, str(ROOT))

from bench.specs import AUTOTUNE_DEFAULT, BY_KEY, BY_NAME, Spec, dry_run, select  # noqa: E402

# The run's start and log file; a child process takes its parent's, so the logs line up.
CLOCK: dict[str, Any] = {"t0": time.time(), "log": None}


def log(msg: str) -> None:
    line = f"[{time.time() - CLOCK['t0']:6.1f}s] {msg}"
    print(line, flush=True)
    if CLOCK["log"]:
        with open(CLOCK["log"], "a", encoding="utf-8") as f:
            f.write(line + "\n")


def slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated blueprints (default: all): "
                    + ",".join(BY_NAME))  # fmt: skip
    ap.add_argument("--repeats", type=int, default=200, help="most timed calls per peer")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: at most 20 repeats a peer, no max-autotune peer",
    )
    rows = ap.add_mutually_exclusive_group()
    rows.add_argument("--no-train", action="store_true", help="forward rows only")
    rows.add_argument("--only-train", action="store_true", help="training (fwd+bwd) rows only")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="on the CPU at tiny dims, host-clock timing: checks the wiring, measures nothing",
    )
    ap.add_argument("--skip-compile-peers", action="store_true", help="no torch.compile peers")
    ap.add_argument("--skip-autotune-peer", action="store_true", help="no max-autotune peer")
    ap.add_argument(
        "--autotune",
        default=",".join(AUTOTUNE_DEFAULT),
        help="blueprints that get the max-autotune peer (slow)",
    )
    ap.add_argument(
        "--esperc-kpkg-dir",
        type=Path,
        help="prebuilt NAME.kpkg and NAME.train.kpkg (and their NAME[.train].json)",
    )
    ap.add_argument(
        "--build-jobs",
        type=int,
        default=1,
        help="packages built at once (>1 saves time; compile times then overlap)",
    )
    ap.add_argument("--out", type=Path, help="output folder (default bench/results/<gpu-slug>)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=470.0,
        help="time budget; optional peers are skipped as it runs out",
    )
    ap.add_argument(
        "--cold-start",
        default="layer_norm",
        help="blueprint of the load-to-first-result runs, or 'none'",
    )
    ap.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure every blueprint in this process (no child processes)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # KEY: measure one row
    ap.add_argument("--child-context", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def rows_of(args: argparse.Namespace) -> tuple[Spec, ...]:
    """The rows this run measures (at tiny dims in a dry run)."""
    specs = select(args.only, forward=not args.only_train, train=not args.no_train)
    return tuple(dry_run(s) for s in specs) if args.dry_run else specs


def settings_from(args: argparse.Namespace, deadline: float) -> Any:
    from bench.measure import Settings, time_cpu
    from bench.peers import PeerOptions

    autotune = () if args.skip_autotune_peer or args.quick else tuple(
        n.strip() for n in args.autotune.split(",") if n.strip())  # fmt: skip
    peers = PeerOptions(compile_peers=not args.skip_compile_peers, autotune=autotune)
    if args.dry_run:
        return Settings(max_repeats=2, min_repeats=1, peer_budget_ms=100.0, warmup=0, probe=1,
                        deadline=deadline, peers=peers, overhead_calls=5, device="cpu",
                        timer=time_cpu)  # fmt: skip
    return Settings(
        max_repeats=min(args.repeats, 20) if args.quick else args.repeats,
        min_repeats=5 if args.quick else 10,
        peer_budget_ms=300.0 if args.quick else 2000.0,
        warmup=2 if args.quick else 5,
        deadline=deadline,
        peers=peers,
    )


def environment(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import torch
    import triton

    import esperc
    from bench.peers import liger_available

    common = {
        "torch": torch.__version__, "triton": triton.__version__, "esperc": esperc.__version__,
        "python": sys.version.split()[0],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python bench/run.py", *argv]),
        "commit": _cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "liger": _liger_version() if liger_available() else "not available (not installed)",
    }  # fmt: skip
    if args.dry_run:
        return {"gpu": "CPU dry run", "arch": "sm_90", **common}
    p = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    meta = {
        "gpu": p.name, "arch": f"sm_{major}{minor}", "sms": p.multi_processor_count,
        "l2_mb": p.L2_cache_size / 1e6, "memory_gb": p.total_memory / 1e9,
        "cuda": torch.version.cuda,
        "driver": _cmd(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        **common,
    }  # fmt: skip
    return meta


def _cmd(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"


def _liger_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liger-kernel")
    except PackageNotFoundError:
        return "installed (version unknown)"


def build_all(args: argparse.Namespace, specs: tuple, arch: str, kpkg_dir: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from bench.packages import build_package, prebuilt

    def one(spec: Any) -> dict:
        if args.esperc_kpkg_dir:
            return prebuilt(spec, args.esperc_kpkg_dir)
        b = build_package(spec, arch, kpkg_dir)
        if args.build_jobs > 1:
            b["note"] = "; ".join(filter(None, [b["note"], f"{args.build_jobs} builds at once"]))
        return b

    builds = {}
    with ThreadPoolExecutor(max(1, args.build_jobs)) as pool:
        for spec, b in zip(specs, pool.map(one, specs), strict=True):
            builds[spec.key] = b
            log(f"esperc package {spec.label}: " + (f"{b['path']} ({b['compile_s'] or 0:.1f} s)"
                if b["path"] else f"FAILED: {b['note']}"))  # fmt: skip
    return builds


def run_child(args: argparse.Namespace) -> None:
    """Measure one row (``--child KEY``) with the context the parent wrote."""
    import torch

    from bench.measure import measure_blueprint
    from bench.report import _write
    from esperc.cli_bench import flush_buffer

    ctx = json.loads(args.child_context.read_text())
    CLOCK["t0"], CLOCK["log"] = ctx["t0"], ctx["log"]
    spec = BY_KEY[args.child]
    spec = dry_run(spec) if args.dry_run else spec
    settings = settings_from(args, ctx["deadline"])
    build = ctx["builds"].get(spec.key, {})
    kpkg = Path(build["path"]) if build.get("path") else None

    def sink(result: dict) -> None:
        _write(args.child_out, json.dumps(result, default=str))

    if args.dry_run:
        measure_blueprint(spec, kpkg, build, ctx["ceilings"], None, settings, log, sink)
        return
    torch.cuda.init()
    measure_blueprint(spec, kpkg, build, ctx["ceilings"], flush_buffer(), settings, log, sink)


def run_isolated(spec: Any, context: Path, argv: list[str], deadline: float) -> dict:
    out = context.with_name(f"{spec.key}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", spec.key,
           "--child-context", str(context), "--child-out", str(out)]  # fmt: skip
    timeout = min(300.0, max(60.0, deadline - time.time() + 60.0))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, check=False)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    result = json.loads(out.read_text()) if out.exists() else {"blueprint": spec.name, "rows": []}
    if rc != 0:
        note = f"child process ended with {rc}"
        result["child_note"] = note
        if not result["rows"]:
            result.setdefault("error", note)
        log(f"  {spec.label}: {note}")
    for key in ("describe", "bound", "unit", "key", "label", "train"):
        result.setdefault(key, getattr(spec, key))
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    t0 = CLOCK["t0"]
    deadline = t0 + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="esperc-bench-"))
    # Cold torch.compile and Triton caches for this run (children inherit them).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(work / "triton")
    import torch

    from bench.report import write_all

    if not torch.cuda.is_available() and not args.dry_run:
        sys.exit("bench/run.py needs a CUDA GPU; none is visible (--dry-run runs on the CPU)")
    specs = rows_of(args)
    meta = environment(args, argv)
    default_out = ROOT / "out" / "bench-dry-run" if args.dry_run else (
        ROOT / "bench" / "results" / slug(meta["gpu"]))  # fmt: skip
    out_dir = args.out or default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    CLOCK["log"] = str(out_dir / "run.log")
    Path(CLOCK["log"]).write_text("", encoding="utf-8")
    log(f"{meta['gpu']} ({meta['arch']}), torch {meta['torch']}, triton {meta['triton']}; "
        f"writing to {out_dir}")  # fmt: skip
    results: dict[str, Any] = {"meta": meta, "blueprints": []}
    results["builds"] = build_all(args, specs, meta["arch"], work)
    from bench.measure import ceilings, measure_blueprint
    from esperc.cli_bench import flush_buffer

    flush = None if args.dry_run else flush_buffer()
    results["ceilings"] = {} if args.dry_run else ceilings(flush, log)
    context = work / "context.json"
    shared = {"t0": t0, "log": CLOCK["log"], "deadline": deadline,
              "ceilings": results["ceilings"], "builds": results["builds"]}  # fmt: skip
    context.write_text(json.dumps(shared, default=str))
    settings = settings_from(args, deadline)
    child_argv = [a for a in argv if a != "--no-isolate"]
    for spec in specs:
        log(f"{spec.label}: {spec.describe}")
        if args.no_isolate:
            build = results["builds"][spec.key]
            kpkg = Path(build["path"]) if build.get("path") else None
            bp = measure_blueprint(spec, kpkg, build, results["ceilings"], flush, settings, log,
                                   lambda _r: None)  # fmt: skip
        else:
            bp = run_isolated(spec, context, child_argv, deadline)
        results["blueprints"].append(bp)
        results["meta"]["wall_s"] = time.time() - t0
        write_all(results, out_dir, with_plot=False)
    del flush
    if not args.dry_run:
        torch.cuda.empty_cache()
        _costs(args, results, specs, deadline)
    results["meta"]["wall_s"] = time.time() - t0
    write_all(results, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.time() - t0:.0f} s: {out_dir}/results.md")
    from bench.report import summary_table

    forward = [bp for bp in results["blueprints"] if not bp.get("train")]
    train = [bp for bp in results["blueprints"] if bp.get("train")]
    for title, bps in (("forward", forward), ("training (forward + backward)", train)):
        if bps:
            print(f"\n{title}:\n{summary_table(bps)}", flush=True)


def _costs(args: argparse.Namespace, results: dict, specs: tuple, deadline: float) -> None:
    from bench.overhead import arg_specs, cold_start, launch_floor_us

    results["launch_floor_us"] = launch_floor_us()
    log(
        "launch floor: "
        + ", ".join(
            f"{k} {v:.1f} us" for k, v in results["launch_floor_us"].items() if isinstance(v, float)
        )
    )
    name = args.cold_start
    if name not in {s.name for s in specs if not s.train}:  # the forward package's start-up
        if name != "none":
            log(f"cold start skipped: '{name}' is not among the blueprints of this run")
        return
    left = deadline - time.time()
    if left < 45:
        results["cold_start"] = {"blueprint": name, "kpkg": {"error": "skipped: time budget"}}
        log(f"cold start skipped ({left:.0f} s left)")
        return
    from esperc.driver import Options, lower

    spec = BY_NAME[name]
    func = lower(spec.path, Options())
    build = results["builds"].get(name) or {}
    results["cold_start"] = cold_start(name, arg_specs(func, dict(spec.dims)), build.get("path"),
                                       timeout_s=max(30.0, min(180.0, left)))  # fmt: skip
    log("load to first result: " + ", ".join(
        f"{k} {v.get('first_result_s', float('nan')):.2f} s"
        for k, v in results["cold_start"].items() if isinstance(v, dict)))  # fmt: skip


if __name__ == "__main__":
    main()
