"""The autotuning search space of one generated kernel, pruned before anything is compiled.

Per kernel kind the space is the product of the template's meta-parameters (the constexprs the
codegen reads from a ``Config``):

- matmul: ``BLOCK_M`` 16..256, ``BLOCK_N`` 32..256, ``BLOCK_K`` 32..128, ``GROUP_M`` {1, 8},
  ``num_warps`` {4, 8}, ``num_stages`` 2..5;
- attention: ``BLOCK_M`` {64, 128}, ``BLOCK_N`` {32, 64, 128}, ``num_warps`` {4, 8},
  ``num_stages`` 1..3;
- reduction: one tile per row (``BLOCK_N`` = the row rounded up to a power of two, up to 16K
  elements) or the looped form (``BLOCK_N`` 512..4096 below the row), ``BLOCK_M`` 1..16 rows,
  ``num_warps`` 1..16;
- pointwise: ``BLOCK_N`` (and ``BLOCK_M`` for 2-D tiles) with 256..8192 elements per program,
  ``num_warps`` 1..8.

Pruning, in order, each counted under its reason: shared memory over the target's per-block
limit (the same buffer model and linear-scan allocation as the ``smem-plan`` pass:
``middle/fusion_smem.py``); a register estimate over 255 per thread (the accumulator tile spread
over the threads, plus operand fragments for ``mma.sync`` targets); threads left idle (fewer
elements than threads); tiles larger than a static problem size; and the divisibility
conditions of the default kernel's ``GeneratedKernel.requires`` (``"1024 % BLOCK_K == 0"``): a
config that breaks one would bring back masks that the default kernel proved unneeded, so it is
dropped when any candidate keeps them. Candidates are then regenerated one by one, so the
inequality conditions that pick a code form (``"BLOCK_N >= 4096"``: one pass or a loop) hold for
each by construction.

Split-K and persistent (stream-K) matmuls are listed in ``Space.future``: the codegen has no
template for them yet.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from esperc.backend.triton.configs import Config, make_config
from esperc.backend.triton.emitter import regions_of
from esperc.backend.triton.plan import GeneratedKernel, KernelLaunch
from esperc.backend.triton.regions import analyze
from esperc.ir.dimexpr import evaluate, parse_dimexpr, symbols
from esperc.ir.graph import Arg, Func
from esperc.ir.hashing import canonical_text
from esperc.ir.types import Dim, SymDim, TensorType, eval_dim
from esperc.middle import targets as tg
from esperc.middle.fusion_smem import allocate, attention_buffers, matmul_buffers

MAX_REGS = 255  # registers per thread the hardware allows
MAX_PERSISTENT_N = 16384  # configs.MAX_PERSISTENT_N: longest row held in one tile
# region attributes that change the generated code (value-name attributes such as "a" or
# "anchor" are left out of the hash: the canonical print renames values)
_HASH_ATTRS = ("axis", "causal", "epilogue", "kind", "lowering", "mask", "scale", "trans_a", "trans_b",
               "trans_k")  # fmt: skip
FUTURE = {
    "matmul": ("split-K: the codegen has no split-K matmul template",
               "persistent/stream-K matmul: not in the codegen"),
}  # fmt: skip


@dataclass(frozen=True)
class KernelInfo:
    """What the tuner knows about one generated kernel (from the IR, before any compile).

    Attributes:
        name: the generated kernel's name.
        region: its IR kernel region.
        kind: pointwise, reduction, matmul or attention.
        hash: canonical hash (hex SHA-256) of the region's IR (positional names, no locations),
            its kind, its codegen attributes and its dtypes: the perf DB key of "this kernel".
        family: kind and dtypes (``"matmul:bf16,bf16->bf16"``): kernels whose configs transfer.
        dims: the dynamic dims the kernel depends on (its shape bucket), sorted.
        default: the kernel as generated with the default config.
        shapes: named shapes of the problem (``m``, ``n``, ``k``, ``rows``, ``cols``...).
        reads: (shape, itemsize) of every tensor read.
        writes: (shape, itemsize) of every tensor written.
        ops: element operations per output element (nodes in the region).
        itemsize: bytes of one element of the main operand.
        causal: attention with a causal mask (about half the tiles run).
    """

    name: str
    region: str
    kind: str
    hash: str
    family: str
    dims: tuple[str, ...]
    default: GeneratedKernel
    shapes: Mapping[str, tuple[Dim, ...]]
    reads: tuple[tuple[tuple[Dim, ...], int], ...]
    writes: tuple[tuple[tuple[Dim, ...], int], ...]
    ops: int
    itemsize: int
    causal: bool = False


@dataclass(frozen=True)
class Space:
    """The pruned candidates of one kernel (sorted by config key) and what was cut, and why."""

    kernel: str
    kind: str
    candidates: tuple[Config, ...]
    total: int
    pruned: tuple[tuple[str, int], ...]
    future: tuple[str, ...] = ()

    def summary(self) -> dict[str, object]:
        return {"total": self.total, "kept": len(self.candidates), "pruned": dict(self.pruned),
                "future": list(self.future)}  # fmt: skip


def config_key(cfg: Config) -> str:
    """A config's canonical text (``BLOCK_M=..,num_warps=..,num_stages=..``): its identity."""
    return str(cfg)


def config_dict(cfg: Config) -> dict[str, int]:
    return {**dict(cfg.blocks), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def config_from_dict(d: Mapping[str, int]) -> Config:
    blocks = {k: int(v) for k, v in d.items() if k not in ("num_warps", "num_stages")}
    return make_config(int(d.get("num_warps", 4)), int(d.get("num_stages", 1)), **blocks)


def kernel_dims(step: KernelLaunch) -> tuple[str, ...]:
    """The dynamic dims a launch depends on: those in its scalar arguments, grid and outputs."""
    exprs = [a.expr for a in step.args if hasattr(a, "expr")]
    exprs += [t[1] for axis in step.grid for t in axis]
    exprs += [d for a in step.allocs for d in a.shape]
    names: set[str] = set()
    for e in exprs:
        names |= symbols(parse_dimexpr(e))
    return tuple(sorted(names))


def describe(func: Func, kernel: GeneratedKernel) -> KernelInfo:
    """The ``KernelInfo`` of a generated kernel of ``func`` (``kernel.region`` names the region)."""
    region = next(r for r in regions_of(func) if r.name == kernel.region)
    types = func.types()
    info = analyze(func, region, kernel.name)
    inputs, outputs, nodes = info.inputs, info.outputs, info.nodes
    attrs = dict(region.attrs)
    hashed = sorted((k, v) for k, v in attrs.items() if k in _HASH_ATTRS)
    sub = Func("k", func.dims, (), tuple(Arg(v, types[v], "input") for v in inputs),
               tuple(nodes), tuple(outputs))  # fmt: skip
    dtypes = ",".join(types[v].dtype.value for v in inputs)
    out_dt = ",".join(types[v].dtype.value for v in outputs)
    role = "finish" if kernel.finishes else kernel.kind  # a region's finishing kernel: its own key
    family = f"{role}:{dtypes}->{out_dt}"
    text = f"{canonical_text(sub)}\nkind={kernel.kind}\nattrs={hashed}\n{family}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    shapes = _shapes(kernel.kind, attrs, types, func.producers(), inputs, outputs)
    main = types[str(attrs["a"])] if "a" in attrs else types[inputs[0]] if inputs else \
        types[outputs[0]]  # fmt: skip
    return KernelInfo(
        kernel.name, kernel.region, kernel.kind, digest, family, kernel_dims(kernel.launch),
        kernel, shapes, tuple((types[v].shape, types[v].dtype.itemsize) for v in inputs),
        tuple((types[v].shape, types[v].dtype.itemsize) for v in outputs),
        max(1, sum(1 for n in nodes if n.op.value != "constant")), main.dtype.itemsize,
        bool(attrs.get("causal", False)),
    )  # fmt: skip


def _shapes(kind: str, attrs: Mapping[str, object], types: Mapping[str, TensorType],
            producers: Mapping, inputs: list[str], outputs: list[str]) -> dict[str, tuple]:  # fmt: skip
    if kind == "matmul":
        a, b = types[str(attrs["a"])], types[str(attrs["b"])]
        out = producers[str(attrs["anchor"])].type
        batch = b.shape[:-2] if b.rank > 2 and any(d != 1 for d in b.shape[:-2]) else ()
        rows = out.shape[:-1] if not batch else out.shape[-2:-1]
        return {"m": rows, "n": out.shape[-1:], "k": a.shape[-1:], "batch": batch}
    if kind == "attention":
        q = types[str(attrs.get("q", inputs[0]))]
        k = types[str(attrs.get("k", inputs[1]))]
        return {"batch": q.shape[:-2], "sq": q.shape[-2:-1], "sk": k.shape[-2:-1],
                "head": q.shape[-1:]}  # fmt: skip
    big = max((types[v] for v in inputs + outputs), key=lambda t: (t.rank, str(t.shape)))
    return {"rows": big.shape[:-1], "cols": big.shape[-1:]}


def size(shape: Iterable[Dim], dims: Mapping[str, int]) -> int:
    """The number of elements of ``shape`` for these dim values (1 for an empty shape)."""
    n = 1
    for d in shape:
        n *= eval_dim(d, dict(dims)) if isinstance(d, SymDim) else int(d)
    return n


def _static(shape: Iterable[Dim]) -> int | None:
    shape = tuple(shape)
    return size(shape, {}) if all(isinstance(d, int) for d in shape) else None


def _hi(shape: Iterable[Dim], his: Mapping[str, int]) -> int:
    return size(shape, his)


def estimate_regs(kind: str, cfg: Config, info: KernelInfo, target: tg.Target) -> int:
    """Registers per thread a config needs, roughly: fp32 accumulator or row tile spread over
    the CTA's threads, operand fragments for ``mma.sync`` (not for Hopper's wgmma, which reads
    shared memory), and ~32 for addresses and indices."""
    threads = 32 * cfg.num_warps
    if kind == "matmul":
        acc = cfg["BLOCK_M"] * cfg["BLOCK_N"] // threads
        ops = 0 if target.wgmma else (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * \
            info.itemsize // 4 // threads  # fmt: skip
        return acc + ops + 32
    if kind == "attention":
        head = size(info.shapes["head"], {})
        return (cfg["BLOCK_M"] * (head + cfg["BLOCK_N"])) // threads + 32
    return 2 * cfg.get("BLOCK_M", 1) * cfg["BLOCK_N"] // threads + 24


def _candidates(info: KernelInfo, his: Mapping[str, int]) -> list[Config]:
    mk = make_config
    if info.kind == "matmul":
        return [mk(w, s, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=g)
                for bm, bn, bk, g, w, s in itertools.product(
                    (16, 32, 64, 128, 256), (32, 64, 128, 256), (32, 64, 128), (1, 8), (4, 8),
                    (2, 3, 4, 5))]  # fmt: skip
    if info.kind == "attention":
        return [mk(w, s, BLOCK_M=bm, BLOCK_N=bn) for bm, bn, w, s in
                itertools.product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3))]  # fmt: skip
    n_max = _hi(info.shapes["cols"], his)
    if info.kind == "reduction":
        full = tg.next_pow2(n_max)
        blocks = [full] if full <= MAX_PERSISTENT_N else []
        if not any(a.partial_of for a in info.default.launch.allocs):  # column sums: one pass
            blocks += [b for b in (512, 1024, 2048, 4096) if b < n_max]
        return [mk(w, 1, BLOCK_M=bm, BLOCK_N=bn) for bn, bm, w in
                itertools.product(blocks, (1, 2, 4, 8, 16), (1, 2, 4, 8, 16))]  # fmt: skip
    if "BLOCK_M" not in info.default.constexprs:  # flat pointwise
        return [mk(w, 1, BLOCK_N=bn) for bn, w in
                itertools.product((256, 512, 1024, 2048, 4096, 8192), (1, 2, 4, 8))]  # fmt: skip
    return [mk(w, 1, BLOCK_M=bm, BLOCK_N=bn) for bm, bn, w in
            itertools.product((1, 2, 4, 8, 16, 32, 64), (32, 64, 128, 256, 512, 1024),
                              (1, 2, 4, 8)) if 256 <= bm * bn <= 8192]  # fmt: skip


def _prune_reason(cfg: Config, info: KernelInfo, target: tg.Target) -> str | None:
    kind = info.kind
    out_size = info.writes[0][1] if info.writes else info.itemsize
    if kind == "matmul":
        c = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg.num_warps, cfg.num_stages)
        peak = allocate(matmul_buffers(c, info.itemsize, info.itemsize, out_size, target)).peak
    elif kind == "attention":
        c = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg.num_warps, cfg.num_stages)
        head = size(info.shapes["head"], {})
        peak = allocate(attention_buffers(c, head, info.itemsize, out_size)).peak
    else:
        peak = 0
    if peak > target.smem_per_block:
        return "shared memory"
    if estimate_regs(kind, cfg, info, target) > MAX_REGS:
        return "registers"
    tile = cfg.get("BLOCK_M", 1) * cfg["BLOCK_N"]
    if tile < 32 * cfg.num_warps * (4 if kind in ("matmul", "attention") else 1):
        return "idle threads"
    return _too_large(cfg, info)


def _too_large(cfg: Config, info: KernelInfo) -> str | None:
    """Tiles over a static problem size (dynamic sizes are left to the cost model per bucket)."""
    limits = {"matmul": (("BLOCK_N", "n", 32), ("BLOCK_K", "k", 32), ("BLOCK_M", "m", 16)),
              "attention": (("BLOCK_N", "sk", 32), ("BLOCK_M", "sq", 64)),
              "reduction": (("BLOCK_M", "rows", 1),),
              "pointwise": (("BLOCK_N", "cols", 256), ("BLOCK_M", "rows", 1))}  # fmt: skip
    for block, shape, floor in limits[info.kind]:
        static = _static(info.shapes.get(shape, ())) if shape in info.shapes else None
        if static is not None and block in dict(cfg.blocks):
            if cfg[block] > max(floor, tg.next_pow2(static)):
                return "larger than the problem"
    return None


def divisibility(requires: Iterable[str]) -> list[str]:
    """The divisibility conditions (``"1024 % BLOCK_K == 0"``) among a kernel's ``requires``."""
    return [r for r in requires if "%" in r]


def holds(conditions: Iterable[str], cfg: Config) -> bool:
    """Whether every condition (a dim expression over block names) holds for ``cfg``."""
    env = dict(cfg.blocks)
    return all(bool(evaluate(parse_dimexpr(c), env)) for c in conditions)


def build_space(info: KernelInfo, target: tg.Target, his: Mapping[str, int]) -> Space:
    """Every candidate config of ``info``'s kind, pruned (see the module docstring).

    Args:
        info: the kernel.
        target: the GPU target (shared-memory limit, wgmma).
        his: upper bounds of the dynamic dims (``DimDecl.hi``), for dynamic row lengths.
    """
    if info.default.finishes:  # a column-reduction finishing kernel: its one config (tiny work)
        return Space(info.name, info.kind, (info.default.config,), 1, ())  # type: ignore[arg-type]
    cands = sorted(set(_candidates(info, his)), key=config_key)
    reasons: Counter[str] = Counter()
    kept: list[Config] = []
    for c in cands:
        why = _prune_reason(c, info, target)
        if why:
            reasons[why] += 1
        else:
            kept.append(c)
    conds = divisibility(info.default.requires)
    if conds and any(holds(conds, c) for c in kept):
        dropped = sum(1 for c in kept if not holds(conds, c))
        if dropped:
            reasons["divisibility"] += dropped
            kept = [c for c in kept if holds(conds, c)]
    return Space(info.name, info.kind, tuple(kept), len(cands), tuple(sorted(reasons.items())),
                 FUTURE.get(info.kind, ()))  # fmt: skip


def neighbours(cfg: Config, space: Space) -> list[Config]:
    """Configs of ``space`` one step from ``cfg``: one block size halved or doubled, or
    ``num_warps``/``num_stages``/``GROUP_M`` changed (the local search's moves), by key."""
    keys = {config_key(c): c for c in space.candidates}
    base = config_dict(cfg)
    out: dict[str, Config] = {}
    for name, value in base.items():
        for new in (value * 2, value // 2, value + 1, value - 1):
            if new <= 0 or new == value:
                continue
            if name != "num_stages" and new & (new - 1):
                continue
            c = config_from_dict({**base, name: new})
            if config_key(c) in keys:
                out[config_key(c)] = c
    return [out[k] for k in sorted(out)]


def diverse_top(ranked: Sequence[tuple[Config, object]], k: int) -> list[Config]:
    """The first ``k`` configs of ``ranked``, at most two per tile shape (block sizes)."""
    out: list[Config] = []
    per_tile: dict[tuple, int] = {}
    for c, _ in ranked:
        tile = tuple((n, v) for n, v in c.blocks if n != "GROUP_M")
        if per_tile.get(tile, 0) < 2:
            per_tile[tile] = per_tile.get(tile, 0) + 1
            out.append(c)
            if len(out) == k:
                break
    return out
