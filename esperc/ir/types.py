"""Element types, symbolic dimensions and tensor types of the graph IR.

A dimension is a Python ``int`` (static) or a ``SymDim``: an integer polynomial over the names of
dynamic dims (``B``, ``B*S``, ``2*B+1``), kept in a canonical form so that two equal expressions
compare and print equal. Type promotion follows ``torch.result_type`` for two tensors
(https://pytorch.org/docs/stable/tensor_attributes.html#type-promotion-doc).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Union


class TypeRuleError(Exception):
    """A shape or dtype rule rejected its operands.

    Attributes:
        code: the diagnostic code (``E02xx``) the front end reports it under.
        message: lower-case message without a trailing period.
        notes: extra ``(kind, message)`` pairs, e.g. both shapes of a failed broadcast.
    """

    def __init__(self, code: str, message: str, notes: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.notes = tuple(notes)


class DType(str, Enum):
    F16 = "f16"
    BF16 = "bf16"
    F32 = "f32"
    I32 = "i32"
    I64 = "i64"
    BOOL = "bool"

    @property
    def is_float(self) -> bool:
        return self in (DType.F16, DType.BF16, DType.F32)

    @property
    def is_int(self) -> bool:
        return self in (DType.I32, DType.I64)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE[self]

    def __str__(self) -> str:
        return self.value


_ITEMSIZE = {
    DType.F16: 2,
    DType.BF16: 2,
    DType.F32: 4,
    DType.I32: 4,
    DType.I64: 8,
    DType.BOOL: 1,
}
_CATEGORY = {DType.BOOL: 0, DType.I32: 1, DType.I64: 1, DType.F16: 2, DType.BF16: 2, DType.F32: 2}
_RANK_IN_CATEGORY = {DType.BOOL: 0, DType.I32: 0, DType.I64: 1, DType.F16: 0, DType.BF16: 0}


def promote_types(a: DType, b: DType) -> DType:
    """Result dtype of a binary op on two tensors (``torch.promote_types``).

    f16 with bf16 gives f32, as in PyTorch.
    """
    if a == b:
        return a
    ca, cb = _CATEGORY[a], _CATEGORY[b]
    if ca != cb:
        return a if ca > cb else b
    if {a, b} == {DType.F16, DType.BF16}:
        return DType.F32
    if DType.F32 in (a, b):
        return DType.F32
    return a if _RANK_IN_CATEGORY[a] >= _RANK_IN_CATEGORY[b] else b


# --------------------------------------------------------------------------------------------
# Symbolic dims


Monomial = tuple[str, ...]  # sorted symbol names, repeated for powers; () is the constant term


@dataclass(frozen=True, slots=True)
class SymDim:
    """An integer polynomial over dynamic-dim names, in canonical (sorted, merged) form.

    Never holds a constant polynomial: arithmetic that cancels every symbol returns an ``int``.
    """

    terms: tuple[tuple[Monomial, int], ...]

    @staticmethod
    def symbol(name: str) -> SymDim:
        return SymDim(((((name,)), 1),))

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(s for mono, _ in self.terms for s in mono)

    def __str__(self) -> str:
        return _poly_str(self.terms)

    def __repr__(self) -> str:
        return f"SymDim({self})"

    def __add__(self, other: Dim) -> Dim:
        return _make(_add(_terms(self), _terms(other), 1))

    __radd__ = __add__

    def __sub__(self, other: Dim) -> Dim:
        return _make(_add(_terms(self), _terms(other), -1))

    def __rsub__(self, other: Dim) -> Dim:
        return _make(_add(_terms(other), _terms(self), -1))

    def __mul__(self, other: Dim) -> Dim:
        return _make(_mul(_terms(self), _terms(other)))

    __rmul__ = __mul__

    def __floordiv__(self, other: Dim) -> Dim:
        if not isinstance(other, int) or other == 0:
            raise TypeRuleError("E0209", f"'{self}' can only be divided by a non-zero integer")
        if any(c % other for _, c in self.terms):
            raise TypeRuleError("E0209", f"'{self}' is not a multiple of {other}")
        return _make({m: c // other for m, c in self.terms})

    def __mod__(self, other: Dim) -> Dim:
        raise TypeRuleError("E0209", f"'{self} % {other}' is not a static dimension")


Dim = Union[int, SymDim]


def _terms(d: Dim) -> dict[Monomial, int]:
    if isinstance(d, int):
        return {(): d} if d else {}
    return dict(d.terms)


def _add(a: dict[Monomial, int], b: dict[Monomial, int], sign: int) -> dict[Monomial, int]:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + sign * c
    return out


def _mul(a: dict[Monomial, int], b: dict[Monomial, int]) -> dict[Monomial, int]:
    out: dict[Monomial, int] = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return out


def _make(terms: dict[Monomial, int]) -> Dim:
    kept = {m: c for m, c in terms.items() if c}
    if all(m == () for m in kept):
        return kept.get((), 0)
    # Higher-degree monomials first, then alphabetical: B*S+B+1.
    order = sorted(kept.items(), key=lambda mc: (-len(mc[0]), mc[0]))
    return SymDim(tuple(order))


def _poly_str(terms: tuple[tuple[Monomial, int], ...]) -> str:
    parts: list[str] = []
    for mono, coef in terms:
        body = "*".join(mono)
        if not mono:
            text = str(abs(coef))
        elif abs(coef) == 1:
            text = body
        else:
            text = f"{abs(coef)}*{body}"
        if parts:
            parts.append(("-" if coef < 0 else "+") + text)
        else:
            parts.append(("-" if coef < 0 else "") + text)
    return "".join(parts)


def dim_str(d: Dim) -> str:
    return str(d)


def dims_equal(a: Dim, b: Dim) -> bool:
    return a == b


def eval_dim(d: Dim, env: dict[str, int]) -> int:
    """Value of a dimension given values for its symbols (raises KeyError for a missing one)."""
    if isinstance(d, int):
        return d
    total = 0
    for mono, coef in d.terms:
        v = coef
        for s in mono:
            v *= env[s]
        total += v
    return total


# --------------------------------------------------------------------------------------------
# Tensor types


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor type: element dtype and a shape of static and symbolic dims (rank 0 allowed)."""

    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape)

    def with_shape(self, shape: Sequence[Dim]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    @property
    def symbols(self) -> frozenset[str]:
        out: set[str] = set()
        for d in self.shape:
            if isinstance(d, SymDim):
                out |= d.symbols
        return frozenset(out)

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(str(d) for d in self.shape)}]"


def shape_str(shape: Sequence[Dim]) -> str:
    """User-facing form of a shape: ``[B, 1024]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast_shapes(a: Sequence[Dim], b: Sequence[Dim]) -> tuple[Dim, ...]:
    """NumPy broadcasting of two shapes, aligned on the right.

    Raises:
        TypeRuleError: E0203 when a pair of dims differs and neither is 1.
    """
    n = max(len(a), len(b))
    pa = (1,) * (n - len(a)) + tuple(a)
    pb = (1,) * (n - len(b)) + tuple(b)
    out: list[Dim] = []
    for da, db in zip(pa, pb):
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise TypeRuleError(
                "E0203",
                f"shapes {shape_str(a)} and {shape_str(b)} cannot broadcast",
                [("note", f"dimension {da} does not match {db}")],
            )
    return tuple(out)


def numel(shape: Sequence[Dim]) -> Dim:
    total: Dim = 1
    for d in shape:
        total = d * total if isinstance(d, SymDim) else (total * d)
    return total


def normalize_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as a non-negative one (raises E0205 when out of range)."""
    if not -rank <= axis < max(rank, 1) or (rank == 0 and axis not in (0, -1)):
        raise TypeRuleError("E0205", f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0
