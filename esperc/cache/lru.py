"""A small in-memory LRU of byte strings, bounded by entry count and total bytes.

The runtime loads the same packages again and again; ``read_file_cached`` answers a repeated
read of an unchanged file from memory (keyed by its path and its ``stat``, so a rewritten file
is read afresh).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["BytesLRU", "read_file_cached"]


class BytesLRU:
    """Least-recently-used byte strings; thread-safe.

    Args:
        max_items: Most entries kept.
        max_bytes: Most bytes kept in all; a value larger than this is never kept.
    """

    def __init__(self, max_items: int = 64, max_bytes: int = 256 << 20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, bytes] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= len(old)
            if len(value) > self.max_bytes or self.max_items <= 0:
                return
            self._data[key] = value
            self._nbytes += len(value)
            while len(self._data) > self.max_items or self._nbytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._nbytes -= len(dropped)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Total bytes held."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._data)


def stat_key(path: str | os.PathLike[str]) -> tuple[str, int, int, int, int]:
    """``(real path, device, inode, mtime ns, size)``: changes when the file is replaced.

    Raises:
        OSError: The file cannot be stat'ed.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def read_file_cached(
    path: str | os.PathLike[str],
    lru: BytesLRU,
    check: Callable[[bytes], None] | None = None,
) -> bytes:
    """The bytes of ``path``, from ``lru`` when the file is unchanged since it was read.

    Args:
        path: The file.
        lru: The memo to use (the caller owns it: no module-level state).
        check: Called on freshly read bytes before they are memoised (e.g. a package verify);
            what it raises propagates and nothing is memoised.

    Raises:
        OSError: The file cannot be read.
    """
    key = stat_key(path)
    data = lru.get(key)
    if data is None:
        with open(key[0], "rb") as f:
            data = f.read()
        if check is not None:
            check(data)
        if len(data) == key[4]:  # a file being rewritten under us is not memoised
            lru.put(key, data)
    return data
