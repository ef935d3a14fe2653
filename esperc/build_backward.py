"""The backward part of a training package (``esperc compile --backward``).

    lowered func -> differentiate -> (extended forward, backward) -> default pipeline on both
    -> the forward goes through ``build_package`` as usual; the backward is generated,
    compiled per target and validated here -> ``[backward]`` manifest table + members
    ``backward.eir``, ``backward_plan.json``, ``kernels/backward_module.py`` and the backward
    cubins.

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
from esperc.ir.graph import Func
from esperc.ir.hashing import canonical_hash
from esperc.ir.printer import print_func
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
        return run_pipeline(f, passes, ctx)

    return TrainingFuncs(plan, run(plan.forward), run(plan.backward))


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
    from esperc.build_steps import compile_all, generate_all, validate_all

    t = time.perf_counter()
    gen = generate_all(tf.backward)
    timings["codegen_backward"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = compile_all(gen, targets, progress)
    timings["compile_backward"] = time.perf_counter() - t
    t = time.perf_counter()
    validation = validate_all(tf.backward, gen, progress) if validate else {"status": "skipped"}
    timings["validate_backward"] = time.perf_counter() - t
    return part_table(plan_fields(tf), tf.backward, gen, compiled, validation, targets)


def plan_fields(tf: TrainingFuncs) -> dict[str, Any]:
    """The ``[backward]`` table's fields that describe the differentiation (names, saved values,
    their bytes at ``nominal_dims``), not the kernels."""
    plan = tf.plan
    dims = nominal_dims(tf.forward)
    return {
        "name": tf.backward.name,
        "saved": list(plan.saved),
        "num_outputs": plan.num_outputs,
        "wrt": list(plan.wrt),
        "grad_outputs": list(plan.grad_outputs),
        "saved_bytes": {
            "dims": dims,
            "bytes": plan.saved_bytes(dims),
            "beyond_args": plan.saved_bytes(dims, include_args=False),
        },
    }


def part_table(
    fields: Mapping[str, Any],
    backward: Func,
    gen: Any,
    compiled: Mapping[tuple[str, str], Any],
    validation: Mapping[str, Any],
    targets: Sequence[str],
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The ``[backward]`` table (``fields`` + members, kernels, validation) and its members for
    the generated backward ``gen`` (a ``GeneratedModule``) and its cubins ``compiled``: used by
    compiles (``build_part``) and by autotune (tuned backward kernels)."""
    from esperc.build_steps import kernel_entries

    module = "kernels/backward_module.py"
    kernels, members = kernel_entries(backward, gen, compiled, validation, targets, module)
    members.update({
        "backward.eir": print_func(backward).encode(),
        "backward_plan.json": plan_to_json(gen.plan).encode(),
        module: gen.source.encode(),
    })  # fmt: skip
    table: dict[str, Any] = {
        **fields,
        "ir": "backward.eir",
        "ir_hash": canonical_hash(backward),
        "plan": "backward_plan.json",
        "module": module,
        "validation": {k: v for k, v in validation.items() if k != "kernels"},
        "kernels": kernels,
    }
    return table, members
