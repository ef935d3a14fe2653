"""The launch plan: what the runtime does, in order, to run a generated module (data, not code).

A ``Plan`` is a list of steps. A ``KernelLaunch`` names a generated kernel, the tensors it reads
and writes (by IR value name), the dims and strides it takes as scalars, its constexprs and its
grid as a small expression over dims and block sizes. A ``ViewOp`` is a torch view/copy the
launcher applies itself (reshape, permute, transpose, slice, concat, broadcast_to): view regions
get no kernel. Dims are bound from the shapes of the inputs (``DimBinding``). Everything here is
JSON-friendly (strings, ints, tuples) so the kpkg writer can store it.

Grid axes are products of terms: ``("cdiv", "B*S", "BLOCK_M")`` is ``ceil(B*S / BLOCK_M)`` and
``("dim", "B*H")`` is ``B*H``; an empty product is 1. Dim expressions are printed ``SymDim``s
(``esperc.ir.dimexpr.parse_dimexpr`` reads them).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

from esperc.ir.dimexpr import DimExpr, evaluate, parse_dimexpr


@dataclass(frozen=True, slots=True)
class TensorArg:
    """A pointer parameter: IR value ``value``.

    ``layout`` is ``"contiguous"`` (the launcher passes ``t.contiguous()``) or ``"strided"`` (any
    strides, last one 1: strides travel as ``StrideArg``s). ``transpose_last`` passes
    ``t.transpose(-1, -2)`` (a view) instead of ``t``.
    """

    param: str
    value: str
    layout: str = "contiguous"
    transpose_last: bool = False


@dataclass(frozen=True, slots=True)
class DimArg:
    """An ``i32`` parameter holding a dim expression (``"B*S"``) evaluated from the bound dims."""

    param: str
    expr: str


@dataclass(frozen=True, slots=True)
class StrideArg:
    """An integer parameter: the stride (in elements) of ``value`` along ``axis`` as passed."""

    param: str
    value: str
    axis: int
    transpose_last: bool = False


KernelArg = Union[TensorArg, DimArg, StrideArg]
GridTerm = tuple[str, ...]  # ("cdiv", expr, block_name) | ("dim", expr)


@dataclass(frozen=True, slots=True)
class Alloc:
    """A tensor the launcher allocates (``torch.empty``) before a kernel writes it."""

    value: str
    dtype: str  # IR dtype name: "bf16", "f32", ...
    shape: tuple[str, ...]  # dim expressions
    # a partials buffer of this IR value's column reduction (not an IR value itself): its
    # combine over axis 0 is the value (``kernels/colsum.py``); "" for an IR value
    partial_of: str = ""


@dataclass(frozen=True, slots=True)
class KernelLaunch:
    """One kernel launch: arguments in parameter order, grid, constexprs and launch options."""

    kernel: str
    region: str
    args: tuple[KernelArg, ...]
    grid: tuple[tuple[GridTerm, ...], ...]
    constexprs: tuple[tuple[str, int | float | bool | str], ...]
    num_warps: int
    num_stages: int
    allocs: tuple[Alloc, ...] = ()


@dataclass(frozen=True, slots=True)
class ViewOp:
    """A launcher-side torch op of a view region: ``result = op(operands, attrs)``.

    ``op`` is the IR mnemonic (reshape, transpose, permute, broadcast_to, slice, concat); shapes in
    ``attrs`` are tuples of dim expressions.
    """

    region: str
    result: str
    op: str
    operands: tuple[str, ...]
    attrs: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class DimBinding:
    """Dim ``dim`` is ``inputs[value].shape[axis]``."""

    dim: str
    value: str
    axis: int


Step = Union[KernelLaunch, ViewOp]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the runtime needs to call a generated module, in execution order."""

    steps: tuple[Step, ...]
    results: tuple[str, ...]
    bindings: tuple[DimBinding, ...]
    constants: tuple[tuple[str, str, object], ...] = field(default=())  # (value, dtype, literal)


@functools.lru_cache(maxsize=4096)
def _parsed(expr: str) -> DimExpr:
    return parse_dimexpr(expr)


def eval_expr(expr: str, dims: Mapping[str, int]) -> int:
    """Value of a printed dim expression for these dim values (parsed once per expression:
    this runs for every launch argument and grid axis of every call)."""
    if expr in dims:
        return int(dims[expr])
    if expr.isdigit():
        return int(expr)
    return int(evaluate(_parsed(expr), dims))  # type: ignore[arg-type]


def eval_grid(
    grid: tuple[tuple[GridTerm, ...], ...],
    dims: Mapping[str, int],
    constexprs: Mapping[str, object],
) -> tuple[int, ...]:
    """The launch grid for these dims and block sizes (each axis at least 1)."""
    out = []
    for axis in grid:
        total = 1
        for term in axis:
            v = eval_expr(term[1], dims)
            if term[0] == "cdiv":
                block = int(constexprs[term[2]])  # type: ignore[call-overload]
                v = -(-v // block)
            total *= v
        out.append(max(total, 1))
    return tuple(out)


@dataclass(frozen=True)
class GeneratedKernel:
    """One ``@triton.jit`` kernel of a generated module.

    Attributes:
        name: the jit function's name in the module source (``<blueprint>_<region>``).
        region: the IR kernel region it implements.
        kind: "pointwise" | "reduction" | "matmul" | "attention".
        signature: runtime parameter name -> Triton type ("*bf16", "i32", ...), in order.
        constexprs: constexpr parameter name -> value (block sizes), in order.
        config: the launch configuration (block sizes, num_warps, num_stages).
        launch: the kernel's step in the plan.
        requires: conditions on the constexprs under which the source is correct, e.g.
            ``"256 % BLOCK_N == 0"`` (masks were left out); an autotuner must keep them.
        divisible_by_16: pointer parameters that may be compiled as 16-byte aligned.
        finishes: for a region's second kernel (the column reductions' finishing kernel), the
            name of the kernel whose partials it reduces; "" otherwise.
    """

    name: str
    region: str
    kind: str
    signature: dict[str, str]
    constexprs: dict[str, int | float | bool | str]
    config: object
    launch: KernelLaunch
    requires: tuple[str, ...] = ()
    divisible_by_16: tuple[str, ...] = ()
    finishes: str = ""


@dataclass(frozen=True)
class GeneratedModule:
    """The generated Python module (self-contained source) and how to launch it."""

    func: str
    source: str
    kernels: tuple[GeneratedKernel, ...]
    plan: Plan

    def kernel(self, name: str) -> GeneratedKernel:
        return next(k for k in self.kernels if k.name == name)
