"""Execute a launch plan with PyTorch and Triton's JIT launch (``kernel[grid](...)``).

This is the reference executor of a ``GeneratedModule``: it binds dims from the input shapes,
allocates intermediates and outputs (``torch.empty``), applies view regions as torch ops
(``reshape`` -> ``Tensor.reshape``, ``permute``, ``transpose``, ``slice`` -> indexing, ``concat``
-> ``torch.cat``, ``broadcast_to`` -> ``Tensor.expand``), and launches each kernel. On a CPU with
``TRITON_INTERPRET=1`` the kernels run in Triton's interpreter. The runtime replaces the JIT
launch with packaged cubins but follows the same plan.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from esperc.backend.triton.plan import (
    Alloc,
    DimArg,
    GeneratedModule,
    KernelLaunch,
    Plan,
    StrideArg,
    TensorArg,
    ViewOp,
    eval_expr,
    eval_grid,
)
from esperc.ir.graph import Func, Node
from esperc.ir.ops import Op
from esperc.ir.types import DType, eval_dim

TORCH_DTYPE = {
    DType.F16: torch.float16,
    DType.BF16: torch.bfloat16,
    DType.F32: torch.float32,
    DType.I32: torch.int32,
    DType.I64: torch.int64,
    DType.BOOL: torch.bool,
}


def load_module(source: str) -> dict[str, Any]:
    """Execute generated module source; returns its globals (the jit functions by name).

    The source is registered in ``linecache`` (Triton reads kernel source with ``inspect``).
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = f"<esperc-generated-{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"_esperc_gen_{digest}")
    module.__file__ = filename
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 (our own codegen)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def import_triton_normally() -> None:
    """Import Triton (and the parts it imports lazily while interpreting) outside interpreter
    mode. Imported first under ``TRITON_INTERPRET=1``, ``triton.language``'s own jit functions
    (``tl.max``...) are made interpreter functions for good and every later compile in the
    process fails; its gluon package is built wrongly too. Call this before setting the
    variable."""
    import importlib

    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        import triton  # noqa: F401

        try:
            importlib.import_module("triton.experimental.gluon")
        except ImportError:  # older Triton releases have no gluon
            pass
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def bind_dims(plan: Plan, func: Func, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Dim values from the input shapes, checked against every argument's type.

    Raises:
        ValueError: a missing input, a shape that contradicts the bound dims, or a dim out of its
            declared range.
    """
    dims: dict[str, int] = {}
    for b in plan.bindings:
        dims[b.dim] = int(inputs[b.value].shape[b.axis])
    for a in func.args:
        if a.name not in inputs:
            raise ValueError(f"missing argument '{a.name}'")
        want = tuple(eval_dim(d, dims) for d in a.type.shape)
        got = tuple(inputs[a.name].shape)
        if want != got:
            raise ValueError(f"argument '{a.name}' has shape {list(got)}, expected {list(want)}")
    for d in func.dims:
        if d.name in dims and not d.lo <= dims[d.name] <= d.hi:
            raise ValueError(f"dim {d.name}={dims[d.name]} is outside [{d.lo}, {d.hi}]")
    return dims


def run_generated(
    gen: GeneratedModule,
    func: Func,
    inputs: Mapping[str, torch.Tensor],
    kernels: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Run ``gen`` on ``inputs`` (every argument by name); returns the function's results.

    ``kernels`` are the loaded jit functions (``load_module(gen.source)``), loaded when None.
    """
    kernels = kernels if kernels is not None else load_module(gen.source)
    plan = gen.plan
    dims = bind_dims(plan, func, inputs)
    env: dict[str, torch.Tensor] = dict(inputs)
    device = next(iter(inputs.values())).device if inputs else torch.device("cpu")
    for value, dtype, lit in plan.constants:
        env[value] = torch.tensor(lit, dtype=TORCH_DTYPE[DType(dtype)], device=device)
    interpreted = any(type(k).__name__ == "InterpretedFunction" for k in kernels.values())
    with interpreter_fixes(interpreted):
        for step in plan.steps:
            if isinstance(step, ViewOp):
                env[step.result] = apply_view(step, env, dims)
            else:
                launch(step, kernels[step.kernel], env, dims, device)
    return tuple(env[r] for r in plan.results)


@contextmanager
def interpreter_fixes(active: bool) -> Iterator[None]:
    """Work around two Triton interpreter bugs while interpreting (compiled kernels unaffected).

    * bf16 ``tl.dot`` operands are multiplied as raw bits (unsupported upstream,
      triton-lang/triton#11584): upcast them to fp32 first, as the tensor cores do.
    * fp32 -> bf16 conversions truncate (``cast_impl`` passes no rounding mode): round to
      nearest even, as the GPU and PyTorch do.
    * ``tl.standard`` functions (``tl.sum``, ``tl.sigmoid``...) are interpreted only if Triton
      was imported under ``TRITON_INTERPRET=1``: interpret them for the run whatever the import
      order was. And calling them leaves ``triton.language`` builtins patched to the
      interpreter, so a later ``triton.compile`` in the process fails: restore those modules.
    """
    if not active:
        yield
        return
    import triton.language as tl
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    modules = (tl, tl.core, tl.math, tl.standard)
    # classes whose attributes the interpreter patches (Triton 3.9 leaks the patches of a
    # device-function call: ``InterpretedFunction.__call__`` never restores its scope)
    classes = tuple(
        c for c in (tl.core.tensor, tl.core.dtype, getattr(tl, "condition", None),
                    getattr(tl.core, "tensor_descriptor_base", None))
        if isinstance(c, type)
    )  # fmt: skip
    saved = [dict(vars(m)) for m in modules + classes]
    wrapped: dict[int, Any] = {}
    for m in modules:
        for name, value in list(vars(m).items()):
            if isinstance(value, JITFunction):
                new = wrapped.setdefault(id(value), interpreter.InterpretedFunction(value.fn))
                setattr(m, name, new)
    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def create_dot(self, a, b, d, *rest):  # noqa: ANN001, ANN202
        a, b = (
            self.cast_impl(x, tl.float32) if x.dtype.scalar == tl.bfloat16 else x for x in (a, b)
        )
        return original(self, a, b, d, *rest)

    original_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):  # noqa: ANN001, ANN202
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            # Triton 3.9 truncates here; the GPU (and PyTorch) round to nearest even
            f32 = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            bits = f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(bits.reshape(np.shape(src.data)), tl.bfloat16)
        return original_cast(self, src, dst_type)

    builder.create_dot = create_dot  # type: ignore[method-assign]
    builder.cast_impl = cast_impl  # type: ignore[method-assign]
    try:
        yield
    finally:
        builder.create_dot = original  # type: ignore[method-assign]
        builder.cast_impl = original_cast  # type: ignore[method-assign]
        for m, before in zip(modules + classes, saved):
            for name, value in list(vars(m).items()):
                if name in before and before[name] is not value:
                    setattr(m, name, before[name])
                elif name not in before and isinstance(m, type):
                    delattr(m, name)  # e.g. tensor.__bool__: a compile would call it
                # names the interpreter added to a module (globals of rewritten functions) stay


def apply_view(step: ViewOp, env: Mapping[str, torch.Tensor], dims: Mapping[str, int]):  # noqa: ANN201
    """One launcher-side view region op, in torch."""
    attrs = dict(step.attrs)
    x = env[step.operands[0]]
    if step.op == "reshape":
        return x.reshape([eval_expr(d, dims) for d in attrs["shape"]])  # type: ignore[union-attr]
    if step.op == "broadcast_to":
        return x.expand([eval_expr(d, dims) for d in attrs["shape"]])  # type: ignore[union-attr]
    if step.op == "transpose":
        return x.transpose(attrs["dim0"], attrs["dim1"])  # type: ignore[arg-type]
    if step.op == "permute":
        return x.permute(list(attrs["dims"]))  # type: ignore[call-overload]
    if step.op == "slice":
        axis = int(attrs["axis"]) % x.dim()  # type: ignore[call-overload]
        index = [slice(None)] * axis + [slice(attrs["start"], attrs["end"])]
        return x[tuple(index)]
    if step.op == "concat":
        return torch.cat([env[o] for o in step.operands], dim=attrs["axis"])  # type: ignore[arg-type]
    raise ValueError(f"unknown view op '{step.op}'")


def prepare_launch(
    step: KernelLaunch,
    env: dict[str, torch.Tensor],
    dims: Mapping[str, int],
    device: torch.device,
) -> tuple[tuple[int, ...], list[Any], dict[str, Any]]:
    """Allocate the kernel's outputs into ``env``; return ``(grid, args, keyword args)`` of
    ``fn[grid](*args, **kwargs)`` (constexprs, num_warps, num_stages)."""
    for a in step.allocs:
        shape = [eval_expr(d, dims) for d in a.shape]
        env[a.value] = torch.empty(shape, dtype=TORCH_DTYPE[DType(a.dtype)], device=device)
    prepared: dict[tuple[str, bool], torch.Tensor] = {}

    def tensor(value: str, layout: str, transpose_last: bool) -> torch.Tensor:
        key = (value, transpose_last)
        if key not in prepared:
            t = env[value]
            if transpose_last:
                t = t.transpose(-1, -2)
            if layout == "contiguous" or (t.dim() and t.stride(-1) != 1):
                t = t.contiguous()  # a no-op for the outputs, which were allocated contiguous
            prepared[key] = t
        return prepared[key]

    args: list[Any] = []
    for arg in step.args:
        if isinstance(arg, TensorArg):
            args.append(tensor(arg.value, arg.layout, arg.transpose_last))
        elif isinstance(arg, DimArg):
            args.append(eval_expr(arg.expr, dims))
        elif isinstance(arg, StrideArg):
            args.append(tensor(arg.value, "strided", arg.transpose_last).stride(arg.axis))
    constexprs = dict(step.constexprs)
    grid = eval_grid(step.grid, dims, constexprs)
    return grid, args, {**constexprs, "num_warps": step.num_warps, "num_stages": step.num_stages}


def fold_partials(part: torch.Tensor, node: Node, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """What a column reduction's partials buffer ``[P, C]`` stands for (``kernels/colsum.py``):
    its combine over ``P`` (sum, max, min; a mean divides the sum by the reduced count, read off
    the operand's shape in ``env``), shaped as ``node``'s result."""
    if node.op is Op.REDUCE_MAX:
        out = part.amax(0)
    elif node.op is Op.REDUCE_MIN:
        out = part.amin(0)
    else:
        out = part.sum(0)
    if node.op is Op.REDUCE_MEAN:
        operand = env[node.operands[0]]
        out = out / (operand.numel() // max(1, out.numel()))
    return out.reshape(env[node.result].shape) if node.result in env else out


def random_partials(alloc: Alloc, dims: Mapping[str, int], device: torch.device) -> torch.Tensor:
    """A partials buffer of ``alloc``'s shape filled with standard-normal values (integers:
    small ones), to check a finishing kernel on its own."""
    shape = [eval_expr(d, dims) for d in alloc.shape]
    dtype = TORCH_DTYPE[DType(alloc.dtype)]
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    return torch.randint(-8, 8, shape, device=device, dtype=dtype)


def launch(
    step: KernelLaunch,
    fn: Any,
    env: dict[str, torch.Tensor],
    dims: Mapping[str, int],
    device: torch.device,
) -> None:
    """Allocate the kernel's outputs and launch it through Triton's JIT (``fn[grid](...)``)."""
    grid, args, kwargs = prepare_launch(step, env, dims, device)
    fn[grid](*args, **kwargs)
