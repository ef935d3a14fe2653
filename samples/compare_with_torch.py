"""Run a package and an independent plain-PyTorch implementation on the same inputs.

Usage: python samples/compare_with_torch.py PACKAGE.kpkg SAMPLE_NAME
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import esperc  # noqa: E402
from esperc.ir.interpreter import random_inputs  # noqa: E402
from torch_refs import REFS, SMALL_DIMS  # noqa: E402


def main() -> int:
    pkg, name = sys.argv[1], sys.argv[2]
    art = esperc.load(pkg)
    for dims in (SMALL_DIMS[name], {k: v + 2 for k, v in SMALL_DIMS[name].items()}):
        inputs = random_inputs(art.func, dims, seed=1)
        got = art(**inputs)
        want = REFS[name](**inputs)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for i, (g, w) in enumerate(zip(got, want)):
            g64, w64 = g.double(), w.double()
            rel = float((g64 - w64).norm() / w64.norm().clamp_min(1e-30))
            print(f"{name} {dims}: out{i} {list(g.shape)} rel err vs PyTorch = {rel:.3e}")
            if not rel < 2e-2:
                print("MISMATCH", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
