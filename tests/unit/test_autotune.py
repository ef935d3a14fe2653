"""Autotuning on a CPU: search space pruning, cost-model ranking, dispatch tables, the no-GPU
("untuned") package, the perf DB round trip and resume after an interrupt, and the measuring
machinery with fake workers (GPU-only paths: tests/gpu/test_autotune_gpu.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from esperc import driver
from esperc.backend.triton.aot import ArgKind, CompiledKernel, KernelArg, KernelSpec
from esperc.backend.triton.configs import make_config
from esperc.backend.triton.emitter import generate
from esperc.kpkg import read_kpkg
from esperc.middle.targets import get_target
from esperc.runtime.packaged import bucket_of, dispatch_plan, select_variant
from esperc.tune import PerfDB, shape_bucket
from esperc.tune.autotune import TuneOptions, tune
from esperc.tune.costmodel import gpu_for, problem, rank
from esperc.tune.dispatch import DispatchTable, Entry, pick
from esperc.tune.measure import GpuIdentity, Measurer, ProcessWorker, Result, WorkerDied
from esperc.tune.package import Hooks, autotune_package
from esperc.tune.space import build_space, config_key, describe, diverse_top, neighbours

ROOT = Path(__file__).resolve().parents[2]
GPU = GpuIdentity("NVIDIA H100 80GB HBM3", "sm_90", "550.0/cuda-12.4")


def _func(name: str):
    func, _ = driver.compile_ir(ROOT / "samples" / f"{name}.esp", driver.Options())
    return func


@pytest.fixture(scope="module")
def mlp():
    return _func("residual_mlp")


@pytest.fixture(scope="module")
def ln():
    return _func("layer_norm")


def _info(func, kind: str):
    return next(describe(func, k) for k in generate(func).kernels if k.kind == kind)


def fake_compile(spec: KernelSpec) -> CompiledKernel:
    """A stand-in for Triton: a deterministic fake cubin with the right launch facts."""
    digest = hashlib.sha256(repr((spec.kernel_name, sorted(spec.constexprs.items()),
                                  spec.num_warps, spec.num_stages)).encode()).digest()  # fmt: skip
    args = tuple(KernelArg(n, t, ArgKind.POINTER if t.startswith("*") else ArgKind.SCALAR,
                           8 if t.startswith("*") else 4) for n, t in spec.signature.items())  # fmt: skip
    return CompiledKernel(b"\x7fELF" + digest, spec.kernel_name, args,
                          tuple(sorted(spec.constexprs.items())), spec.target, "3.9.0",
                          spec.num_warps, 1, spec.num_stages, 0, 0, 1, 0, 1, False, False, None,
                          32, 0, "")  # fmt: skip


class FakeMeasurer:
    """Times from a fixed function of the config (1 + a hash fraction), optionally interrupted
    after ``stop_after`` runs."""

    def __init__(self, stop_after: int | None = None, status: dict[str, str] | None = None):
        self.calls: list[tuple[str, tuple]] = []
        self.stop_after = stop_after
        self.status = status or {}

    def run(self, prepare, job) -> Result:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        assert all(a.partial_of for a in job.scratch)  # a finisher's inputs: partials only
        self.calls.append((job.key, job.dims))
        if job.key in self.status:
            return Result(job.key, self.status[job.key], error="injected")
        frac = int(hashlib.sha256(f"{job.key}{job.dims}".encode()).hexdigest()[:6], 16) / 2**24
        return Result(job.key, "ok", 1.0 + frac, 1.1 + frac, 20)

    def close(self) -> None:
        pass


def _opts(func, **kw) -> TuneOptions:
    dims = [d.name for d in func.dims]
    kw.setdefault("shapes", tuple({d: v for d in dims} for v in (64, 4096)))
    return TuneOptions("sm_90", **{"budget_s": 1e9, "top_k": 4, **kw})


# ----- search space --------------------------------------------------------------------------


def test_space_prunes_shared_memory_by_target(mlp):
    info = _info(mlp, "matmul")
    his = {"B": 65536}
    big, small = (
        build_space(info, get_target("sm_90"), his),
        build_space(info, get_target("sm_86"), his),
    )
    assert dict(small.pruned)["shared memory"] > dict(big.pruned)["shared memory"] > 0
    for c in small.candidates:  # bf16 A and B tiles, num_stages - 1 buffers on sm_86
        operands = (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 2 * max(1, c.num_stages - 1)
        assert operands <= 99 * 1024
    assert "split-K" in " ".join(big.future)
    assert big.total == len(big.candidates) + sum(n for _, n in big.pruned)


def test_space_prunes_registers_idle_threads_and_divisibility(mlp, ln):
    red = build_space(_info(ln, "reduction"), get_target("sm_90"), {"N": 65536})
    assert dict(red.pruned)["registers"] > 0
    for c in red.candidates:  # a row tile of bf16 spread over the threads stays in registers
        assert 2 * c["BLOCK_M"] * c["BLOCK_N"] // (32 * c.num_warps) + 24 <= 255
    info = _info(mlp, "matmul")
    from dataclasses import replace

    odd = replace(info, default=replace(info.default, requires=("96 % BLOCK_K == 0",)))
    sp = build_space(odd, get_target("sm_90"), {"B": 65536})
    assert dict(sp.pruned)["divisibility"] > 0
    assert {c["BLOCK_K"] for c in sp.candidates} == {32}
    assert dict(build_space(info, get_target("sm_90"), {"B": 65536}).pruned)["idle threads"] > 0


def test_neighbours_are_one_step_away(mlp):
    info = _info(mlp, "matmul")
    sp = build_space(info, get_target("sm_90"), {"B": 65536})
    base = make_config(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
    near = neighbours(base, sp)
    assert near and all(config_key(c) in {config_key(x) for x in sp.candidates} for c in near)
    for c in near:
        a = {**dict(c.blocks), "w": c.num_warps, "s": c.num_stages}
        b = {**dict(base.blocks), "w": base.num_warps, "s": base.num_stages}
        assert sum(a[k] != b[k] for k in a) == 1


# ----- cost model ----------------------------------------------------------------------------


def test_cost_model_prefers_big_tiles_for_big_matmuls_and_small_m_for_decode(mlp):
    info = _info(mlp, "matmul")
    t, gpu = get_target("sm_90"), gpu_for("sm_90")
    big = make_config(8, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
    tiny = make_config(4, 4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=8)
    r = {config_key(c): e.ms for c, e in rank(info, [big, tiny], {"B": 4096}, gpu, t)}
    assert r[config_key(big)] < r[config_key(tiny)]
    p = problem(info, {"B": 4096})
    assert p.flops == 2.0 * 4096 * 4096 * 1024  # [B,1024] @ [1024,4096]
    tall = make_config(8, 4, BLOCK_M=256, BLOCK_N=32, BLOCK_K=64, GROUP_M=8)
    r1 = {config_key(c): e for c, e in rank(info, [tall, tiny], {"B": 1}, gpu, t)}
    assert r1[config_key(tall)].waste > 10 * r1[config_key(tiny)].waste
    assert r1[config_key(tiny)].ms <= r1[config_key(tall)].ms


def test_cost_model_tile_quantization_and_ranking_is_deterministic(ln):
    info = _info(ln, "reduction")
    sp = build_space(info, get_target("sm_90"), {"N": 65536})
    a = rank(info, sp.candidates, {"N": 4096}, gpu_for("sm_90"), get_target("sm_90"))
    b = rank(
        info, list(reversed(sp.candidates)), {"N": 4096}, gpu_for("sm_90"), get_target("sm_90")
    )
    assert [config_key(c) for c, _ in a] == [config_key(c) for c, _ in b]
    assert a[0][1].ms < a[-1][1].ms and all(e.bound == "memory" for _, e in a[:3])
    c8 = make_config(16, 1, BLOCK_M=8, BLOCK_N=4096)
    even = rank(info, [c8], {"N": 4096}, gpu_for("sm_90"), get_target("sm_90"))[0][1]
    assert even.waste == pytest.approx(0.0)  # 4096 rows / 8 divide evenly
    odd = rank(info, [c8], {"N": 4097}, gpu_for("sm_90"), get_target("sm_90"))[0][1]
    assert odd.waste == pytest.approx(4104 / 4097 - 1)


# ----- dispatch tables -----------------------------------------------------------------------


def test_dispatch_table_variants_and_lookup():
    a = make_config(4, 1, BLOCK_M=1, BLOCK_N=1024)
    b = make_config(8, 1, BLOCK_M=4, BLOCK_N=1024)
    t = DispatchTable("k", ("B",))
    for bucket, cfg in (("B=1", b), ("B=64", b), ("B=4096", a)):
        t.add(Entry(bucket, cfg, 0.01, 0.012))
    assert list(t.variants()) == ["v0", "v1"] and config_key(t.default()) == config_key(a)
    assert config_key(t.lookup({"B": 3000})) == config_key(a)  # bucket B=4096
    assert config_key(t.lookup({"B": 50})) == config_key(b)
    assert config_key(t.lookup({"B": 65536})) == config_key(a)  # untuned: nearest (4096)
    assert config_key(t.lookup({"B": 8})) == config_key(b)  # nearest is B=1 (3) vs B=64 (3): larger
    m = t.to_manifest()
    assert m["buckets"]["B=64"]["variant"] == "v1" and m["buckets"]["B=64"]["p50_ms"] == 0.01
    assert select_variant({"dispatch": m}, {"B": 4000}) == "v0"
    assert select_variant({}, {"B": 1}) is None


@pytest.mark.parametrize("dims", [{"B": 1}, {"B": 3, "S": 1000}, {"N": 65536, "A": 17}])
def test_runtime_bucket_matches_perfdb_bucket(dims):
    assert bucket_of(dims, dims) == shape_bucket(dims)


def test_runtime_dispatch_plan_swaps_constexprs_and_cubin(ln):
    gen = generate(ln)
    k = gen.kernels[0]
    var_cfg = {"BLOCK_M": 4, "BLOCK_N": 4096, "num_warps": 8, "num_stages": 1}
    table = {"cubin": "kernels/x_v1.sm_90.cubin", "entry": k.name, "args": [], "num_warps": 8,
             "num_ctas": 1, "num_stages": 1, "shared_bytes": 0, "global_scratch_size": 0,
             "global_scratch_align": 1, "profile_scratch_size": 0, "profile_scratch_align": 1,
             "cooperative": False, "pdl": False, "triton_version": "3.9.0"}  # fmt: skip
    manifest = {"kernels": {k.name: {
        "dispatch": {"dims": ["N"], "default": "v0", "buckets": {
            "N=4096": {"variant": "v0"}, "N=64": {"variant": "v1"}}},
        "variants": {"v1": {"config": var_cfg, "targets": {"sm_90": table}}}}}}  # fmt: skip

    class Pkg:
        def member(self, name: str) -> bytes:
            assert name == "kernels/x_v1.sm_90.cubin"
            return b"\x7fELFv1"

    plan, kernels = dispatch_plan(Pkg(), manifest, gen.plan, "sm_90", {"N": 50}, {k.name: "base"},
                                  lambda ck: ("variant", ck.cubin))  # fmt: skip
    step = plan.steps[0]
    assert dict(step.constexprs)["BLOCK_M"] == 4 and step.num_warps == 8
    assert kernels[k.name] == ("variant", b"\x7fELFv1")
    plan2, kernels2 = dispatch_plan(Pkg(), manifest, gen.plan, "sm_90", {"N": 4000},
                                    {k.name: "base"}, lambda ck: None)  # fmt: skip
    assert plan2 == gen.plan and kernels2[k.name] == "base"


# ----- selection, perf DB round trip, resume ---------------------------------------------------


def _row(key: str, ms: float):
    from esperc.tune import Row, Versions

    return Row("h", "f", "sm_90", "g", "B=1", {"k": key}, Versions("a", "b", "c", "d"), ms)


def test_pick_is_deterministic_with_a_tie_tolerance():
    rows = {"b": _row("b", 1.000), "a": _row("a", 1.005), "c": _row("c", 1.2)}
    key, row, margin = pick(rows, tie=0.01)
    assert key == "a" and margin == pytest.approx(1.0 / 1.005 - 1)
    assert pick(rows, tie=0.0)[0] == "b"
    assert pick({}, 0.01) is None


def test_perfdb_round_trip_and_repeated_run_measures_nothing(ln, tmp_path):
    db = PerfDB(tmp_path / "perf.sqlite")
    first = FakeMeasurer()
    run1 = tune(ln, _opts(ln), db, GPU, measurer=first, compile_fn=fake_compile)
    assert run1.tuned and run1.measured == len(first.calls) > 4
    # one row per distinct candidate and key, plus one "search complete" marker per key
    assert db.stats()["rows"] == len({c for c in first.calls}) + 2
    assert len(db.query(status="ok", limit=1000)) == db.stats()["rows"]
    t = time.monotonic()
    again = FakeMeasurer()
    run2 = tune(ln, _opts(ln), db, GPU, measurer=again, compile_fn=fake_compile)
    assert time.monotonic() - t < 1.0
    assert again.calls == [] and run2.measured == 0 and run2.from_db == len(set(first.calls))
    t1, t2 = run1.kernels[0].table, run2.kernels[0].table
    assert {b: config_key(e.config) for b, e in t1.entries.items()} == \
        {b: config_key(e.config) for b, e in t2.entries.items()}  # fmt: skip
    assert all(e.status == "ok" and e.p50_ms for e in t1.entries.values())


def test_interrupted_run_leaves_db_usable_and_resumes(ln, tmp_path):
    ref = tune(ln, _opts(ln), PerfDB(":memory:"), GPU, measurer=FakeMeasurer(),
               compile_fn=fake_compile)  # fmt: skip
    path = tmp_path / "perf.sqlite"
    with pytest.raises(KeyboardInterrupt):
        tune(ln, _opts(ln), PerfDB(path), GPU, measurer=FakeMeasurer(stop_after=5),
             compile_fn=fake_compile)  # fmt: skip
    db = PerfDB(path)
    assert db.stats()["rows"] == 5 and db.stats()["statuses"] == {"ok": 5}
    rest = FakeMeasurer()
    run = tune(ln, _opts(ln), db, GPU, measurer=rest, compile_fn=fake_compile)
    assert run.from_db >= 5 and 0 < len(rest.calls) < ref.measured + 1
    want = {b: config_key(e.config) for b, e in ref.kernels[0].table.entries.items()}
    assert {b: config_key(e.config) for b, e in run.kernels[0].table.entries.items()} == want


def test_failed_candidates_are_recorded_with_their_status(ln):
    info = _info(ln, "reduction")
    sp = build_space(info, get_target("sm_90"), {"N": 65536})
    top = rank(info, sp.candidates, {"N": 64}, gpu_for("sm_90"), get_target("sm_90"))
    first = diverse_top(top, 3)  # what the search measures first
    bad = dict(zip(map(config_key, first), ("timeout", "fault", "nan")))
    db = PerfDB(":memory:")
    run = tune(ln, _opts(ln), db, GPU, measurer=FakeMeasurer(status=bad), compile_fn=fake_compile)
    statuses = db.stats()["statuses"]
    assert statuses["timeout"] >= 1 and statuses["fault"] >= 1 and statuses["nan"] >= 1
    for e in run.kernels[0].table.entries.values():
        assert e.status == "ok" and config_key(e.config) not in bad


def test_budget_stops_measuring_and_nearest_neighbour_hit_rate(ln):
    ticks = iter(range(10_000))
    run = tune(ln, _opts(ln, budget_s=3), PerfDB(":memory:"), GPU, measurer=FakeMeasurer(),
               compile_fn=fake_compile, clock=lambda: float(next(ticks)))  # fmt: skip
    assert run.budget_exhausted and run.measured <= 3
    db = PerfDB(":memory:")
    tune(ln, _opts(ln), db, GPU, measurer=FakeMeasurer(), compile_fn=fake_compile)
    shapes = ({"N": 1000},)  # a new bucket: warm-started from the recorded ones
    run2 = tune(ln, _opts(ln, shapes=shapes), db, GPU, measurer=FakeMeasurer(),
                compile_fn=fake_compile)  # fmt: skip
    assert run2.neighbour_total == 1 and run2.hit_rate in (0.0, 1.0)


# ----- the no-GPU path: an untuned package ------------------------------------------------------


def test_no_gpu_writes_an_untuned_package_ranked_by_the_cost_model(mlp, tmp_path):
    from esperc.build import _versions
    from esperc.build_steps import assemble

    out = tmp_path / "mlp.kpkg"
    src = (ROOT / "samples" / "residual_mlp.esp").read_bytes()
    shapes = ({"B": 1}, {"B": 64}, {"B": 4096})
    got = autotune_package(mlp, src, out, TuneOptions("sm_90", shapes), Hooks(assemble, _versions),
                           PerfDB(":memory:"), None, tmp_path / "cache", compile_fn=fake_compile)  # fmt: skip
    assert not got.run.tuned and "no GPU" in got.run.note and "\n" not in got.run.note
    m = read_kpkg(out).manifest
    assert m["tuned"] is False and m["tuning"]["status"] == "untuned"
    assert len(m["perf"]) == 3 * 3 and all(r["status"] == "untuned" for r in m["perf"])
    assert all("ms" not in r and r["predicted_ms"] > 0 for r in m["perf"])
    info = _info(mlp, "matmul")
    sp = build_space(info, get_target("sm_90"), {"B": 65536})
    for b, dims in (("B=4096", {"B": 4096}), ("B=1", {"B": 1})):
        best = rank(info, sp.candidates, dims, gpu_for("sm_90"), get_target("sm_90"))[0][0]
        row = m["kernels"][info.name]["dispatch"]["buckets"][b]
        assert row["config"] == {**dict(best.blocks), "num_warps": best.num_warps,
                                 "num_stages": best.num_stages}  # fmt: skip
    members = set(read_kpkg(out).names()) if hasattr(read_kpkg(out), "names") else None
    for k in m["kernels"].values():
        for v in k.get("variants", {}).values():
            member = v["targets"]["sm_90"]["cubin"]
            assert members is None or member in members
            assert read_kpkg(out).member(member).startswith(b"\x7fELF")
    from esperc.runtime.artifact import load

    art = load(out)  # the runtime reads variants and dispatch tables
    assert art.name == "residual_mlp"


# ----- the measuring machinery, with fake and real (CPU) workers ----------------------------------


class ScriptedWorker:
    """A fake worker: answers from a script of callables (each may raise)."""

    def __init__(self, script):
        self.script, self.killed = script, False

    def request(self, msg, timeout_s):
        return self.script.pop(0)(msg)

    def kill(self):
        self.killed = True


def test_measurer_turns_hangs_crashes_and_faults_into_statuses():
    from esperc.tune.measure import Prepare, Run

    def hang(msg):
        raise TimeoutError("no answer within 1 s")

    def died(msg):
        raise WorkerDied("worker exited with code -11")

    ok = lambda msg: Result(getattr(msg, "key", "prepare"), "ok", 1.0, 1.0, 10)  # noqa: E731
    fatal = lambda msg: Result(msg.key, "fault", error="illegal address", fatal=True)  # noqa: E731
    workers = [ScriptedWorker([ok, hang]), ScriptedWorker([ok, died]), ScriptedWorker([ok, fatal]),
               ScriptedWorker([ok, ok, ok])]  # fmt: skip
    made = list(workers)
    m = Measurer(timeout_s=1, spawn=lambda: made.pop(0))
    prep = Prepare("func", (("B", 1),))
    results = [m.run(prep, Run(k, None, None, prep.dims)) for k in ("a", "b", "c", "d", "e")]
    assert [r.status for r in results] == ["timeout", "fault", "fault", "ok", "ok"]
    assert all(w.killed for w in workers[:3]) and not workers[3].killed
    assert m.restarts == 4  # a fresh worker after each bad candidate, then reused


class HangOrCrash:
    """A worker handler for the real process test: ``hang`` sleeps, ``crash`` exits hard."""

    def handle(self, msg):
        key = getattr(msg, "key", "prepare")
        if key == "hang":
            time.sleep(60)
        if key == "crash":
            os._exit(11)
        return Result(key, "ok", 0.5, 0.6, 3)


def test_real_worker_process_timeout_and_crash_cost_one_candidate():
    from esperc.tune.measure import Prepare, Run

    m = Measurer(timeout_s=3, startup_timeout_s=60,
                 spawn=lambda: ProcessWorker(f"{__name__}:HangOrCrash"))  # fmt: skip
    prep = Prepare("func", ())
    try:
        got = [m.run(prep, Run(k, None, None, ())).status for k in ("ok1", "hang", "crash", "ok2")]
    finally:
        m.close()
    assert got == ["ok", "timeout", "fault", "ok"] and m.restarts == 3


_WARM_SCRIPT = """
import sys, time
sys.path[:0] = [{root!r}, {here!r}]
from pathlib import Path
from esperc import driver
from esperc.tune import PerfDB
from esperc.tune.package import Hooks, autotune_package
from esperc.tune.autotune import TuneOptions
from test_autotune import GPU, FakeMeasurer, fake_compile

def assemble(*a):
    from esperc.build_steps import assemble
    return assemble(*a)

def versions():
    from esperc.build import _versions
    return _versions()

tmp = Path({tmp!r})
func, _ = driver.compile_ir({src!r}, driver.Options())
t = time.monotonic()
out = autotune_package(func, b"src", tmp / "o.kpkg", TuneOptions("sm_90", ({{"N": 64}},)),
                       Hooks(assemble, versions), PerfDB(tmp / "db.sqlite"), GPU, tmp / "cache",
                       measurer=FakeMeasurer(), compile_fn=fake_compile)
print(out.cached, out.run.measured, round(time.monotonic() - t, 3),
      "torch" in sys.modules, "triton" in sys.modules)
"""


def test_repeated_autotune_is_answered_without_torch_or_triton(tmp_path):
    import subprocess
    import sys

    code = _WARM_SCRIPT.format(root=str(ROOT), here=str(Path(__file__).parent), tmp=str(tmp_path),
                               src=str(ROOT / "samples" / "layer_norm.esp"))  # fmt: skip
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
            for _ in range(2)]  # fmt: skip
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    cold, warm = (r.stdout.split() for r in runs)
    assert cold[0] == "False" and int(cold[1]) > 0
    assert warm[0] == "True" and warm[1] == "0" and warm[3:] == ["False", "False"]
    assert float(warm[2]) < 1.0


def test_parse_shapes_product_defaults_and_errors(mlp):
    import typer

    from esperc.cli_autotune import parse_shapes

    assert parse_shapes(["B=4096,1,64"], mlp) == ({"B": 1}, {"B": 64}, {"B": 4096})
    assert parse_shapes(None, mlp) == ({"B": 64}, {"B": 4096})
    for bad in (["X=1"], ["B=one"], ["B=0"], ["B"]):
        with pytest.raises(typer.BadParameter):
            parse_shapes(bad, mlp)


# ----- training packages: the backward is tuned too -------------------------------------------


def test_training_package_tunes_backward_kernels_and_finishers(tmp_path):
    from esperc.build import _versions
    from esperc.build_backward import part_table, plan_fields, prepare
    from esperc.build_steps import assemble
    from esperc.tune.package import Training

    src = ROOT / "samples" / "layer_norm.esp"
    opts = driver.Options(backward=True)
    tf = prepare(driver.lower(src, opts), opts)
    measurer = FakeMeasurer()
    out = tmp_path / "ln.train.kpkg"
    got = autotune_package(tf.forward, src.read_bytes(), out, _opts(tf.forward),
                           Hooks(assemble, _versions, None, part_table), PerfDB(":memory:"), GPU,
                           None, training=Training(tf.backward, plan_fields(tf)),
                           measurer=measurer, compile_fn=fake_compile)  # fmt: skip
    m = read_kpkg(out).manifest
    bw = m["backward"]
    # the backward row reduction, its column-sum finisher and the casts: each has a dispatch
    # table and was measured; the finisher's job carries the partials it reads
    names = set(bw["kernels"])
    assert any(n.endswith("_fin") for n in names) and len(names) >= 3
    assert all("dispatch" in k for k in bw["kernels"].values())
    fin = next(n for n in names if n.endswith("_fin"))
    assert bw["kernels"][fin]["dispatch"]["buckets"]
    assert {k for k, _ in measurer.calls} and m["tuning"]["backward"]["candidates_run"] > 0
    assert m["outputs"] == [{"name": r, "dtype": "bf16", "shape": ["N", 4096]}
                            for r in tf.forward.results[: tf.plan.num_outputs]]  # fmt: skip
    assert {r["kernel"] for r in m["perf"]} >= names
    assert got.run.tuned and bw["wrt"] == list(tf.plan.wrt)
