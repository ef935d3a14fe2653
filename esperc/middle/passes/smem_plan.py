"""Shared-memory planning: per kernel region, prune tile configs and pick a default."""

from __future__ import annotations

from dataclasses import dataclass, replace

from esperc.diagnostics import Loc, Note, error
from esperc.ir.graph import Func, Node, Region, make_attrs
from esperc.ir.ops import COMPOSITES, REDUCTIONS
from esperc.ir.types import Dim, TensorType
from esperc.middle import targets as tg
from esperc.middle.fusion_graph import dim_size
from esperc.middle.fusion_smem import (
    Plan,
    allocate,
    attention_buffers,
    matmul_buffers,
    reduction_buffers,
)
from esperc.middle.pass_manager import FunctionPass, PassContext
from esperc.middle.registry import register

ATTRS = ("smem_bytes", "smem_limit", "smem_util", "config", "configs_pruned", "configs_kept")  # fmt: skip
NOMINAL = 1024
Config = tuple[int, ...]


@register
@dataclass(frozen=True)
class SmemPlan(FunctionPass):
    """Plan shared memory per kernel region: prune tile configs over the target's limit.

    For every candidate config of the region's kind (``targets.py``) it lists the buffers that
    live in shared memory, allocates them by a linear scan over live ranges (``fusion_smem``),
    and drops configs whose peak exceeds the target's per-block limit. The default config is the
    largest tile that fits with at least 2 stages (matmul: within 128 accumulator registers per
    thread and no larger than the problem). Region attrs: ``smem_bytes`` (peak of the default),
    ``smem_limit``, ``smem_util``, ``config`` (``BLOCK_M=128,...,num_stages=3``), ``configs_kept`` and
    ``configs_pruned``. View regions get none (they launch no kernel or a plain copy).
    ``configs`` restricts candidates: ``matmul:128x128x64x8x3;attention:64x64x4x2`` (values in the
    order of the kind's keys in ``targets.py``). ``target`` overrides the pipeline's target.

    Preserves: body and region members. Requires: kernel regions. Idempotent.
    Raises: DiagnosticError E0301 when no config of a region fits, at the region's anchor node.
    """

    name = "smem-plan"
    target: str = ""
    configs: str = ""

    def run(self, func: Func, ctx: PassContext) -> Func:
        target = tg.get_target(self.target or ctx.target)
        only = _parse_configs(self.configs)
        nodes = func.producers()
        types = func.types()
        hi = {d.name: d.hi for d in func.dims}
        regions = []
        for r in func.regions:
            base = {k: v for k, v in r.attrs if k not in ATTRS}
            kind = str(r.attr("kind"))
            model = _model(r, kind, nodes, types, hi, target)
            if model is None:
                regions.append(replace(r, attrs=make_attrs(base)))
                continue
            keys, cands, plan_of, pick = model
            if kind in only:
                cands = [c for c in cands if c in only[kind]] or [only[kind][0]]
            plans = {c: plan_of(c) for c in cands}
            kept = [c for c in cands if plans[c].peak <= target.smem_per_block]
            if not kept:
                raise _too_big(r, nodes, plans, target)
            best = pick(kept)
            peak = plans[best].peak
            attrs = {
                **base, "smem_bytes": peak, "smem_limit": target.smem_per_block,
                "smem_util": round(peak / target.smem_per_block, 3), "config": format_config(keys, best),
                "configs_kept": len(kept),
                "configs_pruned": len(cands) - len(kept),
            }  # fmt: skip
            ctx.stat("configs-pruned", len(cands) - len(kept))
            ctx.remark(f"@{r.name}: {kind} {dict(zip(keys, best))} uses {peak} of "
                       f"{target.smem_per_block} bytes; {len(cands) - len(kept)} of {len(cands)} "
                       f"configs pruned on {target.name}")  # fmt: skip
            regions.append(replace(r, attrs=make_attrs(attrs)))
        return func.with_(regions=tuple(regions))


def format_config(keys: tuple[str, ...], values: Config) -> str:
    """The ``config`` attribute: ``"BLOCK_M=128,BLOCK_N=256,BLOCK_K=64,num_warps=8,num_stages=3"``
    (what ``esperc.backend.triton.configs.parse_config`` reads)."""
    return ",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


def _parse_configs(text: str) -> dict[str, list[Config]]:
    out: dict[str, list[Config]] = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        kind, _, vals = item.partition(":")
        out.setdefault(kind.strip(), []).append(tuple(int(v) for v in vals.split("x")))
    return out


def _size(d: Dim, hi: dict[str, int]) -> int:
    return dim_size(d, hi, NOMINAL)


def _model(
    r: Region,
    kind: str,
    nodes: dict[str, Node],
    types: dict[str, TensorType],
    hi: dict[str, int],
    target: tg.Target,
):  # noqa: ANN202 - a 4-tuple of callables
    if kind == "matmul":
        return _matmul_model(r, nodes, types, hi, target)
    if kind == "attention":
        return _attention_model(r, types, hi)
    if kind == "reduction":
        reds = [nodes[m] for m in r.members if nodes[m].op in REDUCTIONS | COMPOSITES]
        acc = [max(4, n.type.dtype.itemsize) for n in reds]
        row = _size_of_row(str(r.attr("row", "1")), hi)
        cands = tg.reduction_configs(row)
        want = 4 if cands[0][0] <= 2048 else 8 if cands[0][0] <= 8192 else 16
        return (tg.REDUCTION_KEYS, cands, lambda c: allocate(reduction_buffers(c, acc)),
                lambda kept: min(kept, key=lambda c: (abs(c[1] - want), c)))  # fmt: skip
    if kind == "pointwise":
        return (tg.POINTWISE_KEYS, tg.pointwise_configs(), lambda c: Plan((), 0),
                lambda kept: kept[0])  # fmt: skip
    return None


def _size_of_row(row: str, hi: dict[str, int]) -> int:
    n = 1
    for factor in row.split("*"):
        n *= (
            int(factor)
            if factor.strip().isdigit()
            else min(hi.get(factor.strip(), NOMINAL), NOMINAL)
        )
    return n


def _matmul_model(
    r: Region,
    nodes: dict[str, Node],
    types: dict[str, TensorType],
    hi: dict[str, int],
    target: tg.Target,
):  # noqa: ANN202
    anchor = nodes[str(r.attr("anchor"))]
    a, b = types[str(r.attr("a"))], types[str(r.attr("b"))]
    out = anchor.type
    m, n = _size(out.shape[-2] if out.rank >= 2 else 1, hi), _size(out.shape[-1], hi)
    k = _size(a.shape[-1], hi)
    isa, isb, iso = a.dtype.itemsize, b.dtype.itemsize, out.dtype.itemsize

    def plan_of(c: Config) -> Plan:
        return allocate(matmul_buffers(c, isa, isb, iso, target))

    def pick(kept: list[Config]) -> Config:
        cap = (max(64, tg.next_pow2(m)), max(64, tg.next_pow2(n)), max(32, tg.next_pow2(k)))
        # At most 64 fp32 accumulator registers per thread: larger tiles spill once an epilogue
        # (bias, GELU, residual) needs registers too (measured on an H200: 128x256 spilled
        # 72-712 bytes, 128x128 ran as fast or faster).
        ok = [c for c in kept if c[4] >= 2 and c[0] <= cap[0] and c[1] <= cap[1] and c[2] <= cap[2]
              and c[0] * c[1] <= 64 * 32 * c[3]] or kept  # fmt: skip
        return max(
            ok, key=lambda c: (c[0] * c[1], -abs(c[0] - c[1]), -abs(c[2] - 64), min(c[4], 3), -c[4])
        )

    return tg.MATMUL_KEYS, tg.matmul_configs(), plan_of, pick


def _attention_model(r: Region, types: dict[str, TensorType], hi: dict[str, int]):  # noqa: ANN202
    q = types[str(r.attr("q"))]
    out = types[str(r.attr("out"))]
    head = _size(q.shape[-1], hi)
    size, out_size = q.dtype.itemsize, out.dtype.itemsize

    def plan_of(c: Config) -> Plan:
        return allocate(attention_buffers(c, head, size, out_size))

    def pick(kept: list[Config]) -> Config:
        # d <= 64: 64x64 tiles, 4 warps, 3 stages measured best on an H200 (causal, S=4096);
        # larger heads take 128-row Q tiles.
        bm = 64 if head <= 64 else 128
        ok = [c for c in kept if c[3] >= 2 and c[0] <= bm and c[1] <= 64] or kept
        return max(ok, key=lambda c: (c[0] * c[1], c[0], min(c[3], 3), -abs(c[2] - 4)))

    return tg.ATTENTION_KEYS, tg.attention_configs(), plan_of, pick


def _too_big(r: Region, nodes: dict[str, Node], plans: dict[Config, Plan], target: tg.Target):  # noqa: ANN202
    least = min(plans, key=lambda c: plans[c].peak)
    plan = plans[least]
    anchor = str(r.attr("anchor", "") or r.attr("out", "") or "")
    node = nodes.get(anchor) or next(
        (nodes[m] for m in r.members if nodes[m].loc), nodes[r.members[0]]
    )
    loc: Loc | None = node.loc
    big = ", ".join(f"{b.name} {b.size} bytes" for b in plan.largest())
    return error(
        "E0301",
        f"kernel region '{r.name}' ({r.attr('kind')}) needs at least {plan.peak} bytes of shared "
        f"memory; {target.name} allows {target.smem_per_block} per block",
        loc,
        Note("help", f"largest buffers of the smallest config {list(least)}: {big}"),
        Note("note", "use a smaller head size or dtype, or a target with more shared memory"),
    )
