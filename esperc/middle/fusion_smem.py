"""Shared-memory buffers of a kernel region for one tile config, and their allocation.

Each region kind has a buffer model: the tiles that must sit in shared memory, each with a live
range in program points (0: prologue, 1: main loop, 2: epilogue). ``allocate`` places them with a
linear scan over live ranges (first fit, offsets aligned to 128 bytes, a buffer reuses the space
of buffers already dead), as Triton's own allocator does (``lib/Analysis/Allocation.cpp``).

Calibration against Triton 3.9 (``compiled.metadata.shared``, CPU compiles with 16-byte-aligned
pointers, see ``tests/unit/test_smem_plan.py``):

- matmul main loop: ``bufs * (BM*BK*isA + BK*BN*isB)`` with ``bufs = num_stages`` on sm_90 and
  ``num_stages - 1`` on sm_8x (at least 1) is exact for every candidate config;
- matmul epilogue: Triton sometimes converts the accumulator's layout through shared memory
  before the store (``BM*BN*out_itemsize``), reusing the dead operand buffers; which configs do
  so depends on layouts, so the plan always reserves it and is never below Triton's figure;
- row reductions: ``num_warps * 4`` bytes of cross-warp scratch per reduction, one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from esperc.middle.targets import Target

ALIGN = 128


@dataclass(frozen=True, slots=True)
class Buffer:
    """A shared-memory buffer live over program points ``[start, end)``; ``size`` in bytes."""

    name: str
    size: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Placed buffers (``(buffer, offset)``, offsets in bytes) and the peak bytes in use."""

    placed: tuple[tuple[Buffer, int], ...]
    peak: int

    def largest(self, n: int = 3) -> list[Buffer]:
        return sorted((b for b, _ in self.placed), key=lambda b: (-b.size, b.name))[:n]


def _align(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


def allocate(buffers: Sequence[Buffer]) -> Plan:
    """Linear-scan allocation over live ranges with reuse of dead buffers (first fit)."""
    order = sorted(buffers, key=lambda b: (b.start, -b.size, b.name))
    active: list[tuple[Buffer, int]] = []
    placed: list[tuple[Buffer, int]] = []
    peak = 0
    for b in order:
        active = [(a, off) for a, off in active if a.end > b.start]
        offset = 0
        for a, off in sorted(active, key=lambda p: p[1]):
            if offset + b.size <= off:
                break
            offset = max(offset, _align(off + a.size))
        active.append((b, offset))
        placed.append((b, offset))
        peak = max(peak, offset + b.size)
    return Plan(tuple(placed), peak)


def matmul_buffers(
    cfg: Sequence[int], a_size: int, b_size: int, out_size: int, target: Target
) -> list[Buffer]:
    """``cfg`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); sizes are itemsizes."""
    bm, bn, bk, _, stages = cfg
    bufs = target.pipeline_buffers(stages)
    return [
        Buffer("A tiles", bufs * bm * bk * a_size, 0, 2),
        Buffer("B tiles", bufs * bk * bn * b_size, 0, 2),
        Buffer("epilogue tile", bm * bn * out_size, 2, 3),
    ]


def attention_buffers(cfg: Sequence[int], head: int, size: int, out_size: int) -> list[Buffer]:
    """``cfg`` = (BLOCK_M, BLOCK_N, num_warps, num_stages): Q tile, staged K and V tiles, O tile."""
    bm, bn, _, stages = cfg
    return [
        Buffer("Q tile", bm * head * size, 0, 2),
        Buffer("K tiles", stages * bn * head * size, 1, 2),
        Buffer("V tiles", stages * bn * head * size, 1, 2),
        Buffer("O tile", bm * head * out_size, 2, 3),
    ]


def reduction_buffers(cfg: Sequence[int], acc_sizes: Sequence[int]) -> list[Buffer]:
    """``cfg`` = (BLOCK, num_warps, num_stages); one cross-warp scratch per reduction, in order."""
    _, warps, _ = cfg
    return [Buffer(f"reduction {i} scratch", warps * s, i, i + 1) for i, s in enumerate(acc_sizes)]
