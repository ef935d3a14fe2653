"""The reference blueprints of the benchmark: sizes, work counts, which peers apply, and the
derived numbers (rate, share of the ceiling, numerics verdict).

Pure data and arithmetic (no torch import), so all of it is unit-tested on the CPU. Every
blueprint has its own copy under ``bench/blueprints/`` so the reference sizes are exact whatever
``samples/`` declares (``causal_attention`` has H = 16 heads here, 8 in ``samples/``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esperc.cli_bench import gbps, tflops

BLUEPRINTS = Path(__file__).resolve().parent / "blueprints"


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an [m, k] x [k, n] product: one multiply and one add per term, 2*m*n*k."""
    return 2 * m * n * k


def causal_attention_flops(b: int, h: int, s: int, d: int) -> int:
    """FLOPs of causal attention: QK^T and PV are 2*B*H*S*S*d each (4*B*H*S*S*d together);
    the causal mask leaves about half of the score matrix, so 2*B*H*S*S*d (FlashAttention-2's
    counting, Dao 2023, section 4.1)."""
    return 4 * b * h * s * s * d // 2


@dataclass(frozen=True, slots=True)
class Spec:
    """One reference blueprint of the benchmark.

    Attributes:
        name: the blueprint name (= the ``.esp`` stem and the key of the eager reference).
        dims: values of the blueprint's dynamic dims (static dims live in the ``.esp``).
        bound: "memory" (reported in GB/s against a device copy) or "compute" (TFLOP/s
            against a large bf16 GEMM).
        flops: the FLOPs of one call (0 for memory-bound blueprints).
        describe: the reference size, for the table header.
        liger: the Liger-Kernel op that computes this blueprint, or "" when Liger has none.
        sdpa: whether ``F.scaled_dot_product_attention`` is a peer.
        tiny_dims: the dims of the host-overhead measurement (smallest useful input).
    """

    name: str
    dims: Mapping[str, int]
    bound: str
    flops: int
    describe: str
    liger: str = ""
    sdpa: bool = False
    tiny_dims: Mapping[str, int] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return BLUEPRINTS / f"{self.name}.esp"

    @property
    def unit(self) -> str:
        """The unit of the derived rate: GB/s for memory-bound, TFLOP/s for compute-bound."""
        return "GB/s" if self.bound == "memory" else "TFLOP/s"


ROWS, WIDTH = 16384, 4096
MLP_T, MLP_D, MLP_H = 8192, 1024, 4096
SWI_T, SWI_D, SWI_H = 8192, 2048, 5632
ATT_B, ATT_H, ATT_S, ATT_D = 8, 16, 1024, 64

SPECS: tuple[Spec, ...] = (
    Spec("layer_norm", {"N": ROWS}, "memory", 0, f"[{ROWS}, {WIDTH}] bf16",
         liger="layer_norm", tiny_dims={"N": 1}),
    Spec("rms_norm", {"N": ROWS}, "memory", 0, f"[{ROWS}, {WIDTH}] bf16",
         liger="rms_norm", tiny_dims={"N": 1}),
    Spec("softmax", {"N": ROWS}, "memory", 0, f"[{ROWS}, {WIDTH}] bf16",
         liger="softmax", tiny_dims={"N": 1}),
    Spec("bias_gelu_residual", {"N": ROWS}, "memory", 0, f"[{ROWS}, {WIDTH}] bf16",
         tiny_dims={"N": 1}),
    Spec("residual_mlp", {"B": MLP_T}, "compute",
         2 * matmul_flops(MLP_T, MLP_H, MLP_D),
         f"{MLP_T} tokens, D={MLP_D}, H={MLP_H} bf16", tiny_dims={"B": 1}),
    Spec("swiglu_mlp", {"T": SWI_T}, "compute",
         3 * matmul_flops(SWI_T, SWI_H, SWI_D),
         f"{SWI_T} tokens, D={SWI_D}, H={SWI_H} bf16", liger="swiglu", tiny_dims={"T": 1}),
    Spec("causal_attention", {"B": ATT_B, "S": ATT_S}, "compute",
         causal_attention_flops(ATT_B, ATT_H, ATT_S, ATT_D),
         f"B={ATT_B}, H={ATT_H}, S={ATT_S}, d={ATT_D} bf16", sdpa=True,
         tiny_dims={"B": 1, "S": 16}),
)  # fmt: skip
BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}

# Blueprints that get the torch.compile max-autotune peer by default (it takes minutes).
AUTOTUNE_DEFAULT = ("layer_norm", "swiglu_mlp")


def select(only: str | None) -> tuple[Spec, ...]:
    """The specs named in a comma-separated list (all when None or empty), in table order.

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    if not only:
        return SPECS
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KeyError(f"unknown blueprint(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return tuple(s for s in SPECS if s.name in names)


def rate(spec: Spec, nbytes: int, ms: float) -> float:
    """The spec's derived rate for one call of ``ms``: GB/s of ``nbytes``, or TFLOP/s."""
    return gbps(nbytes, ms) if spec.bound == "memory" else tflops(spec.flops, ms)


def pct_of(value: float | None, ceiling: float | None) -> float | None:
    """``value`` as a percentage of ``ceiling`` (None when either is missing or not positive)."""
    if value is None or ceiling is None or not ceiling > 0 or not math.isfinite(value):
        return None
    return 100.0 * value / ceiling


def speedup(peer_ms: float | None, esperc_ms: float | None) -> float | None:
    """How many times faster esperc is than a peer (peer time / esperc time; > 1: esperc wins)."""
    if peer_ms is None or esperc_ms is None or not esperc_ms > 0:
        return None
    return peer_ms / esperc_ms


def input_sets(in_bytes: int, l2_bytes: int, cap: int = 4) -> int:
    """How many input sets to rotate: enough that together they overflow L2 (at most ``cap``);
    one when a single set is already larger than L2."""
    if in_bytes <= 0:
        return cap
    if in_bytes >= l2_bytes:
        return 1
    return min(cap, l2_bytes // in_bytes + 1)


BF16_TOL = 1e-2  # METHOD.md: bf16 operands land between 1e-3 and 1e-2 against a float64 reference


def numerics_ok(err: float | None, eager_err: float | None, tol: float = BF16_TOL) -> bool:
    """A peer passes when its relative error against the float64 reference is finite and at
    most ``max(tol, 2 * eager's own error)``: no worse than twice what eager bf16 gets."""
    if err is None or not math.isfinite(err):
        return False
    bound = tol if eager_err is None or not math.isfinite(eager_err) else max(tol, 2 * eager_err)
    return err <= bound
