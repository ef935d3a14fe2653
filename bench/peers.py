"""The peers a blueprint is timed against, each built lazily and allowed to fail on its own.

A peer is a name and a ``build()`` that returns the callable (tensors by keyword -> output).
``build`` raises ``Unavailable`` for a peer that cannot exist here (a package that is not
installed); any other exception is that peer's error. Peers:

- ``eager``: the independent plain-PyTorch reference (``tests/unit/torch_refs.py``);
- ``torch.compile`` and ``torch.compile max-autotune`` (``mode="max-autotune-no-cudagraphs"``)
  of that same reference, compiled on the first call;
- ``liger``: Liger-Kernel's op where it has one (``liger_kernel`` is rarely installed);
- ``sdpa (flash)``: ``F.scaled_dot_product_attention`` on the flash backend, for attention;
- ``esperc``: the ``.kpkg`` loaded with ``esperc.load(path, fallback="error")``.

A training row has the same peers, each a function of the forward that autograd differentiates
(``measure.Workload`` runs the step around it): eager's and Liger's backward are theirs,
torch.compile's is the AOTAutograd backward it compiles with the forward, esperc's is the
training package's (``esperc compile --backward``; ``esperc/runtime/autograd.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.specs import AUTOTUNE_DEFAULT, Spec

REFS_FILE = Path(__file__).resolve().parents[1] / "tests" / "unit" / "torch_refs.py"

Fn = Callable[..., Any]


class Unavailable(Exception):
    """The peer cannot exist on this machine (recorded as "not available", not as an error)."""


@dataclass(frozen=True)
class Peer:
    """A named way to compute a blueprint. ``build`` returns ``fn(**tensors) -> output``."""

    name: str
    build: Callable[[], Fn]
    compiles_on_first_call: bool = False


@dataclass
class PeerResult:
    """One row of a blueprint's table (JSON-able with ``dataclasses.asdict``).

    ``status`` is "ok", "error", "not available" or "skipped"; ``speedup`` is this peer's time
    over esperc's (> 1: esperc is faster); ``compile_s`` is the cold compile (or build) time.
    """

    peer: str
    status: str = "ok"
    note: str = ""
    median_ms: float | None = None
    p95_ms: float | None = None
    n: int = 0
    rate: float | None = None
    pct_ceiling: float | None = None
    speedup: float | None = None
    compile_s: float | None = None
    rel_err: float | None = None
    numerics_ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _load_refs() -> dict[str, Fn]:
    spec = importlib.util.spec_from_file_location("bench_torch_refs", REFS_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the eager references from {REFS_FILE}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    refs = dict(mod.REFS)
    refs["causal_attention"] = causal_attention
    return refs


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float = 0.125):
    """Naive causal attention (as tests/unit/torch_refs.py), with the mask on q's device.

    torch_refs builds its mask on the CPU, which a CUDA ``masked_fill`` rejects.
    """
    s = (q @ k.transpose(-2, -1)) * scale
    n = s.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


REFS: dict[str, Fn] = _load_refs()


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _liger_op(op: str) -> Fn:
    if not liger_available():
        raise Unavailable("liger_kernel is not installed")
    # The autograd Functions that LigerLayerNorm / LigerSwiGLUMLP run on NVIDIA GPUs (Liger's
    # Triton implementation; 0.8's dispatcher picks it when no optional DSL extra is installed).
    if op == "layer_norm":
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction

        return lambda x, weight, bias: LigerLayerNormFunction.apply(x, weight, bias, 1e-5)
    if op == "rms_norm":
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        # offset 0 and casting_mode "llama" (Liger's defaults) match LlamaRMSNorm, as the ref.
        return lambda x, weight: LigerRMSNormFunction.apply(x, weight, 1e-6)
    if op == "softmax":
        from liger_kernel.ops.softmax import LigerSoftmaxFunction

        return lambda x: LigerSoftmaxFunction.apply(x)
    if op == "swiglu":
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        def swiglu(x, w_gate, w_up, w_down):  # noqa: ANN001, ANN202 - LigerSwiGLUMLP's forward
            return F.linear(LigerSiLUMulFunction.apply(F.linear(x, w_gate), F.linear(x, w_up)),
                            w_down)  # fmt: skip

        return swiglu
    raise Unavailable(f"Liger-Kernel has no '{op}' op")


def _compiled(ref: Fn, mode: str | None) -> Fn:
    import torch._dynamo

    torch._dynamo.reset()  # each peer compiles from scratch, never from an earlier peer's graphs
    return torch.compile(ref, mode=mode, dynamic=False)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125)


def _esperc(kpkg: Path | None) -> Fn:
    import esperc

    if kpkg is None:
        raise RuntimeError("no package was built (see the build note)")
    return esperc.load(kpkg, fallback="error")


@dataclass(frozen=True)
class PeerOptions:
    """Which optional peers run (from the command line)."""

    compile_peers: bool = True
    autotune: tuple[str, ...] = AUTOTUNE_DEFAULT
    skip_note: str = ""  # why optional peers were dropped, when not by a flag (time budget)
    dropped_autotune: tuple[str, ...] = ()  # the --autotune list, when the budget dropped it


def peers_for(spec: Spec, kpkg: Path | None, opts: PeerOptions) -> list[Peer]:
    """The peers of ``spec`` in table order; ``eager`` first (every other is checked against
    the float64 reference, and its error bounds theirs), ``esperc`` last."""
    ref = REFS[spec.name]
    out = [Peer("eager", lambda: ref)]
    if opts.compile_peers:
        out.append(Peer("torch.compile", lambda: _compiled(ref, None), True))
        if spec.name in opts.autotune:
            autotune = "max-autotune-no-cudagraphs"
            out.append(Peer("torch.compile max-autotune", lambda: _compiled(ref, autotune), True))
    if spec.liger:
        out.append(Peer("liger", lambda: _liger_op(spec.liger)))
    if spec.sdpa:
        out.append(Peer("sdpa (flash)", lambda: _sdpa))
    out.append(Peer("esperc", lambda: _esperc(kpkg)))
    return out


def skipped_peers(spec: Spec, opts: PeerOptions) -> list[PeerResult]:
    """Rows for the optional peers that ``opts`` leaves out, so the table says why."""
    rows = []
    if not opts.compile_peers:
        rows.append(
            PeerResult("torch.compile", "skipped", opts.skip_note or "--skip-compile-peers")
        )
    if not opts.compile_peers or spec.name not in opts.autotune:
        why = "--skip-compile-peers" if not opts.compile_peers else "not in --autotune list"
        if opts.skip_note and (not opts.compile_peers or spec.name in opts.dropped_autotune):
            why = opts.skip_note
        rows.append(PeerResult("torch.compile max-autotune", "skipped", why))
    return rows


def upcast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float64 (the inputs of the float64 reference)."""
    return {k: t.double() if t.is_floating_point() else t for k, t in tensors.items()}
