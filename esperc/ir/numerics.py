"""How a kernel's output is compared with the eager reference (compile-time validation, autotune
candidates, tests): one error metric and one tolerance table, so every stage agrees."""

from __future__ import annotations

import torch

from esperc.ir.types import DType

# ‖out − ref‖₂ / ‖ref‖₂ bounds per output dtype (the device method notes: bf16 operands land
# between 1e-3 and 1e-2; f32 dots may use tf32 on the GPU, near 3e-4). Ints and bools: exact.
REL_TOL: dict[DType, float] = {DType.BF16: 2e-2, DType.F16: 5e-3, DType.F32: 1e-3}


def tolerance(dtype: DType | str) -> float:
    """The bound for an output of this dtype (0.0: must match exactly)."""
    return REL_TOL.get(DType(dtype), 0.0)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖₂ / ‖ref‖₂ in float64; inf when shapes or NaN positions differ.

    A zero reference gives the absolute norm of the difference.
    """
    a, b = out.detach().double(), ref.detach().double().to(out.device)
    if a.shape != b.shape:
        return float("inf")
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    a, b = torch.nan_to_num(a), torch.nan_to_num(b)
    num, den = float((a - b).norm()), float(b.norm())
    return num / den if den else num
