"""Per-target GPU limits and the candidate kernel configurations that smem-plan prunes.

Shared-memory limits are the per-block opt-in maxima of the CUDA C Programming Guide, table
"Technical Specifications per Compute Capability" (sm_80: 163 KiB, sm_86/sm_89: 99 KiB, sm_90:
227 KiB). ``pipeline_buffers`` says how many operand stages Triton keeps in shared memory for a
software-pipelined ``tl.dot`` loop on each architecture; it was calibrated against
``compiled.metadata.shared`` of Triton 3.9 (see ``tests/unit/test_smem_plan.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True, slots=True)
class Target:
    """One GPU architecture as the planner sees it.

    Attributes:
        name: ``sm_90`` etc.
        capability: compute capability as an int (90).
        smem_per_block: opt-in shared memory per block, in bytes.
        wgmma: Hopper warp-group MMA reads both operands of every in-flight stage from shared
            memory, so a ``num_stages`` loop keeps ``num_stages`` buffers; Ampere-style
            ``mma.sync`` pipelines keep ``num_stages - 1`` (the last stage lives in registers).
    """

    name: str
    capability: int
    smem_per_block: int
    wgmma: bool = False

    def pipeline_buffers(self, num_stages: int) -> int:
        """Operand buffers in shared memory for a ``num_stages`` software pipeline (at least 1)."""
        return max(1, num_stages if self.wgmma else num_stages - 1)


TARGETS: dict[str, Target] = {
    "sm_80": Target("sm_80", 80, 163 * KIB),
    "sm_86": Target("sm_86", 86, 99 * KIB),
    "sm_89": Target("sm_89", 89, 99 * KIB),
    "sm_90": Target("sm_90", 90, 227 * KIB, wgmma=True),
}


def get_target(name: str) -> Target:
    """The target called ``name``.

    Raises:
        KeyError: unknown target (the driver reports E0401 before the middle end runs).
    """
    return TARGETS[name]


# Candidate configs per region kind: each a dict of the kernel's constexpr meta-parameters.
# The keys double as the region attribute ``config_keys``.
MATMUL_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
ATTENTION_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
REDUCTION_KEYS = ("BLOCK", "num_warps", "num_stages")
POINTWISE_KEYS = ("BLOCK", "num_warps")
MAX_REDUCTION_BLOCK = 16384  # longer rows loop over chunks of this many elements


def matmul_configs() -> list[tuple[int, ...]]:
    """BLOCK_M/N in {64,128,256}, BLOCK_K in {32,64,128}, num_stages 2..5 (108 configs)."""
    out = []
    for bm, bn, bk, st in itertools.product(
        (64, 128, 256), (64, 128, 256), (32, 64, 128), range(2, 6)
    ):
        out.append((bm, bn, bk, 8 if bm * bn >= 128 * 128 else 4, st))
    return out


def attention_configs() -> list[tuple[int, ...]]:
    """BLOCK_M/N in {64, 128}, num_stages 1..3 (12 configs)."""
    out = []
    for bm, bn, st in itertools.product((64, 128), (64, 128), (1, 2, 3)):
        out.append((bm, bn, 4 if bm == 64 else 8, st))
    return out


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def reduction_configs(row: int) -> list[tuple[int, ...]]:
    """One block covering the row (next power of two, capped), with 4..16 warps."""
    block = min(next_pow2(max(row, 1)), MAX_REDUCTION_BLOCK)
    return [(block, w, 1) for w in (4, 8, 16) if w * 32 <= max(block, 128)]


def pointwise_configs() -> list[tuple[int, ...]]:
    return [(1024, 4), (2048, 8)]
