"""GPU targets: names (``sm_90``), Triton's ``GPUTarget`` for each, and the local GPU's arch."""

from __future__ import annotations

import functools


def parse_arch(target: str) -> int:
    """``"sm_90"`` -> 90 (``sm_90a`` -> 90).

    Raises:
        ValueError: not of the form ``sm_NN``.
    """
    if not target.startswith("sm_") or not target[3:].rstrip("a").isdigit():
        raise ValueError(f"not a CUDA target: {target!r}")
    return int(target[3:].rstrip("a"))


@functools.cache
def local_arch() -> str | None:
    """The arch of the current CUDA device (``sm_90``), or None without a usable GPU."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"
