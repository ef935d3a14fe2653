"""Checks the runtime makes before it trusts a package's content or a call's tensors.

- ``check_content`` (at load): the manifest tables, the plan and the IR agree well enough to be
  run; anything else is a ``PackageContentError`` (a ``KpkgError``, exit status 17), never a
  ``KeyError`` or ``AttributeError`` at the first call.
- ``check_tensors`` (at every call, before the signature guards): every argument is a dense
  tensor with data, all on one device; anything else is a ``GuardError`` naming the argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from esperc.backend.triton.plan import KernelLaunch, Plan, ViewOp
from esperc.ir.graph import Func
from esperc.ir.interpreter import GuardError
from esperc.kpkg import KpkgError


class PackageContentError(KpkgError):
    """The container is intact but its content is not a runnable esperc package."""

    exit_code = 17


def check_content(func: Func, plan: Plan, manifest: Mapping[str, Any], where: str) -> None:
    """Check the parts of a package the runtime reads after loading.

    Args:
        func: the packaged function (parsed from ``ir.eir``).
        plan: the launch plan (parsed from ``plan.json``).
        manifest: the package manifest.
        where: the package's path, for messages.

    Raises:
        PackageContentError: naming the first table, step or value that is malformed.
    """
    kernels = manifest.get("kernels", {})
    if not isinstance(kernels, dict):
        raise PackageContentError(f"{where}: manifest 'kernels' is not a table")
    for name, k in kernels.items():
        ok = isinstance(k, dict) and isinstance(k.get("region"), str)
        if not ok or not isinstance(k.get("validation", {}), dict):
            raise PackageContentError(f"{where}: manifest table kernels.{name} is malformed")
    targets = manifest.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise PackageContentError(f"{where}: manifest 'targets' is not a list of strings")
    if not isinstance(manifest.get("module", ""), str):
        raise PackageContentError(f"{where}: manifest 'module' is not a member name")
    if not isinstance(plan.steps, tuple) or not isinstance(plan.results, tuple):
        raise PackageContentError(f"{where}: plan steps or results are not lists")
    for i, step in enumerate(plan.steps):
        if not isinstance(step, KernelLaunch | ViewOp):
            raise PackageContentError(f"{where}: plan step {i} is a {type(step).__name__}")
        if isinstance(step, KernelLaunch) and not isinstance(step.kernel, str):
            raise PackageContentError(f"{where}: plan step {i} names no kernel")
    if plan.results != func.results:
        raise PackageContentError(
            f"{where}: plan results {list(plan.results)} differ from the IR's {list(func.results)}"
        )


def check_kernels_present(plan: Plan, kernels: Mapping[str, Any], kind: type, where: str) -> None:
    """Every kernel the plan launches is defined by the loaded module, as a ``kind``.

    Args:
        plan: the launch plan.
        kernels: the loaded module's globals.
        kind: the class every launched kernel must be (Triton's ``KernelInterface``).
        where: the package's path, for messages.

    Raises:
        PackageContentError: naming the first missing kernel.
    """
    for step in plan.steps:
        if isinstance(step, KernelLaunch) and not isinstance(kernels.get(step.kernel), kind):
            raise PackageContentError(
                f"{where}: packaged module defines no Triton kernel '{step.kernel}'"
            )


def check_tensors(blueprint: str, tensors: Mapping[str, Any]) -> None:
    """Every argument is a dense (strided) tensor with data, and all are on one device.

    Raises:
        GuardError: naming the argument: not a tensor, a sparse or other layout, on the
            ``meta`` device (no data to compute on), or on a device other than the first one's.
    """
    first: tuple[str, torch.device] | None = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise GuardError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            layout = str(t.layout).removeprefix("torch.")
            raise GuardError(f"{name}: expected a dense (strided) tensor, got layout {layout}")
        if t.device.type == "meta":
            raise GuardError(f"{name}: tensor on the 'meta' device has no data to compute on")
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise GuardError(
                f"{name}: on device '{t.device}', but '{first[0]}' is on '{first[1]}' "
                f"(all tensors of a call to '{blueprint}' must be on one device)"
            )
