"""``esperc.load``: a .kpkg becomes a callable that checks its guards and launches its kernels.

Per call, the launcher is chosen by where the tensors are:

- CUDA tensors on a GPU whose arch has cubins in the package: the cubins, through the CUDA driver
  (no Triton import, no compile, no Triton cache entry);
- CPU tensors: the packaged Triton source in Triton's interpreter;
- otherwise (a GPU arch the package lacks, Triton missing on a CPU): the eager PyTorch reference,
  with one warning that says why (``fallback="eager"``, the default), or ``FallbackError``
  (``fallback="error"``).

Kernels whose compile-time validation failed always run as eager regions, with one warning.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esperc.backend.plan_io import PlanFormatError, plan_from_json
from esperc.backend.triton.plan import Plan
from esperc.ir.graph import Func
from esperc.ir.interpreter import GuardError, check_guards
from esperc.ir.parser import parse_func
from esperc.kpkg import Kpkg, KpkgError, read_kpkg
from esperc.runtime.checks import (
    PackageContentError,
    check_content,
    check_kernels_present,
    check_tensors,
)
from esperc.runtime.executor import (
    CubinKernel,
    JitBound,
    enter_interpreter_fixes,
    execute,
    load_interpreted,
    plan_constants,
)
from esperc.runtime.launch_list import MAX_SIGNATURES, LaunchList, Signature, record, signature
from esperc.runtime.packaged import (
    bucket_of,
    compiled_kernel_from_manifest,
    dispatch_plan,
    has_variants,
)


class FallbackError(RuntimeError):
    """No packaged kernel can run these tensors and ``fallback="error"`` was asked for."""


class EsperWarning(UserWarning):
    """Warnings from the esperc runtime (fallbacks), filterable as one category."""


@dataclass
class Artifact:
    """A loaded package: call it with inputs and params, by name or in declaration order.

    Attributes:
        name: the blueprint's name.
        func: the packaged function (optimised IR with kernel regions).
        plan: the launch plan.
        manifest: the package manifest (a dict, as stored).
        fallback: "eager" (warn once and run the reference) or "error" (raise FallbackError).
    """

    name: str
    func: Func
    plan: Plan
    manifest: dict[str, Any]
    package: Kpkg = field(repr=False)
    fallback: str = "eager"
    _sources: str = field(default="", repr=False)
    _kernels: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)
    # per-plan caches: fresh in a ``dataclasses.replace`` copy (a pruned backward plan)
    _dispatched: dict[tuple[str, str], tuple[Plan, dict]] = field(
        default_factory=dict, init=False, repr=False
    )
    _backward: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)  # autograd
    _lists: dict[Signature, LaunchList] = field(default_factory=dict, init=False, repr=False)
    _constants: dict[Any, dict] = field(default_factory=dict, init=False, repr=False)

    # ---------------------------------------------------------------- calling

    def bind(self, args: Sequence[torch.Tensor], kwargs: Mapping[str, torch.Tensor]) -> dict:
        """Arguments by name from positional (declaration order) and keyword tensors.

        Raises:
            GuardError: a missing, unknown or doubly given argument.
        """
        names = [a.name for a in self.func.args]
        if len(args) > len(names):
            raise GuardError(f"'{self.name}' takes {len(names)} tensors, got {len(args)}")
        out = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise GuardError(f"'{self.name}' has no input or param '{k}'")
            if k in out:
                raise GuardError(f"'{k}' given both by position and by name")
            out[k] = v
        missing = [n for n in names if n not in out]
        if missing:
            raise GuardError(f"'{self.name}' is missing {', '.join(missing)}")
        return out

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        """Run the blueprint; returns one tensor, or a tuple for several results.

        Raises:
            GuardError: a guard failed (dtype, rank, dim range, ``require``, device).
            FallbackError: no packaged kernel fits and ``fallback="error"``.
        """
        tensors = self.bind(args, kwargs)
        if "backward" in self.manifest and _wants_grad(tensors):
            from esperc.runtime.autograd import call_with_grad

            outs = call_with_grad(self, tensors)
        else:
            outs = self.run_all(tensors)[: self.num_outputs]
        return outs[0] if len(outs) == 1 else outs

    @property
    def launch_lists(self) -> int:
        """How many call signatures have a resolved launch list (``runtime.launch_list``)."""
        return len(self._lists)

    @property
    def num_outputs(self) -> int:
        """The blueprint's result count (a training package's forward returns saved values
        after them)."""
        return int(self.manifest.get("backward", {}).get("num_outputs", len(self.plan.results)))

    def run_all(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Every result of the packaged function (bound arguments by name), saved values too.

        A call whose signature (names, shapes, dtypes, devices of dense contiguous aligned
        tensors) was seen before replays its ``LaunchList``: the guards passed for that
        signature, and grids, scalars and allocation shapes are functions of it.
        """
        key = signature(tensors)
        if key is not None:
            hit = self._lists.get(key)
            if hit is not None:
                return hit.run(tensors)
        check_tensors(self.name, tensors)
        dims = check_guards(self.func, tensors)
        tensors = _normalise(tensors)
        kernels, eager_regions, mode = self._launchers(tensors)
        plan = self.plan
        if mode == "cubin" and has_variants(self.manifest):
            plan, kernels = self._variants(kernels, dims)
        if mode == "eager":
            from esperc.ir.interpreter import run_func

            return run_func(self.func, tensors)
        constants = self._device_constants(next(iter(tensors.values())).device)
        if key is None or eager_regions:
            env = execute(self.func, plan, tensors, dims, kernels, eager_regions, constants)
        else:
            env, resolved = self._record(plan, tensors, dims, kernels, constants, mode)
            if resolved is not None:
                if len(self._lists) >= MAX_SIGNATURES:
                    self._lists.pop(next(iter(self._lists)))
                self._lists[key] = resolved
        return tuple(env[r] for r in plan.results)

    def _device_constants(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._constants:
            self._constants[device] = plan_constants(self.plan, device)
        return self._constants[device]

    def _record(
        self, plan: Plan, tensors: dict, dims: dict, kernels: dict, constants: dict, mode: str
    ) -> tuple[dict[str, torch.Tensor], LaunchList | None]:
        """Execute ``plan`` and resolve it into a launch list for this call's signature."""

        def run(p: Plan, env: dict, d: dict, k: dict, c: dict) -> dict[str, torch.Tensor]:
            return execute(self.func, p, env, d, k, frozenset(), c)

        if mode == "interpreter":
            return record(plan, tensors, dims, kernels, constants, run,
                          bind=JitBound, enter=enter_interpreter_fixes)  # fmt: skip
        device = next(iter(tensors.values())).device
        index = device.index if device.index is not None else torch.cuda.current_device()
        some = next(iter(kernels.values()), None)
        if some is None:
            return execute(self.func, plan, tensors, dims, kernels, frozenset(), constants), None
        rt = some.runtime
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # noqa: SLF001 - as Inductor
        if raw is not None:
            stream_of = functools.partial(raw, index)
        else:  # pragma: no cover - older PyTorch builds
            stream_of = lambda: torch.cuda.current_stream(index).cuda_stream  # noqa: E731

        def bind(k: CubinKernel, grid: tuple, args: tuple, _kw: dict) -> Any:
            return rt.bind(k.compiled, grid, args, index)

        return record(plan, tensors, dims, kernels, constants, run, bind=bind,
                      stream_of=stream_of, enter=functools.partial(rt.enter, index))  # fmt: skip

    def as_module(self, params: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """An ``nn.Module`` owning the params (``params`` by name, or zeros to be loaded later)."""
        from esperc.runtime.module import BlueprintModule

        return BlueprintModule(self, params or {})

    # ---------------------------------------------------------------- launchers

    @functools.cached_property
    def _failed_regions(self) -> frozenset[str]:
        """Regions whose kernels failed validation at compile time (read once, not per call)."""
        return frozenset(
            k["region"] for k in self.manifest.get("kernels", {}).values()
            if k.get("validation", {}).get("status") == "fail"
        )  # fmt: skip

    def _launchers(self, tensors: Mapping[str, torch.Tensor]) -> tuple[dict, frozenset, str]:
        device = next(iter(tensors.values())).device
        failed = self._failed_regions
        if failed:
            self._warn_once(
                "failed", f"{self.name}: kernels of regions {sorted(failed)} failed validation "
                "at compile time; running those regions with the eager reference",
            )  # fmt: skip
        if device.type == "cuda":
            arch = "sm_{}{}".format(*torch.cuda.get_device_capability(device))
            if arch in self.manifest.get("targets", []):
                return self._cubins(arch), failed, "cubin"
            return (
                {},
                failed,
                self._fallback(
                    f"no cubins for {arch} in the package (targets: {self.manifest.get('targets')})"
                ),
            )
        if device.type == "cpu":
            try:
                return self._interpreted(), failed, "interpreter"
            except ImportError as e:  # Triton is optional on CPU-only consumers
                return {}, failed, self._fallback(f"Triton is not importable ({e})")
        return {}, failed, self._fallback(f"device '{device.type}' has no packaged kernels")

    def _fallback(self, why: str) -> str:
        if self.fallback == "error":
            raise FallbackError(f"{self.name}: {why}")
        self._warn_once(why, f"{self.name}: {why}; running the eager PyTorch reference")
        return "eager"

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, EsperWarning, stacklevel=4)

    def _cubins(self, arch: str) -> dict[str, Any]:
        if arch not in self._kernels:
            from esperc.runtime.cubin import default_runtime

            rt = default_runtime()
            try:
                self._kernels[arch] = {
                    name: CubinKernel(
                        compiled_kernel_from_manifest(self.package, name, k, arch), rt
                    )
                    for name, k in self.manifest.get("kernels", {}).items()
                }
            except KpkgError:
                raise
            except (KeyError, TypeError, ValueError) as e:  # a malformed kernels.<k>.targets table
                raise PackageContentError(
                    f"{self.package.label}: no usable {arch} kernel table ({type(e).__name__}: {e})"
                ) from None
        return self._kernels[arch]

    def _variants(self, kernels: dict[str, Any], dims: Mapping[str, int]) -> tuple[Plan, dict]:
        """Autotuned packages: the plan and cubins of the variants the dispatch tables pick for
        these dims, cached per (arch, shape bucket): one dict lookup per call after the first."""
        some = next(iter(kernels.values()), None)
        arch = some.compiled.target if some is not None else ""
        key = (arch, bucket_of(dims, dims))
        hit = self._dispatched.get(key)
        if hit is None:
            rt = some.runtime if some is not None else None
            try:
                hit = dispatch_plan(self.package, self.manifest, self.plan, arch, dims, kernels,
                                    lambda ck: CubinKernel(ck, rt))  # fmt: skip
            except KpkgError:
                raise
            except (KeyError, TypeError, ValueError, AttributeError) as e:  # a malformed table
                raise PackageContentError(
                    f"{self.package.label}: bad dispatch or variant table ({type(e).__name__}: {e})"
                ) from None
            self._dispatched[key] = hit
        return hit

    def _interpreted(self) -> dict[str, Any]:
        if "interpreter" not in self._kernels:
            where = self.package.label
            try:
                source = self.package.member(self.manifest["module"]).decode("utf-8")
            except KpkgError:
                raise
            except (KeyError, UnicodeDecodeError) as e:
                raise PackageContentError(f"{where}: no packaged Triton module ({e})") from None
            try:
                kernels = load_interpreted(source)
            except ImportError:
                raise  # Triton missing: the caller falls back
            except Exception as e:  # noqa: BLE001 - packaged source that fails to load is bad content
                raise PackageContentError(
                    f"{where}: packaged Triton module does not load ({type(e).__name__}: {e})"
                ) from None
            from triton.runtime.jit import KernelInterface

            check_kernels_present(self.plan, kernels, KernelInterface, where)
            self._kernels["interpreter"] = kernels
        return self._kernels["interpreter"]


def _wants_grad(tensors: Mapping[str, torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors.values()
    )


def _normalise(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inputs the kernels can read: 16-byte aligned (misaligned views are copied)."""
    out = {}
    for k, t in tensors.items():
        if t.numel() and t.data_ptr() % 16:
            t = t.clone()
        out[k] = t
    return out


def load(path: str | Path | bytes, fallback: str = "eager") -> Artifact:
    """Load a .kpkg and return its callable ``Artifact``; nothing is compiled.

    Args:
        path: the package file (or its bytes).
        fallback: "eager" (default) or "error"; see ``Artifact``.

    Raises:
        KpkgError: the file is damaged or not a package (a subclass names the problem); every
            member is verified against its SHA-256 before use.
        ValueError: an unknown ``fallback``.
    """
    if fallback not in ("eager", "error"):
        raise ValueError(f"fallback must be 'eager' or 'error', not {fallback!r}")
    pkg = read_kpkg(path, verify=True)
    m, where = pkg.manifest, pkg.label  # the label, not ``path``: that may be the file's bytes
    try:
        ir_text = pkg.member(m["blueprint"]["ir"]).decode("utf-8")
        plan = plan_from_json(pkg.member(m["plan"]))
    except KpkgError:
        raise  # a missing or misnamed member says so itself
    except (KeyError, TypeError, UnicodeDecodeError, PlanFormatError, json.JSONDecodeError) as e:
        raise PackageContentError(f"{where}: not a runnable esperc package ({e})") from None
    try:
        func = parse_func(ir_text, "ir.eir")
    except Exception as e:  # noqa: BLE001 - a DiagnosticError (or worse) from hostile IR text
        raise PackageContentError(f"{where}: packaged IR does not parse ({e})") from None
    check_content(func, plan, m, where)
    return Artifact(m["blueprint"]["name"], func, plan, m, pkg, fallback)
