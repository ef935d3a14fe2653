"""Benchmark candidates in a separate worker process, so that a bad candidate costs only itself.

The parent (``Measurer``) sends messages over a pipe to one worker process (``spawn``: no CUDA
state is inherited) and waits with a timeout:

- ``Prepare``: parse the function, draw random inputs for one shape and evaluate every value
  with the eager reference on the GPU (``ir.interpreter.evaluate_all``); kept for the next runs;
- ``Run``: one candidate cubin for one kernel: its inputs are the reference values, its outputs
  are poisoned (NaN) before the first launch, compared with the reference (``rel_err`` against
  ``esperc.ir.numerics``), then timed.

Outcomes, recorded as the perf DB row's status: ``ok``; ``timeout`` (no answer in time: the worker
is killed and a fresh one started, e.g. a kernel that never ends); ``fault`` (the worker died, or
CUDA reported an illegal address / launch failure: the context is unusable, so the worker exits
after answering); ``oom`` (device or shared memory exhausted); ``nan``; ``mismatch``.

Timing follows METHOD.md and ``triton.testing.do_bench``: one warm-up launch, CUDA events around
each launch, the L2 flushed before each (a 256 MB write), as many repeats as fit the job's
budget (50 ms; 200 for the re-measured best; 10 to 200 repeats), median and p95 (nearest rank)
in ms.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_HANDLER = "esperc.tune.measure:GpuHandler"
FLUSH_BYTES = 256 << 20
_FAULT_WORDS = ("illegal", "ILLEGAL", "misaligned", "MISALIGNED", "unspecified launch failure",
                "LAUNCH_FAILED", "device-side assert", "ECC")  # fmt: skip
_OOM_WORDS = ("out of memory", "OUT_OF_MEMORY", "shared memory", "OUT_OF_RESOURCES")


@dataclass(frozen=True)
class Prepare:
    """Evaluate the reference of ``func_text`` (printed IR) at ``dims`` from ``seed``."""

    func_text: str
    dims: tuple[tuple[str, int], ...]
    seed: int = 0


@dataclass(frozen=True)
class Run:
    """Check and time one candidate: ``kernel`` (a ``CompiledKernel``) launched as ``step``."""

    key: str
    kernel: Any
    step: Any
    dims: tuple[tuple[str, int], ...]
    budget_ms: float = 50.0
    # partials buffers (plan ``Alloc``s) the kernel reads that no IR value holds: a finishing
    # kernel's input, filled with random values; its outputs are checked against their fold
    scratch: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Result:
    """A worker's answer. Times in ms; ``fatal``: the worker exits after sending it."""

    key: str
    status: str
    median_ms: float | None = None
    p95_ms: float | None = None
    samples: int = 0
    error: str = ""
    rel_err: float | None = None
    fatal: bool = False


def classify(key: str, exc: BaseException) -> Result:
    """A worker-side exception as a ``Result`` (fault / oom are told apart by CUDA's words)."""
    text = f"{type(exc).__name__}: {exc}"[:500]
    if any(w in text for w in _FAULT_WORDS):
        return Result(key, "fault", error=text, fatal=True)
    if any(w in text for w in _OOM_WORDS):
        return Result(key, "oom", error=text)
    return Result(key, "fault", error=text, fatal="CUDA" in text)


# ----- the worker process ------------------------------------------------------------------


def worker_main(conn: Any, handler_spec: str) -> None:
    """The worker's loop: answer each message with ``handler.handle(msg)`` until EOF/None."""
    module, _, name = handler_spec.partition(":")
    handler = getattr(importlib.import_module(module), name)()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        reply = handler.handle(msg)
        conn.send(reply)
        if reply.fatal:
            conn.close()
            os._exit(3)  # a CUDA context after a fault is unusable: start over


class WorkerDied(RuntimeError):
    """The worker process ended without answering."""


class Worker(Protocol):
    def request(self, msg: object, timeout_s: float) -> Result: ...
    def kill(self) -> None: ...


class ProcessWorker:
    """A spawned worker process running ``worker_main`` with ``handler``."""

    def __init__(self, handler: str = DEFAULT_HANDLER) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, handler), daemon=True)
        self.proc.start()
        child.close()

    def request(self, msg: object, timeout_s: float) -> Result:
        """Send ``msg`` and wait for the answer.

        Raises:
            TimeoutError: no answer within ``timeout_s``.
            WorkerDied: the process ended (crash, ``os._exit``) before answering.
        """
        try:
            self.conn.send(msg)
            if not self.conn.poll(timeout_s):
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.join(5)
            raise WorkerDied(f"worker exited with code {self.proc.exitcode}") from None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()


class Measurer:
    """Runs candidates through one worker at a time, replacing it after a hang or a crash.

    Args:
        timeout_s: the most one ``Run`` may take (check and timing together).
        startup_timeout_s: the most a ``Prepare`` may take (worker start, CUDA init, reference).
        spawn: makes a worker (``ProcessWorker`` by default; tests pass fakes).
    """

    def __init__(self, timeout_s: float = 10.0, startup_timeout_s: float = 180.0,
                 spawn: Any = ProcessWorker) -> None:  # fmt: skip
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._spawn = spawn
        self._worker: Worker | None = None
        self._prepared: Prepare | None = None
        self.restarts = 0

    def _drop(self) -> None:
        if self._worker is not None:
            self._worker.kill()
        self._worker, self._prepared = None, None

    def run(self, prepare: Prepare, job: Run) -> Result:
        """Check and time ``job`` on the reference of ``prepare``; never raises for the
        candidate's own failures (they come back as the result's status)."""
        if self._worker is None:
            self._worker = self._spawn()
            self.restarts += 1
        worker = self._worker
        try:
            if self._prepared != prepare:
                ready = worker.request(prepare, self.startup_timeout_s)
                if ready.status != "ok":
                    self._drop()
                    return Result(job.key, ready.status, error=f"reference: {ready.error}")
                self._prepared = prepare
            result = worker.request(job, self.timeout_s)
        except TimeoutError as e:
            self._drop()
            return Result(job.key, "timeout", error=f"{e}; worker killed")
        except WorkerDied as e:
            self._drop()
            return Result(job.key, "fault", error=str(e))
        if result.fatal:
            self._drop()
        return result

    def close(self) -> None:
        self._drop()


# ----- the GPU side (runs in the worker) -----------------------------------------------------


class _Recorder:
    """Stands in for a kernel in ``launcher.launch``: records the grid and arguments."""

    grid: tuple[int, ...] = ()
    args: tuple[Any, ...] = ()

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def call(*args: Any, **_constexprs: Any) -> None:
            self.grid, self.args = grid, args

        return call


class GpuHandler:
    """The worker's handler: reference values per prepared shape, candidate checks, timing."""

    def __init__(self) -> None:
        import torch

        from esperc.runtime.cubin import default_runtime

        self.torch = torch
        self.rt = default_runtime()
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=self.device)
        self.env: dict[str, Any] = {}
        self.func: Any = None
        self.dims: tuple[tuple[str, int], ...] = ()

    def handle(self, msg: object) -> Result:
        key = getattr(msg, "key", "prepare")
        try:
            return self._prepare(msg) if isinstance(msg, Prepare) else self._run(msg)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - every failure is the candidate's status
            if isinstance(e, self.torch.cuda.OutOfMemoryError):
                self.torch.cuda.empty_cache()
            return classify(key, e)

    def _prepare(self, msg: Prepare) -> Result:
        from esperc.ir.interpreter import evaluate_all, random_inputs
        from esperc.ir.parser import parse_func

        self.env = {}
        self.torch.cuda.empty_cache()
        func = parse_func(msg.func_text, "ir.eir")
        dims = dict(msg.dims)
        inputs = random_inputs(func, dims, seed=msg.seed, device=self.device)
        self.env = evaluate_all(func, inputs, self.device)
        self.func = func
        self.dims = msg.dims
        self.torch.cuda.synchronize()
        return Result("prepare", "ok")

    def _run(self, job: Run) -> Result:
        from esperc.backend.triton.launcher import launch

        torch = self.torch
        if job.dims != self.dims:
            raise RuntimeError(f"run for {job.dims} but the worker prepared {self.dims}")
        from esperc.backend.triton.launcher import fold_partials, random_partials

        env = dict(self.env)
        refs = dict(self.env)
        dims = dict(job.dims)
        producers = self.func.producers()
        for a in job.scratch:  # a finishing kernel: random partials, the reference is their fold
            env[a.value] = random_partials(a, dims, self.device)
            refs[a.partial_of] = fold_partials(env[a.value], producers[a.partial_of], self.env)
        rec = _Recorder()
        launch(job.step, rec, env, dims, self.device)
        outs = [env[a.value] for a in job.step.allocs]
        for o in outs:
            if o.is_floating_point():
                o.fill_(float("nan"))  # poison: every element must be written
        self.rt.launch(job.kernel, rec.grid, *rec.args)
        torch.cuda.synchronize()
        from esperc.ir.numerics import region_tolerances, rel_err, tolerance  # torch: worker

        loosest = region_tolerances(self.func).get(job.step.region, 0.0)
        worst = 0.0
        for a, o in zip(job.step.allocs, outs, strict=True):
            ref = refs[a.partial_of or a.value]
            if a.partial_of:  # a main kernel's partials: compare what they fold to
                o = fold_partials(o, producers[a.partial_of], self.env)
            if o.is_floating_point() and bool(torch.isnan(o).any()) and \
                    not bool(torch.isnan(ref).any()):  # fmt: skip
                return Result(job.key, "nan", error=f"NaN in output {a.value}")
            err = rel_err(o, ref)
            worst = max(worst, err)
            dt = producers[a.partial_of].type.dtype if a.partial_of else a.dtype
            if not err <= max(tolerance(dt), loosest):  # as compile-time validation
                return Result(job.key, "mismatch", error=f"{a.value}: rel err {err:.3g}",
                              rel_err=err)  # fmt: skip
        med, p95, n = self._time(lambda: self.rt.launch(job.kernel, rec.grid, *rec.args),
                                 job.budget_ms)  # fmt: skip
        return Result(job.key, "ok", med, p95, n, rel_err=worst)

    def _time(self, fn: Any, budget_ms: float) -> tuple[float, float, int]:
        torch = self.torch
        ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        fn()
        s, e = ev(), ev()
        self.flush.zero_()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        once = max(s.elapsed_time(e), 1e-3)
        n = int(min(200, max(10, budget_ms / (once + 0.1))))
        starts, ends = [ev() for _ in range(n)], [ev() for _ in range(n)]
        for i in range(n):
            self.flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        times = sorted(a.elapsed_time(b) for a, b in zip(starts, ends, strict=True))
        return times[n // 2], times[min(n - 1, -(-95 * n // 100) - 1)], n


# ----- which GPU is here (no torch import) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """The local GPU: device name, ``sm_XY`` arch and driver version."""

    name: str
    arch: str
    driver: str


def gpu_identity() -> GpuIdentity | None:
    """The first visible CUDA device through libcuda (and NVML for the driver version), or
    None when there is no driver or no device. Imports neither torch nor triton."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count, dev, major, minor, ver = (ctypes.c_int() for _ in range(5))
    if cu.cuInit(0) or cu.cuDeviceGetCount(ctypes.byref(count)) or count.value == 0:
        return None
    cu.cuDeviceGet(ctypes.byref(dev), 0)
    name = ctypes.create_string_buffer(256)
    cu.cuDeviceGetName(name, 256, dev)
    cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
    cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
    cu.cuDriverGetVersion(ctypes.byref(ver))
    driver = f"cuda-{ver.value // 1000}.{ver.value % 1000 // 10}"
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        buf = ctypes.create_string_buffer(96)
        if nvml.nvmlInit_v2() == 0 and nvml.nvmlSystemGetDriverVersion(buf, 96) == 0:
            driver = f"{buf.value.decode()}/{driver}"
    except OSError:
        pass
    return GpuIdentity(name.value.decode(), f"sm_{major.value}{minor.value}", driver)
