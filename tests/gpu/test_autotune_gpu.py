"""Autotuning on a real GPU: layer_norm and residual_mlp tuned at a small budget (packages run
and match the eager reference), a repeated run answered from the perf DB, and fault injection:
candidates that hang, fault (out-of-bounds store) or write NaN are skipped with their reason.

Run on the device: ``python -m pytest tests/gpu/test_autotune_gpu.py -v -s`` (timings print).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esperc import driver
from esperc.backend.triton.aot import KernelSpec, compile_kernel
from esperc.backend.triton.configs import make_config
from esperc.backend.triton.emitter import generate
from esperc.ir.interpreter import random_inputs, run_func
from esperc.middle.targets import get_target
from esperc.tune import PerfDB
from esperc.tune.autotune import TuneOptions, tune
from esperc.tune.costmodel import gpu_for, rank
from esperc.tune.measure import Measurer, gpu_identity
from esperc.tune.package import Hooks, autotune_package
from esperc.tune.space import build_space, config_dict, config_key, describe, diverse_top

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
GPU = gpu_identity()


def _hooks() -> Hooks:
    from esperc.build import _versions
    from esperc.build_steps import assemble

    return Hooks(assemble, _versions)


def _func(name: str):
    opts = driver.Options(targets=(GPU.arch,))
    return driver.compile_ir(ROOT / "samples" / f"{name}.esp", opts)[0]


def _check_package(path: Path, func, dims_list) -> None:
    """The tuned package's output equals the eager reference (fresh random inputs per shape)."""
    import esperc.runtime.artifact as artifact

    art = artifact.load(path, fallback="error")
    for seed, dims in enumerate(dims_list):
        inputs = random_inputs(func, dims, seed=100 + seed, device="cuda")
        got = art(**inputs)
        (ref,) = run_func(func, inputs)
        err = float((got.double() - ref.double()).norm() / ref.double().norm())
        assert err < 2e-2, (dims, err)


def _tune(name: str, shapes, tmp: Path, budget: float):
    func = _func(name)
    src = (ROOT / "samples" / f"{name}.esp").read_bytes()
    opts = TuneOptions(GPU.arch, shapes, budget_s=budget)
    db = PerfDB(tmp / "perf.sqlite")
    t = time.monotonic()
    out = autotune_package(func, src, tmp / f"{name}.kpkg", opts, _hooks(), db, GPU,
                           tmp / "cache")  # fmt: skip
    cold = time.monotonic() - t
    return func, src, opts, db, out, cold


@pytest.mark.parametrize(
    "name, shapes, budget",
    [("layer_norm", ({"N": 64}, {"N": 4096}), 120.0),
     ("residual_mlp", ({"B": 1}, {"B": 64}, {"B": 4096}), 240.0)],
)  # fmt: skip
def test_autotune_sample(name, shapes, budget, tmp_path) -> None:
    func, src, opts, db, out, cold = _tune(name, shapes, tmp_path, budget)
    print(f"\n{name}: cold {cold:.1f} s, {out.run.measured} measured, "
          f"failed {out.run.failed}, budget exhausted {out.run.budget_exhausted}")  # fmt: skip
    assert out.run.tuned and out.run.measured > 0
    from esperc.kpkg import read_kpkg

    m = read_kpkg(out.path).manifest
    assert m["tuned"] is True and m["tuning"]["gpu"] == GPU.name
    for row in m["perf"]:
        print(f"  {row['kernel']} {row['bucket']}: {row.get('ms')} ms p95 {row.get('p95_ms')} "
              f"{row.get('gbps')} GB/s {row.get('tflops')} TFLOP/s {row['config']}")  # fmt: skip
        assert row["status"] == "ok" and row["ms"] > 0 and row["p95_ms"] >= row["ms"]
    for k in m["kernels"].values():
        for b in k["dispatch"]["buckets"].values():
            assert b["p50_ms"] > 0
    _check_package(out.path, func, [*shapes, {d: v + 3 for d, v in shapes[0].items()}])
    # a repeated autotune is answered from the perf DB and the package cache
    t = time.monotonic()
    again = autotune_package(func, src, tmp_path / "again.kpkg", opts, _hooks(), db, GPU,
                             tmp_path / "cache")  # fmt: skip
    warm = time.monotonic() - t
    print(f"{name}: warm {warm:.2f} s (cached package: {again.cached})")
    assert again.run.measured == 0 and again.cached and warm < 1.0
    assert again.perf == out.perf


def test_cli_autotune_cold_and_warm(tmp_path) -> None:
    """The reference blueprint through the CLI at the default budget (targets: cold <= 60 s,
    warm <= 1 s); a run that ran out of budget is resumed until one measures nothing."""
    env = {**os.environ, "ESPERC_CACHE_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "esperc", "autotune", str(ROOT / "samples" / "residual_mlp.esp"),
           "-o", str(tmp_path / "r.kpkg"), "--json"]  # fmt: skip
    times, summaries = [], []
    for _ in range(4):
        t = time.monotonic()
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        times.append(time.monotonic() - t)
        assert r.returncode == 0, r.stderr
        summaries.append(json.loads(r.stdout))
        if summaries[-1]["measured"] == 0:
            break
    print(
        f"\nCLI residual_mlp: runs {[round(x, 2) for x in times]} s, measured "
        f"{[x['measured'] for x in summaries]}, budget exhausted "
        f"{[x['tuning']['budget_exhausted'] for x in summaries]} (targets: 60 s cold, 1 s warm)"
    )
    assert summaries[-1]["measured"] == 0 and summaries[-1]["cached"]
    assert times[-1] < 3.0


# ----- fault injection -------------------------------------------------------------------------

_HEAD = """
import triton
import triton.language as tl


@triton.jit
def layer_norm_k0(x_ptr, weight_ptr, bias_ptr, v0_ptr, N, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
"""
BAD_SOURCES = {
    # x is finite, so v == v forever; the volatile load is issued again on every turn
    "timeout": _HEAD
    + """
    v = tl.load(x_ptr, volatile=True)
    i = 0
    while v == v:
        v = tl.load(x_ptr + i * 0, volatile=True)
        i += 1
    tl.store(v0_ptr, v)
""",
    "fault": _HEAD
    + """
    pid = tl.program_id(0).to(tl.int64)
    far = v0_ptr + (pid + 1) * 1099511627776  # 1 TiB past the output: unmapped
    tl.store(far + tl.arange(0, 16), tl.zeros((16,), tl.bfloat16))
""",
    "nan": _HEAD
    + """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < N) & (cols[None, :] < 4096)
    nan = tl.full((BLOCK_M, BLOCK_N), float("nan"), tl.float32).to(tl.bfloat16)
    tl.store(v0_ptr + rows[:, None] * 4096 + cols[None, :], nan, mask=mask)
""",
}


def test_hanging_faulting_and_nan_candidates_are_skipped_with_reasons(tmp_path) -> None:
    func = _func("layer_norm")
    info = describe(func, generate(func).kernels[0])
    space = build_space(info, get_target(GPU.arch), {"N": 65536})
    dims = {"N": 4096}
    first = diverse_top(rank(info, space.candidates, dims, gpu_for(GPU.arch, GPU.name),
                          get_target(GPU.arch)), 6)[:3]  # fmt: skip
    bad = dict(zip((config_key(c) for c in first), BAD_SOURCES))

    def inject(spec: KernelSpec):
        key = config_key(make_config(spec.num_warps, spec.num_stages, **spec.constexprs))
        if key in bad:
            spec = dataclasses.replace(spec, source=BAD_SOURCES[bad[key]])
        return compile_kernel(spec)

    db = PerfDB(tmp_path / "perf.sqlite")
    measurer = Measurer(timeout_s=5.0)
    t = time.monotonic()
    try:
        run = tune(func, TuneOptions(GPU.arch, (dims,), budget_s=120.0), db, GPU,
                   measurer=measurer, compile_fn=inject)  # fmt: skip
    finally:
        measurer.close()
    print(f"\nfault injection: {time.monotonic() - t:.1f} s, {measurer.restarts} workers, "
          f"failed {run.failed}")  # fmt: skip
    rows = {json.dumps(json.loads(r.config), sort_keys=True): r for r in db.query(limit=1000)}
    for key, want in bad.items():
        cfg = next(c for c in first if config_key(c) == key)
        row = rows[json.dumps(config_dict(cfg), sort_keys=True)]
        print(f"  {want}: {row.status} ({row.error[:100]})")
        assert row.status == want and row.error
    entry = run.kernels[0].table.entries["N=4096"]
    assert entry.status == "ok" and config_key(entry.config) not in bad
    assert torch.cuda.is_available()  # this process's CUDA is untouched by the faults
