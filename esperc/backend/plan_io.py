"""JSON form of a launch plan (``backend.triton.plan``), as stored in a .kpkg (``plan.json``).

Every plan dataclass is written as an object tagged with its class name; lists read back as
tuples, so ``plan_from_json(plan_to_json(p)) == p``. Only the plan's own classes are accepted
when reading: the JSON is data, never code.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from esperc.backend.triton import plan as P

_CLASSES: dict[str, type] = {
    c.__name__: c
    for c in (P.TensorArg, P.DimArg, P.StrideArg, P.Alloc, P.KernelLaunch, P.ViewOp,
              P.DimBinding, P.Plan)
}  # fmt: skip


class PlanFormatError(ValueError):
    """The stored plan is not a well-formed plan of this version."""


def _encode(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        out = {"__type__": type(x).__name__}
        for f in dataclasses.fields(x):
            out[f.name] = _encode(getattr(x, f.name))
        return out
    if isinstance(x, tuple | list):
        return [_encode(v) for v in x]
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    raise TypeError(f"cannot store {type(x).__name__} in a plan")


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        name = x.get("__type__")
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise PlanFormatError(f"unknown plan object {name!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: _decode(v) for k, v in x.items() if k != "__type__"}
        if not set(kwargs) <= names:
            raise PlanFormatError(f"{name} has unknown fields {sorted(set(kwargs) - names)}")
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise PlanFormatError(f"{name}: {e}") from None
    if isinstance(x, list):
        return tuple(_decode(v) for v in x)
    return x


def plan_to_json(plan: P.Plan) -> str:
    """Deterministic JSON text of a plan (sorted keys, no whitespace variance)."""
    return json.dumps(_encode(plan), sort_keys=True, indent=1)


def plan_from_json(text: str | bytes) -> P.Plan:
    """Read a plan back (raises PlanFormatError on anything but a plan)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise PlanFormatError(f"plan is not JSON: {e}") from None
    plan = _decode(data)
    if not isinstance(plan, P.Plan):
        raise PlanFormatError("stored object is not a Plan")
    return plan
