"""The kernel cache's index: an append-only JSON-lines log of puts and hits.

One record a line, written with one ``O_APPEND`` ``write`` (put records under a file lock):

    {"op": "put", "digest": ..., "key": {...}, "meta": {...}, "size": 1234, "t": 1.7e9}
    {"op": "hit", "digest": ..., "t": 1.7e9}

The entries' files are the truth and the index only describes them (blueprint, source, hit
counts, and the key fields that ``explain`` compares), so a torn or unparsable line is skipped
and a lost index loses descriptions, never entries. ``compact`` folds the log to one put record
per live entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Index", "IndexRecord"]

LOCK_TIMEOUT_S = 5.0


@dataclass
class IndexRecord:
    """What the index knows of one entry."""

    digest: str
    key: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    created: float = 0.0
    hits: int = 0
    last_hit: float = 0.0


class Index:
    """The log at ``path``, locked through ``lock_path``."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self.lock_path = lock_path

    def append(self, record: dict[str, Any], *, lock: bool = True) -> None:
        """Append one record.

        Args:
            record: The record (JSON-ready).
            lock: Hold the index lock while writing. Hit records go without it: one
                ``O_APPEND`` write does not interleave with other appends, a hit that races a
                ``compact`` is at worst lost (hit counts are best effort), and a cache hit does
                not import filelock (about 10 ms).

        Raises:
            OSError: The log cannot be written (read-only, full disk), or the lock was held for
                longer than 5 s (``filelock.Timeout``, a ``TimeoutError``).
        """
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        if not lock:
            self._write(line)
            return
        from filelock import FileLock

        with FileLock(self.lock_path, timeout=LOCK_TIMEOUT_S):
            self._write(line)

    def _write(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def load(self) -> dict[str, IndexRecord]:
        """The records folded by digest (an unreadable log reads as empty)."""
        try:
            raw = self.path.read_bytes()
        except OSError:
            return {}
        out: dict[str, IndexRecord] = {}
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
                _fold(out, rec)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # a torn or foreign line
        return out

    def compact(self, live: Iterable[str]) -> None:
        """Rewrite the log to the records of ``live`` digests (atomically, under the lock).

        Raises:
            OSError: As ``append``.
        """
        from filelock import FileLock

        keep = set(live)
        with FileLock(self.lock_path, timeout=LOCK_TIMEOUT_S):
            records = [r for d, r in sorted(self.load().items()) if d in keep]
            lines = [
                {"op": "put", "digest": r.digest, "key": r.key, "meta": r.meta, "size": r.size,
                 "t": r.created, "hits": r.hits, "last_hit": r.last_hit}
                for r in records
            ]  # fmt: skip
            text = "".join(
                json.dumps(x, sort_keys=True, separators=(",", ":")) + "\n" for x in lines
            )
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(text.encode())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def remove(self) -> None:
        """Delete the log (and its lock file)."""
        for p in (self.path, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _fold(out: dict[str, IndexRecord], rec: dict[str, Any]) -> None:
    digest = rec["digest"]
    if not isinstance(digest, str):
        raise TypeError("digest")
    if rec["op"] == "put":
        prev = out.get(digest)
        out[digest] = IndexRecord(
            digest=digest,
            key=rec.get("key"),
            meta=dict(rec.get("meta") or {}),
            size=int(rec.get("size", 0)),
            created=float(rec.get("t", 0.0)),
            hits=int(rec.get("hits", 0)) + (prev.hits if prev else 0),
            last_hit=float(rec.get("last_hit", 0.0)) or (prev.last_hit if prev else 0.0),
        )
    elif rec["op"] == "hit":
        r = out.setdefault(digest, IndexRecord(digest))
        r.hits += 1
        r.last_hit = float(rec.get("t", 0.0))


def try_append(index: Index, record: dict[str, Any], *, lock: bool = True) -> bool:
    """``append``, reporting failure as False instead of raising."""
    try:
        index.append(record, lock=lock)
        return True
    except OSError:  # filelock.Timeout included
        return False
