"""Every sample blueprint end to end: front end, the default pass pipeline (fuse, smem-plan...),
Triton code generation with the pipeline's configs, the Triton interpreter; compared with the
independent PyTorch references in torch_refs.py.

Samples whose static dims make big matmuls (seconds to minutes in the interpreter) are ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_refs import INT_INPUT_BOUNDS, REFS, SMALL_DIMS

from esperc.backend.triton.emitter import generate
from esperc.backend.triton.launcher import import_triton_normally, run_generated
from esperc.driver import Options, compile_ir
from esperc.ir.interpreter import random_inputs

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SLOW = {"residual_mlp", "squeeze_excite", "swiglu_mlp"}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    import_triton_normally()  # before the variable: else later compiles in this worker fail
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(REFS)]
)
def test_sample_matches_pytorch(name: str) -> None:
    func, _ = compile_ir(SAMPLES / f"{name}.esp", Options())
    gen = generate(func)
    assert gen.kernels, "every sample has at least one kernel"
    inputs = random_inputs(func, SMALL_DIMS[name], seed=0)
    for arg, (lo, hi) in INT_INPUT_BOUNDS.get(name, {}).items():
        gen_ = torch.Generator().manual_seed(1)
        inputs[arg] = torch.randint(lo, hi, inputs[arg].shape, generator=gen_).to(inputs[arg].dtype)
    got = run_generated(gen, func, inputs)
    want = REFS[name](**inputs)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = max(1.0, w.float().abs().max().item())
        # bf16/f16 blueprints: PyTorch rounds every intermediate, the kernels keep fp32 registers
        tol = 3e-2 if w.dtype in (torch.bfloat16, torch.float16) else 1e-4
        assert (g.float() - w.float()).abs().max().item() <= tol * scale, name
