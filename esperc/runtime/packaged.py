"""Kernel facts between the manifest and the launcher: ``CompiledKernel`` <-> TOML tables.

The manifest stores, per kernel and target, everything ``runtime.cubin`` needs to launch the
cubin (entry symbol, parameter layout, warps, shared memory, scratch sizes), so loading a package
never imports Triton.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from esperc.backend.triton.aot import ArgKind, CompiledKernel, KernelArg
from esperc.backend.triton.plan import KernelLaunch, Plan
from esperc.kpkg import Kpkg


def target_table(ck: CompiledKernel, cubin_member: str) -> dict[str, Any]:
    """The manifest table of one compiled kernel for one target."""
    t: dict[str, Any] = {
        "cubin": cubin_member,
        "entry": ck.name,
        "args": [
            {"name": a.name, "type": a.type, "kind": a.kind.value, "nbytes": a.nbytes,
             "divisible_by_16": a.divisible_by_16}
            for a in ck.args
        ],
        "num_warps": ck.num_warps,
        "num_ctas": ck.num_ctas,
        "num_stages": ck.num_stages,
        "shared_bytes": ck.shared,
        "global_scratch_size": ck.global_scratch_size,
        "global_scratch_align": ck.global_scratch_align,
        "profile_scratch_size": ck.profile_scratch_size,
        "profile_scratch_align": ck.profile_scratch_align,
        "cooperative": ck.launch_cooperative_grid,
        "pdl": ck.launch_pdl,
        "triton_version": ck.triton_version,
        "constexprs": {k: v for k, v in ck.constexprs},
    }  # fmt: skip
    if ck.n_regs is not None:
        t["registers"] = ck.n_regs
    if ck.frame_bytes is not None:
        t["spill_frame_bytes"] = ck.frame_bytes
    if ck.tmem_size is not None:
        t["tmem_size"] = ck.tmem_size
    return t


def compiled_kernel_from_manifest(pkg: Kpkg, name: str, kernel: dict, arch: str) -> CompiledKernel:
    """Rebuild the ``CompiledKernel`` of ``name`` for ``arch`` from its manifest table.

    Raises:
        KpkgError: the cubin member is missing or damaged (checksums are verified on read).
        KeyError: the table lacks a field (a malformed package).
    """
    t = kernel["targets"][arch]
    return CompiledKernel(
        cubin=pkg.member(t["cubin"]),
        name=t["entry"],
        args=tuple(
            KernelArg(
                a["name"],
                a["type"],
                ArgKind(a["kind"]),
                int(a["nbytes"]),
                bool(a["divisible_by_16"]),
            )
            for a in t["args"]
        ),  # fmt: skip
        constexprs=tuple(sorted(t.get("constexprs", {}).items())),
        target=arch,
        triton_version=t["triton_version"],
        num_warps=int(t["num_warps"]),
        num_ctas=int(t["num_ctas"]),
        num_stages=int(t["num_stages"]),
        shared=int(t["shared_bytes"]),
        global_scratch_size=int(t["global_scratch_size"]),
        global_scratch_align=int(t["global_scratch_align"]),
        profile_scratch_size=int(t["profile_scratch_size"]),
        profile_scratch_align=int(t["profile_scratch_align"]),
        launch_cooperative_grid=bool(t["cooperative"]),
        launch_pdl=bool(t["pdl"]),
        tmem_size=t.get("tmem_size"),
        n_regs=t.get("registers"),
        frame_bytes=t.get("spill_frame_bytes"),
        ptx="",
    )


# ----- autotuned variants: one cubin per distinct winning config, chosen by shape bucket -----
# Manifest (written by ``esperc autotune``, see docs/autotune.md): the kernel's own ``config`` and
# ``targets`` are the default variant; ``[kernels.<k>.variants.<v>]`` holds ``config`` and
# ``targets.<arch>`` (a ``target_table``) of each other variant; ``[kernels.<k>.dispatch]`` holds
# ``dims`` (the dynamic dims the kernel depends on), ``default`` and ``buckets.<bucket>.variant``.


def bucket_of(dims: Mapping[str, int], names: Iterable[str]) -> str:
    """The shape bucket of ``names`` at these dim values: each rounded up to a power of two,
    ``"B=64,S=1024"`` (the same text as ``esperc.tune.shape_bucket``)."""
    return ",".join(
        f"{n}={1 << max(int(dims[n]) - 1, 0).bit_length() if int(dims[n]) > 0 else 0}"
        for n in sorted(names)
    )


def _log2_distance(a: str, b: str) -> float:
    pa = dict(p.split("=") for p in a.split(",") if p)
    pb = dict(p.split("=") for p in b.split(",") if p)
    return sum(abs(math.log2(max(int(pa.get(k, 1)), 1)) - math.log2(max(int(pb.get(k, 1)), 1)))
               for k in pa.keys() | pb.keys())  # fmt: skip


def select_variant(kernel: Mapping[str, Any], dims: Mapping[str, int]) -> str | None:
    """The variant name a kernel's dispatch table picks for ``dims`` (None: no table).

    A bucket that was not tuned takes the nearest tuned bucket (log2 distance over the dims;
    ties go to the larger bucket, then to the smaller text), so every shape has a variant.
    """
    table = kernel.get("dispatch")
    if not table or not table.get("buckets"):
        return None
    buckets = table["buckets"]
    key = bucket_of(dims, table.get("dims", []))
    if key not in buckets:
        key = min(buckets, key=lambda b: (_log2_distance(key, b), -_volume(b), b))
    return str(buckets[key]["variant"])


def _volume(bucket: str) -> int:
    return math.prod(int(p.split("=")[1]) for p in bucket.split(",") if p)


def has_variants(manifest: Mapping[str, Any]) -> bool:
    """Whether any kernel has a dispatch table (an autotuned package with variants)."""
    kernels = manifest.get("kernels")
    return isinstance(kernels, dict) and any(
        isinstance(k, dict) and k.get("dispatch") for k in kernels.values()
    )


def dispatch_plan(
    pkg: Kpkg,
    manifest: Mapping[str, Any],
    plan: Plan,
    arch: str,
    dims: Mapping[str, int],
    kernels: Mapping[str, Any],
    make: Callable[[CompiledKernel], Any],
) -> tuple[Plan, dict[str, Any]]:
    """The plan and launchers for ``dims``: each kernel launch whose dispatch table picks a
    non-default variant gets that variant's constexprs/warps/stages (the grid depends on them)
    and its cubin (``make`` wraps a ``CompiledKernel`` into a launcher)."""
    steps = list(plan.steps)
    out = dict(kernels)
    for i, step in enumerate(steps):
        if not isinstance(step, KernelLaunch):
            continue
        entry = manifest.get("kernels", {}).get(step.kernel, {})
        v = select_variant(entry, dims)
        var = entry.get("variants", {}).get(v) if v else None
        if var is None or arch not in var.get("targets", {}):
            continue  # the default variant, or no cubin of the variant for this arch
        cfg = var["config"]
        steps[i] = replace(
            step, constexprs=tuple((k, cfg.get(k, val)) for k, val in step.constexprs),
            num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]),
        )  # fmt: skip
        out[step.kernel] = make(compiled_kernel_from_manifest(pkg, step.kernel, var, arch))
    return replace(plan, steps=tuple(steps)), out
