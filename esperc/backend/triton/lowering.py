"""The per-op Triton lowering table: ``LOWERING[op]`` says how every IR op becomes Triton code.

* ``Elementwise``: one expression over the operands' register values (floats are fp32 registers,
  see ``common.REG_DTYPE``). Only ``tl`` functions present in both Triton 3.6 and 3.9 are used;
  ``tanh`` and ``pow`` go through small ``@triton.jit`` helpers emitted into every module
  (``HELPERS``) because ``tl.math`` has no tanh/pow in 3.6 and libdevice calls do not run in the
  Triton interpreter.
* ``Reduction``: a combine function and identity, applied along the row (last) axis.
* ``Composite``: rewritten into primitive nodes before code generation (``expand``).
* ``Template``: handled by a kernel template (``matmul``, ``attention``) or by the launcher
  (``view``: torch view/copy ops), or specially by the tile emitter (``index``, ``constant``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from esperc.backend.triton.common import REG_DTYPE, CodegenError, float_literal
from esperc.ir.graph import Node, make_attrs
from esperc.ir.ops import (
    COMPOSITES,
    CONTRACTIONS,
    DATA_MOVEMENT,
    ELEMENTWISE,
    REDUCTIONS,
    Op,
    infer_type,
)
from esperc.ir.types import DType, TensorType, normalize_axis


@dataclass(frozen=True, slots=True)
class Operand:
    """A lowered operand: a Python expression (a variable or a literal) and its IR dtype."""

    expr: str
    dtype: DType
    literal: object = None  # the Python value when the operand is a rank-0 constant

    @property
    def is_literal(self) -> bool:
        return self.literal is not None


@dataclass(frozen=True, slots=True)
class Elementwise:
    emit: Callable[[Sequence[Operand], Node], str]


@dataclass(frozen=True, slots=True)
class Reduction:
    combine: str  # "sum" | "max" | "min"
    identity: float


REDUCE_FN = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}  # a tile along one axis
_COMBINE = {"sum": "{a} + {b}", "max": "tl.maximum({a}, {b})", "min": "tl.minimum({a}, {b})"}


def combine_expr(combine: str, a: str, b: str) -> str:
    """Triton text combining two partial results of a ``combine`` reduction."""
    return _COMBINE[combine].format(a=a, b=b)


def identity_text(combine: str, dtype: DType) -> str:
    """Triton text of a reduction's masked-out value in ``dtype``: 0, -inf/+inf (integers:
    their type's extremes)."""
    if combine == "sum":
        return "0.0" if dtype.is_float else "0"
    if dtype.is_float:
        return 'float("-inf")' if combine == "max" else 'float("inf")'
    bits = 63 if dtype is DType.I64 else 31
    return str(-(2**bits)) if combine == "max" else str(2**bits - 1)


@dataclass(frozen=True, slots=True)
class Composite:
    expand: Callable[[Node, dict[str, TensorType]], list[Node]]


@dataclass(frozen=True, slots=True)
class Template:
    template: str  # "matmul" | "view" | "index" | "constant"


Lowering = Elementwise | Reduction | Composite | Template

HELPERS = """
@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e^(-2|x|)) / (1 + e^(-2|x|)): no overflow for large |x|
    t = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -r, r)


@triton.jit
def _pow(x, y):
    # x ** y with PyTorch's sign rules: negative base only for integral exponents
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    y_int = tl.floor(y) == y
    odd = y_int & (tl.floor(y * 0.5) * 2.0 != y)
    r = tl.where((x < 0) & odd, -r, r)
    r = tl.where((x < 0) & (y_int == 0), float("nan"), r)
    return tl.where(y == 0, 1.0, r)


@triton.jit
def _floordiv_int(a, b):
    q = a // b
    return q - ((a % b != 0) & ((a < 0) != (b < 0))).to(q.dtype)


@triton.jit
def _mod_int(a, b):
    r = a % b
    return r + tl.where((r != 0) & ((r < 0) != (b < 0)), b, 0)
"""


# PyTorch's maximum/minimum/clamp/relu propagate NaN; Triton's default returns the other operand
_NAN = ", propagate_nan=tl.PropagateNan.ALL"


def _f(fmt: str) -> Elementwise:
    """An expression template over operands ``{0}``, ``{1}``, ``{2}``."""
    return Elementwise(lambda xs, n: fmt.format(*(x.expr for x in xs)))


def _float_or_int(float_fmt: str, int_fmt: str) -> Elementwise:
    return Elementwise(
        lambda xs, n: (float_fmt if xs[0].dtype.is_float else int_fmt).format(*(x.expr for x in xs))
    )


def _gelu(xs: Sequence[Operand], n: Node) -> str:
    x = xs[0].expr
    if n.attr("approximate") == "tanh":
        return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))"
    return f"0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476))"


def _cast(xs: Sequence[Operand], n: Node) -> str:
    src, dst = xs[0].dtype, DType(n.attr("dtype"))
    x = xs[0].expr
    if dst is DType.BOOL:
        return f"{x} != 0"
    if dst in (DType.BF16, DType.F16) and src is DType.F32:
        # round to the narrow type and keep computing in fp32 (PyTorch rounds here too)
        store = "tl.bfloat16" if dst is DType.BF16 else "tl.float16"
        return f"{x}.to({store}).to(tl.float32)"
    if src is dst or (src.is_float and dst.is_float):
        return x  # bf16/f16 -> f32 is exact: both are fp32 registers already
    return f"{x}.to({REG_DTYPE[dst]})"


def _pow_expr(xs: Sequence[Operand], n: Node) -> str:
    x, y = xs
    special = {2: f"{x.expr} * {x.expr}", 1: x.expr, 0.5: f"tl.sqrt({x.expr})",
               3: f"{x.expr} * {x.expr} * {x.expr}", -1: f"1.0 / {x.expr}"}  # fmt: skip
    if y.is_literal and y.literal in special:
        return special[y.literal]  # type: ignore[index]
    return f"_pow({x.expr}, {y.expr})"


def _unary_call(fn: str) -> Elementwise:
    # tl math functions need a tensor: a literal operand is wrapped as a 0-d fp32 tensor
    def emit(xs: Sequence[Operand], n: Node) -> str:
        x = xs[0]
        arg = f"tl.full((), {x.expr}, tl.float32)" if x.is_literal else x.expr
        return f"{fn}({arg})"

    return Elementwise(emit)


def _build() -> dict[Op, Lowering]:
    t: dict[Op, Lowering] = {
        Op.NEG: _f("-{0}"),
        Op.ABS: _unary_call("tl.abs"),
        Op.EXP: _unary_call("tl.exp"),
        Op.LOG: _unary_call("tl.log"),
        Op.SQRT: _unary_call("tl.sqrt"),
        Op.RSQRT: _unary_call("tl.rsqrt"),
        Op.SIN: _unary_call("tl.sin"),
        Op.COS: _unary_call("tl.cos"),
        Op.TANH: _unary_call("_tanh"),
        Op.SIGMOID: _unary_call("tl.sigmoid"),
        Op.ERF: _unary_call("tl.erf"),
        Op.RELU: _float_or_int(f"tl.maximum({{0}}, 0.0{_NAN})", "tl.maximum({0}, 0)"),
        Op.GELU: Elementwise(_gelu),
        Op.SILU: _f("{0} * tl.sigmoid({0})"),
        # torch.nn.functional.softplus(beta=1, threshold=20)
        Op.SOFTPLUS: _f("tl.where({0} > 20.0, {0}, tl.log(1.0 + tl.exp({0})))"),
        Op.FLOOR: _float_or_int("tl.floor({0})", "{0}"),
        Op.LOGICAL_NOT: _f("{0} == 0"),
        Op.CAST: Elementwise(_cast),
        Op.ADD: _f("{0} + {1}"),
        Op.SUB: _f("{0} - {1}"),
        Op.MUL: _f("{0} * {1}"),
        Op.DIV: _f("{0} / {1}"),
        Op.FLOORDIV: _float_or_int("tl.floor({0} / {1})", "_floordiv_int({0}, {1})"),
        Op.MOD: _float_or_int("{0} - tl.floor({0} / {1}) * {1}", "_mod_int({0}, {1})"),
        Op.POW: Elementwise(_pow_expr),
        Op.MAXIMUM: _float_or_int(f"tl.maximum({{0}}, {{1}}{_NAN})", "tl.maximum({0}, {1})"),
        Op.MINIMUM: _float_or_int(f"tl.minimum({{0}}, {{1}}{_NAN})", "tl.minimum({0}, {1})"),
        Op.LT: _f("{0} < {1}"),
        Op.LE: _f("{0} <= {1}"),
        Op.GT: _f("{0} > {1}"),
        Op.GE: _f("{0} >= {1}"),
        Op.EQ: _f("{0} == {1}"),
        Op.NE: _f("{0} != {1}"),
        Op.LOGICAL_AND: _f("{0} & {1}"),
        Op.LOGICAL_OR: _f("{0} | {1}"),
        Op.WHERE: _f("tl.where({0}, {1}, {2})"),
        Op.CLAMP: _float_or_int(
            f"tl.minimum(tl.maximum({{0}}, {{1}}{_NAN}), {{2}}{_NAN})",
            "tl.minimum(tl.maximum({0}, {1}), {2})",
        ),
        # a uniform branch: the row template emits `if flag:`; elsewhere a select on a scalar
        Op.SELECT: _f("tl.where({0}, {1}, {2})"),
        Op.REDUCE_SUM: Reduction("sum", 0.0),
        Op.REDUCE_MEAN: Reduction("sum", 0.0),  # divided by the row length afterwards
        Op.REDUCE_MAX: Reduction("max", float("-inf")),
        Op.REDUCE_MIN: Reduction("min", float("inf")),
        Op.VAR: Composite(lambda n, ts: _expand_var(n, ts)),
        Op.SOFTMAX: Composite(lambda n, ts: _expand_softmax(n, ts, log=False)),
        Op.LOG_SOFTMAX: Composite(lambda n, ts: _expand_softmax(n, ts, log=True)),
        Op.LAYER_NORM: Composite(lambda n, ts: _expand_norm(n, ts, rms=False)),
        Op.RMS_NORM: Composite(lambda n, ts: _expand_norm(n, ts, rms=True)),
        Op.MATMUL: Template("matmul"),
        Op.LINEAR: Template("matmul"),
        Op.INDEX: Template("index"),
        Op.CONSTANT: Template("constant"),
    }
    for op in DATA_MOVEMENT:
        t[op] = Template("view")
    return t


LOWERING: dict[Op, Lowering] = _build()
assert set(LOWERING) == set(Op), "every op needs a Triton lowering"
assert all(isinstance(LOWERING[o], Elementwise) for o in ELEMENTWISE)
assert all(isinstance(LOWERING[o], Reduction | Composite) for o in REDUCTIONS | COMPOSITES)
assert all(isinstance(LOWERING[o], Template) for o in CONTRACTIONS | DATA_MOVEMENT)


def literal(value: object, dtype: DType) -> str:
    """A constant as a Python literal in the kernel source."""
    if dtype is DType.BOOL:
        return "True" if value else "False"
    if dtype.is_float:
        return float_literal(float(value))  # type: ignore[arg-type]
    return str(int(value))  # type: ignore[call-overload]


# --- composites -> primitive nodes (over the last axis) ---------------------------------------


class _Builder:
    """Appends primitive nodes named ``<result>.<k>``; the last one takes the composite's name."""

    def __init__(self, node: Node, types: dict[str, TensorType]) -> None:
        self.node, self.types, self.out = node, types, []  # type: list[Node]
        self.k = 0

    def emit(self, op: Op, operands: Sequence[str], final: bool = False, **attrs: object) -> str:
        ts = [self.types[o] for o in operands]
        rule_attrs = {k: v for k, v in attrs.items() if not k.startswith("_")}
        ty = infer_type(op, ts, rule_attrs)
        if final:
            name = self.node.result
        else:
            name = f"{self.node.result}.{self.k}"
            self.k += 1
        self.types[name] = ty
        self.out.append(Node(name, op, tuple(operands), make_attrs(attrs), ty, self.node.loc))
        return name

    def const(self, value: float, dtype: DType) -> str:
        return self.emit(Op.CONSTANT, (), dtype=dtype, value=value)


def _last_axis(n: Node, types: dict[str, TensorType], axis: int) -> int:
    rank = types[n.operands[0]].rank
    if normalize_axis(axis, rank) != rank - 1:
        raise CodegenError(f"%{n.result} = {n.op} over axis {axis}: only the last axis is lowered")
    return rank - 1


def _expand_softmax(n: Node, types: dict[str, TensorType], log: bool) -> list[Node]:
    b = _Builder(n, types)
    x = n.operands[0]
    ax = (_last_axis(n, types, n.attr("axis")),)
    m = b.emit(Op.REDUCE_MAX, [x], axis=ax, keepdim=True)
    sh = b.emit(Op.SUB, [x, m])
    e = b.emit(Op.EXP, [sh])
    s = b.emit(Op.REDUCE_SUM, [e], axis=ax, keepdim=True)
    if log:
        b.emit(Op.SUB, [sh, b.emit(Op.LOG, [s])], final=True)
    else:
        b.emit(Op.DIV, [e, s], final=True)
    return b.out


def _expand_norm(n: Node, types: dict[str, TensorType], rms: bool) -> list[Node]:
    b = _Builder(n, types)
    x, *wb = n.operands
    t = types[x]
    ax = (t.rank - 1,)
    eps = b.const(n.attr("eps"), t.dtype)
    if rms:
        xc = x
    else:
        mean = b.emit(Op.REDUCE_MEAN, [x], axis=ax, keepdim=True)
        xc = b.emit(Op.SUB, [x, mean])
    sq = b.emit(Op.MUL, [xc, xc])
    var = b.emit(Op.REDUCE_MEAN, [sq], axis=ax, keepdim=True)
    rstd = b.emit(Op.RSQRT, [b.emit(Op.ADD, [var, eps])])
    y = b.emit(Op.MUL, [xc, rstd], final=not wb)
    for i, p in enumerate(wb):
        y = b.emit(Op.MUL if i == 0 else Op.ADD, [y, p], final=i == len(wb) - 1)
    return b.out


def _expand_var(n: Node, types: dict[str, TensorType]) -> list[Node]:
    """var = sum((x - mean)^2) / (count - correction); the divisor is the ``_correction`` attr."""
    b = _Builder(n, types)
    x = n.operands[0]
    axes = tuple(n.attr("axis"))
    mean = b.emit(Op.REDUCE_MEAN, [x], axis=axes, keepdim=True)
    xc = b.emit(Op.SUB, [x, mean])
    sq = b.emit(Op.MUL, [xc, xc])
    b.emit(Op.REDUCE_MEAN, [sq], final=True, axis=axes, keepdim=n.attr("keepdim"),
           _correction=n.attr("correction"))  # fmt: skip
    return b.out


def expand_composites(nodes: Sequence[Node], types: dict[str, TensorType]) -> list[Node]:
    """Rewrite composite ops (softmax, norms, var) into primitive nodes; ``types`` is updated."""
    out: list[Node] = []
    for n in nodes:
        low = LOWERING[n.op]
        if isinstance(low, Composite):
            out.extend(low.expand(n, types))
        else:
            out.append(n)
    return out
