"""``esperc bench PKG``: time one package on the local GPU against its eager PyTorch reference.

The timing primitives here are the ones the benchmark harness (``bench/run.py``) uses too, so a
number from ``esperc bench`` and a row of ``bench/results/*/results.md`` mean the same thing:

- ``time_gpu``: CUDA events around each call, the L2 cache flushed (a 256 MiB buffer written)
  before every call, warm-up first, input sets rotated; median and p95 in ms
  (docs: /work/.library/device/METHOD.md, "Time properly").
- ``host_overhead_us``: many back-to-back calls timed on the host clock, one synchronize at the
  end; the µs per call of launching, not of running.
- ``io_bytes`` / ``gbps`` / ``tflops`` / ``rel_err``: the derived numbers (bytes = every input
  and param read once plus every output written once).

``register(app)`` adds the command; ``torch`` is imported inside functions so that building the
CLI stays light.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esperc.cli_io import UI, ColorMode
from esperc.cli_options import ColorOpt, JsonOpt

if TYPE_CHECKING:
    import torch

__all__ = [
    "FLUSH_BYTES",
    "BenchError",
    "Stats",
    "flush_buffer",
    "gbps",
    "host_overhead_us",
    "io_bytes",
    "parse_dims",
    "percentile",
    "plan_repeats",
    "register",
    "rel_err",
    "tensor_bytes",
    "tflops",
    "time_gpu",
]

FLUSH_BYTES = 256 << 20  # larger than any Hopper L2 (50 MB on the H100, 60 MB on the H200)


class BenchError(RuntimeError):
    """A benchmark cannot run as asked (no GPU, an unknown dim)."""


# ------------------------------------------------------------------------------------ statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default method).

    Raises:
        ValueError: no samples, or q outside [0, 100].
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of repeated timings, all in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    stdev_ms: float

    @staticmethod
    def of(samples_ms: Sequence[float]) -> Stats:
        """Summarise samples (ms). Raises ValueError for an empty sequence."""
        if not samples_ms:
            raise ValueError("no timing samples")
        import statistics  # not at the top: every command imports this module; this costs ~5 ms

        xs = [float(x) for x in samples_ms]
        return Stats(
            n=len(xs),
            median_ms=statistics.median(xs),
            p95_ms=percentile(xs, 95.0),
            mean_ms=statistics.fmean(xs),
            min_ms=min(xs),
            max_ms=max(xs),
            stdev_ms=statistics.stdev(xs) if len(xs) > 1 else 0.0,
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def plan_repeats(estimate_ms: float, budget_ms: float, lo: int, hi: int) -> int:
    """How many timed calls fit ``budget_ms`` at ``estimate_ms`` each, clamped to [lo, hi]."""
    if lo > hi:
        raise ValueError(f"lo={lo} > hi={hi}")
    if estimate_ms <= 0 or not math.isfinite(estimate_ms):
        return hi
    return max(lo, min(hi, int(budget_ms / estimate_ms)))


# ----------------------------------------------------------------------------- derived numbers


def io_bytes(
    inputs: Iterable[tuple[Sequence[int], int]], outputs: Iterable[tuple[Sequence[int], int]]
) -> int:
    """Fewest bytes a call must move: each input read once plus each output written once.

    Args:
        inputs: (shape, bytes per element) of every input and param.
        outputs: (shape, bytes per element) of every result.
    """
    return sum(math.prod(s) * size for s, size in (*inputs, *outputs))


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> list[tuple[tuple[int, ...], int]]:
    """(shape, element size) of each tensor, for ``io_bytes``."""
    return [(tuple(t.shape), t.element_size()) for t in tensors]


def gbps(nbytes: float, ms: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) of moving ``nbytes`` in ``ms`` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else math.nan


def tflops(flops: float, ms: float) -> float:
    """Rate in TFLOP/s (1e12 per second) of ``flops`` operations in ``ms`` milliseconds."""
    return flops / (ms * 1e-3) / 1e12 if ms > 0 else math.nan


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖₂ / ‖ref‖₂ computed in float64 (absolute when ref is all zeros).

    NaN or inf anywhere in ``out`` gives ``inf`` (never a pass). Shapes must match.

    Raises:
        ValueError: the shapes differ.
    """
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}")
    o = out.detach().to(ref.device).double()
    r = ref.detach().double()
    if not bool(o.isfinite().all()):
        return math.inf
    num = float((o - r).norm())
    den = float(r.norm())
    return num / den if den > 0 else num


# -------------------------------------------------------------------------------------- timing


def flush_buffer(device: Any = "cuda") -> torch.Tensor:
    """A 256 MiB buffer whose ``zero_()`` evicts the L2 cache between timed calls."""
    import torch

    return torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)


def time_gpu(
    calls: Sequence[Callable[[], Any]],
    repeats: int,
    warmup: int,
    flush: torch.Tensor | None,
) -> Stats:
    """Time GPU work with CUDA events, one pair around each call.

    ``calls`` are rotated (one per input set, so that inputs that fit in L2 are not re-read
    from it); before every timed call ``flush`` is overwritten, outside the event pair. The
    warm-up calls (module load, autotuning, compilation) are not timed.

    Args:
        calls: zero-argument callables that launch the work (at least one).
        repeats: timed calls (>= 1).
        warmup: untimed calls first.
        flush: the L2 flush buffer (``flush_buffer()``), or None to keep the cache warm.

    Returns:
        The per-call times in ms.
    """
    import torch

    if not calls or repeats < 1:
        raise ValueError("time_gpu needs at least one callable and one repeat")
    for i in range(warmup):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        if flush is not None:
            flush.zero_()
        starts[i].record()
        calls[i % len(calls)]()
        ends[i].record()
    torch.cuda.synchronize()
    return Stats.of([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def host_overhead_us(
    call: Callable[[], Any],
    calls: int = 2000,
    rounds: int = 5,
    sync: Callable[[], None] | None = None,
) -> Stats:
    """Host time per call, in µs, of ``calls`` back-to-back calls (one sync at each round's end).

    With a tiny input the GPU finishes each launch before the host issues the next, so the
    number is what a call costs the host: guards, argument packing, launch. Returns the rounds'
    statistics (the ``*_ms`` fields hold µs here).
    """
    if sync is None:
        import torch

        sync = torch.cuda.synchronize
    for _ in range(min(calls, 50)):
        call()
    sync()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
    return Stats.of(per_call)


def parse_dims(items: Sequence[str]) -> dict[str, int]:
    """``["N=4096", "B=2,S=128"]`` as ``{"N": 4096, "B": 2, "S": 128}``.

    Raises:
        ValueError: an item is not NAME=INTEGER.
    """
    out: dict[str, int] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, eq, value = part.partition("=")
            if not eq or not name.strip() or not value.strip().lstrip("-").isdigit():
                raise ValueError(f"expected NAME=INTEGER, got {part!r}")
            out[name.strip()] = int(value)
    return out


# ------------------------------------------------------------------------------------- command


def default_dims(func: Any, given: Mapping[str, int], size: int = 4096) -> dict[str, int]:
    """Given dims, and ``size`` clamped into each other dynamic dim's declared range.

    Raises:
        BenchError: a given name is not a dynamic dim of ``func``.
    """
    names = {d.name for d in func.dims}
    unknown = sorted(set(given) - names)
    if unknown:
        raise BenchError(f"{', '.join(unknown)}: not dynamic dims of '{func.name}' "
                         f"(it has {', '.join(sorted(names)) or 'none'})")  # fmt: skip
    return {d.name: given.get(d.name, min(max(size, d.lo), d.hi)) for d in func.dims}


def bench_package(
    path: Path, dims: Mapping[str, int], repeats: int, warmup: int, seed: int, flush: bool
) -> dict[str, Any]:
    """Time a package against the eager reference of its IR on the local GPU (a JSON-able dict).

    Raises:
        BenchError: no CUDA GPU is visible, or an unknown dim.
        KpkgError: the package is damaged.
        FallbackError: the package has no cubins for this GPU.
        GuardError: the dims break a ``require`` of the blueprint.
    """
    import torch

    import esperc
    from esperc.ir.interpreter import random_inputs, run_func

    if not torch.cuda.is_available():
        raise BenchError("esperc bench needs a CUDA GPU; none is visible")
    art = esperc.load(path, fallback="error")
    dims = default_dims(art.func, dims)
    tensors = random_inputs(art.func, dims, seed, "cuda")
    buf = flush_buffer() if flush else None

    def mine() -> Any:
        return art(**tensors)

    def eager() -> Any:
        return run_func(art.func, tensors)

    out = mine()
    outs = out if isinstance(out, tuple) else (out,)
    refs = eager()
    nbytes = io_bytes(tensor_bytes(tensors.values()), tensor_bytes(outs))
    t_mine = time_gpu([mine], repeats, warmup, buf)
    t_eager = time_gpu([eager], repeats, warmup, buf)
    return {
        "blueprint": art.name,
        "package": str(path),
        "gpu": torch.cuda.get_device_name(),
        "dims": dims,
        "bytes": nbytes,
        "esperc": t_mine.as_dict() | {"gbps": gbps(nbytes, t_mine.median_ms)},
        "eager": t_eager.as_dict() | {"gbps": gbps(nbytes, t_eager.median_ms)},
        "speedup": t_eager.median_ms / t_mine.median_ms,
        "rel_err": max(rel_err(o, r) for o, r in zip(outs, refs, strict=True)),
        "host_us_per_call": host_overhead_us(mine, calls=500, rounds=3).median_ms,
    }


def _print_text(ui: UI, r: dict[str, Any]) -> None:
    dims = ", ".join(f"{k}={v}" for k, v in r["dims"].items()) or "static"
    ui.print(f"{r['blueprint']} on {r['gpu']} ({dims}; {r['bytes'] / 1e6:.1f} MB moved)")
    for who in ("esperc", "eager"):
        s = r[who]
        ui.print(f"  {who:<7} median {s['median_ms']:.4f} ms  p95 {s['p95_ms']:.4f} ms  "
                 f"{s['gbps']:.0f} GB/s  (n={s['n']})")  # fmt: skip
    ui.print(f"  speedup {r['speedup']:.2f}x vs eager, rel err {r['rel_err']:.2e}, "
             f"host overhead {r['host_us_per_call']:.1f} us/call")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``esperc bench`` to the main app."""
    app.command("bench")(bench_cmd)


def bench_cmd(
    package: Annotated[Path, typer.Argument(help="The package (.kpkg).", show_default=False)],
    dims: Annotated[
        list[str] | None,
        typer.Option("--dims", help="Dynamic dims: --dims N=4096 (repeatable or comma-separated)."),
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed calls.")] = 100,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls first.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    no_flush: Annotated[
        bool, typer.Option("--no-flush", help="Keep L2 warm between calls (no 256 MiB write).")
    ] = False,
    color: ColorOpt = ColorMode.auto,
    json_: JsonOpt = False,
) -> None:
    """Time a package on the local GPU against eager PyTorch (median/p95 ms, GB/s, rel err)."""
    ui = UI.make(color, json_)
    try:
        given = parse_dims(dims or [])
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--dims") from None
    with ui.guard():
        from esperc.ir.interpreter import GuardError
        from esperc.runtime.artifact import FallbackError

        try:
            result = bench_package(package, given, repeats, warmup, seed, not no_flush)
        except (BenchError, FallbackError, GuardError) as e:
            ui.note(f"esperc: error: {e}")
            sys.exit(1)
        if ui.json:
            ui.print_json(result)
        else:
            _print_text(ui, result)
