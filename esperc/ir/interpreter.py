"""Eager reference interpreter: run a ``Func`` node by node with PyTorch (``reference.REFERENCE``).

The guard check (``check_guards``) is the same one the runtime runs before launching compiled
kernels: argument dtypes and ranks, static dims, binding of dynamic dims from shapes (consistent
across arguments, inside their declared ranges) and the ``require`` constraints. Kernel regions
are ignored: they group nodes for code generation and do not change meaning.

Example::

    dims = small_dims(func)
    inputs = random_inputs(func, dims, seed=0)
    (y,) = run_func(func, inputs)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch

from esperc.ir.dimexpr import DimExpr, DimExprError, evaluate, symbols, to_str
from esperc.ir.graph import Arg, Func, Node
from esperc.ir.reference import DTYPES_OF_TORCH, concrete_shape, evaluate_node, torch_dtype
from esperc.ir.types import Dim, SymDim, shape_str

Tensor = torch.Tensor
Inputs = Mapping[str, Tensor] | Sequence[Tensor]


class GuardError(ValueError):
    """The call's tensors do not satisfy the function's signature; the message names the guard:
    ``dim B = 70000 outside [1, 65536]``, ``x: expected bf16, got f32``,
    ``require B % 16 == 0 failed (B=3)``."""


class EvalError(ValueError):
    """A node could not be evaluated on these values (integer division by zero, a slice beyond
    a dynamic dim) or produced a result that contradicts its type; names the node."""


def _bind_args(func: Func, tensors: Inputs) -> list[tuple[Arg, Tensor]]:
    if isinstance(tensors, Mapping):
        unknown = sorted(set(tensors) - {a.name for a in func.args})
        if unknown:
            raise GuardError(f"@{func.name} has no argument '{unknown[0]}'")
        missing = [a.name for a in func.args if a.name not in tensors]
        if missing:
            raise GuardError(f"missing argument '{missing[0]}' of @{func.name}")
        return [(a, tensors[a.name]) for a in func.args]
    if len(tensors) != len(func.args):
        raise GuardError(f"@{func.name} takes {len(func.args)} tensors, got {len(tensors)}")
    return list(zip(func.args, tensors))


def _dtype_name(t: torch.dtype) -> str:
    d = DTYPES_OF_TORCH.get(t)
    return d.value if d else str(t).removeprefix("torch.")


def bind_dims(func: Func, tensors: Inputs) -> dict[str, int]:
    """Values of the dynamic dims, read from the shapes of the arguments.

    A dim written as a plain symbol binds directly; one that only appears inside an expression
    linear in it (``2*B+1``, or ``B*S`` once ``B`` is known) is solved for. Every dim of every
    argument must then agree with the bound values. Dims that no argument mentions stay unbound.

    Raises:
        GuardError: wrong number of dims (rank), a static dim that differs, two arguments that
            disagree on a dim, or a dim expression with no integer solution.
    """
    pending: list[tuple[str, int, Dim, int]] = []
    for arg, t in _bind_args(func, tensors):
        if t.dim() != arg.type.rank:
            raise GuardError(
                f"{arg.name}: expected rank {arg.type.rank} ({arg.type}), got shape {list(t.shape)}"
            )
        for i, (d, n) in enumerate(zip(arg.type.shape, t.shape)):
            if isinstance(d, int) and d != n:
                raise GuardError(f"{arg.name}: dim {i} must be {d}, got {n} (shape {arg.type})")
            pending.append((arg.name, i, d, int(n)))
    env: dict[str, int] = {}
    progress = True
    while progress:
        progress = False
        for name, i, d, n in pending:
            if isinstance(d, SymDim) and not d.symbols <= env.keys():
                solved = _solve(d, n, env, f"{name}: dim {i}")
                if solved is not None:
                    sym, value = solved
                    env[sym] = value
                    progress = True
    for name, i, d, n in pending:
        if isinstance(d, SymDim) and d.symbols <= env.keys():
            want = concrete_shape([d], env)[0]
            if want != n:
                values = ", ".join(f"{s}={env[s]}" for s in sorted(d.symbols))
                raise GuardError(f"{name}: dim {i} is {n}, but {d} = {want} ({values})")
    return env


def _solve(d: SymDim, n: int, env: Mapping[str, int], where: str) -> tuple[str, int] | None:
    """Solve ``d == n`` for its one unknown symbol when ``d`` is linear in it, else None."""
    unknown = d.symbols - env.keys()
    if len(unknown) != 1:
        return None
    (sym,) = unknown
    coef = const = 0
    for mono, c in d.terms:
        power = mono.count(sym)
        if power > 1:
            return None
        known = c * math.prod(env[s] for s in mono if s != sym)
        if power:
            coef += known
        else:
            const += known
    if coef == 0:
        return None
    value, rem = divmod(n - const, coef)
    if rem:
        known = "".join(f", {s}={env[s]}" for s in sorted(d.symbols & env.keys()))
        raise GuardError(f"{where} is {n}: {d} = {n} has no integer solution for {sym}{known}")
    return sym, value


def check_guards(func: Func, tensors: Inputs) -> dict[str, int]:
    """Check a call's tensors against ``func``'s signature and return the dims' values.

    Checks, in order: argument names (or count), dtypes, ranks and static dims, consistent
    dynamic dims, each dim inside its declared inclusive range, then every ``require``.

    Raises:
        GuardError: naming the first failed guard.
    """
    for arg, t in _bind_args(func, tensors):
        if t.dtype != torch_dtype(arg.type.dtype):
            raise GuardError(f"{arg.name}: expected {arg.type.dtype}, got {_dtype_name(t.dtype)}")
    env = bind_dims(func, tensors)
    used = set().union(
        *(n.type.symbols for n in func.body), *(symbols(r.expr) for r in func.requires)
    )
    unbound = sorted(used - env.keys())
    if unbound:
        raise GuardError(f"dim {unbound[0]} is not determined by the shapes of the arguments")
    for d in func.dims:
        if d.name in env and not d.lo <= env[d.name] <= d.hi:
            raise GuardError(f"dim {d.name} = {env[d.name]} outside [{d.lo}, {d.hi}]")
    for r in func.requires:
        _check_require(r.expr, env)
    return env


def _check_require(expr: DimExpr, env: Mapping[str, int]) -> None:
    text = to_str(expr)
    names = sorted(symbols(expr))
    try:
        ok = evaluate(expr, dict(env))
    except DimExprError as e:
        raise GuardError(f"require {text} cannot be checked: {e}") from None
    if not ok:
        values = ", ".join(f"{s}={env[s]}" for s in names)
        raise GuardError(
            f"require {text} failed ({values})" if values else f"require {text} failed"
        )


def run_func(
    func: Func, inputs: Inputs, device: torch.device | str | None = None
) -> tuple[Tensor, ...]:
    """Evaluate ``func`` eagerly on ``inputs`` and return its results, in order.

    Args:
        func: a verified function.
        inputs: every argument (inputs and params), by name or in declaration order.
        device: where to compute; default: the device of the first argument (else the CPU).

    Raises:
        GuardError: the tensors do not satisfy the signature (see ``check_guards``).
        EvalError: a node failed at run time (e.g. integer division by zero).
    """
    values = evaluate_all(func, inputs, device)
    return tuple(values[r] for r in func.results)


def evaluate_all(
    func: Func, inputs: Inputs, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Like ``run_func``, but return every SSA value (arguments and nodes) by name."""
    env = check_guards(func, inputs)
    bound = _bind_args(func, inputs)
    if device is None:
        device = bound[0][1].device if bound else torch.device("cpu")
    values: dict[str, Tensor] = {a.name: t.to(device) for a, t in bound}
    evaluate_nodes(func.body, values, env, device)
    return values


def evaluate_nodes(
    nodes: Sequence[Node],
    values: dict[str, Tensor],
    env: Mapping[str, int],
    device: torch.device | str,
) -> None:
    """Evaluate ``nodes`` in order into ``values`` (operands must be there already).

    Raises:
        EvalError: a node failed or produced a tensor that contradicts its type.
    """
    for node in nodes:
        try:
            out = evaluate_node(node, [values[o] for o in node.operands], env)
        except (RuntimeError, ValueError, KeyError) as e:
            raise EvalError(f"evaluating %{node.result} = {node.op}: {e}") from e
        out = out.to(device).contiguous()  # dense: some CPU kernels round differently on views
        want = concrete_shape(node.type.shape, env)
        if out.dtype != torch_dtype(node.type.dtype) or tuple(out.shape) != want:
            raise EvalError(
                f"%{node.result} = {node.op} produced {_dtype_name(out.dtype)}"
                f"{list(out.shape)}, its type is {node.type} = {shape_str(want)}"
            )
        values[node.result] = out


# --------------------------------------------------------------------------------------------
# Inputs for tests and `esperc run`


def small_dims(func: Func, prefer: Sequence[int] = (3, 5, 2, 4, 7, 1, 6, 8)) -> dict[str, int]:
    """Small values for the dynamic dims that satisfy their ranges and every ``require``.

    Tries the ``prefer`` values (clipped into each range), then every value up to 64 above the
    range's low end, in that order, and returns the first combination that passes.

    Raises:
        GuardError: no combination within the search limit satisfies the requires.
    """
    choices = []
    for d in func.dims:
        cands = [v for v in prefer if d.lo <= v <= d.hi]
        cands += [v for v in range(d.lo, min(d.hi, d.lo + 64) + 1) if v not in cands]
        choices.append(cands)
    for combo in itertools.islice(itertools.product(*choices), 200_000):
        env = {d.name: v for d, v in zip(func.dims, combo)}
        try:
            if all(evaluate(r.expr, env) for r in func.requires):
                return env
        except DimExprError:
            continue
    raise GuardError(f"no small dims satisfy the requires of @{func.name}")


def random_inputs(
    func: Func, dims: Mapping[str, int], seed: int, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Random tensors for every argument of ``func``, by name.

    Floats are standard normal, params of rank >= 2 scaled by ``1/sqrt(fan_in)`` (fan_in = the
    last dim) so matmul chains stay O(1); integers are in ``[0, 8)``; bools (rank 0 included)
    are fair coin flips. Values are drawn on the CPU in f32 from ``seed`` and then cast and
    moved, so they do not depend on ``device``.

    Raises:
        KeyError: a dynamic dim used by an argument is missing from ``dims``.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for a in func.args:
        shape = concrete_shape(a.type.shape, dims)
        dt = a.type.dtype
        if dt.is_float:
            t = torch.randn(shape, generator=gen)
            if a.kind == "param" and len(shape) >= 2 and shape[-1] > 0:
                t = t / math.sqrt(shape[-1])
        elif dt.is_int:
            t = torch.randint(0, 8, shape, generator=gen)
        else:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        out[a.name] = t.to(torch_dtype(dt)).to(device)
    return out
