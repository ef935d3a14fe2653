"""Per-kernel device times of esperc and eager on the reference blueprints (forward or training).

    python -m bench.kernel_profile --kpkg-dir tuned [--only residual_mlp.train,swiglu_mlp.train]
        [--out profile.json]

For each row key (``NAME`` or ``NAME.train``, as in ``bench/specs.py``) the package
``DIR/KEY.kpkg`` and the eager reference each run ``CALLS`` steps under ``torch.profiler``
(CUPTI, warm L2: no flush) on the bench's input sizes; the table lists every CUDA kernel with its
launches per step, µs per step and share of the step, largest first. It explains a gap of the
benchmark (which kernel the time goes to), it is not a benchmark: ``bench/run.py`` times calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CALLS = 10  # profiled steps per row


def table(title: str, rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``profile_kernels`` rows with each kernel's share of the total."""
    total = sum(r["us"] for r in rows) or 1.0
    out = [f"### {title}: {total:.1f} µs per step", "", "| kernel | launches | µs | % |",
           "|---|---:|---:|---:|"]  # fmt: skip
    out += [f"| `{r['kernel']}` | {r['launches']:g} | {r['us']:.1f} | {100 * r['us'] / total:.1f} |"
            for r in rows]  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import torch

    import esperc
    from bench.measure import profile_kernels, random_sets, workload
    from bench.peers import REFS
    from bench.specs import BY_KEY

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kpkg-dir", type=Path, required=True, help="folder of KEY.kpkg")
    ap.add_argument("--only", default="residual_mlp,swiglu_mlp,residual_mlp.train,"
                    "swiglu_mlp.train", help="comma-separated row keys")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name()}
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        spec = BY_KEY[key]
        func, sets = random_sets(spec, 1, 0, "cuda")
        work = workload(spec, func, sets, "cuda")
        art = esperc.load(args.kpkg_dir / f"{key}.kpkg", fallback="error")
        report[key] = {}
        for peer, fn in (("esperc", art), ("eager", REFS[spec.name])):

            def step(fn: Any = fn, work: Any = work) -> None:
                work.reset()
                work.call(fn)

            rows = profile_kernels(step, CALLS)
            report[key][peer] = rows
            print(table(f"{spec.label} — {peer}", rows), "\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
