"""The kernel cache: compiled .kpkg packages on disk, keyed by everything they depend on.

Example::

    from esperc.cache import CacheKey, KernelCache
    from esperc.paths import state_paths

    cache = KernelCache(state_paths().cache_dir)
    key = CacheKey.build(source_bytes, opts)           # opts: driver.Options
    data, hit = cache.get_or_build(key, lambda: (build_kpkg(), {"blueprint": "softmax"}))

Importable without torch or triton. Layout, keys and failure handling: docs/state.md.
"""

from __future__ import annotations

from esperc.cache.key import KEY_SCHEMA, CacheKey, CompileOptions, installed_versions
from esperc.cache.lru import BytesLRU, read_file_cached
from esperc.cache.store import CacheEntry, KernelCache

__all__ = [
    "KEY_SCHEMA",
    "BytesLRU",
    "CacheEntry",
    "CacheKey",
    "CompileOptions",
    "KernelCache",
    "installed_versions",
    "read_file_cached",
]
