"""An autotuned package: the tuning run, then the default variant assembled like a compile, with
the other variants, dispatch tables, ``[[perf]]`` rows and ``[tuning]`` provenance added.

The build steps (``build_steps.assemble``/``validate_all``) live above this layer, so the CLI
hands them in (``Hooks``). A package whose tuning decisions were all answered from the perf DB
is copied from the autotune cache (``<cache>/autotune/<digest>.kpkg``, keyed by the IR, the
source, the decisions and the tool versions) instead of being compiled again: a repeated
autotune imports neither torch nor triton.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esperc.backend.triton.configs import Config
from esperc.ir.graph import Func
from esperc.ir.hashing import canonical_hash
from esperc.tune.autotune import Progress, TuneOptions, TuneRun, compile_winners, tune
from esperc.tune.measure import GpuIdentity
from esperc.tune.perfdb import PerfDB, Versions, parse_bucket
from esperc.tune.space import config_dict


@dataclass(frozen=True)
class Hooks:
    """The build steps the package needs, from the layer above (``esperc.build_steps``).

    Attributes:
        assemble: ``assemble(func, gen, compiled, validation, source, opts, versions)``.
        versions: the toolchain versions for the manifest (``build._versions``).
        validate: ``validate_all(func, gen, progress)`` for an untuned package (None: skip).
    """

    assemble: Callable[..., tuple[dict[str, Any], dict[str, bytes]]]
    versions: Callable[[], dict[str, str]]
    validate: Callable[..., dict[str, Any]] | None = None
    # ``backward_part(fields, func, gen, compiled, validation, targets)`` -> the ``[backward]``
    # table and its members (``build_backward.part_table``), for training packages
    backward_part: Callable[..., tuple[dict[str, Any], dict[str, bytes]]] | None = None


@dataclass(frozen=True)
class Training:
    """The backward half of a training package: tuned like the forward, packed as
    ``[backward]``.

    Attributes:
        backward: the optimised backward function (kernel regions).
        fields: the ``[backward]`` table's plan fields (``build_backward.plan_fields``).
    """

    backward: Func
    fields: dict[str, Any]


@dataclass(frozen=True)
class _BuildOpts:
    targets: tuple[str, ...]
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """What ``autotune_package`` did (for the CLI's line and ``--json``)."""

    path: Path
    run: TuneRun
    cached: bool
    seconds: float
    tuning: dict[str, Any]
    perf: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "tuned": self.run.tuned, "cached": self.cached,
                "seconds": round(self.seconds, 3), "measured": self.run.measured,
                "rows_from_db": self.run.from_db, "tuning": self.tuning, "perf": self.perf,
                "dispatch": {k.info.name: k.table.to_manifest() for k in self.run.kernels}}  # fmt: skip

    def one_line(self) -> str:
        state = "tuned" if self.run.tuned else "untuned"
        hit = f", neighbour hit rate {self.run.hit_rate:.0%}" if self.run.hit_rate is not None \
            else ""  # fmt: skip
        return (f"wrote {self.path}: {len(self.run.kernels)} kernels {state}, "
                f"{self.run.measured} candidates measured, {self.run.from_db} rows from the perf "
                f"DB{hit}, {self.seconds:.2f} s{' (cached package)' if self.cached else ''}")  # fmt: skip


def load_package_input(path: Path) -> tuple[Func, bytes, dict[str, str], Training | None]:
    """The IR, source bytes, overrides and (a training package) backward of an existing
    package, to tune it again.

    Raises:
        KpkgError: the file is not a readable package.
    """
    from esperc.ir.parser import parse_func
    from esperc.kpkg import read_kpkg

    pkg = read_kpkg(path, verify=True)
    m = pkg.manifest
    func = parse_func(pkg.member(m["blueprint"]["ir"]).decode("utf-8"), "ir.eir")
    source = pkg.member(m["blueprint"]["source"])
    training = None
    if "backward" in m:
        table = m["backward"]
        backward = parse_func(pkg.member(table["ir"]).decode("utf-8"), "backward.eir")
        kept = ("name", "saved", "num_outputs", "wrt", "grad_outputs", "saved_bytes")
        training = Training(backward, {k: table[k] for k in kept if k in table})
    return func, source, dict(m["blueprint"].get("overrides", {})), training


def default_configs(run: Any) -> dict[str, Config]:
    """Region name -> the default variant's config (what the package's plan launches)."""
    return {k.info.region: k.table.default() for k in run.kernels if not k.info.default.finishes}


def perf_rows(run: Any, target: str) -> list[dict[str, Any]]:
    """The manifest's ``[[perf]]`` rows: one per kernel, target and bucket (ms, p95, GB/s and
    TFLOP/s where measured; the model's ``predicted_ms`` always)."""
    from esperc.tune.costmodel import problem, throughput

    out = []
    for k in run.kernels:
        for b, e in sorted(k.table.entries.items()):
            dims = dict(e.shape) or parse_bucket(b)
            row: dict[str, Any] = {"kernel": k.info.name, "target": target, "bucket": b,
                                   "shape": dims, "config": config_dict(e.config),
                                   "variant": k.table.variant_of(e.config), "status": e.status}  # fmt: skip
            if e.p50_ms is not None:
                row.update(ms=round(e.p50_ms, 6), p95_ms=round(e.p95_ms or e.p50_ms, 6),
                           **throughput(problem(k.info, dims), e.p50_ms))  # fmt: skip
            if e.predicted_ms is not None:
                row["predicted_ms"] = round(e.predicted_ms, 6)
            out.append(row)
    return out


def decisions(run: Any, target: str) -> dict[str, Any]:
    """Everything the package's kernels depend on besides the IR: per kernel, its hash and
    dispatch table. A digest of this (with the IR and tool versions) names a cached package."""
    return {"target": target, "tuned": run.tuned,
            "kernels": {k.info.name: {"hash": k.info.hash, "dispatch": k.table.to_manifest()}
                        for k in run.kernels}}  # fmt: skip


def add_variants(manifest: dict[str, Any], members: dict[str, bytes], run: Any,
                 target: str) -> None:  # fmt: skip
    """Add each kernel's dispatch table and non-default variants (cubins as members) to a
    manifest assembled for the default variants."""
    from esperc.runtime.packaged import target_table

    for k in run.kernels:
        entry = manifest["kernels"][k.info.name]
        entry["dispatch"] = k.table.to_manifest()
        stem = entry["targets"][target]["cubin"].removeprefix("kernels/").split(".")[0]
        variants = {}
        for v, cfg in k.table.variants().items():
            if v == "v0":
                continue
            member = f"kernels/{stem}_{v}.{target}.cubin"
            members[member] = k.compiled[v].cubin
            variants[v] = {"config": config_dict(cfg),
                           "targets": {target: target_table(k.compiled[v], member)}}  # fmt: skip
        if variants:
            entry["variants"] = variants


def provenance(run: Any, opts: Any, gpu: Any, versions: Any) -> dict[str, Any]:
    """The manifest's ``[tuning]`` table: how the result was obtained."""
    out: dict[str, Any] = {
        "tuned": run.tuned,
        "status": "tuned" if run.tuned else "untuned",
        "target": opts.target,
        "shapes": [dict(s) for s in opts.shapes],
        "seed": opts.seed,
        "budget_s": opts.budget_s,
        "budget_exhausted": run.budget_exhausted,
        "seconds": round(run.seconds, 3),
        "candidates_run": run.measured,
        "rows_from_db": run.from_db,
        "failed": dict(run.failed),
        "space": {k.info.name: k.space.summary() for k in run.kernels},
        "versions": {"esperc": versions.esperc, "triton": versions.triton,
                     "torch": versions.torch},  # fmt: skip
        "method": "cost-model-ranked top-k + nearest-neighbour warm start + local search; "
                  "CUDA events, L2 flushed, median of repeats; ties within "
                  f"{opts.tie:.0%} broken by config key",
    }  # fmt: skip
    if gpu is not None:
        out.update(gpu=gpu.name, arch=gpu.arch, driver=gpu.driver)
    if run.hit_rate is not None:
        out["neighbour_hit_rate"] = round(run.hit_rate, 3)
        out["neighbour_keys"] = run.neighbour_total
    return out


def _validation(run: TuneRun) -> dict[str, Any]:
    """A tuned package's ``validation``: every winner was checked against the eager reference
    on the GPU at each bucket where it won (outputs poisoned first)."""
    kernels = {}
    for k in run.kernels:
        checked = sorted(b for b, e in k.table.entries.items() if e.status == "ok")
        kernels[k.info.name] = {"status": "pass" if checked else "skipped", "buckets": checked}
    ok = all(v["status"] == "pass" for v in kernels.values())
    return {"status": "pass" if ok else "partial", "mode": "gpu-autotune", "kernels": kernels}


def digest(func: Func, source: bytes, run: TuneRun, target: str, versions: Versions,
           extra: Mapping[str, Any]) -> str:  # fmt: skip
    """SHA-256 naming the cached package of these decisions."""
    key = {"ir": canonical_hash(func), "source": hashlib.sha256(source).hexdigest(),
           "decisions": decisions(run, target), "versions": versions.text(), **extra}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _backward_part(
    training: Training,
    run: TuneRun,
    opts: TuneOptions,
    hooks: Hooks,
    tune_kw: Mapping[str, Any],
    progress: Progress | None,
):  # noqa: ANN202
    """The tuned ``[backward]`` table and members (winners compiled, dispatch tables added)."""
    from esperc.backend.triton.emitter import generate

    if hooks.backward_part is None:
        raise ValueError("a training package needs Hooks.backward_part")
    compile_winners(training.backward, run, opts.target, tune_kw.get("compile_fn"))
    gen = generate(training.backward, default_configs(run))
    compiled = {(k.info.name, opts.target): k.compiled["v0"] for k in run.kernels}
    if run.tuned:
        validation = _validation(run)
    elif hooks.validate is not None:
        validation = hooks.validate(training.backward, gen, progress or (lambda *_: None))
    else:
        validation = {"status": "skipped"}
    table, members = hooks.backward_part(training.fields, training.backward, gen, compiled,
                                         validation, (opts.target,))  # fmt: skip
    add_variants(table, members, run, opts.target)
    return table, members


def autotune_package(
    func: Func,
    source: bytes,
    out: Path,
    opts: TuneOptions,
    hooks: Hooks,
    db: PerfDB,
    gpu: GpuIdentity | None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    overrides: Mapping[str, str] | None = None,
    training: Training | None = None,
    **tune_kw: Any,
) -> Outcome:
    """Tune ``func`` and write the package to ``out`` (atomically); with ``training``, its
    backward kernels too (each half gets ``opts.budget_s``), packed as ``[backward]``.

    ``tune_kw`` goes to ``tune`` (``measurer``, ``compile_fn``, ``clock``); ``compile_fn`` also
    compiles the winners.

    Raises:
        KeyboardInterrupt: passed through (the perf DB keeps what was measured).
        KpkgError: the package cannot be written.
    """
    from esperc.kpkg import pack_kpkg, read_kpkg
    from esperc.kpkg.writer import write_atomic

    start = time.monotonic()
    run = tune(func, opts, db, gpu, progress, **tune_kw)
    run_b = tune(training.backward, opts, db, gpu, progress, **tune_kw) if training else None
    versions = Versions.installed(gpu.driver if gpu else "")
    extra = {"validate": hooks.validate is not None, "overrides": dict(overrides or {})}
    if training is not None and run_b is not None:
        extra["backward"] = {"ir": canonical_hash(training.backward), "fields": training.fields,
                             "decisions": decisions(run_b, opts.target)}  # fmt: skip
    name = digest(func, source, run, opts.target, versions, extra)
    cached = cache_dir / f"{name}.kpkg" if cache_dir is not None else None
    tuning = provenance(run, opts, gpu, versions)
    if run_b is not None:
        tuning["backward"] = provenance(run_b, opts, gpu, versions)
    measured = run.measured + (run_b.measured if run_b is not None else 0)
    if cached is not None and cached.is_file() and measured == 0:
        try:
            blob = cached.read_bytes()
            read_kpkg(blob, verify=True)
            write_atomic(out, blob)
            return Outcome(out, run, True, time.monotonic() - start, tuning,
                           perf_rows(run, opts.target))  # fmt: skip
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
            cached.unlink(missing_ok=True)
    compile_winners(func, run, opts.target, tune_kw.get("compile_fn"))
    from esperc.backend.triton.emitter import generate

    gen = generate(func, default_configs(run))
    compiled = {(k.info.name, opts.target): k.compiled["v0"] for k in run.kernels}
    if run.tuned:
        validation = _validation(run)
    elif hooks.validate is not None:
        validation = hooks.validate(func, gen, progress or (lambda *_: None))
    else:
        validation = {"status": "skipped"}
    manifest, members = hooks.assemble(func, gen, compiled, validation, source,
                                       _BuildOpts((opts.target,), dict(overrides or {})),
                                       hooks.versions())  # fmt: skip
    add_variants(manifest, members, run, opts.target)
    perf = perf_rows(run, opts.target)
    if training is not None and run_b is not None:
        table, extra_members = _backward_part(training, run_b, opts, hooks, tune_kw, progress)
        manifest["backward"] = table
        manifest["outputs"] = manifest["outputs"][: int(training.fields["num_outputs"])]
        members.update(extra_members)
        perf += perf_rows(run_b, opts.target)
    manifest.update(perf=perf, tuning=tuning, tuned=run.tuned)
    blob = pack_kpkg(manifest, members)
    write_atomic(out, blob)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, blob)
        except OSError:
            pass  # the cache is an accelerator only
    return Outcome(out, run, False, time.monotonic() - start, tuning, perf)
