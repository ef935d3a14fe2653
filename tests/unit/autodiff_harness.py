"""Helpers of the autodiff tests: run a BackwardPlan in the eager interpreter, take the same
gradients of an independent plain-PyTorch function with ``torch.autograd.grad``, promote a
function's low-precision dtypes to f32, and measure errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from esperc.ir.builder import Builder
from esperc.ir.graph import Func
from esperc.ir.interpreter import run_func
from esperc.ir.ops import Op
from esperc.ir.types import DType, TensorType
from esperc.middle.autodiff import BackwardPlan
from esperc.middle.pass_manager import PassContext, parse_pipeline, run_pipeline
from esperc.middle.registry import load_passes

Tensor = torch.Tensor


def run_plan(
    plan: BackwardPlan,
    inputs: Mapping[str, Tensor],
    grad_outputs: Sequence[Tensor],
    backward: Func | None = None,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """Forward results and the gradients of ``plan.wrt`` by name (``backward`` overrides the
    plan's backward function, e.g. after a pass pipeline)."""
    outs = run_func(plan.forward, dict(inputs))
    results, saved = outs[: plan.num_outputs], outs[plan.num_outputs :]
    bw_inputs = dict(zip(plan.saved, saved))
    bw_inputs.update(zip(plan.grad_outputs, grad_outputs))
    grads = run_func(backward or plan.backward, bw_inputs)
    return results, dict(zip(plan.wrt, grads))


def torch_grads(
    fn: Callable[..., Any],
    inputs: Mapping[str, Tensor],
    wrt: Sequence[str],
    grad_outputs: Sequence[Tensor],
    **kwargs: Any,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """``fn(**inputs, **kwargs)`` and ``torch.autograd.grad`` of it for the ``wrt`` inputs
    (zeros for an input the outputs do not depend on)."""
    leaves = {k: v.detach().clone().requires_grad_(k in wrt) for k, v in inputs.items()}
    out = fn(**leaves, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o.requires_grad]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], [leaves[w] for w in wrt], [g for _, g in pairs], allow_unused=True
    )
    return (
        tuple(o.detach() for o in outs),
        {w: torch.zeros_like(leaves[w]) if g is None else g for w, g in zip(wrt, grads)},
    )


def rel_err(a: Tensor, ref: Tensor) -> float:
    """Normwise relative error ``|a - ref| / |ref|`` in f64 (absolute when ``ref`` is 0)."""
    a64, r64 = a.double(), ref.double()
    scale = r64.norm().item()
    return (a64 - r64).norm().item() / (scale if scale > 0 else 1.0)


def assert_close32(
    a: Tensor, ref: Tensor, what: str, rtol: float = 1e-4, scale: float = 0.0
) -> None:
    """f32 agreement: elementwise within ``rtol`` of the largest of the reference's magnitude
    and ``scale`` (the magnitude of related gradients: a gradient that is zero in exact
    arithmetic is rounding noise on that scale), and normwise unless it is such noise."""
    assert a.shape == ref.shape and a.dtype == ref.dtype, (what, a.shape, ref.shape)
    peak = ref.abs().max().item() if ref.numel() else 0.0
    scale = max(peak, scale, 1e-6)
    torch.testing.assert_close(a, ref, rtol=rtol, atol=rtol * scale, msg=what)
    if peak >= 1e-3 * scale:
        assert rel_err(a, ref) <= rtol, (what, rel_err(a, ref))


def optimized(func: Func, pipeline: str = "canonicalize,cse,dce") -> Func:
    passes = parse_pipeline(pipeline, load_passes())
    return run_pipeline(func, passes, PassContext())


_LOW = (DType.BF16, DType.F16)


def promote_f32(func: Func) -> Func:
    """``func`` with every f16/bf16 (arguments, casts, literals) replaced by f32."""

    def up(t: TensorType) -> TensorType:
        return t.with_dtype(DType.F32) if t.dtype in _LOW else t

    b = Builder(func.name)
    for d in func.dims:
        b.add_dim(d.name, d.lo, d.hi)
    for r in func.requires:
        b.add_require(r.expr)
    names = {a.name: b.add_arg(a.name, up(a.type), a.kind) for a in func.args}
    for n in func.body:
        attrs = n.attr_dict
        if n.op in (Op.CAST, Op.CONSTANT) and attrs["dtype"] in _LOW:
            attrs["dtype"] = DType.F32
        names[n.result] = b.emit(n.op, [names[o] for o in n.operands], attrs, hint=n.result)
    return b.finish([names[r] for r in func.results])
