"""What a name stands for while a blueprint is lowered, and PyTorch's type-promotion rule.

A name is bound to a ``Tensor`` (an SSA value of the builder), a ``Weak`` compile-time scalar (a
literal, an attr, or a fold of those: PyTorch's "wrapped number"), a ``DimRef`` (dims are not
values; using one in an expression is E0214) or ``POISON`` (the statement that assigned it
failed; uses are silently poisoned so one error is reported once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from esperc.diagnostics import Diagnostic, Loc, Note, Severity
from esperc.ir.types import DType, promote_types


@dataclass(frozen=True, slots=True)
class Tensor:
    """An SSA value; ``origin`` is where it was defined and ``desc`` how (for notes)."""

    name: str
    origin: Loc | None = None
    desc: str = ""


@dataclass(frozen=True, slots=True)
class Weak:
    """A compile-time Python scalar (bool, int or float): a weak operand in type promotion."""

    value: bool | int | float

    @property
    def dtype(self) -> DType:
        """The dtype PyTorch gives the scalar on its own (default float dtype is f32)."""
        if type(self.value) is bool:
            return DType.BOOL
        return DType.I64 if type(self.value) is int else DType.F32

    @property
    def kind(self) -> str:
        return {DType.BOOL: "bool", DType.I64: "int", DType.F32: "float"}[self.dtype]


@dataclass(frozen=True, slots=True)
class DimRef:
    name: str
    loc: Loc | None = None


class _Poison:
    def __repr__(self) -> str:
        return "POISON"


POISON = _Poison()

Value = Union[Tensor, Weak]
Binding = Union[Tensor, Weak, DimRef, _Poison]


class Failed(Exception):
    """Abandon the current statement. ``diag`` is None when an operand was already poisoned."""

    def __init__(self, diag: Diagnostic | None = None) -> None:
        super().__init__(diag.message if diag else "poisoned")
        self.diag = diag


def fail(code: str, message: str, loc: Loc | None, *notes: Note | None) -> Failed:
    """A ``Failed`` carrying one error (``None`` notes are dropped, for ``did_you_mean``)."""
    kept = tuple(n for n in notes if n is not None)
    return Failed(Diagnostic(Severity.ERROR, code, message, loc, kept))


def _combine(higher: DType | None, lower: DType | None) -> DType | None:
    # c10/core/ScalarType.h / TensorIterator's combine_categories: a lower-priority operand
    # only changes the result when it is of a higher category (float over int over bool).
    if higher is None:
        return lower
    if lower is None or higher.is_float:
        return higher
    if higher is DType.BOOL or lower.is_float:
        return promote_types(higher, lower)
    return higher


def result_type(operands: list[tuple[DType, int]]) -> DType:
    """``torch.result_type`` over operands given as ``(dtype, tier)``.

    Tiers follow PyTorch (aten/src/ATen/native/TypeProperties.cpp): 2 for tensors of rank >= 1,
    1 for rank-0 tensors, 0 for Python scalars (here: literals and attrs, whose dtype is bool,
    i64 or f32 by kind). Within a tier dtypes promote with ``promote_types``; across tiers a
    lower tier wins only with a higher category.
    """
    state: list[DType | None] = [None, None, None]
    for dt, tier in operands:
        cur = state[tier]
        state[tier] = dt if cur is None else promote_types(cur, dt)
    out = _combine(state[2], _combine(state[1], state[0]))
    assert out is not None, "result_type of no operands"
    return out
