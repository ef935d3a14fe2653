"""esperc: a compiler from neural-network blueprints (.esp) to autotuned Triton kernels.

The pipeline, one subpackage a stage: ``frontend`` (parse, check, lower) -> ``ir`` (SSA graph IR)
-> ``middle`` (passes) -> ``backend`` (Triton codegen, AOT cubins) -> ``kpkg`` (the artifact) ->
``runtime`` (load, guards, launch). ``esperc.load`` is the training-side entry point.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path, **kwargs):  # noqa: ANN001, ANN201 - thin lazy re-export, documented at its source
    """Load a ``.kpkg`` artifact; see ``esperc.runtime.load`` for arguments and errors."""
    from esperc.runtime import load as _load

    return _load(path, **kwargs)
