"""Reverse-mode automatic differentiation of an IR function: ``differentiate(func, wrt)``.

The result is a ``BackwardPlan`` of two ordinary ``Func``s, so the backward goes through the same
passes and code generation as any forward:

* ``forward``: ``func`` extended to also return the saved values (after the original results),
  with the per-row statistics that gradient rules ask for (``GradCtx.aux``) computed next to the
  node that needs them.
* ``backward``: arguments are the saved values (by their forward names), then one gradient per
  original result, ``grad_<result>``, of the result's type; results are one gradient per ``wrt``
  argument, ``grad_<arg>``, of the argument's type.

The driver sweeps the forward body in reverse. Each node whose result received gradient
contributions sums them (in the value's dtype, as PyTorch's autograd accumulates) and calls the
node's rule from ``gradients.GRADIENTS``; each operand's gradient is then fitted to the
operand's type (``_fit``): summed over the axes the operand was broadcast along, accumulating in
f32 for f16/bf16, reshaped, and cast once. Forward values the rules read are saved or recomputed
as ``remat`` decides. Double backward is out of scope: the backward function is not meant to be
differentiated again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from esperc.ir.dimexpr import symbols
from esperc.ir.graph import Arg, Func, Module, Node
from esperc.ir.ops import Op
from esperc.ir.printer import print_module
from esperc.ir.types import TensorType, eval_dim
from esperc.ir.verifier import verify
from esperc.middle.gradients import GRADIENTS
from esperc.middle.gradients_base import AutodiffError, Emitter, GradCtx, NotDifferentiable
from esperc.middle.remat import Rematerializer, RematPolicy

__all__ = [
    "GRADIENTS",
    "AutodiffError",
    "BackwardPlan",
    "RematPolicy",
    "differentiate",
    "print_plan",
]


@dataclass(frozen=True, slots=True)
class BackwardPlan:
    """A forward function extended with saved values, and its backward function.

    Attributes:
        forward: returns the original results, then the saved values (in ``saved`` order).
        backward: ``(*saved, *grad_outputs) -> (*grad_wrt)``; see the module docstring.
        saved: forward value names passed from forward to backward (arguments included).
        num_outputs: how many results the original function returns.
        wrt: the differentiated arguments, in the order of the backward's results.
    """

    forward: Func
    backward: Func
    saved: tuple[str, ...]
    num_outputs: int
    wrt: tuple[str, ...]
    grad_outputs: tuple[str, ...] = field(default=())

    def saved_types(self) -> dict[str, TensorType]:
        """Type of each saved value, in ``saved`` order."""
        types = self.forward.types()
        return {s: types[s] for s in self.saved}

    def saved_bytes(self, dims: Mapping[str, int], include_args: bool = True) -> int:
        """Bytes held between forward and backward for these dynamic-dim values.

        Args:
            dims: a value for every dynamic dim the saved types use.
            include_args: count saved function arguments too (the caller usually holds them
                anyway; ``False`` gives the memory the plan adds).

        Raises:
            KeyError: a dynamic dim of a saved value is missing from ``dims``.
        """
        args = {a.name for a in self.forward.args}
        total = 0
        for name, t in self.saved_types().items():
            if include_args or name not in args:
                n = 1
                for d in t.shape:
                    n *= eval_dim(d, dict(dims))
                total += n * t.dtype.itemsize
        return total


def differentiate(
    func: Func, wrt: Sequence[str] | None = None, policy: RematPolicy | None = None
) -> BackwardPlan:
    """Build the backward function of ``func`` (reverse mode).

    Args:
        func: a verified function, before kernel regions are formed (regions are dropped from
            the extended forward; fusion runs again on it).
        wrt: the arguments to differentiate, default every float argument (inputs and params).
        policy: saved-value selection options (``remat.RematPolicy``).

    Raises:
        AutodiffError: a ``wrt`` name is not a float argument, or a rule cannot express a
            gradient (e.g. a concat piece at a dynamic offset).
        VerifyError: a built function breaks an IR invariant (an esperc bug).
    """
    verify(func)
    names = _resolve_wrt(func, wrt)
    active = _active(func, names)
    fwd_types = func.types()
    used = set(fwd_types)
    bw = Emitter({}, used)
    reserved = {a: bw.fresh(f"grad_{a}") for a in names}
    grad_outputs = []
    for r, t in zip(func.results, func.result_types()):
        g = bw.fresh(f"grad_{r}")
        bw.types[g] = t
        grad_outputs.append(g)
    remat = Rematerializer(func, policy or RematPolicy(), bw, fwd_types, used)
    ctx = GradCtx(bw, remat, fwd_types)

    grads: dict[str, list[str]] = {}
    for r, g in zip(func.results, grad_outputs):
        if r in active:
            grads.setdefault(r, []).append(g)
    for node in reversed(func.body):
        contributions = grads.pop(node.result, None)
        if not contributions:
            continue
        rule = GRADIENTS[node.op]
        assert not isinstance(rule, NotDifferentiable), node
        needs = tuple(o in active for o in node.operands)
        outs = rule(ctx, node, _accumulate(ctx, contributions), needs)
        for o, need, d in zip(node.operands, needs, outs, strict=True):
            if need and d is not None:
                grads.setdefault(o, []).append(_fit(ctx, d, fwd_types[o]))

    finals = []
    for a in names:
        t = fwd_types[a]
        finals.append(_accumulate(ctx, grads[a]) if a in grads else ctx.zeros(t.shape, t.dtype))
    results = _name_results(bw, finals, [reserved[a] for a in names], set(grad_outputs))
    _carry_dims(func, remat, bw, grad_outputs)

    forward = _extend_forward(func, remat)
    order = {a.name: i for i, a in enumerate(forward.args)}
    order.update((n.result, len(order) + i) for i, n in enumerate(forward.body))
    saved = remat.saved(order)
    forward = forward.with_(results=func.results + saved)
    args = [Arg(s, fwd_types[s], "input") for s in saved]
    args += [Arg(g, t, "input") for g, t in zip(grad_outputs, func.result_types())]
    backward = Func(
        f"{func.name}_backward", func.dims, func.requires, tuple(args), tuple(bw.nodes),
        tuple(results), loc=func.loc,
    )  # fmt: skip
    verify(forward)
    verify(backward)
    return BackwardPlan(forward, backward, saved, len(func.results), names, tuple(grad_outputs))


def print_plan(plan: BackwardPlan, locs: bool = False) -> str:
    """The text of ``esperc compile --emit backward-ir``: the extended forward, then the backward
    (a module the IR parser reads back)."""
    return print_module(Module((plan.forward, plan.backward)), locs)


def _resolve_wrt(func: Func, wrt: Sequence[str] | None) -> tuple[str, ...]:
    args = {a.name: a for a in func.args}
    if wrt is None:
        return tuple(a.name for a in func.args if a.type.dtype.is_float)
    for name in wrt:
        if name not in args:
            raise AutodiffError(f"@{func.name} has no argument '{name}' to differentiate")
        if not args[name].type.dtype.is_float:
            raise AutodiffError(
                f"argument '{name}' of @{func.name} is {args[name].type}, not float"
            )
    if len(set(wrt)) != len(wrt):
        raise AutodiffError(f"an argument of @{func.name} is listed twice in wrt")
    return tuple(wrt)


def _active(func: Func, wrt: Sequence[str]) -> set[str]:
    """Float values that depend on a ``wrt`` argument through differentiable ops."""
    active = set(wrt)
    for n in func.body:
        if isinstance(GRADIENTS[n.op], NotDifferentiable) or not n.type.dtype.is_float:
            continue
        if any(o in active for o in n.operands):
            active.add(n.result)
    return active


def _accumulate(ctx: GradCtx, contributions: list[str]) -> str:
    total = contributions[0]
    for c in contributions[1:]:
        total = ctx.add(total, c)
    return total


def _fit(ctx: GradCtx, d: str, want: TensorType) -> str:
    """``d`` summed over the axes ``want`` was broadcast along, reshaped and cast to ``want``.

    A sum of f16/bf16 values accumulates in f32 and rounds once (as ``sum_to_size`` does).
    """
    have = ctx.type(d)
    if have.shape != want.shape:
        lead = have.rank - want.rank
        axes = list(range(lead)) + [
            lead + i for i, s in enumerate(want.shape) if s == 1 and have.shape[lead + i] != 1
        ]
        if axes:
            d = ctx.sum(ctx.up(d), axes, keepdim=True)
        d = ctx.reshape(d, want.shape)
    return ctx.cast(d, want.dtype)


def _name_results(
    bw: Emitter, finals: list[str], targets: list[str], grad_outputs: set[str]
) -> list[str]:
    """Rename each final gradient node to its reserved ``grad_<arg>`` name; a value that is a
    backward argument or a gradient of two arguments gets an identity ``reshape`` to rename."""
    defined = {n.result for n in bw.nodes}
    rename: dict[str, str] = {}
    for v, target in zip(finals, targets):
        if v not in defined or v in rename or v in grad_outputs:
            t = bw.types[v]
            v = bw.emit(Op.RESHAPE, [v], {"shape": t.shape})
        rename[v] = target
    bw.nodes[:] = [_renamed(n, rename) for n in bw.nodes]
    for old, new in rename.items():
        bw.types[new] = bw.types[old]
    return list(targets)


def _renamed(n: Node, rename: Mapping[str, str]) -> Node:
    return n.with_(
        result=rename.get(n.result, n.result),
        operands=tuple(rename.get(o, o) for o in n.operands),
    )


def _carry_dims(func: Func, remat: Rematerializer, bw: Emitter, grad_outputs: list[str]) -> None:
    """Save an argument for each dynamic dim the backward uses but cannot bind from the shapes
    of its arguments (saved values and output gradients)."""
    needed: set[str] = set().union(*(n.type.symbols for n in bw.nodes))
    needed |= set().union(*(bw.types[g].symbols for g in grad_outputs))
    for r in func.requires:
        needed |= symbols(r.expr)
    bound: set[str] = set().union(*(bw.types[g].symbols for g in grad_outputs))
    bound |= set().union(*(bw.types[s].symbols for s in remat.saved_names()))
    for dim in sorted(needed - bound):
        carriers = [a for a in func.args if dim in a.type.symbols]
        if carriers and dim not in bound:
            best = min(carriers, key=lambda a: (a.type.rank, a.type.dtype.itemsize))
            remat.save(best.name)
            bound |= best.type.symbols


def _extend_forward(func: Func, remat: Rematerializer) -> Func:
    body: list[Node] = []
    for n in func.body:
        body.append(n)
        body.extend(remat.aux_nodes.get(n.result, ()))
    return func.with_body(body, regions=())
