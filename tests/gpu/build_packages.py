"""Build every sample into a .kpkg (sm_90 and sm_80 cubins) on this machine, GPU or not.

Usage: python tests/gpu/build_packages.py [OUT_DIR] [--only a,b] [--targets sm_90,sm_80]
       [--backward] [--no-validate]                           (default OUT_DIR: gpu_pkgs/)

``--backward`` builds training packages ``NAME.train.kpkg`` instead (forward and backward
kernels, not validated in the interpreter: the GPU test compares gradients with PyTorch).
The GPU tests ``tests/gpu/test_packages_gpu.py`` and ``test_training_gpu.py`` then load them.
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

    def option(name: str, default: str | None) -> str | None:
        nonlocal argv
        if name not in argv:
            return default
        i = argv.index(name)
        value, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
        return value

    picked = option("--only", None)
    only = set(picked.split(",")) if picked else None
    targets = tuple(str(option("--targets", "sm_90,sm_80")).split(","))
    backward = "--backward" in argv
    validate = not backward and "--no-validate" not in argv
    argv = [a for a in argv if a not in ("--backward", "--no-validate")]
    out = Path(argv[0]) if argv else ROOT / "gpu_pkgs"
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for src in sorted((ROOT / "samples").glob("*.esp")):
        if only and src.stem not in only:
            continue
        start = time.perf_counter()
        opts = driver.Options(targets=targets, validate=validate, backward=backward)
        try:
            if backward:
                from esperc.build_backward import prepare

                tf = prepare(driver.lower(src, opts), opts)
                res = build.build_package(src, tf.forward, opts, out / f"{src.stem}.train.kpkg",
                                          training=tf)  # fmt: skip
            else:
                func, _ = driver.compile_ir(src, opts)
                res = build.build_package(src, func, opts, out / f"{src.stem}.kpkg")
            print(f"{src.stem}: {res.one_line()}", flush=True)
            failures += res.validation.get("status") == "fail"
        except Exception as e:  # noqa: BLE001 - report every sample, then fail
            failures += 1
            print(
                f"{src.stem}: FAILED after {time.perf_counter() - start:.1f} s: {e!r}", flush=True
            )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
