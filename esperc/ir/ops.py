"""The op table: every IR op defined once, with its operands, attributes and shape/dtype rule.

Each later concern (PyTorch reference, gradient rule, Triton lowering) keeps its rule per op in a
table of its own keyed by ``Op``; ``tests/unit/test_op_tables.py`` checks every table covers every
op. Op groups are frozensets, so passes test membership instead of chaining ``if op == ...``.

Operand dtypes are explicit: the front end inserts ``cast`` nodes so that the operands of every
binary and ternary elementwise op share one dtype, and literals become rank-0 ``constant`` nodes of
that dtype. The rules here check that invariant rather than promote.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from esperc.ir.types import (
    Dim,
    DType,
    SymDim,
    TensorType,
    TypeRuleError,
    broadcast_shapes,
    normalize_axis,
    numel,
    shape_str,
)


class Op(str, Enum):
    # elementwise unary
    NEG = "neg"
    ABS = "abs"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    SIN = "sin"
    COS = "cos"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    ERF = "erf"
    RELU = "relu"
    GELU = "gelu"
    SILU = "silu"
    SOFTPLUS = "softplus"
    FLOOR = "floor"
    LOGICAL_NOT = "logical_not"
    CAST = "cast"
    # elementwise binary
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    FLOORDIV = "floordiv"
    MOD = "mod"
    POW = "pow"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EQ = "eq"
    NE = "ne"
    LOGICAL_AND = "logical_and"
    LOGICAL_OR = "logical_or"
    # elementwise ternary
    WHERE = "where"
    CLAMP = "clamp"
    SELECT = "select"  # uniform branch on a rank-0 bool: the lowering of a runtime `if`
    # reductions
    REDUCE_SUM = "reduce_sum"
    REDUCE_MEAN = "reduce_mean"
    REDUCE_MAX = "reduce_max"
    REDUCE_MIN = "reduce_min"
    VAR = "var"
    # composites (row-wise over one axis)
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"
    LAYER_NORM = "layer_norm"
    RMS_NORM = "rms_norm"
    # contractions
    MATMUL = "matmul"
    LINEAR = "linear"
    # data movement
    RESHAPE = "reshape"
    TRANSPOSE = "transpose"
    PERMUTE = "permute"
    BROADCAST_TO = "broadcast_to"
    CONCAT = "concat"
    SLICE = "slice"
    # sources
    INDEX = "index"
    CONSTANT = "constant"

    def __str__(self) -> str:
        return self.value


FLOAT_UNARY = frozenset(
    {Op.EXP, Op.LOG, Op.SQRT, Op.RSQRT, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF, Op.GELU,
     Op.SILU, Op.SOFTPLUS}
)  # fmt: skip
UNARY = FLOAT_UNARY | {Op.NEG, Op.ABS, Op.RELU, Op.FLOOR, Op.LOGICAL_NOT, Op.CAST}
ARITH_BINARY = frozenset(
    {Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.FLOORDIV, Op.MOD, Op.POW, Op.MAXIMUM, Op.MINIMUM}
)
COMPARISONS = frozenset({Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE})
LOGICAL = frozenset({Op.LOGICAL_AND, Op.LOGICAL_OR, Op.LOGICAL_NOT})
BINARY = ARITH_BINARY | COMPARISONS | {Op.LOGICAL_AND, Op.LOGICAL_OR}
TERNARY = frozenset({Op.WHERE, Op.CLAMP, Op.SELECT})
ELEMENTWISE = UNARY | BINARY | TERNARY
REDUCTIONS = frozenset({Op.REDUCE_SUM, Op.REDUCE_MEAN, Op.REDUCE_MAX, Op.REDUCE_MIN, Op.VAR})
COMPOSITES = frozenset({Op.SOFTMAX, Op.LOG_SOFTMAX, Op.LAYER_NORM, Op.RMS_NORM})
CONTRACTIONS = frozenset({Op.MATMUL, Op.LINEAR})
DATA_MOVEMENT = frozenset(
    {Op.RESHAPE, Op.TRANSPOSE, Op.PERMUTE, Op.BROADCAST_TO, Op.CONCAT, Op.SLICE}
)
SOURCES = frozenset({Op.INDEX, Op.CONSTANT})
COMMUTATIVE = frozenset(
    {Op.ADD, Op.MUL, Op.MAXIMUM, Op.MINIMUM, Op.EQ, Op.NE, Op.LOGICAL_AND, Op.LOGICAL_OR}
)


class AttrKind(str, Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    DTYPE = "dtype"
    INTS = "ints"  # tuple[int, ...]
    SHAPE = "shape"  # tuple[Dim, ...]
    SCALAR = "scalar"  # int | float | bool, by the node's dtype


Attrs = Mapping[str, Any]
Rule = Callable[[Sequence[TensorType], Attrs], TensorType]


@dataclass(frozen=True, slots=True)
class OpDef:
    """One op: operand count range (``max_operands=None`` = variadic), attribute schema
    (name -> kind; every attribute is required and printed), and its shape/dtype rule."""

    op: Op
    min_operands: int
    max_operands: int | None
    attrs: Mapping[str, AttrKind]
    rule: Rule
    summary: str


# --------------------------------------------------------------------------------------------
# Rules


def _same_dtype(ts: Sequence[TensorType], what: str) -> DType:
    dts = {t.dtype for t in ts}
    if len(dts) != 1:
        names = ", ".join(sorted(d.value for d in dts))
        raise TypeRuleError("E0201", f"operands of '{what}' have different dtypes ({names})")
    return ts[0].dtype


def _unary(op: Op) -> Rule:
    def rule(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        (t,) = ts
        if op in FLOAT_UNARY and not t.dtype.is_float:
            raise TypeRuleError("E0201", f"'{op}' needs a floating-point operand, got {t.dtype}")
        if op is Op.LOGICAL_NOT and t.dtype is not DType.BOOL:
            raise TypeRuleError("E0201", f"'not' needs a bool operand, got {t.dtype}")
        if op in (Op.NEG, Op.ABS, Op.RELU, Op.FLOOR) and t.dtype is DType.BOOL:
            raise TypeRuleError("E0201", f"'{op}' is not defined on bool")
        if op is Op.GELU and attrs["approximate"] not in ("none", "tanh"):
            raise TypeRuleError("E0212", 'gelu approximate must be "none" or "tanh"')
        return t

    return rule


def _cast(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    return ts[0].with_dtype(DType(attrs["dtype"]))


def _binary(op: Op) -> Rule:
    def rule(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        a, b = ts
        dt = _same_dtype(ts, op.value)
        shape = broadcast_shapes(a.shape, b.shape)
        if op in (Op.LOGICAL_AND, Op.LOGICAL_OR) and dt is not DType.BOOL:
            raise TypeRuleError("E0201", f"'{op}' needs bool operands, got {dt}")
        if op in ARITH_BINARY and dt is DType.BOOL and op not in (Op.MAXIMUM, Op.MINIMUM):
            raise TypeRuleError("E0201", f"'{op}' is not defined on bool")
        if op in (Op.DIV, Op.POW) and not dt.is_float:
            raise TypeRuleError("E0201", f"'{op}' needs floating-point operands, got {dt}")
        return TensorType(DType.BOOL if op in COMPARISONS else dt, shape)

    return rule


def _where(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    c, a, b = ts
    if c.dtype is not DType.BOOL:
        raise TypeRuleError("E0201", f"the condition of 'where' must be bool, got {c.dtype}")
    dt = _same_dtype([a, b], "where")
    return TensorType(dt, broadcast_shapes(broadcast_shapes(c.shape, a.shape), b.shape))


def _clamp(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    dt = _same_dtype(ts, "clamp")
    if dt is DType.BOOL:
        raise TypeRuleError("E0201", "'clamp' is not defined on bool")
    x, lo, hi = ts
    return TensorType(dt, broadcast_shapes(broadcast_shapes(x.shape, lo.shape), hi.shape))


def _select(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    c, a, b = ts
    if c.dtype is not DType.BOOL or c.rank != 0:
        raise TypeRuleError("E0208", f"a uniform branch needs a rank-0 bool condition, got {c}")
    if a != b:
        raise TypeRuleError("E0207", f"branches produce different types: {a} and {b}")
    return a


def _axes(attrs: Attrs, rank: int) -> tuple[int, ...]:
    axes = tuple(attrs["axis"])
    norm = tuple(normalize_axis(a, rank) for a in axes)
    if len(set(norm)) != len(norm) or list(norm) != sorted(norm):
        raise TypeRuleError("E0205", f"reduction axes {list(axes)} must be sorted and distinct")
    return norm


def _reduce(op: Op) -> Rule:
    def rule(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        (t,) = ts
        axes = _axes(attrs, t.rank)
        if op in (Op.REDUCE_MEAN, Op.VAR) and not t.dtype.is_float:
            raise TypeRuleError("E0201", f"'{op}' needs a floating-point operand, got {t.dtype}")
        dt = t.dtype
        if op is Op.REDUCE_SUM and not t.dtype.is_float:
            dt = DType.I64  # torch.sum of bool/int32 gives int64
        keep = attrs["keepdim"]
        shape = (
            [1 if i in axes else d for i, d in enumerate(t.shape)]
            if keep
            else [d for i, d in enumerate(t.shape) if i not in axes]
        )
        return TensorType(dt, tuple(shape))

    return rule


def _rowwise(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    if not t.dtype.is_float:
        raise TypeRuleError("E0201", f"softmax needs a floating-point operand, got {t.dtype}")
    if t.rank == 0:
        raise TypeRuleError("E0202", "softmax needs a tensor of rank at least 1")
    normalize_axis(attrs["axis"], t.rank)
    return t


def _norm(name: str) -> Rule:
    def rule(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        x = ts[0]
        if not x.dtype.is_float or x.rank == 0:
            raise TypeRuleError("E0201", f"'{name}' needs a floating-point tensor of rank >= 1")
        for w in ts[1:]:
            if w.shape != (x.shape[-1],):
                raise TypeRuleError(
                    "E0203",
                    f"'{name}' weight/bias must have shape {shape_str([x.shape[-1]])}, "
                    f"got {shape_str(w.shape)}",
                )
        _same_dtype(ts, name)
        return x

    return rule


def _matmul(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    a, b = ts
    if a.rank < 2 or b.rank < 2:
        raise TypeRuleError("E0202", f"matrix product needs rank >= 2 operands, got {a} and {b}")
    dt = _same_dtype(ts, "@")
    if dt is DType.BOOL:
        raise TypeRuleError("E0201", "matrix product is not defined on bool")
    if a.shape[-1] != b.shape[-2]:
        raise TypeRuleError(
            "E0204",
            f"inner dimensions differ: {shape_str(a.shape)} @ {shape_str(b.shape)}",
            [("note", f"{a.shape[-1]} != {b.shape[-2]}")],
        )
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(dt, batch + (a.shape[-2], b.shape[-1]))


def _linear(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, w = ts[0], ts[1]
    dt = _same_dtype(ts, "linear")
    if not dt.is_float:
        raise TypeRuleError("E0201", f"'linear' needs floating-point operands, got {dt}")
    if x.rank < 1 or w.rank != 2:
        raise TypeRuleError("E0202", f"'linear' needs x of rank >= 1 and a 2-D weight, got {w}")
    if x.shape[-1] != w.shape[1]:
        raise TypeRuleError(
            "E0204",
            f"'linear' input features {x.shape[-1]} differ from weight {shape_str(w.shape)}",
        )
    if len(ts) == 3 and ts[2].shape != (w.shape[0],):
        raise TypeRuleError(
            "E0203", f"'linear' bias must have shape {shape_str([w.shape[0]])}, got {ts[2]}"
        )
    return TensorType(dt, x.shape[:-1] + (w.shape[0],))


def _reshape(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    shape = tuple(attrs["shape"])
    if numel(shape) != numel(t.shape):
        raise TypeRuleError("E0206", f"cannot reshape {shape_str(t.shape)} to {shape_str(shape)}")
    return t.with_shape(shape)


def _transpose(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    _need_rank1(t, "transpose")
    i, j = normalize_axis(attrs["dim0"], t.rank), normalize_axis(attrs["dim1"], t.rank)
    shape = list(t.shape)
    shape[i], shape[j] = shape[j], shape[i]
    return t.with_shape(shape)


def _permute(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    dims = [normalize_axis(d, t.rank) for d in attrs["dims"]]
    if sorted(dims) != list(range(t.rank)):
        raise TypeRuleError("E0205", f"{list(attrs['dims'])} is not a permutation of {t.rank} axes")
    return t.with_shape([t.shape[d] for d in dims])


def _broadcast_to(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    shape = tuple(attrs["shape"])
    if broadcast_shapes(t.shape, shape) != shape:
        raise TypeRuleError("E0203", f"cannot broadcast {shape_str(t.shape)} to {shape_str(shape)}")
    return t.with_shape(shape)


def _concat(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    dt = _same_dtype(ts, "concat")
    first = ts[0]
    _need_rank1(first, "concat")
    axis = normalize_axis(attrs["axis"], first.rank)
    total: Dim = 0
    for t in ts:
        if t.rank != first.rank or any(
            t.shape[i] != first.shape[i] for i in range(t.rank) if i != axis
        ):
            raise TypeRuleError(
                "E0203",
                f"concat operands {shape_str(first.shape)} and {shape_str(t.shape)} differ "
                f"outside axis {axis}",
            )
        total = (
            t.shape[axis] + total if isinstance(t.shape[axis], SymDim) else total + t.shape[axis]
        )
    shape = list(first.shape)
    shape[axis] = total
    return TensorType(dt, tuple(shape))


def _need_rank1(t: TensorType, what: str) -> None:
    if t.rank == 0:
        raise TypeRuleError("E0202", f"'{what}' needs a tensor of rank at least 1")


def _slice(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    _need_rank1(t, "slice")
    axis = normalize_axis(attrs["axis"], t.rank)
    start, end = attrs["start"], attrs["end"]
    size = t.shape[axis]
    if not isinstance(size, int):
        if start < 0 or end < 0 or end <= start:
            raise TypeRuleError("E0212", f"slice of dynamic dim {size} needs 0 <= start < end")
        return t.with_shape([*t.shape[:axis], end - start, *t.shape[axis + 1 :]])
    s, e = _clip(start, size), _clip(end, size)
    if e <= s:
        raise TypeRuleError("E0212", f"slice [{start}:{end}] of a dim of size {size} is empty")
    return t.with_shape([*t.shape[:axis], e - s, *t.shape[axis + 1 :]])


def _clip(i: int, size: int) -> int:
    """Python slice semantics for one bound."""
    return max(0, min(size, i + size if i < 0 else i))


def _index(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (t,) = ts
    normalize_axis(attrs["axis"], t.rank)
    return t.with_dtype(DType.I64)


def _constant(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(DType(attrs["dtype"]), ())


# --------------------------------------------------------------------------------------------
# The table

_K = AttrKind
_UNARY_SUMMARY = "elementwise {} of one tensor"


def _build() -> dict[Op, OpDef]:
    t: dict[Op, OpDef] = {}
    for op in UNARY - {Op.CAST}:
        attrs = {"approximate": _K.STR} if op is Op.GELU else {}
        t[op] = OpDef(op, 1, 1, attrs, _unary(op), _UNARY_SUMMARY.format(op.value))
    t[Op.CAST] = OpDef(Op.CAST, 1, 1, {"dtype": _K.DTYPE}, _cast, "convert to another dtype")
    for op in BINARY:
        t[op] = OpDef(op, 2, 2, {}, _binary(op), f"elementwise {op.value}, broadcasting")
    t[Op.WHERE] = OpDef(Op.WHERE, 3, 3, {}, _where, "elementwise choice by a bool tensor")
    t[Op.CLAMP] = OpDef(Op.CLAMP, 3, 3, {}, _clamp, "clamp into [lo, hi]")
    t[Op.SELECT] = OpDef(Op.SELECT, 3, 3, {}, _select, "uniform choice by a rank-0 bool")
    for op in REDUCTIONS:
        attrs = {"axis": _K.INTS, "keepdim": _K.BOOL}
        if op is Op.VAR:
            attrs["correction"] = _K.INT
        t[op] = OpDef(op, 1, 1, attrs, _reduce(op), f"{op.value} over axes")
    for op in (Op.SOFTMAX, Op.LOG_SOFTMAX):
        t[op] = OpDef(op, 1, 1, {"axis": _K.INT}, _rowwise, f"{op.value} along one axis")
    t[Op.LAYER_NORM] = OpDef(
        Op.LAYER_NORM, 1, 3, {"eps": _K.FLOAT}, _norm("layer_norm"), "layer norm, last axis"
    )
    t[Op.RMS_NORM] = OpDef(
        Op.RMS_NORM, 1, 2, {"eps": _K.FLOAT}, _norm("rms_norm"), "RMS norm, last axis"
    )
    t[Op.MATMUL] = OpDef(Op.MATMUL, 2, 2, {}, _matmul, "batched matrix product")
    t[Op.LINEAR] = OpDef(Op.LINEAR, 2, 3, {}, _linear, "x @ w^T + b")
    t[Op.RESHAPE] = OpDef(Op.RESHAPE, 1, 1, {"shape": _K.SHAPE}, _reshape, "reshape")
    t[Op.TRANSPOSE] = OpDef(
        Op.TRANSPOSE, 1, 1, {"dim0": _K.INT, "dim1": _K.INT}, _transpose, "swap two axes"
    )
    t[Op.PERMUTE] = OpDef(Op.PERMUTE, 1, 1, {"dims": _K.INTS}, _permute, "permute axes")
    t[Op.BROADCAST_TO] = OpDef(
        Op.BROADCAST_TO, 1, 1, {"shape": _K.SHAPE}, _broadcast_to, "broadcast to a shape"
    )
    t[Op.CONCAT] = OpDef(Op.CONCAT, 1, None, {"axis": _K.INT}, _concat, "concatenate")
    t[Op.SLICE] = OpDef(
        Op.SLICE, 1, 1, {"axis": _K.INT, "start": _K.INT, "end": _K.INT}, _slice, "slice"
    )
    t[Op.INDEX] = OpDef(Op.INDEX, 1, 1, {"axis": _K.INT}, _index, "coordinate along an axis")
    t[Op.CONSTANT] = OpDef(
        Op.CONSTANT, 0, 0, {"dtype": _K.DTYPE, "value": _K.SCALAR}, _constant, "rank-0 literal"
    )
    return t


OPS: dict[Op, OpDef] = _build()


def infer_type(op: Op, operand_types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    """Result type of ``op`` on operands of these types.

    Raises:
        TypeRuleError: wrong operand count (E0105), a missing or unknown attribute (E0211), or a
            shape/dtype rule violation (E02xx).
    """
    d = OPS[op]
    n = len(operand_types)
    if n < d.min_operands or (d.max_operands is not None and n > d.max_operands):
        want = (
            f"{d.min_operands}" if d.min_operands == d.max_operands
            else f"{d.min_operands} or more" if d.max_operands is None
            else f"{d.min_operands} to {d.max_operands}"
        )  # fmt: skip
        raise TypeRuleError("E0105", f"'{op}' takes {want} operands, got {n}")
    if set(attrs) != set(d.attrs):
        raise TypeRuleError(
            "E0211", f"'{op}' attributes {sorted(attrs)} differ from {sorted(d.attrs)}"
        )
    return d.rule(operand_types, attrs)
