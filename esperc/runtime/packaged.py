"""Kernel facts between the manifest and the launcher: ``CompiledKernel`` <-> TOML tables.

The manifest stores, per kernel and target, everything ``runtime.cubin`` needs to launch the
cubin (entry symbol, parameter layout, warps, shared memory, scratch sizes), so loading a package
never imports Triton.
"""

from __future__ import annotations

from typing import Any

from esperc.backend.triton.aot import ArgKind, CompiledKernel, KernelArg
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
