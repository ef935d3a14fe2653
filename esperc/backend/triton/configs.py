"""Launch configurations (block sizes, warps, pipelining) and the default heuristic per kernel kind.

A ``Config`` holds the constexpr block sizes of one generated kernel plus ``num_warps`` and
``num_stages``; it prints as the region attribute the smem-plan pass writes
(``BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3``) and parses back. The heuristic
follows the published defaults of Triton's tutorials (matmul: 128x128x64 tiles, GROUP_M=8, 8
warps; flash attention: 128x64 tiles) and PyTorch Inductor's persistent-reduction rule (one tile
per row up to 16K elements, warps scaled with the row length).
"""

from __future__ import annotations

from dataclasses import dataclass

from esperc.backend.triton.common import CodegenError, next_pow2

MAX_PERSISTENT_N = 16384  # a row up to this many elements is reduced in one tile (fp32 regs)
POINTWISE_TILE = 2048  # elements per program of a pointwise kernel


@dataclass(frozen=True, slots=True)
class Config:
    """Block sizes (constexpr kernel parameters, sorted by name) and launch options."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 1

    def __getitem__(self, name: str) -> int:
        return dict(self.blocks)[name]

    def get(self, name: str, default: int) -> int:
        return dict(self.blocks).get(name, default)

    def __str__(self) -> str:
        items = [f"{k}={v}" for k, v in self.blocks]
        items += [f"num_warps={self.num_warps}", f"num_stages={self.num_stages}"]
        return ",".join(items)

    def with_blocks(self, **blocks: int) -> Config:
        merged = dict(self.blocks) | blocks
        return Config(tuple(sorted(merged.items())), self.num_warps, self.num_stages)


def make_config(num_warps: int = 4, num_stages: int = 1, **blocks: int) -> Config:
    return Config(tuple(sorted(blocks.items())), num_warps, num_stages)


def parse_config(text: str) -> Config:
    """Read ``"BLOCK_M=128,BLOCK_N=64,num_warps=4,num_stages=2"`` (the smem-plan attribute).

    Raises:
        CodegenError: a malformed item, or a block size that is not a power of two.
    """
    blocks: dict[str, int] = {}
    warps, stages = 4, 1
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not val.strip().lstrip("-").isdigit():
            raise CodegenError(f"bad config item {item!r} in {text!r}")
        key, v = key.strip(), int(val)
        if key == "num_warps":
            warps = v
        elif key == "num_stages":
            stages = v
        elif key.isupper():
            if v <= 0 or (key.startswith("BLOCK") and v & (v - 1)):
                raise CodegenError(f"config {key}={v} must be a positive power of two")
            blocks[key] = v
        # other keys (e.g. smem bytes) are facts for other passes; ignore them
    return Config(tuple(sorted(blocks.items())), warps, stages)


def row_blocks(config: Config) -> Config:
    """A pointwise/reduction config with ``BLOCK_M``/``BLOCK_N`` (smem-plan may say ``BLOCK``
    for the row length)."""
    blocks = dict(config.blocks)
    if "BLOCK_N" not in blocks and "BLOCK" in blocks:
        blocks["BLOCK_N"] = blocks.pop("BLOCK")
    blocks.setdefault("BLOCK_M", 1)
    return Config(tuple(sorted(blocks.items())), config.num_warps, config.num_stages)


def default_pointwise(rows: int | None, n: int | None, flat: bool) -> Config:
    """Pointwise tile: ``BLOCK_N`` along the contiguous axis, ``BLOCK_M`` rows, ~2K elements.

    ``rows``/``n`` are static sizes or None when dynamic.
    """
    if flat:
        block = min(POINTWISE_TILE, next_pow2(n)) if n else POINTWISE_TILE // 2
        return make_config(num_warps=4 if block >= 512 else 1, BLOCK_N=block)
    bn = min(next_pow2(n), 1024) if n else 128
    bm = max(1, POINTWISE_TILE // bn)
    if rows is not None:
        bm = min(bm, next_pow2(rows))
    return make_config(num_warps=4 if bm * bn >= 512 else 1, BLOCK_M=bm, BLOCK_N=bn)


def default_reduction(rows: int | None, n: int | None, n_max: int) -> Config:
    """Row reduction: one tile per row when it fits ``MAX_PERSISTENT_N``, else a looped form.

    ``n`` is the static row length or None; ``n_max`` its upper bound. Several short rows share a
    program so that each program touches >= 1K elements.
    """
    if n is not None and n <= MAX_PERSISTENT_N:
        bn = next_pow2(n)
    elif n is None and n_max <= 1024:
        bn = next_pow2(n_max)
    else:
        bn = 2048 if n is None else min(4096, next_pow2(n))
    bm = max(1, min(16, 1024 // bn))
    if rows is not None:
        bm = min(bm, next_pow2(rows))
    tile = bm * bn
    warps = (
        1 if tile <= 256 else 2 if tile <= 512 else 4 if tile <= 2048 else 8 if tile <= 8192 else 16
    )
    return make_config(num_warps=warps, BLOCK_M=bm, BLOCK_N=bn)


def default_matmul(m: int | None, n: int, k: int, dtype_bytes: int) -> Config:
    """Tensor-core tile: 128x128x64 with 8 warps and 3 stages, shrunk for small N/K/M."""
    bm = 128 if m is None or m >= 128 else max(16, next_pow2(m))
    bn = min(128, max(16, next_pow2(n)))
    bk = min(64 if dtype_bytes <= 2 else 32, max(16, next_pow2(k)))
    warps = 8 if bm * bn >= 128 * 128 else 4
    stages = 3 if bk * (bm + bn) * dtype_bytes <= 48 * 1024 else 2
    return make_config(num_warps=warps, num_stages=stages, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       GROUP_M=8)  # fmt: skip


def default_attention(head_dim: int) -> Config:
    """FlashAttention-2 forward tile. Measured on an H200 (Triton 3.6, bf16, causal, S=4096,
    d=64): 64x64/4 warps/3 stages 356 TFLOP/s, 128x64/8 warps 328, 128x128/8 warps 283."""
    if head_dim <= 64:
        return make_config(num_warps=4, num_stages=3, BLOCK_M=64, BLOCK_N=64)
    return make_config(num_warps=8, num_stages=3, BLOCK_M=128, BLOCK_N=64)


def require_blocks(config: Config, names: tuple[str, ...], kernel: str) -> None:
    """Raises CodegenError when ``config`` lacks one of the block sizes a template needs."""
    missing = [n for n in names if n not in dict(config.blocks)]
    if missing:
        raise CodegenError(f"config {config} of kernel {kernel} lacks {missing}")
