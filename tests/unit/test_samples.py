"""Every sample compiles to IR, round-trips through the textual form unchanged, and its eager run
(the reference interpreter) matches an independent plain-PyTorch implementation; and every
registered pass has its lit file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_refs import INT_INPUT_BOUNDS, REFS, SMALL_DIMS

from esperc import driver
from esperc.ir.hashing import canonical_hash
from esperc.ir.interpreter import random_inputs, run_func
from esperc.ir.numerics import rel_err
from esperc.ir.parser import parse_func
from esperc.ir.printer import print_func
from esperc.ir.serialize import from_json, to_json
from esperc.middle.registry import load_passes

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted(p.stem for p in (ROOT / "samples").glob("*.esp"))
# Eager bf16/f16 evaluation of the same ops in the same order: only reassociation inside
# PyTorch's own kernels can differ.
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


def test_there_are_at_least_ten_samples_each_with_a_header_comment() -> None:
    assert len(SAMPLES) >= 10
    for name in SAMPLES:
        text = (ROOT / "samples" / f"{name}.esp").read_text()
        assert text.lstrip().startswith("#"), f"{name}.esp must say what it is in a comment"


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_lowers_and_round_trips(name: str) -> None:
    func = driver.lower(ROOT / "samples" / f"{name}.esp", driver.Options())
    text = print_func(func)
    again = parse_func(text)
    assert again == func
    assert print_func(again) == text
    assert from_json(to_json(func)).funcs[0] == func
    assert canonical_hash(again) == canonical_hash(func)


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_eager_matches_independent_pytorch(name: str) -> None:
    func = driver.lower(ROOT / "samples" / f"{name}.esp", driver.Options())
    base = SMALL_DIMS[name]
    for seed, dims in enumerate((base, {k: v + 3 for k, v in base.items()})):
        inputs = random_inputs(func, dims, seed=seed)
        g = torch.Generator().manual_seed(seed)
        for arg, (lo, hi) in INT_INPUT_BOUNDS.get(name, {}).items():
            t = inputs[arg]
            inputs[arg] = torch.randint(lo, hi, t.shape, generator=g, dtype=t.dtype)
        got = run_func(func, inputs)
        want = REFS[name](**inputs)
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert rel_err(a, b) <= TOL.get(b.dtype, 0.0), (name, dims, rel_err(a, b))


def test_every_registered_pass_has_a_lit_file() -> None:
    passes = load_passes()
    assert {"canonicalize", "cse", "dce", "decompose", "fuse", "divergence", "smem-plan"} <= set(
        passes
    )
    for name in passes:
        assert (ROOT / "tests" / "lit" / "middle" / f"{name}.eir").is_file(), name
