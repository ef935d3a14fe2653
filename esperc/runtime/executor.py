"""Run a launch plan: view regions as torch ops, kernels by one of three launchers.

- ``cubin``: the packaged cubin through the CUDA driver (``runtime.cubin``): no Triton at all.
- ``interpreter``: the packaged Triton source, exec'd with ``TRITON_INTERPRET=1`` (CPU tensors).
- ``eager``: a kernel region evaluated node by node with the PyTorch reference (the fallback for
  a kernel that failed validation, or for a whole call when no other launcher fits).

Every launcher follows the same plan, so they agree on allocation, views and results.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from esperc.backend.triton.launcher import (
    TORCH_DTYPE,
    apply_view,
    import_triton_normally,
    launch,
    load_module,
)
from esperc.backend.triton.plan import KernelLaunch, Plan, ViewOp
from esperc.ir.graph import Func, Node
from esperc.ir.interpreter import evaluate_nodes
from esperc.ir.types import DType


class CubinKernel:
    """Adapts a packaged cubin to the ``kernel[grid](*args, **constexprs)`` launch form.

    Constexprs and num_warps/num_stages are baked into the cubin, so the keywords are dropped.
    """

    def __init__(self, compiled: Any, runtime: Any) -> None:
        self.compiled = compiled
        self.runtime = runtime

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def call(*args: Any, **_baked: Any) -> None:
            self.runtime.launch(self.compiled, grid, *args)

        return call


class JitBound:
    """A ``kernel[grid](*args, **kw)`` launch repeated with other tensors (``run``): the
    interpreter's counterpart of ``runtime.cubin.BoundLaunch`` for launch lists."""

    def __init__(self, kernel: Any, grid: tuple, args: tuple, kw: dict) -> None:
        self._kernel, self._grid, self._kw, self._args = kernel, grid, kw, list(args)
        self._at = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def run(self, tensors: list[torch.Tensor], _stream: int) -> None:
        args = list(self._args)
        for i, t in zip(self._at, tensors, strict=True):
            args[i] = t
        self._kernel[self._grid](*args, **self._kw)


def enter_interpreter_fixes() -> Any:
    """Enter ``launcher.interpreter_fixes(True)``; returns its exit (a launch list's ``enter``)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_bf16_dot_for_interpreter(True))
    return stack.close


@contextlib.contextmanager
def interpreter_env() -> Iterator[None]:
    """``TRITON_INTERPRET=1`` while generated source is exec'd (Triton reads it at decoration)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def load_interpreted(source: str) -> dict[str, Any]:
    """The generated module's kernels as Triton-interpreter functions."""
    import_triton_normally()

    with interpreter_env():
        return load_module(source)


def region_nodes(func: Func) -> dict[str, list[Node]]:
    """Member nodes of each kernel region, in body order."""
    region_of = func.region_of()
    out: dict[str, list[Node]] = {}
    for n in func.body:
        r = region_of.get(n.result)
        if r is not None:
            out.setdefault(r.name, []).append(n)
    return out


def plan_constants(plan: Plan, device: torch.device) -> dict[str, torch.Tensor]:
    """The plan's rank-0 constants as tensors on ``device``."""
    return {
        value: torch.tensor(lit, dtype=TORCH_DTYPE[DType(dtype)], device=device)
        for value, dtype, lit in plan.constants
    }


def execute(
    func: Func,
    plan: Plan,
    inputs: Mapping[str, torch.Tensor],
    dims: Mapping[str, int],
    kernels: Mapping[str, Any],
    eager_regions: frozenset[str] = frozenset(),
    constants: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Run every step of ``plan``; returns the environment of values by IR name.

    Args:
        func: the packaged (optimised, partitioned) function the plan was generated from.
        plan: the launch plan.
        inputs: every argument by name, already checked by the guards.
        dims: the dynamic dims bound from the inputs.
        kernels: kernel name -> launchable (jit function, interpreter function or CubinKernel).
        eager_regions: regions to evaluate with the PyTorch reference instead of their kernel.
        constants: the plan's constants already on the inputs' device (``plan_constants``);
            made here when None (a host-to-device copy per constant: callers cache them).
    """
    device = next(iter(inputs.values())).device if inputs else torch.device("cpu")
    env: dict[str, torch.Tensor] = dict(inputs)
    env.update(constants if constants is not None else plan_constants(plan, device))
    members = region_nodes(func) if eager_regions else {}
    interpreted = any(
        getattr(k, "interpreted", type(k).__name__ == "InterpretedFunction")
        for k in kernels.values()
    )
    with _bf16_dot_for_interpreter(interpreted):
        for step in plan.steps:
            if isinstance(step, ViewOp):
                env[step.result] = apply_view(step, env, dims)
            elif isinstance(step, KernelLaunch) and step.region in eager_regions:
                if step.region in members:  # once per region (a region may have two kernels)
                    evaluate_nodes(members.pop(step.region), env, dims, device)
            else:
                launch(step, kernels[step.kernel], env, dims, device)
    return env


def _bf16_dot_for_interpreter(active: bool) -> contextlib.AbstractContextManager[None]:
    from esperc.backend.triton import launcher

    return launcher.interpreter_fixes(active)
