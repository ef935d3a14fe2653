"""How a kernel's output is compared with the eager reference (compile-time validation, autotune
candidates, tests): one error metric and one tolerance table, so every stage agrees."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from esperc.ir.types import DType

if TYPE_CHECKING:
    from esperc.ir.graph import Func

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


def region_tolerances(func: Func) -> dict[str, float]:
    """Per kernel region of ``func``, the bound of its least precise value (member or operand).

    Kernels keep bf16/f16 intermediates in fp32 (as Inductor does) where the reference rounds
    them, so an f32 result computed from a bf16 value (a LayerNorm mean, a column sum of a bf16
    product) is only as close as that value's dtype allows: its bound is the looser one.
    """
    types = func.types()
    out: dict[str, float] = {}
    for r in func.regions:
        members = set(r.members)
        used = members | {o for n in func.body if n.result in members for o in n.operands}
        out[r.name] = max((tolerance(types[v].dtype) for v in used if v in types), default=0.0)
    return out
