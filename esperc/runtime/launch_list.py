"""Launch lists: a call's plan resolved once per tensor signature, replayed with pointers only.

Everything the launcher computes from a plan depends on the call's *signature* (each argument's
shape, dtype and device, with dense contiguous storage), never on the data: the guards' verdict,
the dims, every grid, allocation shape, stride and dim scalar, which operands need a contiguous
copy. ``record`` runs the plan once through the ordinary executor while watching every launch,
and keeps the result as a ``LaunchList``: per kernel, the allocations (shape, dtype), where each
pointer argument comes from, and a pre-bound launch (for cubins: a filled ``void**`` parameter
array and launch config, see ``runtime.cubin.BoundLaunch``). A later call with the same signature
skips guards, plan interpretation and argument packing: it allocates, writes the new pointers
into the parameter array and calls ``cuLaunchKernelEx``.

A signature is only a key when every argument is a dense, contiguous tensor whose data pointer
is 16-byte aligned (the alignment the cubins were compiled to assume); anything else takes the
checked path (``signature`` returns None).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch

from esperc.backend.triton.launcher import apply_view
from esperc.backend.triton.plan import KernelLaunch, Plan, TensorArg, ViewOp

Signature = tuple[Any, ...]
MAX_SIGNATURES = 64  # launch lists kept per artifact (oldest evicted first)


def signature(tensors: Mapping[str, Any]) -> Signature | None:
    """The cache key of a call: names, shapes, dtypes and devices of its tensors; None when a
    tensor is not dense, contiguous and 16-byte aligned (that call takes the checked path)."""
    key: list[Any] = []
    try:
        for name, t in tensors.items():
            if not t.is_contiguous() or t.data_ptr() & 15 or t.layout is not torch.strided:
                return None
            key.append((name, t.shape, t.dtype, t.device))
    except (AttributeError, TypeError, RuntimeError):
        return None  # not a tensor (or one without storage): the guards will say so
    return tuple(key)


class _Recorder:
    """Wraps a kernel in ``kernel[grid](*args, **kw)`` form; keeps each launch's arguments."""

    def __init__(self, kernel: Any, log: list[tuple[Any, tuple, tuple, dict]]) -> None:
        self.kernel, self.log = kernel, log
        self.interpreted = type(kernel).__name__ == "InterpretedFunction"

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        def call(*args: Any, **kw: Any) -> None:
            self.log.append((self.kernel, tuple(grid), args, kw))
            self.kernel[grid](*args, **kw)

        return call


Op = Callable[[dict[str, torch.Tensor], int], None]


class LaunchList:
    """One signature's resolved plan: ``run(tensors)`` returns the plan's results.

    Attributes:
        results: the IR value names the call returns, in order.
        launches: kernel launches per call (for reports).
    """

    def __init__(
        self,
        ops: list[Op],
        results: tuple[str, ...],
        constants: Mapping[str, torch.Tensor],
        stream_of: Callable[[], int],
        enter: Callable[[], Any] | None,
        launches: int,
    ) -> None:
        self._ops, self.results, self._constants = ops, results, dict(constants)
        self._stream_of, self._enter = stream_of, enter
        self.launches = launches
        self._lock = threading.Lock()  # the bound parameter arrays are shared state

    def run(self, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run the plan on tensors of this list's signature (the caller checked the key)."""
        env = dict(tensors)
        env.update(self._constants)
        stream = self._stream_of()
        with self._lock:
            restore = self._enter() if self._enter is not None else None
            try:
                for op in self._ops:
                    op(env, stream)
            finally:
                if restore is not None:
                    restore()
        return tuple(env[r] for r in self.results)


Binder = Callable[[Any, tuple, tuple, dict], Any]


def record(
    plan: Plan,
    env_in: Mapping[str, torch.Tensor],
    dims: Mapping[str, int],
    kernels: Mapping[str, Any],
    constants: Mapping[str, torch.Tensor],
    execute: Callable[..., dict[str, torch.Tensor]],
    bind: Binder,
    stream_of: Callable[[], int] = lambda: 0,
    enter: Callable[[], Any] | None = None,
) -> tuple[dict[str, torch.Tensor], LaunchList | None]:
    """Run ``plan`` once with ``execute`` and resolve it into a ``LaunchList``.

    Args:
        plan: the launch plan (already dispatched to its variants).
        env_in: the call's tensors by name (guards passed).
        dims: the bound dims.
        kernels: kernel name -> launcher in ``kernel[grid](*args, **kw)`` form.
        constants: the plan's constants on the call's device.
        execute: runs the plan: ``execute(plan, env_in, dims, kernels, constants)`` -> env.
        bind: ``bind(kernel, grid, args, kw)`` -> an object with ``run(tensors, stream)`` that
            repeats the launch with other tensors, or None when it cannot be repeated (then no
            list is made).
        stream_of: the stream handle of a call (read once per call).
        enter: called once per call before the launches; returns an undo callable or None.

    Returns:
        The executed environment, and the launch list (None when some launch cannot be bound).
    """
    log: list[tuple[Any, tuple, tuple, dict]] = []
    watched = {k: _Recorder(v, log) for k, v in kernels.items()}
    env = execute(plan, env_in, dims, watched, constants)
    launches = [s for s in plan.steps if isinstance(s, KernelLaunch)]
    if len(launches) != len(log):
        return env, None
    device = next(iter(env_in.values())).device
    ops: list[Op] = []
    logged = iter(log)
    for step in plan.steps:
        if isinstance(step, ViewOp):
            ops.append(_view_op(step, dims))
            continue
        kernel, grid, args, kw = next(logged)
        bound = bind(kernel, grid, args, kw)
        if bound is None:
            return env, None
        ops.append(_kernel_op(step, args, env, bound, device))
    return env, LaunchList(ops, plan.results, constants, stream_of, enter, len(launches))


def _view_op(step: ViewOp, dims: Mapping[str, int]) -> Op:
    frozen = dict(dims)

    def op(env: dict[str, torch.Tensor], _stream: int) -> None:
        env[step.result] = apply_view(step, env, frozen)

    return op


def _kernel_op(
    step: KernelLaunch,
    args: tuple,
    env: Mapping[str, torch.Tensor],
    bound: Any,
    device: torch.device,
) -> Op:
    """Allocate ``step``'s outputs, gather its tensor operands, launch ``bound``."""
    from esperc.backend.triton.launcher import TORCH_DTYPE
    from esperc.ir.types import DType

    allocs = [
        (a.value, tuple(env[a.value].shape), TORCH_DTYPE[DType(a.dtype)]) for a in step.allocs
    ]
    sources: list[tuple[str, Callable[[dict], torch.Tensor] | None]] = []
    for spec, passed in zip(step.args, args, strict=True):
        if not isinstance(spec, TensorArg):
            continue
        own = env[spec.value]
        if passed.data_ptr() == own.data_ptr():
            sources.append((spec.value, None))  # the value itself (or a view at its address)
        else:  # the launcher made a contiguous copy: make it again each call
            sources.append((spec.value, _copier(spec)))
    empty = torch.empty

    def op(env: dict[str, torch.Tensor], stream: int) -> None:
        for value, shape, dtype in allocs:
            env[value] = empty(shape, dtype=dtype, device=device)
        bound.run([env[v] if prep is None else prep(env) for v, prep in sources], stream)

    return op


def _copier(spec: TensorArg) -> Callable[[dict], torch.Tensor]:
    def prep(env: dict) -> torch.Tensor:
        t = env[spec.value]
        return (t.transpose(-1, -2) if spec.transpose_last else t).contiguous()

    return prep
