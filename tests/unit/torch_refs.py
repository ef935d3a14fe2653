"""Independent plain-PyTorch reference implementations of every sample in ``samples/``.

Each function is written directly against ``torch`` from the sample's math, never from esperc
code, so tests can compare compiled blueprints against it. Conventions:

* A function has the blueprint's name and takes its inputs and params by the names the sample
  declares (call it with keyword arguments). Attrs are keyword-only arguments whose defaults
  equal the sample's declared defaults.
* It computes in the dtype PyTorch eager uses for the written expression (bf16 stays bf16
  unless the sample casts), and returns a tensor, or a tuple for a tuple ``return``.
* Dimension sizes are read from the argument shapes.

``SMALL_DIMS`` gives small (mostly odd) values for each sample's dynamic dims, for fast CPU and
Triton-interpreter tests; static dims keep their declared sizes. ``ATTRS`` gives non-default
attr values (pass them to the compiler as ``-D name=value`` and to the reference as keywords).
``INT_INPUT_BOUNDS`` gives the half-open value range ``[lo, hi)`` that integer inputs must be
drawn from for the reference to be defined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def residual_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    eps: float = 1e-5,
) -> Tensor:
    """Post-LN residual MLP. x: [B, D]; w1: [H, D]; w2: [D, H]. Returns [B, D], x's dtype."""
    h = F.gelu(F.linear(x, w1, b1))
    y = x + F.linear(h, w2, b2)
    return F.layer_norm(y, (y.shape[-1],), g, beta, eps)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, *, eps: float = 1e-5) -> Tensor:
    """torch.nn.LayerNorm over the last axis. x: [N, D]; weight, bias: [D]."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: Tensor, weight: Tensor, *, eps: float = 1e-6) -> Tensor:
    """LLaMA RMSNorm: f32 statistics, cast back to bf16, then weight. x: [N, D]; weight: [D]."""
    xf = x.to(torch.float32)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * y.to(torch.bfloat16)


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis. x: [N, D]."""
    return torch.softmax(x, dim=-1)


def bias_gelu_residual(x: Tensor, residual: Tensor, bias: Tensor) -> Tensor:
    """residual + tanh-gelu(x + bias), Megatron-LM's bias_gelu formula. x, residual: [N, D]."""
    h = bias + x
    gelu = h * 0.5 * (1.0 + torch.tanh(0.79788456 * h * (1.0 + 0.044715 * h * h)))
    return residual + gelu


def swiglu_mlp(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """LLaMA MLP. x: [T, D]; w_gate, w_up: [H, D]; w_down: [D, H]. Returns [T, D]."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def lora_adapter(x: Tensor, lora_a: Tensor, lora_b: Tensor, *, scale: float = 2.0) -> Tensor:
    """x + scale * (x A^T) B^T. x: [B, S, D]; lora_a: [R, D]; lora_b: [D, R]."""
    # '*' and '@' share a precedence level and associate left, as in the sample.
    return x + (scale * (x @ lora_a.T)) @ lora_b.T


def causal_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float = 0.125) -> Tensor:
    """Naive causal attention. q, k, v: [B, H, S, d]. Returns [B, H, S, d]."""
    s = (q @ k.transpose(-2, -1)) * scale
    n = s.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=s.device).tril()
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


_MHA_HEADS = 4  # the sample's static dim H


def multi_head_attention(
    x: Tensor,
    w_q: Tensor,
    b_q: Tensor,
    w_k: Tensor,
    b_k: Tensor,
    w_v: Tensor,
    b_v: Tensor,
    w_o: Tensor,
    b_o: Tensor,
    *,
    scale: float = 0.125,
    causal: bool = False,
) -> Tensor:
    """Self-attention with projections. x: [B, S, D]; w_*: [D, D]; b_*: [D]. Returns [B, S, D]."""
    heads = _MHA_HEADS
    b, n, d = x.shape

    def split(t: Tensor) -> Tensor:
        return t.view(b, n, heads, d // heads).transpose(1, 2)

    q = split(F.linear(x, w_q, b_q))
    k = split(F.linear(x, w_k, b_k))
    v = split(F.linear(x, w_v, b_v))
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        allowed = torch.ones(n, n, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~allowed, float("-inf"))
    o = torch.softmax(s, dim=-1) @ v
    o = o.transpose(1, 2).reshape(b, n, d)
    return F.linear(o, w_o, b_o)


def gated_residual(
    x: Tensor,
    use_gate: Tensor,
    w2: Tensor,
    b2: Tensor,
    w1: Tensor,
    b1: Tensor,
    w4: Tensor,
    b4: Tensor,
    w5: Tensor,
    b5: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    eps: float = 1e-5,
) -> Tensor:
    """TFT gated residual network. x: [N, D]; use_gate: bool[] (rank 0). Returns [N, D]."""
    eta2 = F.elu(F.linear(x, w2, b2))
    eta1 = F.linear(eta2, w1, b1)
    if bool(use_gate):
        y = x + torch.sigmoid(F.linear(eta1, w4, b4)) * F.linear(eta1, w5, b5)
    else:
        y = x + eta1
    return F.layer_norm(y, (y.shape[-1],), g, beta, eps)


def _rotate_half(t: Tensor) -> Tensor:
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """LLaMA apply_rotary_pos_emb. q, k: [B, H, S, Dh]; cos, sin: [S, Dh]."""
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def geglu(x: Tensor, w_proj: Tensor, b_proj: Tensor) -> Tensor:
    """diffusers GEGLU. x: [N, D]; w_proj: [2H, D]; b_proj: [2H]. Returns [N, H]."""
    hidden, gate = F.linear(x, w_proj, b_proj).chunk(2, dim=-1)
    return hidden * F.gelu(gate)


def adaln_modulate(
    x: Tensor, c: Tensor, w_ada: Tensor, b_ada: Tensor, *, eps: float = 1e-6
) -> Tensor:
    """DiT adaLN modulate. x: [B, T, D]; c: [B, D]; w_ada: [2D, D]. Returns [B, T, D]."""
    shift, scale = F.linear(F.silu(c), w_ada, b_ada).chunk(2, dim=-1)
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def squeeze_excite(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """SE channel gate. x: f16[B, C, H, W]; w1: [C/16, C]; w2: [C, C/16]."""
    s = x.mean(dim=(2, 3))
    gate = torch.sigmoid(F.linear(F.relu(F.linear(s, w1, b1)), w2, b2))
    return x * gate[:, :, None, None]


def cross_entropy(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Token cross-entropy in f32. logits: bf16[N, V]; target: i64[N] in [0, V).

    Returns (f32[] mean loss, f32[N] per-token loss).
    """
    nll = F.cross_entropy(logits.to(torch.float32), target, reduction="none")
    return nll.mean(), nll


def tiny_adapter(
    x: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    *,
    eps: float = 1e-5,
) -> Tensor:
    """Pre-LN residual adapter in f32: x + W2 gelu(W1 LN(x) + b1) + b2. x: [B, 32]."""
    h = F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps)
    return x + F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2)


REFS: dict[str, Callable[..., Any]] = {
    "residual_mlp": residual_mlp,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "softmax": softmax,
    "bias_gelu_residual": bias_gelu_residual,
    "swiglu_mlp": swiglu_mlp,
    "lora_adapter": lora_adapter,
    "causal_attention": causal_attention,
    "multi_head_attention": multi_head_attention,
    "gated_residual": gated_residual,
    "rope": rope,
    "geglu": geglu,
    "adaln_modulate": adaln_modulate,
    "squeeze_excite": squeeze_excite,
    "cross_entropy": cross_entropy,
    "tiny_adapter": tiny_adapter,
}

SMALL_DIMS: dict[str, dict[str, int]] = {
    "residual_mlp": {"B": 3},
    "layer_norm": {"N": 5},
    "rms_norm": {"N": 5},
    "softmax": {"N": 7},
    "bias_gelu_residual": {"N": 5},
    "swiglu_mlp": {"T": 3},
    "lora_adapter": {"B": 2, "S": 7},
    "causal_attention": {"B": 2, "S": 37},
    "multi_head_attention": {"B": 2, "S": 11},
    "gated_residual": {"N": 9},
    "rope": {"B": 2, "S": 13},
    "geglu": {"N": 7},
    "adaln_modulate": {"B": 2, "T": 9},
    "squeeze_excite": {"B": 2, "H": 5, "W": 7},
    "cross_entropy": {"N": 11},
    "tiny_adapter": {"B": 5},
}

ATTRS: dict[str, dict[str, float | int | bool]] = {
    "residual_mlp": {"eps": 1e-3},
    "layer_norm": {"eps": 1e-3},
    "rms_norm": {"eps": 1e-3},
    "lora_adapter": {"scale": 0.5},
    "causal_attention": {"scale": 0.25},
    "multi_head_attention": {"causal": True},
    "adaln_modulate": {"eps": 1e-3},
    "tiny_adapter": {"eps": 1e-3},
}

INT_INPUT_BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "cross_entropy": {"target": (0, 4096)},
}
