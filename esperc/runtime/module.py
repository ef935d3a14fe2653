"""``Artifact.as_module``: a loaded package as an ``nn.Module`` that owns its params."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from esperc.ir.reference import torch_dtype
from esperc.ir.types import SymDim


class BlueprintModule(torch.nn.Module):
    """Calls the artifact with the inputs given to ``forward`` and the params it owns.

    Params missing from ``params`` are created as zeros of their declared shape and dtype (all
    param dims are static), to be filled with ``load_state_dict``.
    """

    def __init__(self, artifact: Any, params: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.artifact = artifact
        self._input_names = [a.name for a in artifact.func.inputs]
        for a in artifact.func.params:
            if a.name in params:
                value = params[a.name].detach().clone()
            else:
                if any(isinstance(d, SymDim) for d in a.type.shape):
                    raise ValueError(f"param '{a.name}' has a dynamic shape; pass it explicitly")
                value = torch.zeros(a.type.shape, dtype=torch_dtype(a.type.dtype))
            self.register_parameter(a.name, torch.nn.Parameter(value))

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> Any:
        args = dict(zip(self._input_names, inputs))
        args.update(named)
        args.update({n: p for n, p in self.named_parameters()})
        return self.artifact(**args)

    def extra_repr(self) -> str:
        return f"blueprint={self.artifact.name!r}"
