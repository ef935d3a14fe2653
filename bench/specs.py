"""The reference blueprints of the benchmark: sizes, work counts, which peers apply, and the
derived numbers (rate, share of the ceiling, numerics verdict).

A row is one blueprint timed either forward only or as one training step (forward +
``out.backward(grad)``, ``train=True``: the ``TRAIN_SPECS``, keyed ``NAME.train``).

Pure data and arithmetic (no torch import), so all of it is unit-tested on the CPU. Every
blueprint has its own copy under ``bench/blueprints/`` so the reference sizes are exact whatever
``samples/`` declares (``causal_attention`` has H = 16 heads here, 8 in ``samples/``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from esperc.cli_bench import gbps, io_bytes, tflops

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
        train: a training row: one call is forward + backward (``training`` makes it).
        target: the issue's goal for this row: (peer, ms measured in the issue or None) pairs
            esperc must beat; ``target_text`` says it in the issue's words.
    """

    name: str
    dims: Mapping[str, int]
    bound: str
    flops: int
    describe: str
    liger: str = ""
    sdpa: bool = False
    tiny_dims: Mapping[str, int] = field(default_factory=dict)
    train: bool = False
    target: tuple[tuple[str, float | None], ...] = ()
    target_text: str = ""

    @property
    def path(self) -> Path:
        return BLUEPRINTS / f"{self.name}.esp"

    @property
    def key(self) -> str:
        """The row's name in files and on the command line: ``NAME`` or ``NAME.train`` (the
        package is ``KEY.kpkg``, its compile summary ``KEY.json``)."""
        return f"{self.name}.train" if self.train else self.name

    @property
    def label(self) -> str:
        """The row's name in tables and plots: ``NAME`` or ``NAME fwd+bwd``."""
        return f"{self.name} fwd+bwd" if self.train else self.name

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


def training(
    spec: Spec, target: tuple[tuple[str, float | None], ...] = (), target_text: str = ""
) -> Spec:
    """The training row of a forward spec: same sizes and peers, ``train=True``, and 3x the
    forward FLOPs: the backward of each matmul is two matmuls of its size (dX = dY·W and
    dW = dYᵀ·X); elementwise and norm work is not counted (the convention behind the "6·N FLOPs
    per token" of Kaplan et al. 2020, Scaling Laws for Neural Language Models, section 2.1)."""
    return replace(spec, train=True, flops=3 * spec.flops, target=target,
                   target_text=target_text)  # fmt: skip


# Issue 6: fwd+bwd of LayerNorm faster than Liger (0.398 ms on an H200) and Inductor (0.617 ms);
# of the residual MLP adapter and SwiGLU faster than torch.compile.
TRAIN_SPECS: tuple[Spec, ...] = (
    training(BY_NAME["layer_norm"], (("liger", 0.398), ("torch.compile", 0.617)),
             "Liger 0.398 ms, Inductor 0.617 ms"),
    training(BY_NAME["residual_mlp"], (("torch.compile", None),), "faster than torch.compile"),
    training(BY_NAME["swiglu_mlp"], (("torch.compile", None),), "faster than torch.compile"),
)  # fmt: skip
BY_KEY: dict[str, Spec] = {s.key: s for s in (*SPECS, *TRAIN_SPECS)}

# Blueprints that get the torch.compile max-autotune peer by default (it takes minutes).
AUTOTUNE_DEFAULT = ("layer_norm", "swiglu_mlp")


def select(only: str | None, forward: bool = True, train: bool = True) -> tuple[Spec, ...]:
    """The rows of the blueprints named in a comma-separated list (all when None or empty):
    the forward rows (``forward``), then the training rows of those that have one (``train``),
    each in table order.

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    names = [n.strip() for n in (only or "").split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KeyError(f"unknown blueprint(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    rows = (SPECS if forward else ()) + (TRAIN_SPECS if train else ())
    return tuple(s for s in rows if s.name in names)


def dry_run(spec: Spec) -> Spec:
    """``spec`` at its tiny dims (at least 3, so batch reductions sum several rows): the sizes of
    a ``--dry-run`` on the CPU. Its FLOPs are not counted (0): they were the reference size's."""
    dims = {k: max(3, v) for k, v in spec.tiny_dims.items()}
    at = ", ".join(f"{k}={v}" for k, v in dims.items())
    return replace(spec, dims=dims, flops=0, describe=f"{spec.describe}, dry run at {at}")


def train_bytes(
    inputs: Sequence[tuple[Sequence[int], int]],
    params: Sequence[tuple[Sequence[int], int]],
    outputs: Sequence[tuple[Sequence[int], int]],
) -> int:
    """Fewest bytes one training step moves, (shape, element size) lists as ``io_bytes``.

    Forward: every input and param read once, every output written once. Backward: every
    output gradient read, every input read again (the activations the gradient formulas need),
    the gradient of every input and param written once. Params are counted read once: they are
    small next to the activations for the memory-bound rows. LayerNorm [N, D]: 5·N·D + 4·D
    elements (x, y, dy, x, dx; w, b, dw, db)."""
    forward = io_bytes([*inputs, *params], outputs)
    return forward + io_bytes([*outputs, *inputs], [*inputs, *params])


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


def all_numerics_ok(errs: Mapping[str, float], eager_errs: Mapping[str, float]) -> bool:
    """``numerics_ok`` for every checked tensor (the output, and each gradient of a training
    row), each against eager's error on the same tensor; False when nothing was checked."""
    return bool(errs) and all(numerics_ok(e, eager_errs.get(k)) for k, e in errs.items())


def target_verdict(
    target: Sequence[tuple[str, float | None]],
    esperc_ms: float | None,
    peer_ms: Mapping[str, float],
) -> str:
    """Whether esperc met the issue's target: faster than each named peer's number from the
    issue and than that peer measured in this run. Returns "" (no target), "met" ("met (PEER
    MS is faster)" when a peer outside the target beat esperc in this run),
    "not met: ..." naming the bars esperc did not beat (or "esperc has no time"), or
    "unknown: ..." when a target peer without an issue number was not measured."""
    if not target:
        return ""
    if esperc_ms is None:
        return "not met: esperc has no time"
    missed, unmeasured = [], []
    for peer, issue_ms in target:
        bars = [(f"{peer} {issue_ms:g} ms (issue)", issue_ms)] if issue_ms is not None else []
        if peer in peer_ms:
            bars.append((f"{peer} {peer_ms[peer]:.4f} ms (this run)", peer_ms[peer]))
        elif issue_ms is None:
            unmeasured.append(peer)
        missed += [name for name, ms in bars if not esperc_ms < ms]
    if missed:
        return "not met: slower than " + ", ".join(missed)
    if unmeasured:
        return f"unknown: {', '.join(unmeasured)} not measured"
    faster = sorted((ms, p) for p, ms in peer_ms.items() if ms < esperc_ms)
    return f"met ({faster[0][1]} {faster[0][0]:.4f} ms is faster)" if faster else "met"
