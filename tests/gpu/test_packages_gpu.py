"""Every sample's .kpkg, built on a CPU-only machine, loads and runs on the GPU without compiling,
and matches an independent PyTorch implementation.

Packages come from ``tests/gpu/build_packages.py`` (run on the CPU machine) in the folder named
by ``ESPERC_GPU_PKGS`` (default ``gpu_pkgs/``). The no-compile claim is checked three ways:
``triton.compile`` and ``JITFunction.run`` replaced by functions that raise, an empty
``TRITON_CACHE_DIR`` that must stay empty, and Triton not imported by a fresh process that loads
and runs a package.

Run: ``python -m pytest tests/gpu/test_packages_gpu.py -q`` on the GPU machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from torch_refs import INT_INPUT_BOUNDS, REFS, SMALL_DIMS  # noqa: E402

PKGS = Path(os.environ.get("ESPERC_GPU_PKGS", ROOT / "gpu_pkgs"))
NAMES = sorted(p.stem for p in PKGS.glob("*.kpkg") if not p.stem.endswith(".train"))
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-3}

pytestmark = pytest.mark.gpu


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    if a.dtype == torch.bool or not a.is_floating_point():
        return 0.0 if torch.equal(a, b) else float("inf")
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


def _inputs(art, dims: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    from esperc.ir.interpreter import random_inputs

    inputs = random_inputs(art.func, dims, seed=seed, device="cuda")
    for name, (lo, hi) in INT_INPUT_BOUNDS.get(art.name, {}).items():
        t = inputs[name]
        inputs[name] = torch.randint(lo, hi, t.shape, device="cuda", dtype=t.dtype)
    return inputs


def test_packages_were_built() -> None:
    assert len(NAMES) >= 10, f"no packages in {PKGS}: run tests/gpu/build_packages.py first"


@pytest.fixture()
def no_triton_compile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    cache = tmp_path / "triton-cache"
    cache.mkdir()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    import triton
    import triton.compiler.compiler as tcc
    from triton.runtime.jit import JITFunction

    def refuse(*a, **k):
        raise AssertionError("a Triton compile happened while running a package")

    monkeypatch.setattr(triton, "compile", refuse)
    monkeypatch.setattr(tcc, "compile", refuse)
    monkeypatch.setattr(JITFunction, "run", refuse)
    yield cache
    assert list(cache.iterdir()) == [], "the Triton cache gained entries"


@pytest.mark.parametrize("name", NAMES)
def test_package_runs_on_gpu_without_compiling(name: str, no_triton_compile: Path) -> None:
    import esperc

    art = esperc.load(PKGS / f"{name}.kpkg", fallback="error")
    arch = "sm_{}{}".format(*torch.cuda.get_device_capability())
    assert arch in art.manifest["targets"]
    big = {k: v * 64 + 3 for k, v in SMALL_DIMS[name].items()}
    # the third call has the first one's signature: it replays that call's launch list
    for i, dims in enumerate((SMALL_DIMS[name], big, SMALL_DIMS[name])):
        dims = {d.name: min(max(dims.get(d.name, 1), d.lo), d.hi) for d in art.func.dims}
        inputs = _inputs(art, dims, seed=i)
        got = art(**inputs)
        torch.cuda.synchronize()
        want = REFS[name](**inputs)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            assert _rel(g, w) <= TOL.get(w.dtype, 0.0), (name, dims, _rel(g, w))
    assert art.launch_lists == 2


def test_fresh_process_never_imports_triton() -> None:
    name = "softmax" if "softmax" in NAMES else NAMES[0]
    code = f"""
import sys, torch, esperc
from esperc.ir.interpreter import random_inputs
art = esperc.load({str(PKGS / (name + ".kpkg"))!r}, fallback="error")
dims = {{d.name: min(max(8, d.lo), d.hi) for d in art.func.dims}}
out = art(**random_inputs(art.func, dims, seed=0, device="cuda"))
torch.cuda.synchronize()
print("triton imported:", sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "triton imported: []" in proc.stdout, proc.stdout
