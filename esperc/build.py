"""From optimised IR to a .kpkg: codegen, AOT compile per target, validation, packing, cache.

    func (kernel regions) -> generate (Triton module + plan) -> compile_kernel per (kernel,
    target) -> validate every kernel against the eager reference -> manifest + members ->
    write_kpkg (atomic) -> kernel cache

Nothing here prints: progress goes through a callback the CLI turns into a progress bar.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esperc import __version__

if TYPE_CHECKING:  # imported where used: a cache hit (package_from_cache) needs no IR
    from esperc.ir.graph import Func

Progress = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class BuildResult:
    """What a build produced (for the CLI's one-line summary and ``--json``)."""

    path: Path
    blueprint: str
    ir_hash: str
    targets: tuple[str, ...]
    kernels: list[dict[str, Any]]
    validation: dict[str, Any]
    seconds: float
    cache_hit: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "blueprint": self.blueprint,
            "ir_hash": self.ir_hash,
            "targets": list(self.targets),
            "kernels": self.kernels,
            "validation": self.validation,
            "seconds": round(self.seconds, 3),
            "cache_hit": self.cache_hit,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def one_line(self) -> str:
        status = self.validation.get("status", "skipped")
        hit = " (cache hit)" if self.cache_hit else ""
        return (
            f"wrote {self.path}: @{self.blueprint}, {len(self.kernels)} kernels x "
            f"{len(self.targets)} targets ({', '.join(self.targets)}), validation {status}, "
            f"{self.seconds:.2f} s{hit}"
        )


def generate_source(func: Func) -> str:
    """The generated Triton module of a partitioned function (``--emit triton``)."""
    from esperc.backend.triton.emitter import generate

    return generate(func).source


def _versions() -> dict[str, str]:
    import torch
    import triton

    return {
        "esperc_version": __version__,
        "triton_version": triton.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "python_version": platform.python_version(),
    }


def build_package(
    source_path: Path,
    func: Func,
    opts: Any,
    out: Path,
    progress: Progress | None = None,
    cache: Any = None,
    training: Any = None,
) -> BuildResult:
    """Compile ``func`` (already through the middle end) into a package at ``out``.

    Args:
        source_path: the .esp file (stored in the package as ``source.esp``).
        func: the optimised, partitioned function.
        opts: the driver's ``Options`` (targets, validate, blueprint, overrides).
        out: the package path; written atomically.
        progress: called as stages advance.
        cache: a ``KernelCache`` (or None): a hit copies the stored package to ``out``.
        training: a ``build_backward.TrainingFuncs`` (``--backward``): ``func`` is then its
            extended forward, and the package gets a ``[backward]`` part (``opts.backward``
            is then True: the cache key tells the two kinds of package apart).

    Raises:
        AotCompileError: Triton failed to compile a generated kernel (an esperc bug).
        ValueError: ``training`` given with ``opts.backward`` False.
    """
    start = time.perf_counter()
    report = progress or (lambda *_: None)
    source = Path(source_path).read_bytes()
    key = None
    if training is not None and not getattr(opts, "backward", False):
        raise ValueError("a training package needs opts.backward=True (it is in the cache key)")
    if cache is not None:
        from esperc.cache import CacheKey

        key = CacheKey.build(source, opts)
        blob = cache.get(key)
        if blob is not None:
            _write_bytes_atomic(out, blob)
            return _result_from_package(out, time.perf_counter() - start)
    from esperc.build_steps import assemble, compile_all, generate_all, validate_all

    timings: dict[str, float] = {}
    t = time.perf_counter()
    gen = generate_all(func)
    timings["codegen"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = compile_all(gen, opts.targets, report)
    timings["compile"] = time.perf_counter() - t
    t = time.perf_counter()
    validation = validate_all(func, gen, report) if opts.validate else {"status": "skipped"}
    timings["validate"] = time.perf_counter() - t
    manifest, members = assemble(func, gen, compiled, validation, source, opts, _versions())
    if training is not None:
        from esperc.build_backward import build_part

        table, extra = build_part(training, opts.targets, opts.validate, report, timings)
        manifest["outputs"] = manifest["outputs"][: training.plan.num_outputs]
        manifest["backward"] = table
        members.update(extra)
        if table["validation"].get("status") == "fail":
            validation = {**validation, "status": "fail"}
    from esperc.kpkg import pack_kpkg

    blob = pack_kpkg(manifest, members)
    _write_bytes_atomic(out, blob)
    if cache is not None and key is not None:
        cache.put(key, blob, {"blueprint": func.name, "source": str(source_path)})
    return BuildResult(
        out, func.name, _ir_hash(func), tuple(opts.targets), _kernel_rows(manifest), validation,
        time.perf_counter() - start, False, timings,
    )  # fmt: skip


def _ir_hash(func: Func) -> str:
    from esperc.ir.hashing import canonical_hash

    return canonical_hash(func)


def package_from_cache(cache: Any, source: bytes, opts: Any, out: Path) -> BuildResult | None:
    """Write the cached package of (source bytes, options) to ``out``; None on a miss."""
    from esperc.cache import CacheKey

    start = time.perf_counter()
    blob = cache.get(CacheKey.build(source, opts))
    if blob is None:
        return None
    _write_bytes_atomic(out, blob)
    return _result_from_package(out, time.perf_counter() - start)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    from esperc.kpkg.writer import write_atomic

    write_atomic(path, data)


def _result_from_package(path: Path, seconds: float) -> BuildResult:
    from esperc.kpkg import read_kpkg

    m = read_kpkg(path).manifest
    return BuildResult(
        path, m["blueprint"]["name"], m["blueprint"]["ir_hash"], tuple(m.get("targets", [])),
        _kernel_rows(m), m.get("validation", {}), seconds, True,
    )  # fmt: skip


def _kernel_rows(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """One summary row per kernel of a manifest, forward then backward (a training package)."""
    return [
        {"name": name, "region": k["region"], "kind": k["kind"],
         "validation": k.get("validation", {}).get("status", "skipped")}
        for name, k in [*manifest.get("kernels", {}).items(),
                        *manifest.get("backward", {}).get("kernels", {}).items()]
    ]  # fmt: skip
