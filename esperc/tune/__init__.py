"""Autotuning: the performance database (``perfdb``) here; the search and benchmarking land
beside it. Importable without torch or triton."""

from __future__ import annotations

from esperc.tune.perfdb import (
    STATUSES,
    PerfDB,
    Row,
    Versions,
    bucket_distance,
    canonical_config,
    parse_bucket,
    shape_bucket,
)

__all__ = [
    "STATUSES",
    "PerfDB",
    "Row",
    "Versions",
    "bucket_distance",
    "canonical_config",
    "parse_bucket",
    "shape_bucket",
]
