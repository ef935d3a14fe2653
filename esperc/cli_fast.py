"""The kernel-cache fast path of ``esperc compile``, and the lookups it shares with the full CLI.

``compile_hit`` answers a plain ``esperc compile FILE [-o OUT] [--target T]`` whose package is
in the kernel cache before typer, rich and pydantic are imported. It answers hits only: for any
other flag, a miss, an unreadable file, a bad target or ``ESPERC_NO_CACHE=1`` it returns False,
and the full CLI (``esperc.cli_app``) then runs the command and reports any error exactly as it
would have without this path. A hit's output is the full CLI's, byte for byte: the stored
package at OUT and the same one line on stderr.

This module imports no typer or rich, and a hit imports neither torch, triton nor lark.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esperc.build import BuildResult
    from esperc.cache import KernelCache
    from esperc.driver import Options

__all__ = ["compile_hit", "kernel_cache", "package_hit", "parse_plain_compile", "resolve_targets"]

# The only options a plain compile may have; each takes one value.
_VALUE_FLAGS = {"-o": "output", "--output": "output", "--target": "target"}


def parse_plain_compile(argv: list[str]) -> tuple[str, str | None, str] | None:
    """``(FILE, OUT or None, T)`` of ``compile FILE [-o|--output OUT] [--target T]``.

    Values may follow as the next word or, for long options, after ``=``. Returns None for
    anything else (another flag, a repeated option, a missing or empty value, no FILE or two):
    those are the full CLI's to parse, and to reject with its own messages.
    """
    if not argv or argv[0] != "compile":
        return None
    file: str | None = None
    values: dict[str, str] = {}
    words = iter(argv[1:])
    for word in words:
        flag, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag in _VALUE_FLAGS:
            if not eq:
                value = next(words, "")
            if not value or value.startswith("-") or _VALUE_FLAGS[flag] in values:
                return None
            values[_VALUE_FLAGS[flag]] = value
        elif word.startswith("-") or file is not None:
            return None
        else:
            file = word
    if file is None:
        return None
    return file, values.get("output"), values.get("target", "auto")


def compile_hit(argv: list[str]) -> bool:
    """Answer ``argv`` (without the program name) from the kernel cache if it is a plain
    compile whose package is cached: write the package, print the one-line summary to stderr
    and return True. False when the full CLI must run it (nothing was written then)."""
    plain = parse_plain_compile(argv)
    if plain is None:
        return False
    file, output, target = plain
    try:
        from esperc import driver

        opts = driver.Options()
        opts.targets = resolve_targets(target)
        result = package_hit(Path(file), None if output is None else Path(output), opts)
    except Exception:  # noqa: BLE001 - any trouble is the full CLI's to report, with its codes
        return False
    if result is None:
        return False
    sys.stderr.write(result.one_line() + "\n")
    return True


def resolve_targets(text: str) -> tuple[str, ...]:
    """``--target`` text as a tuple of targets; ``auto`` is the local GPU's arch, else sm_90.

    The GPU is probed through libcuda (``runtime.cuda_driver.local_arch``), not torch, and only
    for ``auto``.

    Raises:
        DiagnosticError: E0401 for an unknown target.
    """
    from esperc import driver

    arch = None
    if text.strip() == "auto":
        from esperc.runtime.cuda_driver import local_arch

        arch = local_arch()
    return driver.parse_targets(text, arch)


def kernel_cache() -> KernelCache | None:
    """The kernel cache under ``state_paths().cache_dir``; None when ``ESPERC_NO_CACHE=1``."""
    if os.environ.get("ESPERC_NO_CACHE") == "1":
        return None
    from esperc.cache import KernelCache
    from esperc.paths import state_paths

    return KernelCache(state_paths().cache_dir)


def package_hit(file: Path, output: Path | None, opts: Options) -> BuildResult | None:
    """On a kernel-cache hit for compiling ``file`` with ``opts`` (targets resolved), write the
    stored package to ``output`` (default ``FILE.kpkg``) and return its summary; None on a miss
    or with the cache off.

    The key covers only the source bytes and options, so this runs before lowering: a hit
    costs a read, a checksum pass and an atomic write.

    Raises:
        DiagnosticError: E0005/E0502 when the source is too large or cannot be read.
    """
    cache = kernel_cache()
    if cache is None:
        return None
    from esperc import driver
    from esperc.build import package_from_cache

    source = driver.read_source(file)
    return package_from_cache(cache, source, opts, output or file.with_suffix(".kpkg"))
