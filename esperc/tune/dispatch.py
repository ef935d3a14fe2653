"""Dispatch tables: per kernel, shape bucket of its dynamic dims -> the config that won there.

A kernel whose winners differ across buckets ships one cubin per distinct winning config (a
*variant*); the runtime picks the variant by the bucket of the call's dims
(``runtime.packaged.select_variant``: a dict lookup, the nearest tuned bucket for an untuned
one). The default variant (``v0``) is the winner of the largest tuned bucket: it is what the
package's plan and Triton module hold, so CPU (interpreter) runs and readers that ignore
dispatch tables still get a tuned kernel.

Manifest tables (see docs/autotune.md)::

    [kernels.<k>.dispatch]          dims, default, buckets.<bucket> = {variant, config, p50_ms,
                                    p95_ms, status}
    [kernels.<k>.variants.<v>]      config, targets.<arch> (the cubin's launch facts)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from esperc.backend.triton.configs import Config
from esperc.runtime.packaged import bucket_of, select_variant
from esperc.tune.perfdb import Row, parse_bucket
from esperc.tune.space import config_dict, config_key


@dataclass(frozen=True)
class Entry:
    """One bucket's winner. Times in ms (None when not measured: an untuned package)."""

    bucket: str
    config: Config
    p50_ms: float | None = None
    p95_ms: float | None = None
    status: str = "ok"  # "ok" (measured) or "untuned" (picked by the cost model)
    predicted_ms: float | None = None
    margin: float | None = None  # runner-up's median / winner's median - 1
    shape: tuple[tuple[str, int], ...] = ()  # the dims it was measured (or modelled) at


@dataclass
class DispatchTable:
    """The winners of one kernel per bucket, grouped into variants."""

    kernel: str
    dims: tuple[str, ...]
    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        self.entries[entry.bucket] = entry

    def variants(self) -> dict[str, Config]:
        """Variant name -> config: ``v0`` the largest bucket's winner, then ``v1``... in order
        of bucket size (largest first) and bucket text."""
        order = sorted(self.entries.values(), key=lambda e: (-_volume(e.bucket), e.bucket))
        out: dict[str, Config] = {}
        seen: dict[str, str] = {}
        for e in order:
            key = config_key(e.config)
            if key not in seen:
                seen[key] = f"v{len(out)}"
                out[seen[key]] = e.config
        return out

    def variant_of(self, config: Config) -> str:
        return next(v for v, c in self.variants().items() if config_key(c) == config_key(config))

    def default(self) -> Config:
        return self.variants()["v0"]

    def lookup(self, dims: Mapping[str, int]) -> Config:
        """The config the runtime would launch at ``dims`` (through the manifest table)."""
        name = select_variant({"dispatch": self.to_manifest()}, dims)
        return self.variants()[name or "v0"]

    def to_manifest(self) -> dict[str, Any]:
        """The ``[kernels.<k>.dispatch]`` table (TOML-able: no None values)."""
        buckets = {}
        for b, e in sorted(self.entries.items()):
            row: dict[str, Any] = {"variant": self.variant_of(e.config),
                                   "config": config_dict(e.config), "status": e.status}  # fmt: skip
            for name in ("p50_ms", "p95_ms", "predicted_ms", "margin"):
                value = getattr(e, name)
                if value is not None:
                    row[name] = round(float(value), 6)
            buckets[b] = row
        return {"dims": list(self.dims), "default": "v0", "buckets": buckets}


def _volume(bucket: str) -> int:
    n = 1
    for v in parse_bucket(bucket).values():
        n *= max(v, 1)
    return n


def buckets_for(kernel_dims: tuple[str, ...], shapes: list[dict[str, int]]) -> list[str]:
    """The distinct buckets of a kernel over the tuning shapes, largest first."""
    out = {bucket_of(s, kernel_dims) for s in shapes}
    return sorted(out, key=lambda b: (-_volume(b), b))


def dims_of_bucket(bucket: str, shapes: list[dict[str, int]], kernel_dims: tuple[str, ...]) -> dict[str, int]:  # fmt: skip
    """The first tuning shape that falls in ``bucket`` (the dims a measurement runs at)."""
    return next(s for s in shapes if bucket_of(s, kernel_dims) == bucket)


def pick(rows: Mapping[str, Row], tie: float) -> tuple[str, Row, float | None] | None:
    """The winning config key among ``ok`` rows: the fastest median, and among configs within
    ``tie`` (relative) of it the smallest key; with the runner-up's margin (None: no
    runner-up)."""
    ok = sorted(((k, r) for k, r in rows.items() if r.status == "ok" and r.median_ms),
                key=lambda kr: (kr[1].median_ms, kr[0]))  # fmt: skip
    if not ok:
        return None
    fastest = ok[0][1].median_ms or 0.0
    key, row = min((kr for kr in ok if kr[1].median_ms <= fastest * (1 + tie)),  # type: ignore[operator]
                   key=lambda kr: kr[0])  # fmt: skip
    others = [r.median_ms for k, r in ok if k != key]
    margin = (min(others) / row.median_ms - 1.0) if others and row.median_ms else None  # type: ignore[type-var]
    return key, row, margin
