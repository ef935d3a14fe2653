"""Autotuning: per kernel and shape bucket, search configs, measure, and pick a winner.

For each kernel of a partitioned function and each bucket of the tuning shapes:

1. the search space (``space.build_space``), pruned before any compile;
2. with a GPU: measured rows already in the perf DB for this key are reused (a repeated run
   measures nothing; an interrupted run resumes); the cost model's ``top_k`` (at most two per
   tile shape) plus the configs that won at the nearest recorded buckets of the same family
   (``PerfDB.nearest``, the warm start) are compiled and measured, then ``local_rounds`` of
   local search around the best measured config (``space.neighbours``); the few best are
   measured again and the winner is the fastest median, configs within ``tie`` of it broken by
   config key (the same rows always give the same winner);
3. without a GPU (or for another arch): the cost model's first choice, marked ``untuned``.

Every measurement is recorded in the perf DB as it finishes (one transaction each), so killing
a run loses at most the candidate in flight. The wall-clock budget stops new measurements;
what was measured is used. Nothing here prints: progress goes through a callback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from esperc.backend.triton.aot import CompiledKernel, KernelSpec, compile_kernel
from esperc.backend.triton.configs import Config
from esperc.backend.triton.emitter import generate
from esperc.backend.triton.plan import GeneratedKernel
from esperc.ir.graph import Func
from esperc.ir.printer import print_func
from esperc.middle.targets import get_target
from esperc.tune.costmodel import Estimate, gpu_for, rank
from esperc.tune.dispatch import DispatchTable, Entry, buckets_for, dims_of_bucket, pick
from esperc.tune.measure import GpuIdentity, Measurer, Prepare, Result, Run
from esperc.tune.perfdb import PerfDB, Row, Versions
from esperc.tune.space import (
    KernelInfo,
    Space,
    build_space,
    config_dict,
    config_from_dict,
    config_key,
    describe,
    diverse_top,
    neighbours,
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TuneOptions:
    """What a tuning run does (one object, no ambient state). Times in seconds."""

    target: str
    shapes: tuple[Mapping[str, int], ...]
    budget_s: float = 45.0
    seed: int = 0
    top_k: int = 6
    warm_k: int = 2
    local_rounds: int = 2
    local_k: int = 4
    remeasure: int = 3
    tie: float = 0.01
    timeout_s: float = 10.0


@dataclass
class KernelResult:
    """One kernel's outcome: its space, the dispatch table and the winners' compiles."""

    info: KernelInfo
    space: Space
    table: DispatchTable
    compiled: dict[str, CompiledKernel] = field(default_factory=dict)
    generated: dict[str, GeneratedKernel] = field(default_factory=dict)


@dataclass
class TuneRun:
    """The outcome of ``tune``: per-kernel results and the run's bookkeeping."""

    tuned: bool
    kernels: list[KernelResult]
    measured: int = 0
    from_db: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    budget_exhausted: bool = False
    neighbour_hits: int = 0
    neighbour_total: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def hit_rate(self) -> float | None:
        """Share of keys where the nearest neighbour's winner is within 5% of the searched
        winner (None when no key had both)."""
        return self.neighbour_hits / self.neighbour_total if self.neighbour_total else None


class Compiler:
    """Compiles candidates (a pool of spawned processes, or ``fn`` in-process) and remembers
    results by config key per kernel; errors are kept as strings."""

    def __init__(self, func: Func, target: str, fn: Callable[[KernelSpec], CompiledKernel] | None,
                 workers: int = 0) -> None:  # fmt: skip
        self.func, self.target, self.fn = func, target, fn
        self.workers = workers or max(1, min(16, (os.cpu_count() or 2) - 1))
        self._pool: ProcessPoolExecutor | None = None
        self.done: dict[tuple[str, str], tuple[GeneratedKernel, CompiledKernel] | str] = {}

    def generated(self, info: KernelInfo, cfg: Config) -> tuple[GeneratedKernel, str]:
        # a finishing kernel does not depend on the region's config (that is its main kernel's)
        gen = generate(self.func, {} if info.default.finishes else {info.region: cfg})
        return gen.kernel(info.name), gen.source

    def compile(self, info: KernelInfo, configs: Sequence[Config]) -> None:
        """Compile every config of ``configs`` not compiled yet (in parallel)."""
        todo = [c for c in configs if (info.name, config_key(c)) not in self.done]
        jobs: list[tuple[str, GeneratedKernel, Any]] = []
        for c in todo:
            k, source = self.generated(info, c)
            base = info.default.launch
            if (k.launch.args, k.launch.allocs, k.launch.grid) != (base.args, base.allocs,
                                                                   base.grid):  # fmt: skip
                self.done[(info.name, config_key(c))] = "launch differs from the default kernel"
                continue
            spec = KernelSpec(source=source, kernel_name=k.name, signature=k.signature,
                              constexprs=k.constexprs, target=self.target,
                              num_warps=c.num_warps, num_stages=c.num_stages,
                              divisible_by_16=tuple(k.divisible_by_16))  # fmt: skip
            jobs.append((config_key(c), k, self._submit(spec)))
        for key, k, job in jobs:
            try:
                self.done[(info.name, key)] = (k, job() if callable(job) else job.result())
            except Exception as e:  # noqa: BLE001 - the candidate's compile-error status
                self.done[(info.name, key)] = f"{type(e).__name__}: {e}"[:500]

    def _submit(self, spec: KernelSpec) -> Any:
        if self.fn is not None:
            return lambda: self.fn(spec)  # type: ignore[misc]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self._pool.submit(compile_kernel, spec)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


@dataclass
class _Search:
    """The state of one tuning run (shared by every kernel and bucket)."""

    func: Func
    opts: TuneOptions
    db: PerfDB
    gpu: GpuIdentity | None
    versions: Versions
    compiler: Compiler
    measurer: Measurer | None
    progress: Progress
    deadline: float
    clock: Callable[[], float]
    run: TuneRun
    done: int = 0
    total: int = 0
    best_text: str = ""
    warm: list[Config] = field(default_factory=list)
    # per finishing kernel: the partials buffers it reads (filled with random values to check it)
    scratch: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def rows(self, info: KernelInfo, bucket: str) -> dict[str, Row]:
        assert self.gpu is not None
        found = self.db.lookup(info.hash, self.gpu.arch, bucket, self.versions, self.gpu.name)
        return {config_key(config_from_dict(_json(r.config))): r for r in found}

    def measure(self, info: KernelInfo, bucket: str, dims: Mapping[str, int],
                configs: Sequence[Config], rows: dict[str, Row], again: bool = False) -> None:  # fmt: skip
        """Measure ``configs`` (those not in ``rows`` unless ``again``) and record each row."""
        todo = [c for c in configs if again or config_key(c) not in rows]
        if not todo or self.measurer is None:
            return
        self.total += len(todo)
        self.compiler.compile(info, todo)
        prep = Prepare(print_func(self.func), tuple(sorted(dims.items())), self.opts.seed)
        for c in todo:
            if self.clock() > self.deadline:
                self.run.budget_exhausted = True
                return
            key = config_key(c)
            got = self.compiler.done[(info.name, key)]
            if isinstance(got, str):
                res = Result(key, "compile-error", error=got)
            else:
                k, ck = got
                res = self.measurer.run(prep, Run(key, ck, k.launch, prep.dims,
                                                  200.0 if again else 50.0,
                                                  self.scratch.get(info.name, ())))  # fmt: skip
            row = Row(info.hash, info.family, self.gpu.arch, self.gpu.name, bucket,  # type: ignore[union-attr]
                      config_dict(c), self.versions, res.median_ms, res.p95_ms, res.samples,
                      res.status, res.error, kernel_name=info.name)  # fmt: skip
            self.db.record([row])
            rows[key] = row
            self.run.measured += 1
            if res.status != "ok":
                self.run.failed[res.status] = self.run.failed.get(res.status, 0) + 1
            self.done += 1
            ok = [r for r in rows.values() if r.status == "ok" and r.median_ms is not None]
            if ok:
                best = min(ok, key=lambda r: r.median_ms)  # type: ignore[arg-type,return-value]
                self.best_text = f"best {best.median_ms:.4g} ms"
            self.progress(f"tune {info.name} {bucket}: {self.best_text}", self.done, self.total)


def _json(text: str) -> dict[str, int]:
    import json

    return json.loads(text)


def _marker(o: TuneOptions) -> Config:
    """The pseudo-config of the row that records "this key's search is complete" (status ok,
    no time: ``best``/``nearest`` skip it); its values are the search's parameters."""
    from esperc.backend.triton.configs import make_config

    return make_config(0, 0, SEARCH_DONE=1, TOP_K=o.top_k, LOCAL=o.local_rounds * 100 + o.local_k)


def _search(s: _Search, info: KernelInfo, space: Space, bucket: str, dims: Mapping[str, int],
            ranked: list[tuple[Config, Estimate]], rows: dict[str, Row]) -> None:  # fmt: skip
    """Measure the cost model's top configs (+ warm start), then local search around the best.

    The trajectory only depends on rows of configs it visited, so a run that finds rows of an
    interrupted one replays the same steps and measures only what is missing."""
    o = s.opts
    by_key = {config_key(c): c for c in space.candidates}
    # warm start only a fresh key (a key with rows resumes its own trajectory)
    near = [] if rows else s.db.nearest(info.family, s.gpu.arch, bucket, k=8)  # type: ignore[union-attr]
    warm = [by_key[k] for k in (config_key(config_from_dict(_json(r.config))) for r in near)
            if k in by_key][: o.warm_k]  # fmt: skip
    s.warm = warm
    fresh = len(rows)
    visit = diverse_top(ranked, o.top_k) + warm
    seen = {config_key(c) for c in visit}
    s.measure(info, bucket, dims, visit, rows)
    est = {config_key(c): e.ms for c, e in ranked}
    for _ in range(o.local_rounds):
        won = pick({k: r for k, r in rows.items() if k in seen}, o.tie)
        if won is None or s.run.budget_exhausted:
            break
        around = sorted(neighbours(by_key[won[0]], space),
                        key=lambda c: (est.get(config_key(c), 1e9), config_key(c)))[: o.local_k]  # fmt: skip
        if all(config_key(c) in seen for c in around):
            break
        seen |= {config_key(c) for c in around}
        s.measure(info, bucket, dims, around, rows)
    if len(rows) > fresh and o.remeasure and not s.run.budget_exhausted:
        top = sorted((r.median_ms, k) for k, r in rows.items() if r.status == "ok" and r.median_ms)
        s.measure(info, bucket, dims, [by_key[k] for _, k in top[: o.remeasure] if k in by_key],
                  rows, again=True)  # fmt: skip


def _search_bucket(s: _Search, info: KernelInfo, space: Space, bucket: str,
                   dims: Mapping[str, int], ranked: list[tuple[Config, Estimate]]) -> Entry:  # fmt: skip
    o = s.opts
    by_key = {config_key(c): c for c in space.candidates}
    rows = s.rows(info, bucket)
    marker = _marker(o)
    s.run.from_db += len(rows) - (config_key(marker) in rows)
    if config_key(marker) not in rows:
        _search(s, info, space, bucket, dims, ranked, rows)
        if not s.run.budget_exhausted:
            s.db.record([Row(info.hash, info.family, s.gpu.arch, s.gpu.name, bucket,  # type: ignore[union-attr]
                             config_dict(marker), s.versions, None, error="search complete",
                             kernel_name=info.name)])  # fmt: skip
    rows.pop(config_key(marker), None)
    won = pick(rows, o.tie)
    if won is None:  # nothing ran: fall back to the model (marked untuned)
        return Entry(
            bucket,
            ranked[0][0],
            status="untuned",
            predicted_ms=ranked[0][1].ms,
            shape=tuple(sorted(dims.items())),
        )
    key, row, margin = won
    warm = s.warm
    s.warm = []
    if warm:
        best_warm = pick({config_key(warm[0]): rows[config_key(warm[0])]}, 0.0) if \
            config_key(warm[0]) in rows else None  # fmt: skip
        if best_warm is not None:
            s.run.neighbour_total += 1
            s.run.neighbour_hits += best_warm[1].median_ms <= row.median_ms * 1.05  # type: ignore[operator]
    est = next(e.ms for c, e in ranked if config_key(c) == key) if key in by_key else None
    return Entry(bucket, by_key.get(key) or config_from_dict(_json(row.config)), row.median_ms,
                 row.p95_ms, "ok", est, margin, tuple(sorted(dims.items())))  # fmt: skip


def tune(
    func: Func,
    opts: TuneOptions,
    db: PerfDB,
    gpu: GpuIdentity | None,
    progress: Progress | None = None,
    measurer: Measurer | None = None,
    compile_fn: Callable[[KernelSpec], CompiledKernel] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TuneRun:
    """Tune every kernel of ``func`` at ``opts.shapes`` for ``opts.target``.

    Args:
        func: the optimised, partitioned function.
        opts: target, tuning shapes (every dynamic dim given), budget and search sizes.
        db: the perf DB (read for reuse and warm starts, written as candidates finish).
        gpu: the local GPU, or None: pick by the cost model (``untuned``). A GPU of another
            arch than ``opts.target`` counts as none.
        progress: called as ``(description, done, total)``.
        measurer: runs candidates (default: a ``Measurer`` with a GPU worker process).
        compile_fn: compiles one spec in-process (default: a spawned process pool).
        clock: monotonic seconds (tests pass a fake).

    Raises:
        KeyboardInterrupt: passed through; rows measured so far stay in the DB.
    """
    start = clock()
    tuned = gpu is not None and gpu.arch == opts.target
    run = TuneRun(tuned, [])
    if not tuned:
        run.note = (f"no GPU of {opts.target} here ({gpu.name + ' is ' + gpu.arch if gpu else 'no CUDA device'}); "
                    "configs picked by the cost model, package marked untuned")  # fmt: skip
    target = get_target(opts.target)
    model = gpu_for(opts.target, gpu.name if gpu else "")
    his = {d.name: d.hi for d in func.dims}
    versions = Versions.installed(gpu.driver if gpu else "")
    compiler = Compiler(func, opts.target, compile_fn)
    own = measurer is None and tuned
    measurer = (measurer or Measurer(opts.timeout_s)) if tuned else None
    shapes = [dict(s) for s in opts.shapes]
    s = _Search(func, opts, db, gpu, versions, compiler, measurer, progress or (lambda *_: None),
                start + opts.budget_s, clock, run)  # fmt: skip
    kernels = generate(func).kernels
    s.scratch = {k.name: partials_read(k, kernels) for k in kernels if k.finishes}
    try:
        for k in kernels:
            info = describe(func, k)
            space = build_space(info, target, his)
            table = DispatchTable(info.name, info.dims)
            for bucket in buckets_for(info.dims, shapes):
                dims = dims_of_bucket(bucket, shapes, info.dims)
                ranked = rank(info, space.candidates, dims, model, target)
                if tuned:
                    table.add(_search_bucket(s, info, space, bucket, dims, ranked))
                else:
                    table.add(Entry(bucket, ranked[0][0], status="untuned",
                                    predicted_ms=ranked[0][1].ms,
                                    shape=tuple(sorted(dims.items()))))  # fmt: skip
            result = KernelResult(info, space, table)
            run.kernels.append(result)
    finally:
        compiler.close()
        if own and measurer is not None:
            measurer.close()
    run.seconds = clock() - start
    return run


def partials_read(k: GeneratedKernel, kernels: Sequence[GeneratedKernel]) -> tuple[Any, ...]:
    """The partials buffers (``Alloc``s of its main kernel) a finishing kernel reads."""
    main = next(m for m in kernels if m.name == k.finishes)
    return tuple(a for a in main.launch.allocs if a.partial_of)


def compile_winners(func: Func, run: TuneRun, target: str,
                    compile_fn: Callable[[KernelSpec], CompiledKernel] | None = None) -> None:  # fmt: skip
    """Generate and compile every variant of every kernel (fills ``generated``/``compiled``).

    Raises:
        RuntimeError: a winner does not compile (it was measured, so this is a bug).
    """
    compiler = Compiler(func, target, compile_fn)
    try:
        for result in run.kernels:
            variants = result.table.variants()
            compiler.compile(result.info, list(variants.values()))
            for v, cfg in variants.items():
                got = compiler.done[(result.info.name, config_key(cfg))]
                if isinstance(got, str):
                    raise RuntimeError(
                        f"winner {cfg} of {result.info.name} does not compile: {got}"
                    )
                result.generated[v], result.compiled[v] = got
    finally:
        compiler.close()
