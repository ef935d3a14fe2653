"""Gradients of every sample blueprint against torch.autograd on tests/unit/torch_refs.py.

Each sample is lowered, differentiated with respect to every float input and param, and run
forward + backward in the eager interpreter at two shapes (``SMALL_DIMS`` and a second set; the
second one also applies the sample's ``ATTRS`` overrides). Two comparisons:

* f32: the function with every f16/bf16 promoted to f32 (arguments, casts, literals) against
  the reference on the same values in f32, to 1e-4 relative. ``rms_norm`` is the exception: its
  reference rounds to bf16 on purpose (``y.to(torch.bfloat16)``), which the promoted function
  does not, so it gets a bf16-level bound.
* native dtype: the function as written (bf16/f16) against the f32 reference as truth; esperc's
  error must be within twice PyTorch's own low-precision autograd error (plus a small floor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from autodiff_harness import assert_close32, optimized, promote_f32, rel_err, run_plan, torch_grads
from torch_refs import ATTRS, INT_INPUT_BOUNDS, REFS, SMALL_DIMS

from esperc.frontend import lower, parse_file
from esperc.ir.graph import Func
from esperc.ir.interpreter import check_guards, random_inputs, run_func
from esperc.ir.reference import concrete_shape, torch_dtype
from esperc.middle.autodiff import differentiate

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
NAMES = sorted(p.stem for p in SAMPLES.glob("*.esp"))


def _second_dims(name: str) -> dict[str, int]:
    return {k: v + 2 for k, v in SMALL_DIMS[name].items()}


def _override(v: float | int | bool) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _setup(name: str, shape: int) -> tuple[Func, dict[str, int], dict[str, Any]]:
    attrs = ATTRS.get(name, {}) if shape == 1 else {}
    overrides = {k: _override(v) for k, v in attrs.items()}
    func = lower(parse_file(SAMPLES / f"{name}.esp"), None, overrides)
    dims = SMALL_DIMS[name] if shape == 0 else _second_dims(name)
    return func, dims, attrs


def _inputs(func: Func, name: str, dims: dict[str, int], shape: int) -> dict[str, torch.Tensor]:
    inputs = random_inputs(func, dims, seed=shape)
    gen = torch.Generator().manual_seed(100 + shape)
    for a in func.args:
        if a.name in INT_INPUT_BOUNDS.get(name, {}):
            lo, hi = INT_INPUT_BOUNDS[name][a.name]
            size = concrete_shape(a.type.shape, dims)
            inputs[a.name] = torch.randint(lo, hi, size, generator=gen).to(inputs[a.name].dtype)
        elif a.type.rank == 0 and not a.type.dtype.is_float:  # a uniform branch: take each arm
            inputs[a.name] = torch.tensor(shape == 0)
    check_guards(func, inputs)
    return inputs


def _grad_outputs(outs: tuple[torch.Tensor, ...], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs]


def _upcast(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in ts.items()}


@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_sample_gradients_f32(name: str, shape: int) -> None:
    func, dims, attrs = _setup(name, shape)
    func32 = promote_f32(func)
    plan = differentiate(func32)
    inputs = _upcast(_inputs(func, name, dims, shape))
    outs = run_func(plan.forward, inputs)[: plan.num_outputs]
    gouts = _grad_outputs(outs, seed=7 + shape)
    _, grads = run_plan(plan, inputs, gouts)
    ref_out, ref_grads = torch_grads(REFS[name], inputs, plan.wrt, gouts, **attrs)
    tol = 2e-2 if name == "rms_norm" else 1e-4
    for o, want in zip(outs, ref_out):
        assert rel_err(o, want.float()) <= tol, (name, "forward")
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for w in plan.wrt:
        if tol < 1e-3:
            assert_close32(grads[w], ref_grads[w].float(), f"{name} grad_{w}", tol, scale)
        else:
            assert rel_err(grads[w], ref_grads[w].float()) <= tol, (name, w)
    if shape == 0:  # the cleanup pipeline keeps the numbers
        _, grads_opt = run_plan(plan, inputs, gouts, backward=optimized(plan.backward))
        for w in plan.wrt:
            assert_close32(grads_opt[w], grads[w], f"{name} grad_{w} optimized", 1e-5, scale)


@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_sample_gradients_native_dtype(name: str, shape: int) -> None:
    func, dims, attrs = _setup(name, shape)
    plan = differentiate(func)
    inputs = _inputs(func, name, dims, shape)
    outs = run_func(plan.forward, inputs)[: plan.num_outputs]
    gouts = _grad_outputs(outs, seed=7 + shape)
    _, grads = run_plan(plan, inputs, gouts)
    _, low = torch_grads(REFS[name], inputs, plan.wrt, gouts, **attrs)
    gouts32 = [g.float() if g.is_floating_point() else g for g in gouts]
    _, truth = torch_grads(REFS[name], _upcast(inputs), plan.wrt, gouts32, **attrs)
    for a in func.args:
        if a.name in plan.wrt:
            g = grads[a.name]
            assert g.dtype == torch_dtype(a.type.dtype) and g.shape == inputs[a.name].shape
            ours, theirs = rel_err(g, truth[a.name]), rel_err(low[a.name], truth[a.name])
            assert ours <= 2 * theirs + 4e-3, (name, a.name, ours, theirs)
