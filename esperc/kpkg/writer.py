"""Write .kpkg files: deterministic bytes, atomic replacement of the destination."""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import tomli_w
import zstandard

from esperc.kpkg.errors import (
    KpkgFormatError,
    KpkgIOError,
    KpkgLimitError,
    KpkgMemberNameError,
    quote,
)
from esperc.kpkg.format import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    ZSTD_LEVEL,
    Limits,
    MemberInfo,
    assemble,
    check_member_name,
    parse_manifest,
)

Members = Mapping[str, bytes] | Iterable[tuple[str, bytes]]


def _canonical(value: Any, where: str) -> Any:
    """Copy a manifest value with every table's keys sorted; reject non-TOML and time values."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise KpkgFormatError(f"manifest table {where} has a non-string key")
        return {k: _canonical(value[k], f"{where}.{k}") for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise KpkgFormatError(f"manifest value {where} is not finite")
    if isinstance(value, bool | int | float | str):
        return value
    kind = "a timestamp" if isinstance(value, datetime.date | datetime.time) else "unsupported"
    raise KpkgFormatError(f"manifest value {where} is {kind} ({type(value).__name__})")


def _member_pairs(members: Members) -> list[tuple[str, bytes]]:
    pairs = list(members.items()) if isinstance(members, Mapping) else list(members)
    seen: set[str] = set()
    for name, data in pairs:
        check_member_name(name)
        if name in seen:
            raise KpkgMemberNameError(f"duplicate member {quote(name)}", member=name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"member {name!r} is {type(data).__name__}, not bytes")
        seen.add(name)
    return sorted(pairs)


def pack_kpkg(
    manifest: Mapping[str, Any], members: Members, *, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Build a .kpkg in memory. The same input always gives the same bytes.

    Args:
        manifest: Free-form TOML-able tables; must hold ``blueprint.name`` and must not hold
            ``members`` (the writer fills it in). ``format_version``, if given, must be
            ``FORMAT_VERSION``. Tables may be in any key order; lists keep their order.
        members: Name -> bytes, as a mapping or (name, bytes) pairs.
        limits: Size bounds; the result is guaranteed to open under the same bounds.

    Returns:
        The file's bytes.

    Raises:
        KpkgMemberNameError: A bad or duplicated member name.
        KpkgLimitError: Too many members, or a member or the manifest too large.
        KpkgFormatError: The manifest lacks ``blueprint.name``, holds ``members``, a wrong
            ``format_version``, or a value TOML cannot hold (None, timestamps, NaN).
        TypeError: A member's data is not bytes-like.
    """
    if "members" in manifest:
        raise KpkgFormatError("manifest must not set 'members'; the writer fills it in")
    if manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise KpkgFormatError(f"manifest format_version must be {FORMAT_VERSION}")
    pairs = _member_pairs(members)
    if len(pairs) > limits.max_members:
        raise KpkgLimitError(f"{len(pairs)} members (limit {limits.max_members})")
    cctx = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, write_dict_id=False
    )
    frames: list[bytes] = []
    entries: list[dict[str, Any]] = []
    offset = 0
    for name, data in pairs:
        if len(data) > limits.max_member_bytes:
            raise KpkgLimitError(f"member {quote(name)} has {len(data)} bytes", member=name)
        frame = cctx.compress(data)
        info = MemberInfo(
            name=name,
            offset=offset,
            compressed_size=len(frame),
            compressed_sha256=hashlib.sha256(frame).hexdigest(),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        frames.append(frame)
        entries.append(info.to_toml())
        offset += len(frame)
    full = _canonical({**manifest, "format_version": FORMAT_VERSION}, "manifest")
    full["members"] = entries
    raw = tomli_w.dumps(full).encode("utf-8")
    if len(raw) > limits.max_manifest_bytes:
        raise KpkgLimitError(f"manifest of {len(raw)} bytes exceeds {limits.max_manifest_bytes}")
    parse_manifest(raw, FORMAT_VERSION, offset, limits)  # what we write, we can read
    return assemble(raw, frames)


def write_kpkg(
    path: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    members: Members,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Build a .kpkg and atomically replace ``path`` with it.

    Writes a temporary file in the same directory, fsyncs it, ``os.replace``s it onto ``path``
    and fsyncs the directory. On any failure the temporary file is removed and ``path`` keeps
    its old content (or stays absent). The new file gets mode 0o644.

    Raises:
        KpkgIOError: The operating system failed (message names the path).
        KpkgError: Any error of ``pack_kpkg``.
    """
    blob = pack_kpkg(manifest, members, limits=limits)
    write_atomic(path, blob)


def write_atomic(path: str | os.PathLike[str], blob: bytes) -> None:
    """Atomically replace ``path`` with ``blob`` (see ``write_kpkg``).

    Raises:
        KpkgIOError: The operating system failed.
    """
    dest = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(dest))
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=directory
        )
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        tmp = None
        _fsync_dir(directory)
    except OSError as exc:
        raise KpkgIOError(f"cannot write: {exc.strerror or exc}", path=dest) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KpkgWriter:
    """Collect members one at a time, then write them with ``write_kpkg``'s guarantees.

    Example::

        w = KpkgWriter({"blueprint": {"name": "softmax", "ir_hash": h}})
        w.add("source.esp", src)
        w.add("kernels/softmax.py", py)
        w.write("softmax.kpkg")
    """

    def __init__(self, manifest: Mapping[str, Any], *, limits: Limits = DEFAULT_LIMITS) -> None:
        self._manifest = manifest
        self._limits = limits
        self._members: dict[str, bytes] = {}

    def add(self, name: str, data: bytes) -> None:
        """Add one member.

        Raises:
            KpkgMemberNameError: ``name`` is invalid or already added.
        """
        check_member_name(name)
        if name in self._members:
            raise KpkgMemberNameError(f"duplicate member {quote(name)}", member=name)
        self._members[name] = bytes(data)

    def to_bytes(self) -> bytes:
        """The package's bytes (see ``pack_kpkg``)."""
        return pack_kpkg(self._manifest, self._members, limits=self._limits)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Atomically write the package to ``path`` (see ``write_kpkg``)."""
        write_atomic(path, self.to_bytes())
