"""The steps of ``build.build_package``: generate, compile per target, validate, assemble."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from esperc.backend.plan_io import plan_to_json
from esperc.backend.triton.aot import CompiledKernel, KernelSpec, compile_kernel
from esperc.backend.triton.plan import GeneratedModule, KernelLaunch
from esperc.ir.graph import Func
from esperc.ir.hashing import canonical_hash
from esperc.ir.numerics import region_tolerances, rel_err, tolerance
from esperc.ir.printer import format_value, print_func
from esperc.ir.types import SymDim

Progress = Callable[[str, int, int], None]


def generate_all(func: Func) -> GeneratedModule:
    from esperc.backend.triton.emitter import generate

    return generate(func)


def member_stem(kernel: str) -> str:
    """A member-name-safe stem for a kernel name (lower case, ``[a-z0-9_]``)."""
    stem = re.sub(r"[^a-z0-9_]", "_", kernel.lower())
    return stem if stem[:1].isalpha() else f"k_{stem}"


def compile_all(
    gen: GeneratedModule, targets: Sequence[str], progress: Progress
) -> dict[tuple[str, str], CompiledKernel]:
    """Every kernel for every target, with Triton's own compiler (no GPU needed)."""
    specs = [
        (k.name, t, KernelSpec(
            source=gen.source, kernel_name=k.name, signature=k.signature,
            constexprs=k.constexprs, target=t, num_warps=k.launch.num_warps,
            num_stages=k.launch.num_stages, divisible_by_16=tuple(k.divisible_by_16),
        ))
        for t in targets for k in gen.kernels
    ]  # fmt: skip
    out: dict[tuple[str, str], CompiledKernel] = {}
    for i, (name, target, spec) in enumerate(specs):
        progress(f"compile {name} for {target}", i, len(specs))
        out[(name, target)] = compile_kernel(spec)
    progress("compiled", len(specs), len(specs))
    return out


def validation_dims(func: Func) -> list[dict[str, int]]:
    """A few values of the dynamic dims inside their ranges: small, odd, and the lower bound."""
    from esperc.ir.interpreter import small_dims

    base = small_dims(func)
    cases = [base]
    for prefer in ((5, 3, 7, 9, 1), (1, 2, 3, 4)):
        try:
            d = small_dims(func, prefer=prefer)
        except ValueError:
            continue
        if d not in cases:
            cases.append(d)
    return cases[:3]


def validate_all(func: Func, gen: GeneratedModule, progress: Progress) -> dict[str, Any]:
    """Run every kernel in Triton's interpreter and compare each output with the eager reference.

    Each kernel is checked alone: its inputs are the reference values (not the outputs of the
    kernels before it), so errors do not compound along the plan. Each output is held to the
    bound of its region's least precise value (``numerics.region_tolerances``: an f32 statistic
    of a bf16 value is only as close as bf16 allows). A column reduction's partials are checked
    through its finishing kernel, which reads the partials the region's kernel just wrote.

    Returns the manifest's ``validation`` table: overall ``status``, the shapes tried and, per
    kernel, ``status``/``rel_err``/``tolerance`` (kept under ``kernels``).
    """
    import torch

    from esperc.backend.triton.launcher import interpreter_fixes, launch
    from esperc.ir.interpreter import check_guards, evaluate_all, random_inputs
    from esperc.runtime.executor import load_interpreted

    kernels = load_interpreted(gen.source)
    per_kernel: dict[str, dict[str, Any]] = {}
    cases = validation_dims(func)
    types = func.types()
    loosest = region_tolerances(func)
    for ci, dims in enumerate(cases):
        progress(f"validate {dims}", ci, len(cases))
        inputs = random_inputs(func, dims, seed=ci)
        ref = evaluate_all(func, inputs)
        bound = check_guards(func, inputs)
        partials: dict[str, Any] = {}
        with interpreter_fixes(True):
            for step in gen.plan.steps:
                if not isinstance(step, KernelLaunch):
                    continue
                env = {**ref, **partials}
                launch(step, kernels[step.kernel], env, bound, torch.device("cpu"))
                row = per_kernel.setdefault(step.kernel, {"status": "pass", "rel_err": 0.0})
                for a in step.allocs:
                    if a.partial_of:  # checked through the finishing kernel's result
                        partials[a.value] = env[a.value]
                        continue
                    err = rel_err(env[a.value], ref[a.value])
                    tol = max(tolerance(types[a.value].dtype), loosest.get(step.region, 0.0))
                    row["rel_err"] = max(row["rel_err"], err)
                    row["tolerance"] = max(row.get("tolerance", 0.0), tol)
                    if not err <= tol:
                        row["status"] = "fail"
    progress("validated", len(cases), len(cases))
    for row in per_kernel.values():
        row["rel_err"] = float(f"{min(row['rel_err'], 1e300):.3e}")
    status = "pass" if all(r["status"] == "pass" for r in per_kernel.values()) else "fail"
    return {
        "status": status,
        "mode": "triton-interpreter",
        "shapes": [[f"{k}={v}" for k, v in sorted(d.items())] for d in cases],
        "kernels": per_kernel,
    }


def _dims_list(shape: Sequence[Any]) -> list[Any]:
    return [str(d) if isinstance(d, SymDim) else d for d in shape]


def assemble(
    func: Func,
    gen: GeneratedModule,
    compiled: dict[tuple[str, str], CompiledKernel],
    validation: dict[str, Any],
    source: bytes,
    opts: Any,
    versions: dict[str, str],
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and members of the package (see docs/kpkg.md for the schema)."""
    members: dict[str, bytes] = {
        "source.esp": source,
        "ir.eir": print_func(func).encode(),
        "plan.json": plan_to_json(gen.plan).encode(),
        "kernels/module.py": gen.source.encode(),
    }
    kernels, cubins = kernel_entries(func, gen, compiled, validation, opts.targets)
    members.update(cubins)
    manifest: dict[str, Any] = {
        **versions,
        "blueprint": {
            "name": func.name,
            "ir_hash": canonical_hash(func),
            "source": "source.esp",
            "ir": "ir.eir",
            "overrides": dict(opts.overrides),
        },
        "module": "kernels/module.py",
        "plan": "plan.json",
        "targets": list(opts.targets),
        "inputs": [_arg_row(a) for a in func.inputs],
        "params": [_arg_row(a) for a in func.params],
        "outputs": [
            {"name": r, "dtype": t.dtype.value, "shape": _dims_list(t.shape)}
            for r, t in zip(func.results, func.result_types())
        ],
        "guards": _guards(func),
        "kernels": kernels,
        "validation": {k: v for k, v in validation.items() if k != "kernels"},
        "perf": [],
    }
    return manifest, members


def kernel_entries(
    func: Func,
    gen: GeneratedModule,
    compiled: dict[tuple[str, str], CompiledKernel],
    validation: dict[str, Any],
    targets: Sequence[str],
    module_member: str = "kernels/module.py",
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest's ``kernels`` table of ``gen`` and its cubin members (forward or backward:
    kernel names, hence member stems, of a backward function start with ``<name>_backward``)."""
    from esperc.runtime.packaged import target_table

    members: dict[str, bytes] = {}
    regions = {r.name: r for r in func.regions}
    kernels: dict[str, Any] = {}
    vk = validation.get("kernels", {})
    for k in gen.kernels:
        stem = member_stem(k.name)
        region = regions.get(k.region)
        entry: dict[str, Any] = {
            "region": k.region,
            "kind": k.kind,
            "source": module_member,
            "config": {**{n: v for n, v in k.constexprs.items()},
                       "num_warps": k.launch.num_warps, "num_stages": k.launch.num_stages},
            "signature": dict(k.signature),
            "targets": {},
        }  # fmt: skip
        if region is not None:
            entry["region_attrs"] = {n: format_value(v) for n, v in region.attrs}
        if k.name in vk:
            entry["validation"] = vk[k.name]
        for target in targets:
            ck = compiled[(k.name, target)]
            member = f"kernels/{stem}.{target}.cubin"
            members[member] = ck.cubin
            entry["targets"][target] = target_table(ck, member)
        kernels[k.name] = entry
    return kernels, members


def _arg_row(a: Any) -> dict[str, Any]:
    return {"name": a.name, "dtype": a.type.dtype.value, "shape": _dims_list(a.type.shape)}


def _guards(func: Func) -> dict[str, Any]:
    from esperc.ir.dimexpr import to_str

    return {
        "dims": {d.name: [d.lo, d.hi] for d in func.dims},
        "require": [to_str(r.expr) for r in func.requires],
        "dtypes": {a.name: a.type.dtype.value for a in func.args},
        "contiguous": "inputs are made contiguous by the launcher when they are not",
        "aligned": "misaligned (not 16-byte) inputs are copied before launch",
    }
