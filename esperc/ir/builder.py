"""Incremental construction of a ``Func`` with type inference at every step.

The front end and the passes that synthesise nodes use this: each ``emit`` checks its operands
against the op table and returns the new SSA value's name. Attributes are normalised (axes made
non-negative and sorted, scalars converted to the node dtype's Python type) so that equal meaning
gives equal nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from esperc.diagnostics import Loc
from esperc.ir.dimexpr import DimExpr
from esperc.ir.graph import Arg, DimDecl, Func, Node, Require, make_attrs
from esperc.ir.ops import OPS, AttrKind, Op, infer_type
from esperc.ir.types import DType, TensorType, TypeRuleError, normalize_axis

_AXIS_ATTR_OPS = frozenset({Op.SOFTMAX, Op.LOG_SOFTMAX, Op.CONCAT, Op.SLICE, Op.INDEX})


def scalar_for(dtype: DType, value: Any) -> int | float | bool:
    """A literal as the Python type that stands for ``dtype`` (float, int or bool)."""
    if dtype is DType.BOOL:
        return bool(value)
    if dtype.is_int:
        return int(value)
    return float(value)


def normalize_attrs(
    op: Op, operand_types: Sequence[TensorType], attrs: Mapping[str, Any]
) -> dict[str, Any]:
    """Canonical attribute values: non-negative sorted axes, Python scalars of the right kind."""
    out = dict(attrs)
    kinds = OPS[op].attrs
    for k, v in attrs.items():
        kind = kinds.get(k)
        if kind is AttrKind.FLOAT:
            out[k] = float(v)
        elif kind is AttrKind.DTYPE:
            out[k] = DType(v)
        elif kind in (AttrKind.INTS, AttrKind.SHAPE):
            out[k] = tuple(v)
    rank = operand_types[0].rank if operand_types else 0
    if "axis" in out and kinds.get("axis") is AttrKind.INTS:
        out["axis"] = tuple(sorted({normalize_axis(a, rank) for a in out["axis"]}))
    elif op in _AXIS_ATTR_OPS:
        out["axis"] = normalize_axis(out["axis"], rank)
    if op is Op.TRANSPOSE:
        i, j = normalize_axis(out["dim0"], rank), normalize_axis(out["dim1"], rank)
        out["dim0"], out["dim1"] = min(i, j), max(i, j)
    if op is Op.PERMUTE:
        out["dims"] = tuple(normalize_axis(d, rank) for d in out["dims"])
    if op is Op.CONSTANT:
        out["value"] = scalar_for(DType(out["dtype"]), out["value"])
    return out


class Builder:
    """Builds one ``Func``; names are unique SSA names derived from hints (``y``, ``y.1``)."""

    def __init__(self, name: str, loc: Loc | None = None) -> None:
        self.name = name
        self.loc = loc
        self._dims: list[DimDecl] = []
        self._requires: list[Require] = []
        self._args: list[Arg] = []
        self._body: list[Node] = []
        self._types: dict[str, TensorType] = {}
        self._counter = 0
        self._used: set[str] = set()

    def _fresh(self, hint: str | None) -> str:
        if hint is None:
            while str(self._counter) in self._used:
                self._counter += 1
            name = str(self._counter)
            self._counter += 1
        else:
            name, i = hint, 0
            while name in self._used:
                i += 1
                name = f"{hint}.{i}"
        self._used.add(name)
        return name

    def add_dim(self, name: str, lo: int, hi: int, loc: Loc | None = None) -> None:
        self._dims.append(DimDecl(name, lo, hi, loc))

    def add_require(self, expr: DimExpr, loc: Loc | None = None) -> None:
        self._requires.append(Require(expr, loc))

    def add_arg(self, name: str, type: TensorType, kind: str, loc: Loc | None = None) -> str:
        value = self._fresh(name)
        self._args.append(Arg(value, type, kind, loc))
        self._types[value] = type
        return value

    def type_of(self, value: str) -> TensorType:
        return self._types[value]

    def emit(
        self,
        op: Op,
        operands: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        loc: Loc | None = None,
        hint: str | None = None,
    ) -> str:
        """Append ``op(operands, attrs)`` and return its SSA name.

        Raises:
            TypeRuleError: the op table's rule rejected the operands or attributes.
        """
        types = [self._types[o] for o in operands]
        norm = normalize_attrs(op, types, attrs or {})
        ty = infer_type(op, types, norm)
        value = self._fresh(hint)
        self._body.append(Node(value, op, tuple(operands), make_attrs(norm), ty, loc))
        self._types[value] = ty
        return value

    def constant(self, value: int | float | bool, dtype: DType, loc: Loc | None = None) -> str:
        return self.emit(Op.CONSTANT, [], {"dtype": dtype, "value": value}, loc)

    def cast(self, value: str, dtype: DType, loc: Loc | None = None) -> str:
        """``value`` converted to ``dtype`` (no node when it already has it)."""
        if self._types[value].dtype is dtype:
            return value
        return self.emit(Op.CAST, [value], {"dtype": dtype}, loc)

    def finish(self, results: Sequence[str]) -> Func:
        """The built function, verified.

        Raises:
            VerifyError: the graph breaks an IR invariant (a bug in the caller, not user error).
        """
        from esperc.ir.verifier import verify

        if not results:
            raise TypeRuleError("E0107", f"'{self.name}' returns nothing")
        func = Func(
            self.name,
            tuple(self._dims),
            tuple(self._requires),
            tuple(self._args),
            tuple(self._body),
            tuple(results),
            loc=self.loc,
        )
        verify(func)
        return func
