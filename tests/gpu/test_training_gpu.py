"""Training packages on the GPU: forward and backward cubins through ``torch.autograd`` match
``torch.autograd`` on the independent references of ``tests/unit/torch_refs.py``, and a step
compiles nothing.

Packages: ``NAME.train.kpkg`` from ``python tests/gpu/build_packages.py DIR --backward`` (folder
``ESPERC_GPU_PKGS``, default ``gpu_pkgs/``). Run: ``python -m pytest tests/gpu -q``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from torch_refs import INT_INPUT_BOUNDS, REFS, SMALL_DIMS  # noqa: E402

PKGS = Path(os.environ.get("ESPERC_GPU_PKGS", ROOT / "gpu_pkgs"))
NAMES = sorted(p.name.removesuffix(".train.kpkg") for p in PKGS.glob("*.train.kpkg"))
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-3}
RATIO = 2  # times PyTorch's own error against the f32 truth

pytestmark = pytest.mark.gpu


def _upcast(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in ts.items()}


def _bound(dtype: torch.dtype, theirs: float) -> float:
    """Allowed error against the f32 truth: the dtype's bound, or ``RATIO`` x PyTorch's own
    (a gradient that is zero in exact arithmetic, ``multi_head_attention``'s key bias, is
    rounding noise in both)."""
    return max(TOL[dtype], RATIO * theirs)


def _grads(fn, inputs, wrt, gouts):  # noqa: ANN001, ANN202
    """Gradients of ``fn(**inputs)`` for ``gouts`` (zeros for an unused input: a runtime ``if``
    arm that skips it), and the detached outputs."""
    leaves = {k: v.detach().clone().requires_grad_(k in wrt) for k, v in inputs.items()}
    out = fn(**leaves)
    out = out if isinstance(out, tuple) else (out,)
    floats = [o for o in out if o.is_floating_point()]
    names = sorted(wrt)
    got = torch.autograd.grad(floats, [leaves[k] for k in names],
                              [g.to(o.dtype) for o, g in zip(floats, gouts)], allow_unused=True)  # fmt: skip
    torch.cuda.synchronize()
    grads = {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, got)}
    return grads, [o.detach() for o in out]


def test_training_packages_were_built() -> None:
    assert len(NAMES) >= 3, f"no training packages in {PKGS}: build_packages.py --backward"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_pytorch_without_compiling(name: str, monkeypatch) -> None:  # noqa: ANN001
    import triton

    import esperc
    from esperc.ir.interpreter import random_inputs
    from esperc.ir.numerics import rel_err

    monkeypatch.setattr(triton, "compile", lambda *a, **k: pytest.fail("a Triton compile ran"))
    art = esperc.load(PKGS / f"{name}.train.kpkg", fallback="error")
    wrt = set(art.manifest["backward"]["wrt"])
    for seed, scale in ((0, 1), (1, 37)):
        dims = {d.name: min(max(SMALL_DIMS[name].get(d.name, 1) * scale + seed, d.lo), d.hi)
                for d in art.func.dims}  # fmt: skip
        inputs = random_inputs(art.func, dims, seed=seed, device="cuda")
        for arg, (lo, hi) in INT_INPUT_BOUNDS.get(name, {}).items():
            inputs[arg] = torch.randint(lo, hi, inputs[arg].shape, device="cuda",
                                        dtype=inputs[arg].dtype)  # fmt: skip
        with torch.no_grad():
            shapes = REFS[name](**inputs)
        shapes = shapes if isinstance(shapes, tuple) else (shapes,)
        gouts = [torch.randn_like(o) for o in shapes if o.is_floating_point()]
        ours, out = _grads(art, inputs, wrt, gouts)
        theirs, ref = _grads(REFS[name], inputs, wrt, gouts)
        truth, true_out = _grads(REFS[name], _upcast(inputs), wrt, gouts)
        for o, lo, t in zip(out, ref, true_out):
            if t.is_floating_point():
                e, e_ref = rel_err(o, t), rel_err(lo, t)
                assert e <= _bound(lo.dtype, e_ref), (name, dims, e, e_ref)
        for k in wrt:
            e, e_ref = rel_err(ours[k], truth[k]), rel_err(theirs[k], truth[k])
            assert e <= _bound(inputs[k].dtype, e_ref), (name, k, dims, e, e_ref)
    assert art.launch_lists >= 1
