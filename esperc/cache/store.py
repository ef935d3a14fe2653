"""The kernel cache: compiled packages on disk, content-addressed by their ``CacheKey``.

Layout under the cache root (see docs/state.md)::

    <root>/kpkg/<first 2 hex>/<sha256 digest>.kpkg     entries (complete, verified packages)
    <root>/kpkg/<first 2 hex>/.<digest>.kpkg.*.tmp     writes in flight (never read as entries)
    <root>/kpkg/index.jsonl                            descriptions and hit counts
    <root>/kpkg/locks/<digest>.lock                    one file lock per key

Writes go to a temporary file in the entry's folder, are fsynced and ``os.replace``d into place,
under the key's file lock, so a reader sees a whole entry or none, and N processes building one
key build it once (``get_or_build``) or, at worst, replace it with identical bytes. Reads verify
the package (every SHA-256); a corrupt entry is a miss, logged once and removed. A cache that
cannot be written (read-only folder, full disk) skips writes with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esperc.cache.index import Index, try_append
from esperc.cache.key import CacheKey
from esperc.cache.lru import BytesLRU
from esperc.kpkg import KpkgError, read_kpkg

if TYPE_CHECKING:
    from filelock import FileLock

__all__ = ["CacheEntry", "KernelCache"]

log = logging.getLogger("esperc.cache")

_ENTRY_RE = re.compile(r"^[0-9a-f]{64}\.kpkg$")
_TMP_RE = re.compile(r"^\.[0-9a-f]{64}\.kpkg\..*\.tmp$")
STALE_TMP_S = 3600.0
INDEX_COMPACT_BYTES = 4 << 20  # fold the hit records once the log grows past this


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored package, as ``ls`` lists it (index fields are empty if the index lost it)."""

    digest: str
    path: Path
    size: int
    created: float
    hits: int
    blueprint: str
    source: str
    key: CacheKey | None


class KernelCache:
    """The kernel cache under ``root`` (created on first write).

    Args:
        root: The cache root (``esperc.paths.state_paths().cache_dir``); entries go in
            ``root/kpkg``, and nothing else under ``root`` is ever touched.
        memo_items: Most packages kept in memory for repeated ``get``.
        memo_bytes: Most bytes kept in memory in all.
        lock_timeout_s: Longest wait for another process building the same key (seconds);
            past it this process builds too.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        memo_items: int = 64,
        memo_bytes: int = 256 << 20,
        lock_timeout_s: float = 600.0,
    ) -> None:
        self.dir = Path(root) / "kpkg"
        self.lock_timeout_s = lock_timeout_s
        self.index = Index(self.dir / "index.jsonl", self.dir / "locks" / "index.lock")
        self._memo = BytesLRU(memo_items, memo_bytes)
        self._warned = False

    # ----- paths and locks ---------------------------------------------------------------------

    def path_for(self, key: CacheKey) -> Path:
        """Where ``key``'s entry lives (whether or not it exists)."""
        return self.entry_path(key.digest())

    def entry_path(self, digest: str) -> Path:
        """Where the entry of ``digest`` lives."""
        return self.dir / digest[:2] / f"{digest}.kpkg"

    def _lock(self, digest: str) -> FileLock:
        # filelock is imported here, not above: a hit takes no lock, and the import costs ~10 ms.
        from filelock import FileLock

        (self.dir / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / "locks" / f"{digest}.lock")

    def _warn_write(self, err: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("kernel cache %s: write skipped (%s); further writes too", self.dir, err)

    # ----- reads -------------------------------------------------------------------------------

    def get(self, key: CacheKey) -> bytes | None:
        """The stored package of ``key``, verified, or None (a miss).

        A corrupt entry is logged, removed and reported as a miss. Never raises for the
        cache's own trouble (unreadable files count as misses).
        """
        digest = key.digest()
        data = self.read_verified(digest)
        if data is not None:
            try_append(self.index, {"op": "hit", "digest": digest, "t": time.time()}, lock=False)
        return data

    def read_verified(self, digest: str, *, repair: bool = True) -> bytes | None:
        """The verified entry of ``digest`` (memoised), or None; with ``repair``, a corrupt
        entry is logged and removed. Counts no hit."""
        path = self.entry_path(digest)
        try:
            st = os.stat(path)
        except OSError:
            return None
        memo_key = (digest, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        data = self._memo.get(memo_key)
        if data is not None:
            return data
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            log.debug("kernel cache: cannot read %s: %s", path, e)
            return None
        problem = _verify(data)
        if problem is not None:
            if repair:
                self._drop_corrupt(digest, memo_key, problem)
            return None
        self._memo.put(memo_key, data)
        return data

    def _drop_corrupt(self, digest: str, seen: tuple[Any, ...], problem: str) -> None:
        log.warning("kernel cache entry %s is corrupt (%s); removed, it will be rebuilt",
                    digest[:12], problem)  # fmt: skip
        path = self.entry_path(digest)
        try:
            with self._lock(digest).acquire(timeout=1.0):
                st = os.stat(path)
                # Only the file we judged: another process may have just replaced it.
                if (digest, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) == seen:
                    path.unlink()
        except OSError as e:  # filelock.Timeout included
            log.debug("kernel cache: cannot remove %s: %s", path, e)

    # ----- writes ------------------------------------------------------------------------------

    def put(self, key: CacheKey, data: bytes, meta: Mapping[str, Any] | None = None) -> bool:
        """Store ``data`` (a .kpkg's bytes) as ``key``'s entry.

        Args:
            key: The entry's key.
            data: The package; verified before it is stored.
            meta: Descriptions for ``ls`` (``blueprint``, ``source``: the source path).

        Returns:
            Whether it was stored (False: the cache is not writable; one warning was logged).

        Raises:
            KpkgError: ``data`` is not a valid package (a bug of the caller).
        """
        read_kpkg(bytes(data), verify=True)
        return self._store(key, bytes(data), meta or {}, locked=False)

    def _store(self, key: CacheKey, data: bytes, meta: Mapping[str, Any], *, locked: bool) -> bool:
        digest = key.digest()
        path = self.entry_path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if locked:
                self._replace_if_different(path, data)
            else:
                from filelock import Timeout

                try:
                    with self._lock(digest).acquire(timeout=self.lock_timeout_s):
                        self._replace_if_different(path, data)
                except Timeout:  # (a TimeoutError, so before OSError)
                    self._replace_if_different(path, data)  # os.replace races are harmless
        except OSError as e:
            self._warn_write(e)
            return False
        record = {"op": "put", "digest": digest, "key": key.to_dict(), "meta": dict(meta),
                  "size": len(data), "t": time.time()}  # fmt: skip
        try_append(self.index, record)
        self._sweep_folder(path.parent, STALE_TMP_S)
        with contextlib.suppress(OSError):
            if self.index.path.stat().st_size > INDEX_COMPACT_BYTES:
                self.sweep()
        return True

    def _replace_if_different(self, path: Path, data: bytes) -> None:
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return
        _write_atomic(path, data)

    def get_or_build(
        self, key: CacheKey, build: Callable[[], tuple[bytes, Mapping[str, Any]]]
    ) -> tuple[bytes, bool]:
        """The entry of ``key``, built (once across processes) and stored on a miss.

        Holds ``key``'s file lock while building, so a second process waits and then hits.

        Args:
            key: The entry's key.
            build: Returns the package bytes and the ``meta`` for ``put``.

        Returns:
            ``(package bytes, whether it was a hit)``.
        """
        data = self.get(key)
        if data is not None:
            return data, True
        digest = key.digest()
        lock: FileLock | None = None
        try:
            lock = self._lock(digest)
            lock.acquire(timeout=self.lock_timeout_s)
        except OSError:  # filelock.Timeout included
            lock = None
        try:
            if lock is not None:
                data = self.get(key)  # built by another process while we waited
                if data is not None:
                    return data, True
            data, meta = build()
            read_kpkg(data, verify=True)
            self._store(key, data, meta, locked=lock is not None)
            return data, False
        finally:
            if lock is not None:
                lock.release()

    # ----- listing and housekeeping ------------------------------------------------------------

    def _entry_files(self) -> list[Path]:
        try:
            folders = [d for d in self.dir.iterdir() if len(d.name) == 2 and d.is_dir()]
        except OSError:
            return []
        return sorted(p for d in folders for p in d.iterdir() if _ENTRY_RE.match(p.name))

    def ls(self) -> list[CacheEntry]:
        """The entries on disk, newest first, described by the index where it can."""
        records = self.index.load()
        out = []
        for path in self._entry_files():
            digest = path.name[:64]
            try:
                st = path.stat()
            except OSError:
                continue
            rec = records.get(digest)
            key = None
            if rec is not None and rec.key is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    key = CacheKey.from_dict(rec.key)
            meta = rec.meta if rec else {}
            out.append(CacheEntry(
                digest=digest, path=path, size=st.st_size,
                created=rec.created if rec and rec.created else st.st_mtime,
                hits=rec.hits if rec else 0, blueprint=str(meta.get("blueprint", "")),
                source=str(meta.get("source", "")), key=key,
            ))  # fmt: skip
        out.sort(key=lambda e: (-e.created, e.digest))
        return out

    def size(self) -> int:
        """Total bytes of the entries on disk."""
        total = 0
        for path in self._entry_files():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def clear(self) -> tuple[int, int]:
        """Remove every entry, temporary file, lock file and the index.

        Returns:
            ``(entries removed, their bytes)``.
        """
        count = nbytes = 0
        for path in self._entry_files():
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                count, nbytes = count + 1, nbytes + size
        self.sweep(max_age_s=0.0)
        self.index.remove()
        with contextlib.suppress(OSError):
            for lock in (self.dir / "locks").glob("*.lock"):
                with contextlib.suppress(OSError):
                    lock.unlink()
        for folder in (self.dir / "locks", *self.dir.glob("??")):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self._memo.clear()
        return count, nbytes

    def sweep(self, max_age_s: float = STALE_TMP_S) -> int:
        """Remove temporary files older than ``max_age_s`` (left by killed writers) and fold
        the index to the live entries. Returns the number of files removed."""
        removed = 0
        with contextlib.suppress(OSError):
            for folder in self.dir.glob("??"):
                removed += self._sweep_folder(folder, max_age_s)
        live = [p.name[:64] for p in self._entry_files()]
        with contextlib.suppress(OSError):  # filelock.Timeout included
            if self.index.path.exists():
                self.index.compact(live)
        return removed

    def _sweep_folder(self, folder: Path, max_age_s: float) -> int:
        removed = 0
        now = time.time()
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                if _TMP_RE.match(p.name):
                    with contextlib.suppress(OSError):
                        if now - p.stat().st_mtime >= max_age_s:
                            p.unlink()
                            removed += 1
        return removed

    def explain(self, key: CacheKey) -> str:
        """Whether ``key`` hits, and if not, why: no entry; a corrupt entry; or entries for the
        same source (else the same blueprint) whose key fields differ, named field by field."""
        from esperc.cache.explain import explain

        return explain(self, key)


def _verify(data: bytes) -> str | None:
    try:
        read_kpkg(data, verify=True)
    except KpkgError as e:
        return f"{type(e).__name__}: {e.message}"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a dot-named temporary file beside ``path``, fsync, ``os.replace``.

    Raises:
        OSError: Any step failed; the temporary file is removed and ``path`` is unchanged.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
