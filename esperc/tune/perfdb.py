"""The performance database: every measured autotune candidate, in one SQLite file.

A row is keyed by (kernel hash, arch, GPU name, shape bucket, config, tool versions) and holds
the measurement (median and p95 in ms, sample count, status, error text, timestamp). A repeated
autotune asks ``best``/``lookup`` and measures nothing; a new kernel asks ``nearest`` for
warm-start configs recorded for other kernels of its family at nearby shapes.

The file is only a cache of measurements, so it never breaks a run: a corrupt file is moved
aside to ``<name>.corrupt-<timestamp>`` (with a warning) and a fresh one is created; a file that
cannot be written (read-only folder, full disk) is read without writes (one warning); a file that
cannot be opened at all, or that a newer esperc wrote (unknown schema version, never migrated),
is replaced by an in-memory database for this process. Concurrency: WAL journal, a 10 s busy
timeout, and ``BEGIN IMMEDIATE`` write transactions. See docs/state.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from esperc.tune.perfdb_schema import (
    BUSY_TIMEOUT_S,
    COLUMNS,
    SCHEMA_VERSION,
    STATUSES,
    VERSION_COLUMNS,
    Row,
    SchemaTooNew,
    Versions,
    bucket_distance,
    canonical_config,
    connect,
    from_db,
    is_corruption,
    migrate,
    parse_bucket,
    schema_version,
    shape_bucket,
    to_params,
    write_txn,
)

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "PerfDB",
    "Row",
    "Versions",
    "bucket_distance",
    "canonical_config",
    "parse_bucket",
    "shape_bucket",
]

log = logging.getLogger("esperc.perfdb")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM measurements"


@dataclass(eq=False)
class PerfDB:
    """A performance database file (created on first use, with its folder).

    One object per thread (a SQLite connection runs one transaction at a time); any number of
    processes may open the same file.

    Args:
        path: The SQLite file, or ``":memory:"``.

    Attributes:
        mode: ``"rw"``, ``"ro"`` (writes are skipped) or ``"memory"`` (the file was unusable).
    """

    path: Path | str
    mode: str = field(default="rw", init=False)
    _conn: sqlite3.Connection = field(init=False, repr=False)
    _warned: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._conn = self._open()

    # ----- opening, corruption and fallbacks -------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if str(self.path) == ":memory:":
            return self._memory(None)
        path = Path(self.path)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _open_file(path)
        except SchemaTooNew as e:
            return self._memory(f"perfdb {path} {e}; using an in-memory database")
        except sqlite3.OperationalError as e:
            if not is_corruption(e):
                return self._read_only(path, e)
            err: Exception = e
        except sqlite3.DatabaseError as e:
            err = e
        # Under a lock, so that two processes finding the same damage move it aside once.
        try:
            with FileLock(f"{path}.lock", timeout=BUSY_TIMEOUT_S):
                with contextlib.suppress(sqlite3.DatabaseError):
                    return _open_file(path)  # another process already replaced it
                self._move_aside(path, err)
                return _open_file(path)
        except (OSError, Timeout, sqlite3.DatabaseError) as e:
            return self._memory(f"perfdb {path} is unusable ({err}; {e}); using an in-memory db")

    def _move_aside(self, path: Path, err: Exception) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S") + f".{time.time_ns() // 1000 % 1_000_000:06d}"
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        os.replace(path, aside)
        for suffix in ("-wal", "-shm"):  # a stale WAL must never be replayed into the new file
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        log.warning("perfdb %s is corrupt (%s); moved aside to %s", path, err, aside.name)

    def _read_only(self, path: Path, err: Exception) -> sqlite3.Connection:
        if path.is_file():
            for query in ("mode=ro", "immutable=1"):
                with contextlib.suppress(sqlite3.DatabaseError):
                    conn = connect(f"{path.resolve().as_uri()}?{query}", uri=True)
                    if schema_version(conn) == SCHEMA_VERSION:
                        self.mode = "ro"
                        self._warn_once(
                            "write", f"perfdb {path} is read-only ({err}); writes skipped"
                        )
                        return conn
                    conn.close()
        return self._memory(f"perfdb {path} cannot be opened ({err}); using an in-memory database")

    def _memory(self, why: str | None) -> sqlite3.Connection:
        if why:
            log.warning("%s", why)
        self.mode = "memory"
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(conn)
        return conn

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PerfDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- writes ------------------------------------------------------------------------------

    def _write(self, fn: Callable[[sqlite3.Connection], None]) -> bool:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; on failure warn once, skip."""
        if self.mode == "ro":
            return False
        try:
            write_txn(self._conn, fn)
            return True
        except sqlite3.DatabaseError as e:  # full disk, read-only file, lock timeout, corruption
            self._warn_once("write", f"perfdb {self.path}: write skipped ({e}); further writes too")
            self.mode = "ro" if self.mode == "rw" else self.mode
            return False

    def record(self, rows: Iterable[Row]) -> bool:
        """Insert (or replace, same key) measured rows in one transaction.

        Returns:
            Whether the rows were stored (False: writes are being skipped, a warning was logged).
        """
        params = [to_params(r, time.time()) for r in rows]
        sql = f"INSERT OR REPLACE INTO measurements ({', '.join(COLUMNS)}) VALUES " \
              f"({', '.join('?' * len(COLUMNS))})"  # fmt: skip
        return self._write(lambda c: c.executemany(sql, params) and None)

    def _count(self, name: str) -> None:
        self._write(
            lambda c: (
                c.execute(
                    "INSERT INTO counters(name, value) VALUES (?, 1) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                    (name,),
                )
                and None
            )
        )

    # ----- reads -------------------------------------------------------------------------------

    def _rows(self, where: str = "", params: Iterable[Any] = (), tail: str = "") -> list[Row]:
        sql = f"{_SELECT}{' WHERE ' + where if where else ''} {tail}"
        try:
            return [from_db(t) for t in self._conn.execute(sql, tuple(params))]
        except sqlite3.DatabaseError as e:
            self._warn_once("read", f"perfdb {self.path}: read failed ({e}); treating as empty")
            return []

    def lookup(
        self, kernel_hash: str, arch: str, bucket: str, versions: Versions, gpu: str | None = None
    ) -> list[Row]:
        """Every row of one key (all configs and statuses), ok rows first, fastest first."""
        where = "kernel_hash = ? AND arch = ? AND bucket = ? AND " + " AND ".join(
            f"{c} = ?" for c in VERSION_COLUMNS
        )
        params: list[Any] = [kernel_hash, arch, bucket, *(getattr(versions, f.name)
                                                         for f in fields(versions))]  # fmt: skip
        if gpu is not None:
            where += " AND gpu = ?"
            params.append(gpu)
        tail = "ORDER BY status != 'ok', median_ms IS NULL, median_ms, config"
        return self._rows(where, params, tail)

    def best(
        self, kernel_hash: str, arch: str, bucket: str, versions: Versions, gpu: str | None = None
    ) -> Row | None:
        """The fastest ``ok`` row of a key, or None (counted as a hit or a miss in ``stats``)."""
        rows = self.lookup(kernel_hash, arch, bucket, versions, gpu)
        found = (
            rows[0] if rows and rows[0].status == "ok" and rows[0].median_ms is not None else None
        )
        self._count("hits" if found else "misses")
        return found

    def nearest(self, family: str, arch: str, bucket: str, k: int = 8) -> list[Row]:
        """Warm-start candidates: the ``k`` best distinct configs of ``ok`` rows of the same family
        and arch (any kernel hash, any versions), nearest bucket first (``bucket_distance``),
        then fastest."""
        rows = self._rows("family = ? AND arch = ? AND status = 'ok'", (family, arch))
        rows = [r for r in rows if r.median_ms is not None]
        rows.sort(key=lambda r: (bucket_distance(bucket, r.bucket), r.median_ms, r.config))
        out: list[Row] = []
        seen: set[str] = set()
        for r in rows:
            if r.config not in seen:
                seen.add(r.config)
                out.append(r)
                if len(out) == k:
                    break
        return out

    def query(
        self,
        kernel: str | None = None,
        family: str | None = None,
        arch: str | None = None,
        bucket: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Row]:
        """Rows matching every given filter; ``kernel`` is a hash prefix or a kernel name."""
        clauses, params = [], []
        if kernel is not None:
            clauses.append("(substr(kernel_hash, 1, ?) = ? OR kernel_name = ?)")
            params += [len(kernel), kernel, kernel]
        for column, value in (("family", family), ("arch", arch), ("bucket", bucket),
                              ("status", status)):  # fmt: skip
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        tail = f"ORDER BY kernel_hash, bucket, status != 'ok', median_ms LIMIT {int(limit)}"
        return self._rows(" AND ".join(clauses), params, tail)

    def resolve_kernel(self, text: str) -> list[str]:
        """The kernel hashes that ``text`` names (a hash prefix or a kernel name), sorted."""
        return sorted({r.kernel_hash for r in self.query(kernel=text, limit=1_000_000)})

    def stats(self) -> dict[str, Any]:
        """Counts: rows, kernels, families, archs, GPUs, statuses, and best() hits/misses."""

        def scalar(sql: str) -> Any:
            try:
                return self._conn.execute(sql).fetchone()[0]
            except sqlite3.DatabaseError:
                return None

        def column(sql: str) -> dict[str, int]:
            try:
                return {str(k): n for k, n in self._conn.execute(sql)}
            except sqlite3.DatabaseError:
                return {}

        counters = column("SELECT name, value FROM counters")
        return {
            "path": str(self.path),
            "mode": self.mode,
            "schema_version": SCHEMA_VERSION,
            "rows": scalar("SELECT COUNT(*) FROM measurements"),
            "kernels": scalar("SELECT COUNT(DISTINCT kernel_hash) FROM measurements"),
            "families": scalar("SELECT COUNT(DISTINCT family) FROM measurements"),
            "archs": column("SELECT arch, COUNT(*) FROM measurements GROUP BY arch"),
            "gpus": column("SELECT gpu, COUNT(*) FROM measurements GROUP BY gpu"),
            "statuses": column("SELECT status, COUNT(*) FROM measurements GROUP BY status"),
            "hits": counters.get("hits", 0),
            "misses": counters.get("misses", 0),
        }

    def explain(
        self,
        kernel_hash: str,
        arch: str | None = None,
        bucket: str | None = None,
        versions: Versions | None = None,
        gpu: str | None = None,
    ) -> str:
        """Why ``best`` hits or misses for a key, one line per finding (None: any value).

        Narrows the kernel's rows one key field at a time; the first field that leaves no rows
        is the reason, listed with the values that were recorded (and, for a bucket, the
        nearest recorded bucket).
        """
        rows = self._rows("kernel_hash = ?", (kernel_hash,))
        if not rows:
            n = self.stats()["kernels"]
            return f"miss: no rows for kernel {kernel_hash[:12]} (the database holds {n} kernels)"
        lines = [f"kernel {kernel_hash[:12]} ({rows[0].kernel_name or rows[0].family}): "
                 f"{len(rows)} rows"]  # fmt: skip
        wanted: list[tuple[str, str | None, Callable[[Row], str]]] = [
            ("arch", arch, lambda r: r.arch),
            ("gpu", gpu, lambda r: r.gpu),
            ("bucket", bucket, lambda r: r.bucket),
        ]
        for f in fields(Versions):
            value = getattr(versions, f.name) if versions else None
            wanted.append((f"{f.name} version", value, lambda r, n=f.name: getattr(r.versions, n)))
        for label, value, get in wanted:
            if value is None:
                continue
            kept = [r for r in rows if get(r) == value]
            if not kept:
                seen = Counter(get(r) for r in rows).most_common(8)
                lines.append(f"miss: no rows with {label} {value!r}; recorded: "
                             + ", ".join(f"{v!r} ({n})" for v, n in seen))  # fmt: skip
                if label == "bucket":
                    near = min(seen, key=lambda vn: bucket_distance(value, vn[0]))[0]
                    lines.append(f"nearest recorded bucket: {near!r}")
                return "\n".join(lines)
            rows = kept
        ok = sorted((r for r in rows if r.status == "ok" and r.median_ms is not None),
                    key=lambda r: r.median_ms)  # fmt: skip
        if not ok:
            counts = Counter(r.status for r in rows)
            lines.append(f"miss: {len(rows)} rows match but none is ok: {dict(counts)}")
        else:
            lines.append(f"hit: best config {ok[0].config} at {ok[0].median_ms:.4g} ms "
                         f"({len(ok)} of {len(rows)} matching rows ok)")  # fmt: skip
            if versions is None:
                lines.append(f"recorded with: {ok[0].versions.text()}")
        return "\n".join(lines)


def _open_file(path: Path) -> sqlite3.Connection:
    conn = connect(str(path), uri=False)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn
