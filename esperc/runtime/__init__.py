"""Runtime: load a .kpkg, check guards at every call, launch packaged kernels (no compile).

``load`` is imported lazily so that ``esperc.runtime.cubin`` stays importable without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load"]


def load(path: Any, fallback: str = "eager") -> Any:
    """Load a package; see ``esperc.runtime.artifact.load``."""
    from esperc.runtime.artifact import load as _load

    return _load(path, fallback=fallback)
