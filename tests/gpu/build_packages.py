"""Build every sample into a .kpkg (sm_90 and sm_80 cubins) on this machine, GPU or not.

Usage: python tests/gpu/build_packages.py [OUT_DIR] [--only a,b]   (default OUT_DIR: gpu_pkgs/)

The GPU test ``tests/gpu/test_packages_gpu.py`` then loads them on a GPU machine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    os.environ.setdefault("ESPERC_NO_CACHE", "1")
    from esperc import build, driver

    only = None
    if "--only" in argv:
        i = argv.index("--only")
        only = set(argv[i + 1].split(","))
        argv = argv[:i] + argv[i + 2 :]
    out = Path(argv[0]) if argv else ROOT / "gpu_pkgs"
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for src in sorted((ROOT / "samples").glob("*.esp")):
        if only and src.stem not in only:
            continue
        start = time.perf_counter()
        opts = driver.Options(targets=("sm_90", "sm_80"), validate=True)
        try:
            func, _ = driver.compile_ir(src, opts)
            res = build.build_package(src, func, opts, out / f"{src.stem}.kpkg")
            print(f"{src.stem}: {res.one_line()}", flush=True)
            failures += res.validation.get("status") == "fail"
        except Exception as e:  # noqa: BLE001 - report every sample, then fail
            failures += 1
            print(f"{src.stem}: FAILED after {time.perf_counter() - start:.1f} s: {e!r}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
