"""The performance database's data model and SQLite layer: rows, versions and shape buckets;
connection set-up, write transactions, the schema and its migrations.

``schema_version`` holds one row per applied version. A database whose version is newer than
``SCHEMA_VERSION`` was written by a newer esperc: it is refused (``SchemaTooNew``), never
migrated or modified.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "BUSY_TIMEOUT_S",
    "COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "VERSION_COLUMNS",
    "bucket_distance",
    "canonical_config",
    "connect",
    "from_db",
    "is_corruption",
    "migrate",
    "parse_bucket",
    "Row",
    "schema_version",
    "SchemaTooNew",
    "shape_bucket",
    "to_params",
    "Versions",
    "write_txn",
]

BUSY_TIMEOUT_S = 10.0
SCHEMA_VERSION = 1
VERSION_COLUMNS = ("v_esperc", "v_triton", "v_torch", "v_driver")


class SchemaTooNew(sqlite3.DatabaseError):
    """The database was written by a newer esperc (its schema version is unknown here)."""


STATUSES = frozenset({"ok", "timeout", "fault", "oom", "nan", "mismatch", "compile-error"})
_MISSING_DIM_PENALTY = 64.0  # log2 distance charged for a dim only one bucket has


def canonical_config(config: Mapping[str, Any] | str) -> str:
    """A config dict as canonical JSON (sorted keys, no spaces); text is re-canonicalised."""
    value = json.loads(config) if isinstance(config, str) else dict(config)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def shape_bucket(dims: Mapping[str, int]) -> str:
    """The bucket of dynamic dim values: each rounded up to a power of two, ``"B=4096,N=64"``."""
    parts = []
    for name in sorted(dims):
        value = int(dims[name])
        parts.append(f"{name}={1 << max(value - 1, 0).bit_length() if value > 0 else 0}")
    return ",".join(parts)


def parse_bucket(text: str) -> dict[str, int]:
    """``"B=4096,N=64"`` as ``{"B": 4096, "N": 64}`` (the empty text is the static bucket)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        out[name.strip()] = int(value)
    return out


def bucket_distance(a: str, b: str) -> float:
    """The log2 distance of two buckets: sum over dims of |log2 a - log2 b| (0 when equal)."""
    da, db = parse_bucket(a), parse_bucket(b)
    total = 0.0
    for name in da.keys() | db.keys():
        if name not in da or name not in db:
            total += _MISSING_DIM_PENALTY
        else:
            total += abs(math.log2(max(da[name], 1)) - math.log2(max(db[name], 1)))
    return total


@dataclass(frozen=True, slots=True)
class Versions:
    """The tool versions a measurement is valid for (a change of any makes it stale)."""

    esperc: str
    triton: str
    torch: str
    driver: str

    @staticmethod
    def installed(driver: str = "") -> Versions:
        """The installed esperc, triton and torch (without importing them), and ``driver``."""
        from importlib.metadata import PackageNotFoundError, version

        from esperc import __version__

        def pkg(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "none"

        return Versions(__version__, pkg("triton"), pkg("torch"), driver)

    def text(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


@dataclass(frozen=True, slots=True)
class Row:
    """One measured candidate. Times are milliseconds; ``None`` when the run did not finish.

    ``config`` may be given as a dict; it is stored as canonical JSON. ``timestamp`` 0 means
    "now" when recorded (seconds since the epoch).
    """

    kernel_hash: str
    family: str
    arch: str
    gpu: str
    bucket: str
    config: str
    versions: Versions
    median_ms: float | None
    p95_ms: float | None = None
    samples: int = 0
    status: str = "ok"
    error: str = ""
    timestamp: float = 0.0
    kernel_name: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r} (expected one of {sorted(STATUSES)})")
        object.__setattr__(self, "config", canonical_config(self.config))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = (
    "kernel_hash", "kernel_name", "family", "arch", "gpu", "bucket", "config", *VERSION_COLUMNS,
    "median_ms", "p95_ms", "samples", "status", "error", "timestamp",
)  # fmt: skip


def to_params(row: Row, now: float) -> tuple[Any, ...]:
    v = row.versions
    return (row.kernel_hash, row.kernel_name, row.family, row.arch, row.gpu, row.bucket,
            row.config, v.esperc, v.triton, v.torch, v.driver, row.median_ms, row.p95_ms,
            row.samples, row.status, row.error, row.timestamp or now)  # fmt: skip


def from_db(t: tuple[Any, ...]) -> Row:
    h, name, fam, arch, gpu, bucket, config, ve, vt, vp, vd, med, p95, n, st, err, ts = t
    return Row(h, fam, arch, gpu, bucket, config, Versions(ve, vt, vp, vd), med, p95, n, st,
               err, ts, name)  # fmt: skip


_V1 = """
CREATE TABLE measurements (
    kernel_hash TEXT NOT NULL,
    kernel_name TEXT NOT NULL DEFAULT '',
    family      TEXT NOT NULL,
    arch        TEXT NOT NULL,
    gpu         TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    config      TEXT NOT NULL,
    v_esperc    TEXT NOT NULL,
    v_triton    TEXT NOT NULL,
    v_torch     TEXT NOT NULL,
    v_driver    TEXT NOT NULL,
    median_ms   REAL,
    p95_ms      REAL,
    samples     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT NOT NULL,
    timestamp   REAL NOT NULL,
    PRIMARY KEY (kernel_hash, arch, gpu, bucket, config, v_esperc, v_triton, v_torch, v_driver)
);
CREATE INDEX measurements_family ON measurements (family, arch, status);
CREATE INDEX measurements_name ON measurements (kernel_name);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# version reached -> the statements that reach it from the version before
_STEPS: dict[int, str] = {1: _V1}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database to ``SCHEMA_VERSION`` inside one write transaction (none if current).

    Raises:
        SchemaTooNew: The database is newer than this esperc.
        sqlite3.DatabaseError: It holds tables but no ``schema_version`` (not an esperc perfdb).
        sqlite3.OperationalError: It cannot be written (read-only, full, locked past the timeout).
    """

    def step(c: sqlite3.Connection) -> None:
        tables = {n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            if tables:
                raise sqlite3.DatabaseError(f"not an esperc perfdb (tables {sorted(tables)})")
            c.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied REAL)")
            current = 0
        else:
            current = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"has schema version {current}, newer than this esperc's {SCHEMA_VERSION}"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in filter(str.strip, _STEPS[version].split(";")):
                c.execute(statement)
            c.execute("INSERT INTO schema_version VALUES (?, julianday('now'))", (version,))

    if schema_version(conn) != SCHEMA_VERSION:
        write_txn(conn, step)


def connect(target: str, *, uri: bool) -> sqlite3.Connection:
    """Open, configure (WAL, busy timeout) and integrity-check a database file.

    Raises:
        sqlite3.DatabaseError: Not a database, or ``PRAGMA quick_check`` finds damage.
        sqlite3.OperationalError: The file cannot be opened or written.
    """
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri,
                           check_same_thread=False)  # fmt: skip
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not uri:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result}")
    except BaseException:
        conn.close()
        raise
    return conn


def write_txn(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def schema_version(conn: sqlite3.Connection) -> int | None:
    try:
        return conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    except sqlite3.DatabaseError:
        return None


def is_corruption(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text
