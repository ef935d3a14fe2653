"""Training packages under ``torch.autograd``: the packaged forward and backward kernels.

``Artifact.__call__`` comes here when the package has a ``[backward]`` part, grad mode is on and
an argument requires grad. ``EsperFunction.forward`` runs the extended forward plan (original
results, then the saved values) and keeps the saved values with ``ctx.save_for_backward``;
``backward`` runs the backward plan on ``(*saved, *grad_outputs)`` and returns one gradient per
argument in declaration order (``None`` for an argument that is not differentiated or does not
require grad). Kernels whose results no requested gradient needs are not launched: the backward
plan is pruned per set of requested gradients (cached). Double backward is not supported:
``once_differentiable`` makes it raise.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from esperc.backend.plan_io import PlanFormatError, plan_from_json
from esperc.backend.triton.plan import KernelLaunch, Plan, StrideArg, TensorArg, ViewOp
from esperc.ir.parser import parse_func
from esperc.kpkg import KpkgError
from esperc.runtime.checks import PackageContentError, check_content


def call_with_grad(art: Any, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run ``art`` (a training ``Artifact``) recording one autograd node; returns the
    blueprint's results (saved values stay inside the node)."""
    names = [a.name for a in art.func.args]
    outs = EsperFunction.apply(art, names, *(tensors[n] for n in names))
    return outs if isinstance(outs, tuple) else (outs,)  # one result comes back bare


class EsperFunction(torch.autograd.Function):
    """The packaged forward and backward of one call (``apply(art, names, *tensors)``)."""

    @staticmethod
    def forward(ctx: Any, art: Any, names: list[str], *tensors: torch.Tensor) -> Any:
        outs = art.run_all({n: t.detach() for n, t in zip(names, tensors)})
        n = art.num_outputs
        results, saved = outs[:n], outs[n:]
        ctx.art, ctx.names = art, names
        ctx.save_for_backward(*saved)
        ctx.result_meta = [(r.shape, r.dtype, r.device) for r in results]
        ctx.mark_non_differentiable(*(r for r in results if not r.is_floating_point()))
        return results if len(results) > 1 else results[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        art, names = ctx.art, ctx.names
        table = art.manifest["backward"]
        wrt = table["wrt"]
        needs = dict(zip(names, ctx.needs_input_grad[2:]))
        wanted = tuple(w for w in wrt if needs.get(w))
        none: list[torch.Tensor | None] = [None] * (2 + len(names))
        if not wanted:
            return tuple(none)
        bw = backward_artifact(art, wanted)
        gouts = [
            torch.zeros(s, dtype=dt, device=dev) if g is None else g.contiguous()
            for g, (s, dt, dev) in zip(grads, ctx.result_meta)
        ]
        args = dict(zip(table["saved"], ctx.saved_tensors))
        args.update(zip(table["grad_outputs"], gouts))
        got = dict(zip(wanted, bw.run_all(args)))
        index = {n: i for i, n in enumerate(names)}
        for w, g in got.items():
            none[2 + index[w]] = g
        return tuple(none)


def backward_artifact(art: Any, wanted: tuple[str, ...]) -> Any:
    """An ``Artifact`` running the packaged backward, computing only the gradients of
    ``wanted`` (a subsequence of ``[backward].wrt``); cached on ``art``.

    Raises:
        PackageContentError: the backward members are missing or malformed.
    """
    cache = art._backward  # noqa: SLF001 - the artifact's cache for this module
    if wanted in cache:
        return cache[wanted]
    full = cache.get(None)
    if full is None:
        full = cache[None] = _load_backward(art)
    table = art.manifest["backward"]
    results = tuple(full.func.results[table["wrt"].index(w)] for w in wanted)
    plan = prune_plan(full.plan, results)
    cache[wanted] = dataclasses.replace(full, func=full.func.with_(results=results), plan=plan)
    return cache[wanted]


def _load_backward(art: Any) -> Any:
    from esperc.runtime.artifact import Artifact

    pkg, table, where = art.package, art.manifest["backward"], art.package.label
    try:
        func = parse_func(pkg.member(table["ir"]).decode("utf-8"), "backward.eir")
        plan = plan_from_json(pkg.member(table["plan"]))
        manifest = {k: v for k, v in art.manifest.items() if k != "backward"}
        manifest.update(module=table["module"], kernels=table["kernels"])
    except KpkgError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile or damaged backward members
        if isinstance(e, KeyError | TypeError | UnicodeDecodeError | PlanFormatError):
            raise PackageContentError(f"{where}: bad backward part ({e})") from None
        if isinstance(e, json.JSONDecodeError):
            raise PackageContentError(f"{where}: bad backward plan ({e})") from None
        raise PackageContentError(f"{where}: backward IR does not parse ({e})") from None
    check_content(func, plan, manifest, where)
    return Artifact(func.name, func, plan, manifest, pkg, art.fallback)


def prune_plan(plan: Plan, results: Iterable[str]) -> Plan:
    """``plan`` without the steps no value of ``results`` depends on (results reordered)."""
    results = tuple(results)
    live = set(results)
    kept = []
    for step in reversed(plan.steps):
        if isinstance(step, ViewOp):
            if step.result in live:
                live.update(step.operands)
                kept.append(step)
            continue
        assert isinstance(step, KernelLaunch)
        outs = {a.value for a in step.allocs}
        if outs & live:
            live.update(a.value for a in step.args if isinstance(a, TensorArg | StrideArg))
            kept.append(step)
    return dataclasses.replace(plan, steps=tuple(reversed(kept)), results=results)
