"""Autotune the reference packages on the local GPU, cold then warm, and time both.

    python -m bench.tune --kpkg-dir gpu_pkgs/bench --out tuned --budget-s 35

For each reference blueprint: ``esperc autotune DIR/NAME.kpkg --shapes DIM=REF,TINY -o
OUT/NAME.kpkg --json`` in a child process with a fresh performance database and autotune cache
(cold), then the same command again on the same database (warm: answered from what the first run
measured). The shapes tuned are the benchmark's reference dims and its host-overhead dims, so the
tuned package's dispatch table covers both. ``OUT/NAME.json`` is the compile summary the harness
reads (copied from the untuned package's), ``OUT/tune.json`` the times and the CLI summaries
(rewritten after each blueprint, merged with what an earlier run into OUT recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.packages import child_env  # noqa: E402
from bench.specs import Spec, select  # noqa: E402


def shapes_args(spec: Spec) -> list[str]:
    """``--shapes`` flags: per dynamic dim, the reference value and the tiny value."""
    out = []
    for dim, value in spec.dims.items():
        values = sorted({int(value), int(spec.tiny_dims.get(dim, value))})
        out += ["--shapes", f"{dim}={','.join(map(str, values))}"]
    return out


def _autotune(cmd: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": timeout_s}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        return {"error": f"exit {proc.returncode}: {tail}"[-600:], "wall_s": wall}
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        summary = {"stdout": proc.stdout[-600:]}
    return {"wall_s": wall, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kpkg-dir", type=Path, required=True, help="untuned NAME.kpkg (+ NAME.json)")
    ap.add_argument("--out", type=Path, required=True, help="folder of the tuned packages")
    ap.add_argument("--only", help="comma-separated blueprints (default: all)")
    ap.add_argument("--budget-s", type=float, default=35.0, help="autotune budget per blueprint")
    ap.add_argument("--state", type=Path, help="keep the perf DB and caches here (default: a "
                    "temporary folder, removed)")  # fmt: skip
    ap.add_argument("--train", action="store_true", help="also tune NAME.train.kpkg (forward "
                    "and backward kernels of the training rows)")  # fmt: skip
    ap.add_argument("--no-forward", action="store_true", help="only the training packages "
                    "(with --train)")  # fmt: skip
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "tune.json"  # merged with an earlier run's, rewritten per blueprint
    results: dict[str, Any] = json.loads(summary.read_text()) if summary.exists() else {}
    with contextlib.ExitStack() as stack:
        state = str(args.state) if args.state else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-tune-"))  # fmt: skip
        env = child_env(ESPERC_CACHE_DIR=state, XDG_CACHE_HOME=state)
        env.pop("ESPERC_NO_CACHE", None)
        for spec in select(args.only, forward=not args.no_forward, train=args.train):
            src = args.kpkg_dir / f"{spec.key}.kpkg"
            dst = args.out / f"{spec.key}.kpkg"
            cmd = [sys.executable, "-m", "esperc", "autotune", str(src), *shapes_args(spec),
                   "--budget-s", str(args.budget_s), "-o", str(dst), "--json", "--color", "never"]  # fmt: skip
            row = {"cold": _autotune(cmd, env, args.budget_s * 4 + 120)}
            row["warm"] = _autotune(cmd, env, 120)
            results[spec.key] = row
            info = args.kpkg_dir / f"{spec.key}.json"
            if info.exists():
                shutil.copyfile(info, args.out / f"{spec.key}.json")
            cold, warm = row["cold"], row["warm"]
            print(f"{spec.key}: cold {cold.get('wall_s', 0):.1f} s"
                  f"{' ERROR ' + cold['error'] if 'error' in cold else ''}, "
                  f"warm {warm.get('wall_s', 0):.2f} s"
                  f"{' ERROR ' + warm['error'] if 'error' in warm else ''}", flush=True)  # fmt: skip
            tmp = summary.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, default=str))
            tmp.replace(summary)
    return 0 if all("error" not in r["cold"] for r in results.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
