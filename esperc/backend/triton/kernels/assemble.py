"""What every kernel template returns, and how its pieces are assembled.

``Emitted`` is a template's output: the kernel's source, its ``GeneratedKernel`` (signature,
constexprs, config, plan step) and launcher-side views; a region with column reductions also
returns its finishing kernel (``kernels/colsum.py``). ``finish`` builds all of that from a
template's parameters, outputs and body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from esperc.backend.triton.common import Writer, kernel_header
from esperc.backend.triton.configs import Config
from esperc.backend.triton.plan import Alloc, GeneratedKernel, KernelLaunch, ViewOp
from esperc.backend.triton.regions import Params, RegionInfo, output_view
from esperc.backend.triton.tiles import View
from esperc.ir.graph import Node


@dataclass(frozen=True)
class Emitted:
    """A template's output: the kernel's source text, its description, launcher-side views."""

    source: str
    kernel: GeneratedKernel
    views: tuple[ViewOp, ...] = ()
    then: Emitted | None = None  # a kernel launched right after this one (a finishing kernel)

    def all(self) -> list[Emitted]:
        """This kernel and the ones launched after it, in launch order."""
        return [self] + (self.then.all() if self.then is not None else [])


def outputs(info: RegionInfo, views: Mapping[str, View], params: Params,
            exclude: frozenset[str] | set[str] = frozenset()):  # noqa: ANN201  # fmt: skip
    """Output views the kernel stores, and view-ops for outputs that are views of inputs
    (``exclude``: outputs another kernel of the region stores, e.g. column reductions)."""
    outs: dict[str, View] = {}
    extra: list[ViewOp] = []
    for name in info.outputs:
        if name in exclude:
            continue
        if name in views:  # a reshape/permute of an input used outside: the launcher does it
            n = info.node(name)
            extra.append(ViewOp(info.region.name, name, n.op.value, n.operands, view_attrs(n)))
        else:
            outs[name] = output_view(name, info.types[name], params)
    return outs, extra


def view_attrs(n: Node) -> tuple[tuple[str, object], ...]:
    return tuple((k, tuple(str(d) for d in v) if k == "shape" else v) for k, v in n.attrs)


def allocs(info: RegionInfo, outs: Mapping[str, View]) -> tuple[Alloc, ...]:
    return tuple(
        Alloc(n, info.types[n].dtype.value, tuple(str(d) for d in info.types[n].shape))
        for n in outs
    )


def finish(info: RegionInfo, params: Params, outs: Mapping[str, View], extra: list[ViewOp],
           w: Writer, constexprs: list[str], cvals: dict, cfg: Config, grid: tuple,
           requires: list[str], doc: str, *, scratch: tuple[Alloc, ...] = (),
           name: str | None = None, finishes: str = "") -> Emitted:  # fmt: skip
    """Assemble the kernel's source and its description (shared by the templates).

    ``scratch``: allocations besides the outputs (partials buffers); ``name``/``finishes``: a
    second kernel of the region (default: the region's kernel ``info.kernel``).
    """
    name = name or info.kernel
    head = kernel_header(name, params.names, constexprs, doc)
    source = "\n".join(head) + "\n" + w.text()
    launch = KernelLaunch(
        kernel=name,
        region=info.region.name,
        args=tuple(params.args),
        grid=grid,
        constexprs=tuple(cvals.items()),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        allocs=allocs(info, outs) + scratch,
    )
    kernel = GeneratedKernel(
        name=name,
        region=info.region.name,
        kind=info.kind,
        signature=dict((n, params.types[n]) for n in params.names),
        constexprs=dict(cvals),
        config=cfg,
        launch=launch,
        requires=tuple(requires),
        divisible_by_16=tuple(n for n in params.names if params.types[n].startswith("*")),
        finishes=finishes,
    )
    return Emitted(source, kernel, tuple(extra))
