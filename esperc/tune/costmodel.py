"""An analytic cost model of a generated kernel: ranks configs before (and without) a GPU.

For one problem (a kernel at one shape) and one config the model estimates

    time = max(bytes moved / (bandwidth x memory efficiency),
               padded flops / (peak x compute efficiency)) + launch overhead

the roofline of Williams, Waterman & Patterson (CACM 2009) with three corrections:

- tile quantization: the flops and elements of partial tiles are paid in full (``waste``);
- wave quantization and occupancy: programs per SM from warps, registers and shared memory
  (the CUDA occupancy calculator's rules: 65536 registers, 2048 threads, 32 blocks per SM),
  and the fraction of SMs busy over the last wave;
- memory-level parallelism: by Little's law an SM keeps ``bandwidth x latency / SMs`` bytes in
  flight to reach full bandwidth (about 18 KB on an H100); a config whose resident programs load
  less reaches proportionally less, and a grid with fewer programs than SMs leaves bandwidth
  unused (one SM can draw about 2.5x its share).

Matmul efficiency grows with the tile's arithmetic intensity ``BM*BN/(BM+BN)`` (shared-memory
reuse) and the pipeline depth; a kernel that spills (stack frame > 0 after compile, or a
register estimate over 255) is charged 50%. Peak rates are the datasheet dense rates (NVIDIA
A100, H100, H200, L40S datasheets); the model only needs to order configs, not predict time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from esperc.backend.triton.configs import Config
from esperc.middle import targets as tg
from esperc.tune.space import KernelInfo, config_key, estimate_regs, size

LATENCY_S = 700e-9  # DRAM latency seen by a load, for Little's law
SM_BW_SHARE = 2.5  # one SM can draw this many times its share of the bandwidth


@dataclass(frozen=True, slots=True)
class Gpu:
    """Datasheet figures of one GPU (rates dense, without sparsity)."""

    name: str
    sms: int
    bandwidth_gbs: float
    tensor_tflops: float  # bf16/fp16 tensor cores, fp32 accumulate
    fp32_tflops: float
    smem_per_sm: int
    l2_bytes: int
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    launch_us: float = 3.0


GPUS: dict[str, Gpu] = {
    "sm_80": Gpu("NVIDIA A100-SXM4-80GB", 108, 2039, 312, 19.5, 164 * 1024, 40 << 20),
    "sm_86": Gpu("NVIDIA RTX A6000", 84, 768, 155, 38.7, 100 * 1024, 6 << 20),
    "sm_89": Gpu("NVIDIA L40S", 142, 864, 362, 91.6, 100 * 1024, 96 << 20),
    "sm_90": Gpu("NVIDIA H100 80GB HBM3", 132, 3350, 989, 67, 228 * 1024, 50 << 20),
}
_BY_NAME = {"H200": dict(bandwidth_gbs=4800.0), "H100 PCIe": dict(sms=114, bandwidth_gbs=2000.0,
            tensor_tflops=756.0, fp32_tflops=51.0)}  # fmt: skip


def gpu_for(arch: str, name: str = "") -> Gpu:
    """The model's GPU for a target arch, adjusted by the device name where it is known."""
    base = GPUS.get(arch) or GPUS["sm_90"]
    for key, changes in _BY_NAME.items():
        if key in name:
            from dataclasses import replace

            return replace(base, name=name, **changes)  # type: ignore[arg-type]
    return base


@dataclass(frozen=True, slots=True)
class Problem:
    """One kernel at one shape: the fewest bytes it must move and the flops it must do."""

    kind: str
    bytes: int
    flops: float
    m: int = 1  # matmul rows; attention query length
    n: int = 1  # matmul columns; attention key length
    k: int = 1  # matmul reduction length; attention head size
    batch: int = 1
    rows: int = 1  # reduction/pointwise
    cols: int = 1
    itemsize: int = 2
    causal: bool = False


def problem(info: KernelInfo, dims: Mapping[str, int]) -> Problem:
    """The ``Problem`` of a kernel at these dynamic dim values."""
    nbytes = sum(size(s, dims) * b for s, b in (*info.reads, *info.writes))
    sh = {name: size(shape, dims) for name, shape in info.shapes.items()}
    if info.kind == "matmul":
        m, n, k, b = sh["m"], sh["n"], sh["k"], sh["batch"]
        return Problem("matmul", nbytes, 2.0 * m * n * k * b, m, n, k, b, itemsize=info.itemsize)
    if info.kind == "attention":
        sq, sk, d, b = sh["sq"], sh["sk"], sh["head"], sh["batch"]
        flops = 4.0 * b * sq * sk * d * (0.5 if info.causal else 1.0)
        return Problem("attention", nbytes, flops, sq, sk, d, b, itemsize=info.itemsize,
                       causal=info.causal)  # fmt: skip
    rows, cols = sh["rows"], sh["cols"]
    return Problem(info.kind, nbytes, float(rows * cols * info.ops), rows=rows, cols=cols,
                   itemsize=info.itemsize)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Estimate:
    """The model's verdict on one config for one problem (times in ms)."""

    ms: float
    memory_ms: float
    compute_ms: float
    occupancy: float  # resident warps / the SM's maximum
    programs: int
    waste: float  # padded work / needed work - 1 (tile quantization)
    bound: str  # "memory" or "compute"


@dataclass(frozen=True, slots=True)
class Resources:
    """Facts from a compile (``CompiledKernel``): registers, shared bytes, spill frame."""

    regs: int | None = None
    shared: int | None = None
    frame_bytes: int | None = None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _residency(gpu: Gpu, warps: int, regs: int, shared: int) -> int:
    """Programs (CTAs) one SM holds at once: the occupancy calculator's limits."""
    threads = 32 * warps
    regs = max(8, _cdiv(min(regs, 255), 8) * 8)
    limits = [gpu.blocks_per_sm, gpu.threads_per_sm // threads, gpu.regs_per_sm // (regs * threads)]
    if shared:
        limits.append(gpu.smem_per_sm // shared)
    return max(1, min(limits))


def _sm_fill(programs: int, gpu: Gpu) -> float:
    """Fraction of SM-time busy: the last wave of ``programs`` over ``gpu.sms`` SMs."""
    per_sm = _cdiv(programs, gpu.sms)
    return programs / (per_sm * gpu.sms)


def _smem_bytes(p: Problem, cfg: Config) -> int:
    if p.kind == "matmul":
        return (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * p.itemsize * \
            max(1, cfg.num_stages - 1)  # fmt: skip
    if p.kind == "attention":
        return (cfg["BLOCK_M"] + 2 * cfg["BLOCK_N"] * max(1, cfg.num_stages)) * p.k * p.itemsize
    return 4 * cfg.num_warps


def _tiles(p: Problem, cfg: Config) -> tuple[int, float, int]:
    """(programs, padded work units, bytes one program keeps in flight)."""
    if p.kind == "matmul":
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        progs = _cdiv(p.m, bm) * _cdiv(p.n, bn) * p.batch
        # a software pipeline keeps num_stages - 1 tiles in flight; rows past M are wrapped
        # (re-reads of cached rows), so only min(BM, M) rows of A come from DRAM
        inflight = (min(bm, p.m) + bn) * bk * p.itemsize * max(1, cfg.num_stages - 1)
        return progs, 2.0 * progs * bm * bn * _cdiv(p.k, bk) * bk, inflight
    if p.kind == "attention":
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        progs = _cdiv(p.m, bm) * p.batch
        work = 4.0 * progs * bm * _cdiv(p.n, bn) * bn * p.k
        return progs, work * (0.5 + 0.5 * bm / max(p.n, bm) if p.causal else 1.0), \
            2 * bn * p.k * p.itemsize  # fmt: skip
    bm, bn = cfg.get("BLOCK_M", 1), cfg["BLOCK_N"]
    col_tiles = _cdiv(p.cols, bn)
    progs = _cdiv(p.rows, bm) * (col_tiles if p.kind == "pointwise" else 1)
    padded = _cdiv(p.rows, bm) * bm * col_tiles * bn
    return progs, float(padded) * p.flops / max(p.rows * p.cols, 1), bm * bn * p.itemsize


def _mma_efficiency(p: Problem, cfg: Config, resident: int) -> float:
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    intensity = bm * bn / (bm + bn)
    eff = min(1.0, intensity / 64.0)
    if p.kind == "matmul":
        eff *= {2: 0.8, 3: 0.95}.get(cfg.num_stages, 1.0) * (0.85 if cfg["BLOCK_K"] < 64 else 1.0)
        eff *= 0.6 if bm < 64 else 1.0  # a warp-group MMA needs 64 rows
        eff *= 0.9 if cfg.get("GROUP_M", 1) == 1 and p.m > 8 * bm else 1.0
    else:
        eff *= 0.6 * (0.85 if cfg.num_stages < 2 else 1.0) * (0.7 if bn < 64 else 1.0)
    return eff * (0.85 if resident == 1 and cfg.num_stages < 3 else 1.0)


def estimate(
    p: Problem, cfg: Config, gpu: Gpu, regs: int, res: Resources = Resources()
) -> Estimate:
    """The estimated time of ``cfg`` on problem ``p`` (``regs``: the register estimate, replaced
    by compile facts in ``res`` where given)."""
    regs = res.regs or regs
    shared = res.shared if res.shared is not None else _smem_bytes(p, cfg)
    resident = _residency(gpu, cfg.num_warps, regs, shared)
    programs, padded, inflight = _tiles(p, cfg)
    waste = padded / max(p.flops, 1.0) - 1.0
    fill = _sm_fill(programs, gpu)
    active_sms = min(gpu.sms, programs)
    per_sm = min(resident, _cdiv(programs, gpu.sms))
    need = gpu.bandwidth_gbs * 1e9 * LATENCY_S / gpu.sms
    mlp = min(1.0, per_sm * inflight / need)
    bw_eff = 0.9 * mlp * min(1.0, active_sms * SM_BW_SHARE / gpu.sms)
    traffic = float(p.bytes)
    if p.kind == "matmul":  # re-reads of A per column of tiles and B per row of tiles, via L2
        a_b = p.m * p.k * p.itemsize * p.batch
        b_b = p.k * p.n * p.itemsize
        extra = a_b * (_cdiv(p.n, cfg["BLOCK_N"]) - 1) + b_b * (_cdiv(p.m, cfg["BLOCK_M"]) - 1)
        miss = 0.05 if a_b + b_b < gpu.l2_bytes // 2 else 0.1 if cfg.get("GROUP_M", 1) > 1 else 0.25
        traffic += extra * miss
    memory_ms = traffic / (gpu.bandwidth_gbs * 1e9 * max(bw_eff, 1e-3)) * 1e3
    if p.kind in ("matmul", "attention"):
        rate = gpu.tensor_tflops * _mma_efficiency(p, cfg, resident) * fill
    else:
        rate = gpu.fp32_tflops * 0.5 * fill
    compute_ms = padded / (rate * 1e12) * 1e3
    ms = max(memory_ms, compute_ms)
    if (res.frame_bytes or 0) > 0 or regs > 255:
        ms *= 1.5
    occupancy = resident * cfg.num_warps * 32 / gpu.threads_per_sm
    bound = "memory" if memory_ms >= compute_ms else "compute"
    return Estimate(ms + gpu.launch_us * 1e-3, memory_ms, compute_ms, min(occupancy, 1.0),
                    programs, waste, bound)  # fmt: skip


def rank(
    info: KernelInfo,
    configs: Iterable[Config],
    dims: Mapping[str, int],
    gpu: Gpu,
    target: tg.Target,
    facts: Mapping[str, Resources] | None = None,
) -> list[tuple[Config, Estimate]]:
    """``configs`` ordered by estimated time at ``dims``, ties broken by config key.

    ``facts`` maps config keys to compile facts (registers, shared bytes, spills) where known.
    """
    if info.default.finishes:  # a column-sum finisher: one config, a tiny read of partials
        return [(c, Estimate(gpu.launch_us * 1e-3, 0.0, 0.0, 1.0, 1, 0.0, "memory"))
                for c in configs]  # fmt: skip
    p = problem(info, dims)
    facts = facts or {}
    out = [(c, estimate(p, c, gpu, estimate_regs(info.kind, c, info, target),
                        facts.get(config_key(c), Resources()))) for c in configs]  # fmt: skip
    # within 1% the model cannot tell configs apart: prefer the codegen's default heuristic
    # (nearest in log2 of every meta-parameter), then the config key
    default = info.default.config
    out.sort(key=lambda ce: (round(math.log(max(ce[1].ms, 1e-9)) * 100), _distance(ce[0], default),
                             config_key(ce[0])))  # fmt: skip
    return out


def _distance(cfg: Config, default: object) -> float:
    if not isinstance(default, Config):
        return 0.0
    a = {**dict(cfg.blocks), "w": cfg.num_warps, "s": cfg.num_stages}
    b = {**dict(default.blocks), "w": default.num_warps, "s": default.num_stages}
    return sum(abs(math.log2(a[k] / b[k])) for k in a.keys() & b.keys() if a[k] > 0 and b[k] > 0)


def throughput(p: Problem, ms: float) -> dict[str, float]:
    """GB/s (bytes moved) and, for matmul/attention, TFLOP/s at a measured time."""
    if not ms or not math.isfinite(ms):
        return {}
    out = {"gbps": round(p.bytes / (ms * 1e-3) / 1e9, 2)}
    if p.kind in ("matmul", "attention"):
        out["tflops"] = round(p.flops / (ms * 1e-3) / 1e12, 2)
    return out
