"""The kernel cache key: every input a compiled .kpkg depends on, as one explicit value.

The caller builds the key (``CacheKey.build`` from the source bytes and the compile options);
the cache never guesses. ``digest()`` is the SHA-256 of the key's canonical JSON, and names the
entry's file. A change to any field is a different entry; ``diff`` says which fields differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Protocol

__all__ = ["KEY_SCHEMA", "CacheKey", "CompileOptions", "installed_versions"]

# Bumped when the meaning of a field changes, so that old entries stop matching.
KEY_SCHEMA = 2  # 2: `backward` (training packages are cached too)


class CompileOptions(Protocol):
    """The fields of ``esperc.driver.Options`` that a compile's output depends on."""

    blueprint: str | None
    overrides: Mapping[str, str]
    pipeline: str
    targets: tuple[str, ...]
    validate: bool
    backward: bool  # a training package: forward and backward kernels


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """The installed esperc, triton and torch versions, read from package metadata (neither
    triton nor torch is imported); ``"none"`` for a package that is not installed."""
    from esperc import __version__

    out = {"esperc": __version__}
    for name in ("triton", "torch"):
        out[name] = _dist_info_version(name) or _metadata_version(name)
    return out


def _dist_info_version(name: str) -> str | None:
    """The ``Version`` of the first ``NAME-*.dist-info`` on ``sys.path``, or None if there is
    none. What ``importlib.metadata.version`` answers for a wheel install, without importing
    ``importlib.metadata``, which costs 15-30 ms on every compile cache hit."""
    prefix = f"{name}-"
    for entry in sys.path:
        folder = entry or "."
        try:
            children = sorted(os.listdir(folder))
        except OSError:
            continue  # not a folder (a zip, a missing entry)
        for child in children:
            if child.lower().startswith(prefix) and child.endswith(".dist-info"):
                version = _metadata_field(os.path.join(folder, child, "METADATA"), "Version")
                if version is not None:
                    return version
    return None


def _metadata_field(path: str, field_name: str) -> str | None:
    """A header field of a core-metadata file (RFC 822 style: headers end at a blank line)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, colon, value = line.partition(":")
                if colon and key == field_name:
                    return value.strip()
    except (OSError, UnicodeDecodeError):
        pass
    return None


def _metadata_version(name: str) -> str:
    """``importlib.metadata``'s answer, for installs that are not a plain dist-info folder
    (egg-info, zipped); ``"none"`` when the package is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Everything a compiled package depends on.

    Attributes:
        source_sha256: SHA-256 (hex) of the blueprint source bytes.
        blueprint: The selected blueprint name ("" when the file's only one is implied).
        overrides: The ``-D NAME=VALUE`` overrides, sorted by name.
        pipeline: The pass pipeline string.
        targets: The GPU targets, in order (the first is the primary one).
        validate: Whether kernels are validated against the eager reference.
        esperc_version: The compiler's version.
        triton_version: The installed Triton's version.
        torch_version: The installed PyTorch's version.
        format_version: The .kpkg format version written.
        extra: Further (name, value) inputs a later stage adds (e.g. an autotune budget).
        backward: Whether the package holds the backward kernels too (``--backward``).
    """

    source_sha256: str
    blueprint: str
    overrides: tuple[tuple[str, str], ...]
    pipeline: str
    targets: tuple[str, ...]
    validate: bool
    esperc_version: str
    triton_version: str
    torch_version: str
    format_version: int
    extra: tuple[tuple[str, str], ...] = ()
    backward: bool = False

    @classmethod
    def build(
        cls,
        source: bytes,
        opts: CompileOptions,
        *,
        extra: Mapping[str, str] | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> CacheKey:
        """The key of compiling ``source`` with ``opts``.

        Args:
            source: The blueprint file's bytes.
            opts: The compile options (``driver.Options`` or anything with its fields).
            extra: Further inputs of later stages, by name.
            versions: ``{"esperc", "triton", "torch"}`` versions (default: installed ones).
        """
        from esperc.kpkg import FORMAT_VERSION

        v = dict(versions) if versions is not None else installed_versions()
        return cls(
            source_sha256=hashlib.sha256(source).hexdigest(),
            blueprint=opts.blueprint or "",
            overrides=tuple(sorted((str(k), str(val)) for k, val in opts.overrides.items())),
            pipeline=opts.pipeline,
            targets=tuple(opts.targets),
            validate=bool(opts.validate),
            esperc_version=v["esperc"],
            triton_version=v["triton"],
            torch_version=v["torch"],
            format_version=FORMAT_VERSION,
            extra=tuple(sorted((extra or {}).items())),
            backward=bool(getattr(opts, "backward", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The key as JSON-ready data (tuples become lists; pairs become objects)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("overrides", "extra"):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheKey:
        """The inverse of ``to_dict``.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not a key's dict.
        """
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name not in ("extra", "backward")}
        kwargs["backward"] = bool(data.get("backward", False))
        kwargs["overrides"] = tuple(sorted(dict(kwargs["overrides"]).items()))
        kwargs["targets"] = tuple(kwargs["targets"])
        extra = tuple(sorted(dict(data.get("extra", {})).items()))
        return cls(**kwargs, extra=extra)

    def canonical(self) -> str:
        """The canonical JSON text that ``digest`` hashes."""
        return json.dumps({"key_schema": KEY_SCHEMA, **self.to_dict()}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=True)  # fmt: skip

    def digest(self) -> str:
        """SHA-256 (64 hex digits) of the canonical JSON: the entry's name."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def describe(self) -> str:
        """One ``field: value`` line per field, for humans (``cache explain``)."""
        lines = [f"digest: {self.digest()}"]
        lines += [f"{name}: {_show(value)}" for name, value in self.to_dict().items()]
        return "\n".join(lines)

    def diff(self, other: CacheKey) -> list[tuple[str, str, str]]:
        """The fields whose values differ, as ``(field, self's value, other's value)`` text."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(k, _show(mine[k]), _show(theirs[k])) for k in mine if mine[k] != theirs[k]]


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
