"""The canonicalization rewrite rules, as a table keyed by op.

A rule looks at one node (operands already rewritten) and the nodes that produce its operands,
and returns one of: ``None`` (no match), the name of an existing value that equals the node
(the node is replaced by it), or a new ``Node`` with the same result name and type (the node is
rewritten in place, then matched again). Rules never look at users, so one forward walk reaches
a fixed point and the pass is idempotent.

Every rule is exact: it holds bit for bit under IEEE-754 and PyTorch's semantics, including
signed zeros and NaN. So ``x + 0.0`` is kept for floats (``-0.0 + 0.0`` is ``+0.0``) while
``x + -0.0`` and ``x - 0.0`` fold; ``x * 0`` folds for integers only (``nan * 0`` is ``nan``);
and ``maximum``/``minimum`` of floats are not reordered (``maximum(0.0, -0.0)`` returns its first
operand). A rule whose replacement would have another type (a broadcast that changes the shape)
does not fire.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from esperc.ir.graph import Node
from esperc.ir.ops import BINARY, COMMUTATIVE, ELEMENTWISE, TERNARY, Op
from esperc.ir.types import DType, TypeRuleError
from esperc.middle.folding import FOLDABLE, fold
from esperc.middle.rewriter import BodyRewriter

Result = str | Node | None
Rule = Callable[[Node, BodyRewriter], Result]

# Casts that keep every value of the source dtype exactly (so a cast after them sees the same
# value as a cast of the original).
EXACT_CASTS = frozenset(
    {(DType.BOOL, d) for d in DType}
    | {(DType.F16, DType.F32), (DType.BF16, DType.F32), (DType.I32, DType.I64)}
)
_FLOAT_ORDERED = frozenset({Op.MAXIMUM, Op.MINIMUM})


def swappable(node: Node, operand_dtype: DType) -> bool:
    """Whether the two operands of ``node`` may be exchanged without changing any bit."""
    return node.op in COMMUTATIVE and not (node.op in _FLOAT_ORDERED and operand_dtype.is_float)


def _same(node: Node, value: str, rw: BodyRewriter) -> str | None:
    """``value`` when it has exactly the node's type (else the replacement would change it)."""
    return value if rw.types[value] == node.type else None


def _rebuild(
    node: Node, rw: BodyRewriter, op: Op, operands: list[str], attrs: dict[str, Any]
) -> Node | None:
    """A node of the same name computing ``op``, or None when its type would differ."""
    try:
        new = rw.make(op, operands, attrs, node.result, node.loc)
    except TypeRuleError:
        return None
    return new if new.type == node.type and new != node else None


def _is(value: int | float | bool | None, target: float, dtype: DType) -> bool:
    """``value`` equals ``target`` exactly, with the sign of a zero taken into account."""
    if value is None or isinstance(value, bool):
        return False
    if dtype.is_float and target == 0:
        return value == 0 and math.copysign(1.0, value) == math.copysign(1.0, target)
    return value == target


# --------------------------------------------------------------------------------------------
# Generic elementwise rules


def fold_constants(node: Node, rw: BodyRewriter) -> Result:
    """An elementwise op whose operands are all literals becomes a literal."""
    if node.op not in FOLDABLE or node.type.rank != 0:
        return None
    producers = [rw.producer(o) for o in node.operands]
    if not all(p is not None and p.op is Op.CONSTANT for p in producers):
        return None
    folded = fold(node, producers)  # type: ignore[arg-type]
    if folded is None:
        return None
    return rw.make(
        Op.CONSTANT, [], {"dtype": node.type.dtype, "value": folded}, node.result, node.loc
    )


def constant_right(node: Node, rw: BodyRewriter) -> Result:
    """A commutative op takes its literal operand on the right: ``1 * x`` -> ``x * 1``."""
    a, b = node.operands
    if not swappable(node, rw.types[a].dtype):
        return None
    if rw.constant_value(a) is None or rw.constant_value(b) is not None:
        return None
    return _rebuild(node, rw, node.op, [b, a], node.attr_dict)


def drop_broadcast(node: Node, rw: BodyRewriter) -> Result:
    """An explicit ``broadcast_to`` feeding an elementwise op whose other operands already give
    the full shape is dropped: the op broadcasts implicitly."""
    operands = list(node.operands)
    for i, o in enumerate(operands):
        p = rw.producer(o)
        if p is not None and p.op is Op.BROADCAST_TO:
            trial = [*operands[:i], p.operands[0], *operands[i + 1 :]]
            new = _rebuild(node, rw, node.op, trial, node.attr_dict)
            if new is not None:
                return new
    return None


# --------------------------------------------------------------------------------------------
# Algebraic identities


def _identity_right(name: str, target: float) -> Rule:
    """``x OP target`` -> ``x`` (``x * 1``, ``x / 1``, ``x ** 1``, ``x - 0.0``)."""

    def rule(node: Node, rw: BodyRewriter) -> Result:
        x, c = node.operands
        dtype = rw.types[c].dtype
        return _same(node, x, rw) if _is(rw.constant_value(c), target, dtype) else None

    rule.__name__ = name
    return rule


def add_zero(node: Node, rw: BodyRewriter) -> Result:
    """``x + 0`` -> ``x`` for integers; for floats only ``x + -0.0`` (IEEE: -0.0 + 0.0 = 0.0)."""
    x, c = node.operands
    dtype = rw.types[c].dtype
    zero = -0.0 if dtype.is_float else 0
    return _same(node, x, rw) if _is(rw.constant_value(c), zero, dtype) else None


def mul_zero(node: Node, rw: BodyRewriter) -> Result:
    """``x * 0`` -> ``0`` broadcast to the result, for integers (NaN and inf forbid floats)."""
    _, c = node.operands
    dtype = rw.types[c].dtype
    if not dtype.is_int or rw.constant_value(c) != 0:
        return None
    if node.type.rank == 0:
        return _same(node, c, rw)
    return _rebuild(node, rw, Op.BROADCAST_TO, [c], {"shape": node.type.shape})


def involution(node: Node, rw: BodyRewriter) -> Result:
    """``neg(neg(x))`` -> ``x``, ``logical_not(logical_not(x))`` -> ``x``."""
    p = rw.producer(node.operands[0])
    if p is not None and p.op is node.op:
        return _same(node, p.operands[0], rw)
    return None


def idempotent_unary(node: Node, rw: BodyRewriter) -> Result:
    """``relu(relu(x))`` -> ``relu(x)``, ``abs(abs(x))`` -> ``abs(x)``: the inner value."""
    p = rw.producer(node.operands[0])
    return node.operands[0] if p is not None and p.op is node.op else None


def abs_neg(node: Node, rw: BodyRewriter) -> Result:
    """``abs(neg(x))`` -> ``abs(x)``."""
    p = rw.producer(node.operands[0])
    if p is not None and p.op is Op.NEG:
        return _rebuild(node, rw, Op.ABS, [p.operands[0]], {})
    return None


def cast_chain(node: Node, rw: BodyRewriter) -> Result:
    """``cast(x, T)`` with x: T -> ``x``; ``cast(cast(x, A), B)`` -> ``cast(x, B)`` when every
    value of x's dtype survives the cast to A (bf16 -> f32 -> bf16 is x; f32 -> bf16 -> f32
    stays)."""
    (x,) = node.operands
    if rw.types[x].dtype is node.type.dtype:
        return _same(node, x, rw)
    p = rw.producer(x)
    if p is None or p.op is not Op.CAST:
        return None
    (src,) = p.operands
    if (rw.types[src].dtype, p.type.dtype) not in EXACT_CASTS:
        return None
    if rw.types[src].dtype is node.type.dtype:
        return _same(node, src, rw)
    return _rebuild(node, rw, Op.CAST, [src], node.attr_dict)


def _perm(node: Node) -> list[int]:
    if node.op is Op.PERMUTE:
        return list(node.attr("dims"))
    p = list(range(node.type.rank))
    i, j = node.attr("dim0"), node.attr("dim1")
    p[i], p[j] = p[j], p[i]
    return p


def permutation(node: Node, rw: BodyRewriter) -> Result:
    """Chains of ``transpose``/``permute`` compose into one; the identity is dropped; a
    permutation that swaps two axes is written ``transpose``, any other ``permute``."""
    (x,) = node.operands
    perm = _perm(node)
    p = rw.producer(x)
    if p is not None and p.op in (Op.TRANSPOSE, Op.PERMUTE):
        inner = _perm(p)
        x, perm = p.operands[0], [inner[i] for i in perm]
    moved = [i for i, d in enumerate(perm) if d != i]
    if not moved:
        return _same(node, x, rw)
    if len(moved) == 2:
        return _rebuild(node, rw, Op.TRANSPOSE, [x], {"dim0": moved[0], "dim1": moved[1]})
    return _rebuild(node, rw, Op.PERMUTE, [x], {"dims": tuple(perm)})


def reshape_chain(node: Node, rw: BodyRewriter) -> Result:
    """``reshape(reshape(x, A), B)`` -> ``reshape(x, B)``; a reshape to the same shape -> ``x``.
    The same for ``broadcast_to``."""
    (x,) = node.operands
    if rw.types[x].shape == node.type.shape:
        return _same(node, x, rw)
    p = rw.producer(x)
    if p is not None and p.op is node.op:
        return _rebuild(node, rw, node.op, [p.operands[0]], node.attr_dict)
    return None


def choice(node: Node, rw: BodyRewriter) -> Result:
    """``where(c, x, x)`` / ``select(c, x, x)`` -> ``x``; a literal condition picks its arm."""
    c, a, b = node.operands
    if a == b:
        return _same(node, a, rw)
    cond = rw.constant_value(c)
    if cond is None:
        return None
    return _same(node, a if cond else b, rw)


def logical_unit(node: Node, rw: BodyRewriter) -> Result:
    """``x and true`` -> ``x``; ``x or false`` -> ``x``."""
    x, c = node.operands
    unit = node.op is Op.LOGICAL_AND
    value = rw.constant_value(c)
    return _same(node, x, rw) if value is not None and bool(value) is unit else None


# --------------------------------------------------------------------------------------------
# The table: rules are tried in order; generic elementwise rules first.

_GENERIC: tuple[Rule, ...] = (fold_constants,)
_BINARY_GENERIC: tuple[Rule, ...] = (fold_constants, constant_right, drop_broadcast)

RULES: dict[Op, tuple[Rule, ...]] = {op: _GENERIC for op in ELEMENTWISE}
RULES.update({op: _BINARY_GENERIC for op in COMMUTATIVE})
for _op in (BINARY | TERNARY) - COMMUTATIVE:
    RULES[_op] = (*RULES[_op], drop_broadcast)
RULES[Op.ADD] += (add_zero,)
RULES[Op.SUB] += (_identity_right("sub_zero", 0.0),)
RULES[Op.MUL] += (_identity_right("mul_one", 1.0), mul_zero)
RULES[Op.DIV] += (_identity_right("div_one", 1.0),)
RULES[Op.POW] += (_identity_right("pow_one", 1.0),)
RULES[Op.NEG] += (involution,)
RULES[Op.LOGICAL_NOT] += (involution,)
RULES[Op.RELU] += (idempotent_unary,)
RULES[Op.ABS] += (idempotent_unary, abs_neg)
RULES[Op.CAST] += (cast_chain,)
RULES[Op.WHERE] += (choice,)
RULES[Op.SELECT] += (choice,)
RULES[Op.LOGICAL_AND] += (logical_unit,)
RULES[Op.LOGICAL_OR] += (logical_unit,)
RULES[Op.TRANSPOSE] = (permutation,)
RULES[Op.PERMUTE] = (permutation,)
RULES[Op.RESHAPE] = (reshape_chain,)
RULES[Op.BROADCAST_TO] = (reshape_chain,)


def rewrite_once(node: Node, rw: BodyRewriter) -> tuple[str, Result]:
    """The first rule of ``node``'s op that matches: ``(rule name, result)``, or ``("", None)``."""
    for rule in RULES.get(node.op, ()):
        out = rule(node, rw)
        if out is not None:
            return rule.__name__, out
    return "", None
