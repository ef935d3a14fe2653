"""``KernelCache.explain``: why a key hits or misses, in a few lines of text."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from esperc.cache.key import CacheKey

if TYPE_CHECKING:
    from esperc.cache.store import KernelCache

__all__ = ["explain"]

_SHOWN = 5  # most differing entries listed


def explain(cache: KernelCache, key: CacheKey) -> str:
    """Hit, or the reason for a miss, for ``key`` in ``cache`` (reads only; changes nothing).

    A miss names the closest stored entries: those compiled from the same source bytes (else
    from the same blueprint name), each with the key fields that differ from ``key``.
    """
    digest = key.digest()
    path = cache.path_for(key)
    records = cache.index.load()
    if path.exists():
        data = cache.read_verified(digest, repair=False)
        if data is not None:
            rec = records.get(digest)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.created)) if rec else "?"
            hits = rec.hits if rec else 0
            return f"hit: {digest[:12]} ({len(data)} bytes, created {when}, {hits} hits)\n{path}"
        return f"miss: entry {digest[:12]} is corrupt or unreadable; the next compile rebuilds it"
    lines = [f"miss: no entry {digest[:12]}"]
    others: list[CacheKey] = []
    for d, rec in sorted(records.items()):
        if d != digest and rec.key is not None and cache.entry_path(d).exists():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                others.append(CacheKey.from_dict(rec.key))
    same_source = [k for k in others if k.source_sha256 == key.source_sha256]
    same_name = [k for k in others if key.blueprint and k.blueprint == key.blueprint]
    if same_source:
        lines.append(f"{len(same_source)} entries for the same source with other options:")
        near = same_source
    elif same_name:
        lines.append(f"{len(same_name)} entries for blueprint '{key.blueprint}', other sources:")
        near = same_name
    else:
        lines.append(f"no entry for this source ({len(others)} other entries in the cache)")
        return "\n".join(lines)
    near.sort(key=lambda k: (len(key.diff(k)), k.digest()))
    for other in near[:_SHOWN]:
        fields = "; ".join(
            f"{name}: {theirs} (now {mine})" for name, mine, theirs in key.diff(other)
        )
        lines.append(f"  {other.digest()[:12]}: {fields}")
    if len(near) > _SHOWN:
        lines.append(f"  ... and {len(near) - _SHOWN} more")
    return "\n".join(lines)
