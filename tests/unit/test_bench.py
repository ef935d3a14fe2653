"""The benchmark harness's CPU-side logic: statistics, byte and FLOP counts, derived numbers,
numerics verdicts, report formatting on synthetic numbers, and one blueprint's whole procedure
run on the CPU with a fake timer. Nothing here is timed or asserts on a time."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import report, specs
from bench.measure import (
    ResetThenFlush,
    Settings,
    Workload,
    measure_blueprint,
    run_peer,
    time_cpu,
)
from bench.packages import compile_command, prebuilt, validation_note
from bench.peers import Peer, PeerOptions, PeerResult, Unavailable, skipped_peers
from bench.run import parse_args, rows_of, slug
from esperc.cli_bench import (
    BenchError,
    Stats,
    default_dims,
    gbps,
    io_bytes,
    parse_dims,
    percentile,
    plan_repeats,
    rel_err,
    tensor_bytes,
    tflops,
)

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("q", [0, 5, 50, 90, 95, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy_linear(q: float, n: int) -> None:
    rng = random.Random(n * 1000 + q)
    xs = [rng.lognormvariate(0, 1) for _ in range(n)]
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_stats_of_known_samples() -> None:
    s = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.n, s.median_ms, s.min_ms, s.max_ms, s.mean_ms) == (5, 3.0, 1.0, 5.0, 3.0)
    assert s.p95_ms == pytest.approx(4.8)
    assert s.stdev_ms == pytest.approx(math.sqrt(2.5))
    assert Stats.of([2.0]).stdev_ms == 0.0
    with pytest.raises(ValueError):
        Stats.of([])


def test_stats_median_resists_one_outlier() -> None:
    s = Stats.of([1.0] * 99 + [1000.0])
    assert s.median_ms == 1.0 and s.p95_ms == 1.0 and s.max_ms == 1000.0


@pytest.mark.parametrize(
    ("estimate", "budget", "lo", "hi", "want"),
    [(1.0, 100.0, 10, 200, 100), (0.001, 100.0, 10, 200, 200), (50.0, 100.0, 10, 200, 10),
     (0.0, 100.0, 10, 200, 200), (math.nan, 100.0, 10, 200, 200)],
)  # fmt: skip
def test_plan_repeats_clamps(estimate: float, budget: float, lo: int, hi: int, want: int) -> None:
    assert plan_repeats(estimate, budget, lo, hi) == want


# ------------------------------------------------------------------------------ derived numbers


def test_io_bytes_layer_norm_reference_size() -> None:
    n, d = 16384, 4096
    got = io_bytes([((n, d), 2), ((d,), 2), ((d,), 2)], [((n, d), 2)])
    assert got == 2 * n * d * 2 + 2 * d * 2


def test_tensor_bytes_uses_element_sizes() -> None:
    ts = [torch.zeros(3, 4, dtype=torch.bfloat16), torch.zeros(5, dtype=torch.float32)]
    assert tensor_bytes(ts) == [((3, 4), 2), ((5,), 4)]
    assert io_bytes(tensor_bytes(ts), []) == 3 * 4 * 2 + 5 * 4


def test_rates() -> None:
    assert gbps(3e9, 1.0) == pytest.approx(3000.0)  # 3 GB in 1 ms
    assert tflops(8e12, 10.0) == pytest.approx(800.0)
    assert math.isnan(gbps(1.0, 0.0)) and math.isnan(tflops(1.0, 0.0))


def test_rel_err_against_hand_computed_values() -> None:
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    out = torch.tensor([3.0, 4.5], dtype=torch.bfloat16)
    assert rel_err(out, ref) == pytest.approx(0.5 / 5.0)
    assert rel_err(torch.tensor([1.0, math.nan]), ref) == math.inf
    assert rel_err(torch.tensor([1.0, math.inf]), ref) == math.inf
    assert rel_err(torch.tensor([0.0, 2.0]), torch.zeros(2, dtype=torch.float64)) == 2.0
    with pytest.raises(ValueError):
        rel_err(torch.zeros(3), ref)


def test_parse_dims() -> None:
    assert parse_dims(["N=4096"]) == {"N": 4096}
    assert parse_dims(["B=2,S=128", "H=4"]) == {"B": 2, "S": 128, "H": 4}
    for bad in (["N"], ["N=x"], ["=3"], ["N=1.5"]):
        with pytest.raises(ValueError):
            parse_dims(bad)


def _lowered(name: str):  # noqa: ANN202
    from esperc.driver import Options, lower

    return lower(specs.BY_NAME[name].path, Options())


def test_default_dims_clamps_and_rejects_unknown() -> None:
    func = _lowered("causal_attention")  # B in [1, 64], S in [1, 16384]
    assert default_dims(func, {}) == {"B": 64, "S": 4096}
    assert default_dims(func, {"S": 7}) == {"B": 64, "S": 7}
    with pytest.raises(BenchError):
        default_dims(func, {"H": 8})


# ------------------------------------------------------------------------------------- specs


def test_flop_formulas() -> None:
    assert specs.matmul_flops(2, 3, 4) == 48
    assert specs.BY_NAME["swiglu_mlp"].flops == 3 * 2 * 8192 * 2048 * 5632
    assert specs.BY_NAME["residual_mlp"].flops == 2 * 2 * 8192 * 1024 * 4096
    # half of 4*B*H*S*S*d for the causal mask
    assert specs.BY_NAME["causal_attention"].flops == 2 * 8 * 16 * 1024 * 1024 * 64


def test_memory_bound_specs_have_no_flops_and_report_gbps() -> None:
    for s in specs.SPECS:
        assert (s.flops == 0) == (s.bound == "memory")
        assert s.unit == ("GB/s" if s.bound == "memory" else "TFLOP/s")
        assert s.path.exists()


def test_rate_uses_bytes_or_flops() -> None:
    ln, sw = specs.BY_NAME["layer_norm"], specs.BY_NAME["swiglu_mlp"]
    assert specs.rate(ln, 2_000_000_000, 1.0) == pytest.approx(2000.0)
    assert specs.rate(sw, 123, 1.0) == pytest.approx(sw.flops / 1e-3 / 1e12)


def test_select() -> None:
    assert specs.select(None) == specs.SPECS + specs.TRAIN_SPECS
    assert [s.key for s in specs.select("softmax, layer_norm")] == [
        "layer_norm", "softmax", "layer_norm.train"]  # fmt: skip
    assert [s.key for s in specs.select("softmax,layer_norm", train=False)] == [
        "layer_norm", "softmax"]  # fmt: skip
    assert [s.key for s in specs.select(None, forward=False)] == [
        "layer_norm.train", "residual_mlp.train", "swiglu_mlp.train"]  # fmt: skip
    assert specs.select("softmax", forward=False) == ()
    with pytest.raises(KeyError, match="known"):
        specs.select("layer_norm,nope")


def test_training_specs_mirror_their_forward_rows() -> None:
    for t in specs.TRAIN_SPECS:
        f = specs.BY_NAME[t.name]
        assert t.train and not f.train
        assert (t.key, t.label) == (f"{f.name}.train", f"{f.name} fwd+bwd")
        assert (f.key, f.label) == (f.name, f.name)
        assert t.flops == 3 * f.flops and t.dims == f.dims and t.liger == f.liger
        assert t.bound == f.bound and t.path == f.path
        assert specs.BY_KEY[t.key] is t and specs.BY_KEY[f.key] is f
        assert t.target and t.target_text and not f.target
    # 3x: fwd = 2 matmuls (residual_mlp) or 3 (swiglu_mlp) of 2*M*N*K each
    assert specs.BY_KEY["residual_mlp.train"].flops == 3 * 2 * 2 * 8192 * 1024 * 4096
    assert specs.BY_KEY["swiglu_mlp.train"].flops == 3 * 3 * 2 * 8192 * 2048 * 5632
    assert dict(specs.BY_KEY["layer_norm.train"].target) == {"liger": 0.398,
                                                             "torch.compile": 0.617}  # fmt: skip


def test_train_bytes_layer_norm_reference_size() -> None:
    n, d = 16384, 4096
    got = specs.train_bytes([((n, d), 2)], [((d,), 2), ((d,), 2)], [((n, d), 2)])
    # x read, y written | dy read, x read again, dx written; w, b read, dw, db written
    assert got == 5 * n * d * 2 + 4 * d * 2 == 671_121_408


def test_train_bytes_counts_each_gradient_once() -> None:
    # an input [3] f32 and a param [2, 5] bf16 -> an output [7] f32
    got = specs.train_bytes([((3,), 4)], [((2, 5), 2)], [((7,), 4)])
    assert got == (12 + 20 + 28) + (28 + 12) + (12 + 20)


def test_dry_run_shrinks_dims_only() -> None:
    s = specs.dry_run(specs.BY_KEY["layer_norm.train"])
    assert s.dims == {"N": 3} and s.train and s.key == "layer_norm.train"
    assert specs.dry_run(specs.BY_NAME["swiglu_mlp"]).flops == 0  # not the reference size's
    assert "dry run at N=3" in s.describe
    assert specs.dry_run(specs.BY_NAME["causal_attention"]).dims == {"B": 3, "S": 16}


@pytest.mark.parametrize(
    ("in_bytes", "l2", "want"),
    [(100 << 20, 50 << 20, 1), (50 << 20, 50 << 20, 1), (48 << 20, 50 << 20, 2),
     (10 << 20, 50 << 20, 4), (0, 50 << 20, 4)],
)  # fmt: skip
def test_input_sets(in_bytes: int, l2: int, want: int) -> None:
    assert specs.input_sets(in_bytes, l2) == want


def test_derived_helpers() -> None:
    assert specs.pct_of(1500.0, 3000.0) == 50.0
    assert specs.pct_of(None, 3000.0) is None and specs.pct_of(1.0, 0.0) is None
    assert specs.speedup(2.0, 1.0) == 2.0 and specs.speedup(2.0, None) is None


@pytest.mark.parametrize(
    ("err", "eager", "ok"),
    [(5e-3, 2e-3, True), (2e-2, 2e-3, False), (2.5e-2, 1.5e-2, True), (math.inf, 1e-3, False),
     (math.nan, 1e-3, False), (None, 1e-3, False), (9e-3, None, True)],
)  # fmt: skip
def test_numerics_ok(err: float | None, eager: float | None, ok: bool) -> None:
    assert specs.numerics_ok(err, eager) is ok


def test_all_numerics_ok_checks_every_tensor_against_eager_on_it() -> None:
    eager = {"out": 2e-3, "dx": 8e-3, "dweight": 3e-3}
    assert specs.all_numerics_ok({"out": 3e-3, "dx": 1.5e-2, "dweight": 9e-3}, eager)
    assert not specs.all_numerics_ok({"out": 3e-3, "dx": 1.5e-2, "dweight": 1.1e-2}, eager)
    assert not specs.all_numerics_ok({"out": 3e-3, "dx": math.inf}, eager)
    assert specs.all_numerics_ok({"out": 9e-3}, {}) and not specs.all_numerics_ok({}, eager)


def test_target_verdict() -> None:
    ln = (("liger", 0.398), ("torch.compile", 0.617))
    assert specs.target_verdict((), 1.0, {}) == ""
    assert specs.target_verdict(ln, 0.3, {"liger": 0.35, "torch.compile": 0.6}) == "met"
    assert specs.target_verdict(ln, 0.3, {}) == "met"  # the numbers alone
    v = specs.target_verdict(ln, 0.38, {"liger": 0.36, "torch.compile": 0.6})
    assert v == "not met: slower than liger 0.3600 ms (this run)"
    v = specs.target_verdict(ln, 0.5, {"liger": 0.36})
    assert v.startswith("not met") and "liger 0.398 ms (issue)" in v and "0.617" not in v
    mlp = (("torch.compile", None),)
    assert specs.target_verdict(mlp, 0.5, {"torch.compile": 0.6}) == "met"
    v = specs.target_verdict(mlp, 1.18, {"torch.compile": 1.29, "eager": 0.84, "liger": 0.9})
    assert v == "met (eager 0.8400 ms is faster)"  # the target peer beaten, another one not
    assert specs.target_verdict(mlp, 0.5, {"eager": 0.6}).startswith("unknown")
    assert specs.target_verdict(mlp, None, {"torch.compile": 0.6}).startswith("not met")


# The bench's blueprint copies declare the reference sizes exactly (static dims) once the
# spec's dynamic dims are bound; checked on the lowered IR.
REFERENCE_SHAPES = {
    "layer_norm": {"x": (16384, 4096), "weight": (4096,), "bias": (4096,)},
    "rms_norm": {"x": (16384, 4096), "weight": (4096,)},
    "softmax": {"x": (16384, 4096)},
    "bias_gelu_residual": {"x": (16384, 4096), "residual": (16384, 4096), "bias": (4096,)},
    "residual_mlp": {"x": (8192, 1024), "w1": (4096, 1024), "w2": (1024, 4096)},
    "swiglu_mlp": {"x": (8192, 2048), "w_gate": (5632, 2048), "w_down": (2048, 5632)},
    "causal_attention": {"q": (8, 16, 1024, 64), "k": (8, 16, 1024, 64)},
}


@pytest.mark.parametrize("name", list(REFERENCE_SHAPES))
def test_bench_blueprints_have_the_reference_sizes(name: str) -> None:
    from esperc.ir.reference import concrete_shape

    func = _lowered(name)
    shapes = {a.name: concrete_shape(a.type.shape, dict(specs.BY_NAME[name].dims))
              for a in func.args}  # fmt: skip
    for arg, want in REFERENCE_SHAPES[name].items():
        assert shapes[arg] == want
    assert all(str(a.type.dtype) == "bf16" for a in func.args)


# ------------------------------------------------------------------------------------- peers


def test_skipped_peer_rows_say_why() -> None:
    ln = specs.BY_NAME["layer_norm"]
    rows = skipped_peers(ln, PeerOptions(compile_peers=True, autotune=()))
    assert [(r.peer, r.status, r.note) for r in rows] == [
        ("torch.compile max-autotune", "skipped", "not in --autotune list")
    ]
    assert len(skipped_peers(ln, PeerOptions(compile_peers=False))) == 2
    assert skipped_peers(ln, PeerOptions(compile_peers=True, autotune=("layer_norm",))) == []


def test_compile_command_adds_backward_for_training_rows(tmp_path) -> None:  # noqa: ANN001
    fwd = compile_command(specs.BY_NAME["layer_norm"], "sm_90", tmp_path / "a.kpkg")
    train = compile_command(specs.BY_KEY["layer_norm.train"], "sm_90", tmp_path / "a.kpkg")
    assert "--backward" not in fwd and train == [*fwd, "--backward"]
    assert (
        fwd[fwd.index("--target") + 1] == "sm_90" and str(specs.BY_NAME["layer_norm"].path) in fwd
    )


def test_prebuilt_looks_for_the_train_package(tmp_path) -> None:  # noqa: ANN001
    got = prebuilt(specs.BY_KEY["swiglu_mlp.train"], tmp_path)
    assert got["path"] is None and got["note"] == f"no {tmp_path / 'swiglu_mlp.train.kpkg'}"
    assert prebuilt(specs.BY_NAME["swiglu_mlp"], tmp_path)["note"].endswith("swiglu_mlp.kpkg")


def test_parse_args_row_flags() -> None:
    assert [s.key for s in rows_of(parse_args(["--only", "layer_norm"]))] == [
        "layer_norm", "layer_norm.train"]  # fmt: skip
    assert [s.key for s in rows_of(parse_args(["--only", "layer_norm", "--no-train"]))] == [
        "layer_norm"]  # fmt: skip
    only = rows_of(parse_args(["--only-train"]))
    assert [s.key for s in only] == [s.key for s in specs.TRAIN_SPECS]
    dry = rows_of(parse_args(["--only-train", "--dry-run", "--only", "residual_mlp"]))
    assert [(s.key, dict(s.dims)) for s in dry] == [("residual_mlp.train", {"B": 3})]
    with pytest.raises(SystemExit):
        parse_args(["--only-train", "--no-train"])


def test_validation_note() -> None:
    assert validation_note([{"name": "k0", "validation": "pass"}]) == ""
    note = validation_note([{"name": "k0", "validation": "fail"}, {"name": "k1"}])
    assert "k0" in note and "k1" not in note and "eager" in note


def test_slug() -> None:
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("  ") == "unknown-gpu"


# ------------------------------------------------------------- the procedure, on the CPU, faked


def fake_timer(calls, repeats, warmup, flush):  # noqa: ANN001, ANN201 - time_gpu's signature
    for call in calls:  # every input set must run without error
        call()
    return Stats.of([2.0] * repeats)


CPU = Settings(max_repeats=4, min_repeats=2, warmup=0, overhead_calls=2, device="cpu",
               timer=fake_timer, peers=PeerOptions(compile_peers=False, autotune=()))  # fmt: skip


def test_run_peer_turns_failures_into_rows() -> None:
    sets = [{"x": torch.randn(3, 4)}]
    ref = sets[0]["x"].double() * 2

    def missing() -> None:
        raise Unavailable("not installed here")

    def broken() -> None:
        raise RuntimeError("boom")

    work = Workload(sets, {"out": ref})
    good, fn = run_peer(Peer("good", lambda: lambda x: x * 2), work, None, CPU)
    assert good.status == "ok" and fn is not None and good.rel_err == 0.0 and good.n == 4
    assert good.extra["rel_errs"] == {"out": 0.0}
    row, fn = run_peer(Peer("m", missing), work, None, CPU)
    assert (row.status, row.note, fn) == ("not available", "not installed here", None)
    row, fn = run_peer(Peer("b", broken), work, None, CPU)
    assert row.status == "error" and "boom" in row.note and fn is None
    row, _ = run_peer(Peer("nan", lambda: lambda x: x * math.nan), work, None, CPU)
    assert row.status == "ok" and row.rel_err == math.inf


def _train_work() -> Workload:
    """A training step of y = x * w (x [3, 4] input, w [4] param) with upstream gradient g."""
    gen = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(*s, generator=gen) for s in ((3, 4), (4,), (3, 4)))
    sets = [{"x": x.requires_grad_(), "w": w.requires_grad_()}]
    refs = {"out": (x * w).detach().double(), "dx": (g * w).detach().double(),
            "dw": (g * x).sum(0).detach().double()}  # fmt: skip
    return Workload(sets, refs, [g])


def test_workload_training_step_checks_output_and_every_gradient() -> None:
    work = _train_work()
    got = work.call(lambda x, w: x * w)
    assert set(got) == {"out", "dx", "dw"}
    assert all(e < 1e-6 for e in work.errors(got).values())
    # a second step without a reset adds into the gradients (what the reset prevents)
    assert work.errors(work.call(lambda x, w: x * w))["dx"] == pytest.approx(1.0)
    work.reset()
    assert all(t.grad is None for t in work.sets[0].values())
    # a peer that leaves a gradient out gets inf for it, never a pass
    errs = work.errors(work.call(lambda x, w: x * w.detach()))
    assert errs["dw"] == math.inf and errs["dx"] < 1e-6


def test_reset_then_flush_runs_before_each_timed_call() -> None:
    events: list[str] = []

    class Flush:
        def zero_(self) -> None:
            events.append("flush")

    before = ResetThenFlush(lambda: events.append("reset"), Flush())  # type: ignore[arg-type]
    st = time_cpu([lambda: events.append("call")], 2, 1, before)
    assert st.n == 2 and events == ["call", "reset", "flush", "call", "reset", "flush", "call"]
    work = _train_work()
    assert work.before_each(None).flush is None
    assert Workload(work.sets, work.refs).before_each(None) is None  # forward: the buffer


def test_run_peer_times_a_training_step_from_fresh_gradients() -> None:
    work = _train_work()
    work.sets[0]["x"].grad = torch.full((3, 4), 100.0)  # left over: must not add into the check
    row, fn = run_peer(Peer("eager", lambda: lambda x, w: x * w), work, None, CPU)
    assert row.status == "ok" and fn is not None and row.rel_err < 1e-6
    assert set(row.extra["rel_errs"]) == {"out", "dx", "dw"}
    assert all(t.grad is None for t in work.sets[0].values())  # dropped after the peer


def test_measure_blueprint_on_cpu_keeps_going_past_a_failed_peer() -> None:
    spec = dataclasses.replace(specs.BY_NAME["layer_norm"], dims={"N": 5})
    seen: list[int] = []
    ceil = {"copy": {"gbps": 3000.0}, "gemm": {"tflops": 800.0}}
    result = measure_blueprint(spec, None, {"note": "not built"}, ceil, None, CPU,
                               lambda _m: None, lambda r: seen.append(len(r["rows"])))  # fmt: skip
    rows = {r["peer"]: r for r in result["rows"]}
    assert rows["eager"]["status"] == "ok" and rows["eager"]["numerics_ok"] is True
    assert rows["esperc"]["status"] == "error"  # no package: an error row, not an abort
    assert rows["liger"]["status"] in ("not available", "ok", "error")
    assert rows["torch.compile"]["status"] == "skipped"
    assert result["bytes"] == (2 * 5 * 4096 + 2 * 4096) * 2
    assert rows["eager"]["rate"] == pytest.approx(gbps(result["bytes"], 2.0))
    assert rows["eager"]["pct_ceiling"] == pytest.approx(100 * rows["eager"]["rate"] / 3000.0)
    assert rows["eager"]["speedup"] is None  # esperc has no time
    assert seen and seen[-1] == len(result["rows"])
    assert "eager" in result["host_overhead_us"]


def test_measure_training_row_on_cpu_checks_every_gradient() -> None:
    spec = dataclasses.replace(specs.BY_KEY["layer_norm.train"], dims={"N": 5})
    ceil = {"copy": {"gbps": 3000.0}, "gemm": {"tflops": 800.0}}
    result = measure_blueprint(spec, None, {"note": "not built"}, ceil, None, CPU,
                               lambda _m: None, lambda _r: None)  # fmt: skip
    rows = {r["peer"]: r for r in result["rows"]}
    eager = rows["eager"]
    assert eager["status"] == "ok" and eager["numerics_ok"] is True
    assert set(eager["extra"]["rel_errs"]) == {"out", "dx", "dweight", "dbias"}
    assert all(0 < e < 1e-2 for e in eager["extra"]["rel_errs"].values())  # bf16, not exact
    assert rows["esperc"]["status"] == "error"
    assert result["bytes"] == 5 * 5 * 4096 * 2 + 4 * 4096 * 2
    assert (result["train"], result["label"], result["key"]) == (True, "layer_norm fwd+bwd",
                                                                 "layer_norm.train")  # fmt: skip
    assert result["target"]["text"] == "Liger 0.398 ms, Inductor 0.617 ms"
    assert "host_overhead_us" not in result


@pytest.fixture(scope="module")
def tiny_train_kpkg(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a Path
    """The tiny_adapter sample as a training package: no cubins, no validation (2 s)."""
    from esperc import build, driver
    from esperc.build_backward import prepare

    src = ROOT / "samples" / "tiny_adapter.esp"
    opts = driver.Options(targets=(), validate=False, backward=True)
    tf = prepare(driver.lower(src, opts), opts)
    out = tmp_path_factory.mktemp("bench") / "tiny_adapter.train.kpkg"
    build.build_package(src, tf.forward, opts, out, training=tf)
    return out


def test_measure_training_row_runs_the_esperc_package(tiny_train_kpkg, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(specs, "BLUEPRINTS", ROOT / "samples")  # the sample, not a bench copy
    flops = 3 * (specs.matmul_flops(5, 64, 32) + specs.matmul_flops(5, 32, 64))
    spec = specs.Spec("tiny_adapter", {"B": 5}, "compute", flops, "B=5 f32", train=True,
                      target=(("eager", None),), target_text="faster than eager")  # fmt: skip
    ceil = {"copy": {"gbps": 3000.0}, "gemm": {"tflops": 800.0}}
    result = measure_blueprint(spec, tiny_train_kpkg, {"compile_s": 2.0}, ceil, None, CPU,
                               lambda _m: None, lambda _r: None)  # fmt: skip
    rows = {r["peer"]: r for r in result["rows"]}
    mine = rows["esperc"]
    assert mine["status"] == "ok", mine["note"]
    names = {"out", "dx", "dln_w", "dln_b", "dw1", "db1", "dw2", "db2"}
    assert set(mine["extra"]["rel_errs"]) == names
    assert mine["rel_err"] < 1e-4 and mine["numerics_ok"] is True  # f32 throughout
    assert mine["rate"] == pytest.approx(tflops(flops, 2.0)) and mine["compile_s"] == 2.0


# ------------------------------------------------------------------------------------ report


def _row(peer: str, ms: float | None, **kw) -> dict:  # noqa: ANN003
    r = PeerResult(peer, median_ms=ms, p95_ms=None if ms is None else ms * 1.1, n=100, **kw)
    return dataclasses.asdict(r)


def synthetic_results() -> dict:
    rows = [
        _row("eager", 0.40, rate=1340.0, pct_ceiling=44.7, speedup=2.0, rel_err=2e-3,
             numerics_ok=True),
        _row("torch.compile", 0.25, rate=2144.0, pct_ceiling=71.5, speedup=1.25, compile_s=12.3,
             rel_err=3e-3, numerics_ok=True),
        dataclasses.asdict(PeerResult("liger", "not available", "liger_kernel is not installed")),
        _row("esperc", 0.20, rate=2680.0, pct_ceiling=89.3, speedup=1.0, compile_s=1.1,
             rel_err=0.5, numerics_ok=False),
    ]  # fmt: skip
    return {
        "meta": {"gpu": "NVIDIA H100 80GB HBM3", "arch": "sm_90", "torch": "2.11.0"},
        "ceilings": {"copy": {"gbps": 3000.0}, "gemm": {"tflops": 790.0}},
        "blueprints": [
            {"blueprint": "layer_norm", "describe": "[16384, 4096] bf16", "bound": "memory",
             "unit": "GB/s", "bytes": 268_468_224, "flops": 0, "rows": rows,
             "host_overhead_us": {"dims": {"N": 1}, "esperc": 21.5, "eager": 9.0},
             "build": {"compile_s": 1.1, "wall_s": 3.2}},
            {"blueprint": "swiglu_mlp", "describe": "8192 tokens", "bound": "compute",
             "unit": "TFLOP/s", "error": "RuntimeError: setup failed", "rows": []},
        ],
        "launch_floor_us": {"triton_bare_launch": 12.5, "torch_add_": 4.0},
        "cold_start": {"blueprint": "layer_norm", "kpkg": {"first_result_s": 0.4,
                       "process_s": 3.0}, "torch.compile cold": {"first_result_s": 9.5},
                       "torch.compile warm": {"error": "exit 1: boom"}},
    }  # fmt: skip


def test_markdown_tables_from_synthetic_numbers() -> None:
    md = report.markdown(synthetic_results())
    assert md.startswith("# esperc benchmark — NVIDIA H100 80GB HBM3")
    assert "| torch.compile | 0.2500 | 0.2750 | 2144 | 71.5 | 1.25× | 12.3 | 3.0e-03 ✓ |" in md
    assert "| liger | not available: liger_kernel is not installed |" in md
    assert "| esperc | 0.2000 | 0.2200 | 2680 | 89.3 | 1.00× | 1.1 | 5.0e-01 ✗ FAIL |" in md
    assert "blueprint failed before any peer ran: RuntimeError: setup failed" in md
    assert "host time per call at N=1: esperc 21.5 µs, eager 9.0 µs" in md
    assert "| triton_bare_launch | 12.5 |" in md
    assert "| torch.compile warm | – | – | exit 1: boom |" in md
    assert "copy 3000 GB/s" in md and "8192³ 790 TFLOP/s" in md


def test_summary_picks_the_fastest_other_peer() -> None:
    summary = report.summary_table(synthetic_results()["blueprints"])
    assert (
        "| layer_norm | 0.2000 | 0.4000 | torch.compile 0.2500 | 1.25× | 89.3 | FAIL |" in summary
    )
    assert "| swiglu_mlp | – | – | – | – | – | – |" in summary


def synthetic_training_results() -> dict:
    errs = {"out": 2e-3, "dx": 4e-3, "dweight": 6e-3, "dbias": 3e-3}
    rows = [
        _row("eager", 0.80, rate=839.0, speedup=2.0, rel_err=6e-3, numerics_ok=True,
             extra={"rel_errs": errs}),
        _row("torch.compile", 0.60, rate=1118.0, speedup=1.5, compile_s=15.0, rel_err=6e-3,
             numerics_ok=True, extra={"rel_errs": errs}),
        _row("liger", 0.39, rate=1721.0, speedup=0.975, rel_err=6e-3, numerics_ok=True,
             extra={"rel_errs": errs}),
        _row("esperc", 0.40, rate=1678.0, speedup=1.0, compile_s=110.0, rel_err=9e-3,
             numerics_ok=True, extra={"rel_errs": {**errs, "dx": 9e-3}}),
    ]  # fmt: skip
    results = synthetic_results()
    results["blueprints"] = [results["blueprints"][0], {
        "blueprint": "layer_norm", "key": "layer_norm.train", "label": "layer_norm fwd+bwd",
        "train": True, "describe": "[16384, 4096] bf16", "bound": "memory", "unit": "GB/s",
        "bytes": 671_121_408, "flops": 0, "rows": rows,
        "target": {"text": "Liger 0.398 ms, Inductor 0.617 ms",
                   "peers": [["liger", 0.398], ["torch.compile", 0.617]]}}]  # fmt: skip
    return results


def test_training_rows_get_their_own_summary_and_section() -> None:
    md = report.markdown(synthetic_training_results())
    forward, train = md.index("## Summary\n"), md.index("## Summary: training")
    assert forward < train < md.index("## layer_norm — ") < md.index("## layer_norm fwd+bwd — ")
    # the forward summary keeps its columns; the training one adds the target
    assert "| layer_norm | 0.2000 | 0.4000 | torch.compile 0.2500 | 1.25× | 89.3 | FAIL |\n" in md
    assert ("| layer_norm fwd+bwd | 0.4000 | 0.8000 | liger 0.3900 | 0.97× | – | ok | "
            "Liger 0.398 ms, Inductor 0.617 ms | not met: slower than liger 0.398 ms (issue), "
            "liger 0.3900 ms (this run) |") in md  # fmt: skip
    assert "| esperc | 0.4000 | 0.4400 | 1678 | – | 1.00× | 110.0 | 9.0e-03 (dx) ✓ |" in md
    assert "| eager | 0.8000 | 0.8800 | 839 | – | 2.00× | – | 6.0e-03 (dweight) ✓ |" in md
    assert "3 × the forward matmul FLOPs" in md and "5·N·D + 4·D" in md


def test_training_target_met_and_numerics_fail() -> None:
    results = synthetic_training_results()
    train = results["blueprints"][1]
    train["rows"][2] = dataclasses.asdict(PeerResult("liger", "not available", "not installed"))
    train["rows"][3]["median_ms"] = 0.35  # under Liger's 0.398 ms and torch.compile's 0.6
    summary = report.summary_table([train])
    assert summary.splitlines()[0].endswith("| target (issue) | target met |")
    assert summary.splitlines()[2].endswith("| Liger 0.398 ms, Inductor 0.617 ms | met |")
    train["rows"][3]["numerics_ok"] = False
    assert report.summary_table([train]).endswith("| not met: esperc numerics FAIL |")


def test_plot_labels_training_rows(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    labels: list[str] = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.set_xticks

    def spy(self, ticks, names=None, **kw):  # noqa: ANN001, ANN003, ANN202
        labels.extend(names or [])
        return real(self, ticks, names, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", spy)
    assert report.plot(synthetic_training_results(), tmp_path / "r.png") == ""
    assert labels == ["layer_norm", "layer_norm fwd+bwd"] and (tmp_path / "r.png").exists()


def test_peer_row_escapes_pipes_in_notes() -> None:
    row = report.peer_row(dataclasses.asdict(PeerResult("x", "error", "a | b")), "GB/s")
    assert row[1] == "error: a / b" and len(row) == 8


def test_plot_without_matplotlib_returns_a_note(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    note = report.plot(synthetic_results(), tmp_path / "results.png")
    assert "matplotlib" in note and not (tmp_path / "results.png").exists()


def test_write_all_round_trips(tmp_path) -> None:  # noqa: ANN001
    import json

    results = synthetic_results()
    report.write_all(results, tmp_path / "out")
    back = json.loads((tmp_path / "out" / "results.json").read_text())
    assert back["blueprints"][0]["rows"][0]["peer"] == "eager"
    assert (tmp_path / "out" / "results.md").read_text() == report.markdown(back)


# ------------------------------------------------------------------------------- esperc bench


def _app():  # noqa: ANN202
    import typer

    from esperc.cli_bench import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """esperc."""

    register(app)
    return app


def test_bench_command_rejects_bad_dims(tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    res = CliRunner().invoke(_app(), ["bench", str(tmp_path / "x.kpkg"), "--dims", "N"])
    assert res.exit_code == 2


def test_bench_command_needs_a_gpu(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    res = CliRunner().invoke(_app(), ["bench", str(tmp_path / "x.kpkg"), "--dims", "N=8"])
    assert res.exit_code == 1
    assert "CUDA GPU" in res.output


def test_skipped_rows_name_the_time_budget_only_where_it_applied() -> None:
    ln, sm = specs.BY_NAME["layer_norm"], specs.BY_NAME["softmax"]
    opts = PeerOptions(True, (), "time budget (100 s left)", ("layer_norm",))
    assert skipped_peers(ln, opts)[0].note == "time budget (100 s left)"
    assert skipped_peers(sm, opts)[0].note == "not in --autotune list"
    gone = PeerOptions(False, (), "time budget (50 s left)", ("layer_norm",))
    assert {r.note for r in skipped_peers(sm, gone)} == {"time budget (50 s left)"}


def test_kernel_profile_table_gives_each_kernels_share() -> None:
    from bench.kernel_profile import table

    rows = [
        {"kernel": "gemm", "launches": 2.0, "us": 30.0},
        {"kernel": "ln", "launches": 1.0, "us": 10.0},
    ]
    text = table("residual_mlp — esperc", rows).splitlines()
    assert text[0] == "### residual_mlp — esperc: 40.0 µs per step"
    assert text[4] == "| `gemm` | 2 | 30.0 | 75.0 |" and text[5] == "| `ln` | 1 | 10.0 | 25.0 |"
