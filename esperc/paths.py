"""Where esperc keeps its persistent state: the kernel cache and the performance database.

Both live under the user cache directory (``platformdirs.user_cache_dir("esperc")``, e.g.
``~/.cache/esperc`` on Linux). Two environment variables override it, and this module's
``state_paths`` is the one function that reads them:

- ``ESPERC_CACHE_DIR``: the cache root (the kernel cache is ``<root>/kpkg``).
- ``ESPERC_PERFDB``: the performance database file (default ``<root>/perfdb.sqlite``).

Everything is state that may be deleted at any time; see docs/state.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StatePaths", "state_paths"]


@dataclass(frozen=True, slots=True)
class StatePaths:
    """The resolved locations of esperc's state (nothing is created by resolving them).

    Attributes:
        cache_dir: The cache root; the kernel cache stores its entries under it.
        perfdb: The SQLite performance database file.
    """

    cache_dir: Path
    perfdb: Path


def state_paths(env: Mapping[str, str] | None = None) -> StatePaths:
    """Resolve the state locations from the environment (``os.environ`` unless ``env`` given).

    Empty variables count as unset. Paths are expanded (``~``) but not resolved or created.
    """
    env = os.environ if env is None else env
    cache_text = env.get("ESPERC_CACHE_DIR", "").strip()
    if cache_text:
        cache_dir = Path(cache_text).expanduser()
    else:
        from platformdirs import user_cache_dir

        cache_dir = Path(user_cache_dir("esperc", appauthor=False))
    db_text = env.get("ESPERC_PERFDB", "").strip()
    perfdb = Path(db_text).expanduser() if db_text else cache_dir / "perfdb.sqlite"
    return StatePaths(cache_dir=cache_dir, perfdb=perfdb)
