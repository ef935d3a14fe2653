"""Measuring on the GPU: the two ceilings, and every peer of one blueprint.

One blueprint's procedure (``measure_blueprint``):

1. lower its ``.esp`` and draw random inputs (``random_inputs``, never zeros), as many sets as
   it takes to overflow L2 (``specs.input_sets``);
2. compute the float64 reference: the eager reference on the inputs upcast to float64;
3. for each peer: build it, time the first call (the cold compile for torch.compile), compare
   its output with the float64 reference, then time it with ``time_gpu`` (L2 flushed before
   each call, input sets rotated); a failure becomes that peer's row and the next peer runs;
4. derive rate, share of the ceiling, numerics verdict and esperc's speedup over each peer;
5. host overhead per call at tiny dims (esperc package and eager; forward rows).

A training row (``spec.train``) times one training step instead of a forward call
(``Workload``): every input and param requires grad, one call is ``out = fn(**tensors)`` then
``out.backward(grad)`` with a fixed random upstream gradient per input set, the gradients are
dropped before every timed call (outside the CUDA events, with the L2 flush), and the output and
every gradient are checked against the float64 reference's.

``sink(result)`` is called after every peer, so a crash keeps the finished rows.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.peers import Peer, PeerOptions, PeerResult, Unavailable, peers_for, skipped_peers, upcast
from bench.specs import (
    Spec,
    all_numerics_ok,
    input_sets,
    pct_of,
    rate,
    speedup,
    train_bytes,
)
from esperc.cli_bench import (
    Stats,
    host_overhead_us,
    io_bytes,
    plan_repeats,
    rel_err,
    tensor_bytes,
    tflops,
    time_gpu,
)

Log = Callable[[str], None]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class Settings:
    """How hard to measure (from the command line).

    ``device`` and ``timer`` are "cuda" and ``time_gpu`` in every real run; the unit tests run
    the whole procedure on the CPU with a fake timer (no timing happens there).
    """

    max_repeats: int = 200
    min_repeats: int = 10
    peer_budget_ms: float = 2000.0  # GPU time spent on one peer's timed calls
    warmup: int = 5
    probe: int = 3  # timed calls of the probe that sizes the run
    deadline: float = math.inf  # time.time() after which optional peers are skipped
    peers: PeerOptions = field(default_factory=PeerOptions)
    overhead_calls: int = 1000
    device: str = "cuda"
    timer: Callable[..., Stats] = time_gpu


def time_cpu(calls: list[Callable[[], Any]], repeats: int, warmup: int, flush: Any) -> Stats:
    """``time_gpu``'s stand-in for a ``--dry-run`` on the CPU: the host clock around each call
    (``flush.zero_()`` before each, as ``time_gpu``). The numbers only show the wiring works."""
    for i in range(warmup):
        calls[i % len(calls)]()
    times = []
    for i in range(repeats):
        if flush is not None:
            flush.zero_()
        t0 = time.perf_counter()
        calls[i % len(calls)]()
        times.append((time.perf_counter() - t0) * 1e3)
    return Stats.of(times)


# ------------------------------------------------------------------------------------ ceilings


def _copy_ceiling(flush: torch.Tensor) -> dict[str, Any]:
    src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)  # 1 GiB each side
    dst = torch.empty_like(src)
    st = time_gpu([lambda: dst.copy_(src)], 20, 3, flush)
    return {"gbps": 2 * src.nbytes / (st.median_ms * 1e-3) / 1e9, **st.as_dict()}


def _gemm_ceiling(flush: torch.Tensor, m: int = 8192) -> dict[str, Any]:
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    st = time_gpu([lambda: a @ b], 20, 3, flush)
    return {"tflops": tflops(2 * m**3, st.median_ms), **st.as_dict()}


def ceilings(flush: torch.Tensor, log: Log) -> dict[str, Any]:
    """Device-to-device copy bandwidth (GB/s, bytes read + written) and bf16 GEMM rate (TFLOP/s,
    8192^3 on random data), timed like every peer (METHOD.md: measure both ceilings once)."""
    out: dict[str, Any] = {}
    for key, measure in (("copy", _copy_ceiling), ("gemm", _gemm_ceiling)):
        try:
            out[key] = measure(flush)
        except Exception as e:  # noqa: BLE001 - a ceiling that fails is reported, not fatal
            out[key] = {"error": _brief(e)}
        torch.cuda.empty_cache()
    log(f"ceilings: copy {out['copy'].get('gbps', math.nan):.0f} GB/s, "
        f"bf16 GEMM {out['gemm'].get('tflops', math.nan):.0f} TFLOP/s")  # fmt: skip
    return out


def ceiling_for(spec: Spec, ceil: dict[str, Any]) -> float | None:
    return ceil.get("copy" if spec.bound == "memory" else "gemm", {}).get(
        "gbps" if spec.bound == "memory" else "tflops"
    )


# ------------------------------------------------------------------------------------ one peer


def _brief(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _recover(device: str) -> None:
    """After a peer's failure: drain the stream and return cached memory (best effort)."""
    if device != "cuda":
        return
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001, S110 - a sticky CUDA error shows up in the next peer
        pass
    torch.cuda.empty_cache()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@dataclass
class Workload:
    """What one call of a peer runs, on which input sets, checked against what.

    Forward rows (``grads`` None): ``fn(**tensors)``, checked on its output ("out"). Training
    rows: one step, ``out = fn(**tensors); out.backward(grads[i])``, checked on the output and
    the gradient of every input and param ("d" + name); all of them require grad.

    Attributes:
        sets: the input sets (by argument name), rotated between timed calls.
        refs: the float64 reference of every checked tensor, by name.
        grads: the upstream gradient of each input set (training rows), else None.
    """

    sets: list[dict[str, torch.Tensor]]
    refs: dict[str, torch.Tensor]
    grads: list[torch.Tensor] | None = None

    def call(self, fn: Callable[..., Any], i: int = 0) -> dict[str, torch.Tensor | None]:
        """Run ``fn`` on input set ``i``; the checked tensors by name."""
        tensors = self.sets[i]
        out = _first(fn(**tensors))
        if self.grads is None:
            return {"out": out}
        out.backward(self.grads[i])
        return {"out": out, **{f"d{n}": t.grad for n, t in tensors.items() if t.requires_grad}}

    def errors(self, got: dict[str, torch.Tensor | None]) -> dict[str, float]:
        """rel err of each checked tensor (inf for a gradient the peer did not produce)."""
        return {k: math.inf if got.get(k) is None else rel_err(got[k], ref)
                for k, ref in self.refs.items()}  # fmt: skip

    def reset(self) -> None:
        """Drop the gradients of the last step, so the next ``backward`` writes new ones
        instead of adding to them (``grad = None`` between steps, as ``zero_grad`` does)."""
        for tensors in self.sets:
            for t in tensors.values():
                t.grad = None

    def before_each(self, flush: torch.Tensor | None) -> Any:
        """What the timer overwrites before every timed call: the L2 flush buffer, and for a
        training row first the gradient reset (``ResetThenFlush``)."""
        return flush if self.grads is None else ResetThenFlush(self.reset, flush)


@dataclass(frozen=True)
class ResetThenFlush:
    """The "flush buffer" of a training row: ``time_gpu`` calls ``zero_()`` on it before every
    timed call, outside the CUDA events, so the gradient reset stays out of the timed region
    as the flush does."""

    reset: Callable[[], None]
    flush: torch.Tensor | None

    def zero_(self) -> None:
        self.reset()
        if self.flush is not None:
            self.flush.zero_()


def run_peer(
    peer: Peer, work: Workload, flush: torch.Tensor | None, settings: Settings
) -> tuple[PeerResult, Callable[..., Any] | None]:
    """Build, check and time one peer; never raises (a failure is the row's status)."""
    row = PeerResult(peer.name)
    before = work.before_each(flush)
    work.reset()  # no gradient left from an earlier peer adds into this one's
    try:
        t0 = time.perf_counter()
        fn = peer.build()
        built = time.perf_counter()
        got = work.call(fn)
        _sync(settings.device)
        first = time.perf_counter()
        if peer.compiles_on_first_call:
            row.compile_s = first - t0
        row.extra["first_call_s"] = first - built
        errs = work.errors(got)
        del got
        row.rel_err = max(errs.values())
        row.extra["rel_errs"] = errs
        probe = settings.timer([lambda: work.call(fn)], settings.probe, min(1, settings.warmup),
                               before)  # fmt: skip
        repeats = plan_repeats(probe.median_ms, settings.peer_budget_ms, settings.min_repeats,
                               settings.max_repeats)  # fmt: skip
        calls = [lambda i=i: work.call(fn, i) for i in range(len(work.sets))]
        st = settings.timer(calls, repeats, settings.warmup, before)
        row.median_ms, row.p95_ms, row.n = st.median_ms, st.p95_ms, st.n
        row.extra["stats"] = st.as_dict()
        work.reset()
        return row, fn
    except Unavailable as e:
        row.status, row.note = "not available", str(e)
    except torch.cuda.OutOfMemoryError as e:
        row.status, row.note = "error", "out of memory: " + _brief(e, 200)
    except Exception as e:  # noqa: BLE001 - one peer's failure never stops the others
        row.status, row.note = "error", _brief(e)
        row.extra["traceback"] = traceback.format_exc(limit=8)[-2000:]
    work.reset()
    _recover(settings.device)
    return row, None


def profile_kernels(fn: Callable[[], Any], calls: int = 20) -> list[dict[str, Any]]:
    """Kernels one ``fn()`` launches (CUPTI through torch.profiler, L2 warm: no flush): name,
    launches per call, µs of device time per call; largest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [
        {"kernel": e.key[:90], "launches": e.count / calls, "us": e.self_device_time_total / calls}
        for e in prof.key_averages()
        if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
    ]
    return sorted(rows, key=lambda r: -r["us"])


def kernel_ms(fn: Callable[[], Any], calls: int = 20) -> float | None:
    """Device time of the kernels one call launches, in ms: what the call costs the GPU without
    host gaps. L2 is warm here (no flush)."""
    total_us = sum(r["us"] for r in profile_kernels(fn, calls))
    return total_us / 1e3 if total_us else None


# ------------------------------------------------------------------------------- one blueprint


def random_sets(spec: Spec, count: int, seed: int, device: str) -> tuple[Any, list[dict]]:
    from esperc.driver import Options, lower
    from esperc.ir.interpreter import random_inputs

    func = lower(spec.path, Options())
    return func, [random_inputs(func, dict(spec.dims), seed + i, device) for i in range(count)]


def measure_blueprint(
    spec: Spec,
    kpkg: Path | None,
    build: dict[str, Any],
    ceil: dict[str, Any],
    flush: torch.Tensor | None,
    settings: Settings,
    log: Log,
    sink: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Measure every peer of ``spec``; returns (and streams to ``sink``) the blueprint's result."""
    result: dict[str, Any] = {
        "blueprint": spec.name, "key": spec.key, "label": spec.label, "train": spec.train,
        "describe": spec.describe, "bound": spec.bound, "unit": spec.unit,
        "dims": dict(spec.dims), "flops": spec.flops, "ceiling": ceiling_for(spec, ceil),
        "target": {"text": spec.target_text, "peers": [list(t) for t in spec.target]},
        "build": build, "rows": [],
    }  # fmt: skip
    try:
        func, sets = random_sets(spec, 1, 0, settings.device)
        in_bytes = io_bytes(tensor_bytes(sets[0].values()), [])
        l2 = torch.cuda.get_device_properties(0).L2_cache_size if settings.device == "cuda" else 0
        extra = input_sets(in_bytes, l2) - 1
        if extra:
            sets += random_sets(spec, extra, 1, settings.device)[1]
        work = workload(spec, func, sets, settings.device)
        result["bytes"] = _bytes(spec, func)
        result["input_sets"] = len(sets)
    except Exception as e:  # noqa: BLE001 - the blueprint fails, the run goes on
        result["error"] = _brief(e)
        result["traceback"] = traceback.format_exc(limit=8)[-2000:]
        log(f"  {spec.label}: setup failed: {result['error']}")
        sink(result)
        return result
    opts = _opts_for_time_left(settings, log)
    rows: list[PeerResult] = []
    fns: dict[str, Callable[..., Any]] = {}
    for peer in peers_for(spec, kpkg, opts):
        t = time.perf_counter()
        # A placeholder row, so a process that dies inside this peer still names it.
        unfinished = PeerResult(peer.name, "error", "did not finish: the process ended in it")
        result["rows"] = _finish(spec, [*rows, unfinished], result)
        sink(result)
        row, fn = run_peer(peer, work, flush, settings)
        if peer.name == "esperc":
            row.compile_s = build.get("compile_s")
            row.note = row.note or build.get("note", "")
        rows.append(row)
        if fn is not None:
            fns[peer.name] = fn
        _log_row(log, spec, row, time.perf_counter() - t)
        result["rows"] = _finish(spec, rows + skipped_peers(spec, opts), result)
        sink(result)
    work.refs.clear()
    if not spec.train:
        result["host_overhead_us"] = _overheads(spec, func, fns, settings, log)
    if "esperc" in fns and settings.device == "cuda":
        try:
            result["esperc_kernel_ms"] = kernel_ms(lambda: (work.reset(), work.call(fns["esperc"])))
        except Exception as e:  # noqa: BLE001
            result["esperc_kernel_ms_error"] = _brief(e)
        work.reset()
    sink(result)
    return result


def workload(spec: Spec, func: Any, sets: list[dict[str, torch.Tensor]], device: str) -> Workload:
    """The forward or training workload of ``spec`` on ``sets``, with its float64 reference."""
    from bench.peers import REFS

    ref = REFS[spec.name]
    if not spec.train:
        return Workload(sets, {"out": _first(ref(**upcast(sets[0])))})
    from esperc.ir.reference import concrete_shape, torch_dtype

    (rtype,) = func.result_types()  # the training rows have one result
    shape, dtype = concrete_shape(rtype.shape, dict(spec.dims)), torch_dtype(rtype.dtype)
    gen = torch.Generator().manual_seed(1234)  # drawn on the CPU: the same on every device
    grads = [torch.randn(shape, generator=gen).to(dtype).to(device) for _ in sets]
    for tensors in sets:
        for t in tensors.values():
            t.requires_grad_(t.is_floating_point())
    leaves = {k: t.detach().double().requires_grad_(t.requires_grad) for k, t in sets[0].items()}
    out = _first(ref(**leaves))
    out.backward(grads[0].double())
    refs = {"out": out.detach()} | {f"d{k}": t.grad for k, t in leaves.items() if t.requires_grad}
    return Workload(sets, refs, grads)


def _bytes(spec: Spec, func: Any) -> int:
    """Fewest bytes one call moves: ``io_bytes`` forward, ``train_bytes`` for a training step."""
    from esperc.ir.reference import concrete_shape

    def of(kind: str) -> list[tuple[tuple[int, ...], int]]:
        return [(concrete_shape(a.type.shape, dict(spec.dims)), a.type.dtype.itemsize)
                for a in func.args if a.kind == kind]  # fmt: skip

    outputs = _result_bytes(func, spec)
    if spec.train:
        return train_bytes(of("input"), of("param"), outputs)
    return io_bytes(of("input") + of("param"), outputs)


def _result_bytes(func: Any, spec: Spec) -> list[tuple[tuple[int, ...], int]]:
    """(shape, element size) of each result, from the blueprint's declared result types."""
    from esperc.ir.reference import concrete_shape

    return [(concrete_shape(t.shape, dict(spec.dims)), t.dtype.itemsize)
            for t in func.result_types()]  # fmt: skip


def _opts_for_time_left(settings: Settings, log: Log) -> PeerOptions:
    """The optional peers that still fit the time budget (max-autotune, then torch.compile)."""
    left = settings.deadline - time.time()
    opts = settings.peers
    note = f"time budget ({left:.0f} s left)"
    if opts.compile_peers and left < 90:
        log(f"  {left:.0f} s left: skipping the torch.compile peers")
        return PeerOptions(False, (), note, opts.autotune)
    if opts.autotune and left < 240:
        log(f"  {left:.0f} s left: skipping torch.compile max-autotune")
        return PeerOptions(opts.compile_peers, (), note, opts.autotune)
    return opts


def _finish(spec: Spec, rows: list[PeerResult], result: dict[str, Any]) -> list[dict[str, Any]]:
    by = {r.peer: r for r in rows}
    eager_errs = by["eager"].extra.get("rel_errs", {}) if "eager" in by else {}
    mine = by.get("esperc")
    mine_ms = mine.median_ms if mine is not None and mine.status == "ok" else None
    for r in rows:
        if r.status != "ok" or r.median_ms is None:
            continue
        r.rate = rate(spec, result["bytes"], r.median_ms)
        r.pct_ceiling = pct_of(r.rate, result["ceiling"])
        r.speedup = speedup(r.median_ms, mine_ms)
        r.numerics_ok = all_numerics_ok(r.extra.get("rel_errs", {}), eager_errs)
    return [asdict(r) for r in rows]


def _log_row(log: Log, spec: Spec, row: PeerResult, seconds: float) -> None:
    if row.status != "ok":
        log(f"  {spec.label:<20} {row.peer:<28} {row.status}: {row.note} ({seconds:.1f} s)")
        return
    comp = f", compile {row.compile_s:.1f} s" if row.compile_s is not None else ""
    log(f"  {spec.label:<20} {row.peer:<28} {row.median_ms:.4f} ms (p95 {row.p95_ms:.4f}, "
        f"n={row.n}), rel err {row.rel_err:.1e}{comp} ({seconds:.1f} s)")  # fmt: skip


def _overheads(
    spec: Spec, func: Any, fns: dict[str, Callable], settings: Settings, log: Log
) -> dict[str, Any]:
    """Host µs per call at tiny dims, for the esperc package and for eager."""
    from esperc.ir.interpreter import random_inputs

    out: dict[str, Any] = {"dims": dict(spec.tiny_dims)}
    try:
        tiny = random_inputs(func, dict(spec.tiny_dims), 7, settings.device)
    except Exception as e:  # noqa: BLE001
        return out | {"error": _brief(e)}
    for name in ("esperc", "eager"):
        if name not in fns:
            continue
        fn = fns[name]
        try:
            st = host_overhead_us(lambda fn=fn: fn(**tiny), settings.overhead_calls, 5,
                                  lambda: _sync(settings.device))  # fmt: skip
            out[name] = st.median_ms
        except Exception as e:  # noqa: BLE001
            out[f"{name}_error"] = _brief(e)
    log(f"  {spec.name}: host overhead per call at {spec.tiny_dims}: "
        + ", ".join(f"{k} {v:.1f} us" for k, v in out.items() if isinstance(v, float)))  # fmt: skip
    return out
