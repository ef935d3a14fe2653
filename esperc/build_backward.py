"""The backward part of a training package (``esperc compile --backward``).

    lowered func -> differentiate -> (extended forward, backward) -> trailing-axis reductions
    -> default pipeline on both -> the forward goes through ``build_package`` as usual; the
    backward is generated, compiled per target and validated here -> ``[backward]`` manifest
    table + members ``backward.eir``, ``backward_plan.json``, ``kernels/backward_module.py``
    and the backward cubins.

The extended forward returns the original results followed by the saved values; the manifest's
``outputs`` lists only the original results, ``[backward].saved`` the rest (docs/autodiff.md,
"Packaging and runtime").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esperc.backend.plan_io import plan_to_json
from esperc.ir.graph import Func, Node, make_attrs
from esperc.ir.hashing import canonical_hash
from esperc.ir.ops import REDUCTIONS, Op, infer_type
from esperc.ir.printer import print_func
from esperc.ir.types import SymDim, TensorType
from esperc.middle.autodiff import BackwardPlan, differentiate
from esperc.middle.pass_manager import PassContext, parse_pipeline, run_pipeline
from esperc.middle.registry import load_passes

Progress = Callable[[str, int, int], None]
NOMINAL_ROWS = 1024  # each dynamic dim's value for the manifest's ``saved_bytes`` (clamped)


@dataclass(frozen=True)
class TrainingFuncs:
    """A differentiated blueprint, both halves through the middle end.

    Attributes:
        plan: the plan as ``differentiate`` built it (unoptimised; names, wrt, saved).
        forward: ``plan.forward`` after the pipeline: original results, then saved values.
        backward: ``plan.backward`` after the pipeline: ``(*saved, *grad_outputs) -> grads``.
    """

    plan: BackwardPlan
    forward: Func
    backward: Func


def prepare(func: Func, opts: Any) -> TrainingFuncs:
    """Differentiate a lowered (not yet optimised) function and optimise both halves.

    Args:
        func: ``driver.lower``'s output.
        opts: the driver's ``Options`` (pipeline, first target, verify_each, after_pass).

    Raises:
        AutodiffError: a gradient the rules cannot express (see ``differentiate``).
        DiagnosticError: a bad pipeline or a pass diagnostic.
    """
    plan = differentiate(func)
    pipeline = opts.pipeline
    passes = parse_pipeline(pipeline, load_passes()) if pipeline.strip() else []
    target = opts.targets[0] if opts.targets else "sm_90"

    def run(f: Func) -> Func:
        ctx = PassContext(target=target, verify_each=opts.verify_each, after_pass=opts.after_pass)
        return run_pipeline(trailing_reductions(f), passes, ctx)

    return TrainingFuncs(plan, run(plan.forward), run(plan.backward))


def trailing_reductions(func: Func) -> Func:
    """Rewrite each reduction over non-trailing axes (a bias gradient sums over the batch,
    axis 0) as permute (reduced axes last) -> reshape (one reduced axis) -> reduction over the
    last axis -> reshape to the original result: the Triton templates reduce rows only.

    Preserves: values and names of every original result. Requires: a verified function.
    """
    used = {a.name for a in func.args} | {n.result for n in func.body}
    types = func.types()
    body: list[Node] = []
    for n in func.body:
        if n.op not in REDUCTIONS:
            body.append(n)
            continue
        rank = types[n.operands[0]].rank
        axes = tuple(n.attr("axis"))  # type: ignore[arg-type]
        if axes == tuple(range(rank - len(axes), rank)):
            body.append(n)
            continue
        body.extend(_to_trailing(n, types[n.operands[0]], axes, used))
    return func.with_body(body)


def _to_trailing(n: Node, t: TensorType, axes: tuple[int, ...], used: set[str]) -> list[Node]:
    shape = t.shape
    kept = [i for i in range(len(shape)) if i not in axes]
    out: list[Node] = []

    def emit(op: Op, operand: str, attrs: Mapping[str, Any], result: str | None = None) -> str:
        name = result
        if name is None:
            name = f"{n.result}.{op.value}"
            while name in used:
                name += "_"
            used.add(name)
        a = make_attrs(attrs)
        rt = infer_type(op, [types_of[operand]], dict(a))
        types_of[name] = rt
        out.append(Node(name, op, (operand,), a, rt, n.loc))
        return name

    types_of = {n.operands[0]: t}
    v = emit(Op.PERMUTE, n.operands[0], {"dims": [*kept, *axes]})
    if len(axes) > 1:
        size: Any = 1
        for i in axes:
            size = shape[i] * size if isinstance(shape[i], SymDim) else size * shape[i]
        v = emit(Op.RESHAPE, v, {"shape": [*(shape[i] for i in kept), size]})
    attrs = {**n.attr_dict, "axis": [len(kept)], "keepdim": True}
    v = emit(n.op, v, attrs)
    emit(Op.RESHAPE, v, {"shape": list(n.type.shape)}, result=n.result)
    return out


def nominal_dims(func: Func) -> dict[str, int]:
    """Each dynamic dim at ``NOMINAL_ROWS``, clamped to its declared range."""
    return {d.name: min(max(NOMINAL_ROWS, d.lo), d.hi) for d in func.dims}


def build_part(
    tf: TrainingFuncs,
    targets: Sequence[str],
    validate: bool,
    progress: Progress,
    timings: dict[str, float],
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Generate, compile and validate the backward; returns the ``[backward]`` manifest table
    and its members.

    Raises:
        AotCompileError / CodegenError: a backward kernel Triton or the templates cannot build
            (an esperc bug).
    """
    from esperc.build_steps import compile_all, generate_all, kernel_entries, validate_all

    t = time.perf_counter()
    gen = generate_all(tf.backward)
    timings["codegen_backward"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = compile_all(gen, targets, progress)
    timings["compile_backward"] = time.perf_counter() - t
    t = time.perf_counter()
    validation = validate_all(tf.backward, gen, progress) if validate else {"status": "skipped"}
    timings["validate_backward"] = time.perf_counter() - t
    module = "kernels/backward_module.py"
    kernels, members = kernel_entries(tf.backward, gen, compiled, validation, targets, module)
    members.update({
        "backward.eir": print_func(tf.backward).encode(),
        "backward_plan.json": plan_to_json(gen.plan).encode(),
        module: gen.source.encode(),
    })  # fmt: skip
    plan = tf.plan
    dims = nominal_dims(tf.forward)
    table: dict[str, Any] = {
        "name": tf.backward.name,
        "ir": "backward.eir",
        "ir_hash": canonical_hash(tf.backward),
        "plan": "backward_plan.json",
        "module": module,
        "saved": list(plan.saved),
        "num_outputs": plan.num_outputs,
        "wrt": list(plan.wrt),
        "grad_outputs": list(plan.grad_outputs),
        "saved_bytes": {
            "dims": dims,
            "bytes": plan.saved_bytes(dims),
            "beyond_args": plan.saved_bytes(dims, include_args=False),
        },
        "validation": {k: v for k, v in validation.items() if k != "kernels"},
        "kernels": kernels,
    }
    return table, members
