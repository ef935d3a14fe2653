"""Read and verify .kpkg files. Members come back as bytes in memory, never as files."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zstandard

from esperc.kpkg.errors import (
    KpkgBadMagic,
    KpkgChecksumError,
    KpkgError,
    KpkgFormatError,
    KpkgIOError,
    KpkgLimitError,
    KpkgMissingMember,
    KpkgTruncated,
    KpkgVersionError,
    quote,
)
from esperc.kpkg.format import (
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SUPPORTED_VERSIONS,
    TRAILER,
    TRAILER_MAGIC,
    TRAILER_SIZE,
    Limits,
    MemberInfo,
    check_member_name,
    parse_manifest,
)

_CHUNK = 1 << 20  # decompression output per read, in bytes

Source = str | os.PathLike[str] | bytes | bytearray | memoryview


@contextmanager
def _labelled(label: str) -> Iterator[None]:
    """Attach the file's label to any KpkgError raised inside."""
    try:
        yield
    except KpkgError as exc:
        if exc.path is None:
            exc.path = label
        raise


@dataclass(frozen=True, slots=True, eq=False)
class Kpkg:
    """An opened .kpkg: header, trailer and manifest checked; members verified on access.

    Attributes:
        label: The path it came from, or ``<bytes>``.
        manifest: The parsed manifest, ``members`` and ``format_version`` included. Read-only
            by convention.
        limits: The size bounds it was opened with.
    """

    label: str
    manifest: dict[str, Any]
    limits: Limits
    _buf: bytes
    _members: dict[str, MemberInfo]
    _data_start: int

    @property
    def format_version(self) -> int:
        """The format version of the file."""
        return int(self.manifest["format_version"])

    def __repr__(self) -> str:
        return f"Kpkg({self.label!r}, version={self.format_version}, members={len(self._members)})"

    def member_names(self) -> tuple[str, ...]:
        """All member names, sorted."""
        return tuple(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def info(self, name: str) -> MemberInfo:
        """The manifest entry of member ``name``.

        Raises:
            KpkgMemberNameError: ``name`` is not a valid member name.
            KpkgMissingMember: The package has no such member.
        """
        with _labelled(self.label):
            check_member_name(name)
            try:
                return self._members[name]
            except KeyError:
                raise KpkgMissingMember(f"no member {quote(name)}", member=name) from None

    def member(self, name: str) -> bytes:
        """Decompress member ``name`` and verify both of its SHA-256s.

        Memory peaks at about twice the member's declared size (bounded by ``Limits``).

        Raises:
            KpkgMemberNameError: ``name`` is not a valid member name.
            KpkgMissingMember: The package has no such member.
            KpkgChecksumError: The compressed or decompressed bytes do not match the manifest.
            KpkgLimitError: The frame decompresses beyond its declared size or asks for a zstd
                window over ``Limits.max_window_bytes``.
            KpkgFormatError: The zstd frame is corrupt or decompresses short of its size.
        """
        info = self.info(name)
        with _labelled(self.label):
            return _inflate(self._buf, self._data_start + info.offset, info, self.limits)

    def verify(self, *, strict: bool = True) -> list[KpkgError]:
        """Check the whole-file SHA-256 and every member.

        Args:
            strict: Raise the first problem instead of returning it.

        Returns:
            The problems found, one per failing check; empty when the file is intact.

        Raises:
            KpkgError: The first problem, when ``strict``.
        """
        problems: list[KpkgError] = []
        checks = [self._check_file_hash] + [
            (lambda n=name: self.member(n)) for name in self._members
        ]
        for check in checks:
            try:
                with _labelled(self.label):
                    check()
            except KpkgError as exc:
                if strict:
                    raise
                problems.append(exc)
        return problems

    def _check_file_hash(self) -> None:
        end = len(self._buf) - 32
        if hashlib.sha256(memoryview(self._buf)[:end]).digest() != self._buf[end:]:
            raise KpkgChecksumError(f"whole-file sha256 mismatch (stored at offset {end})")


def read_kpkg(source: Source, *, verify: bool = False, limits: Limits = DEFAULT_LIMITS) -> Kpkg:
    """Open a .kpkg from a path or from bytes.

    Checks, in order: size bound, magic, format version, header SHA-256, header fields,
    exact file length, trailer, manifest SHA-256, manifest schema, member table. Member
    SHA-256s are checked on access, or here for all members (and the whole-file SHA-256)
    when ``verify`` is true.

    Args:
        source: A path, or the file's bytes.
        verify: Also run ``Kpkg.verify()`` before returning.
        limits: Size bounds.

    Returns:
        The opened package.

    Raises:
        KpkgError: A subclass naming what failed (see docs/kpkg.md for exit codes).
    """
    label = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)
    with _labelled(str(label)):
        buf = _load(source, limits)
        pkg = _open(buf, str(label), limits)
    if verify:
        pkg.verify()
    return pkg


def _load(source: Source, limits: Limits) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        if memoryview(source).nbytes > limits.max_file_bytes:
            raise KpkgLimitError(f"file exceeds {limits.max_file_bytes} bytes")
        return bytes(source)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; fstat then rejects it.
        fd = os.open(
            source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        )
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KpkgIOError("not a regular file")
            if st.st_size > limits.max_file_bytes:
                raise KpkgLimitError(f"file of {st.st_size} bytes exceeds {limits.max_file_bytes}")
            buf = f.read(st.st_size)
    except OSError as exc:
        raise KpkgIOError(f"cannot read: {exc.strerror or exc}") from None
    if len(buf) != st.st_size:
        raise KpkgTruncated(f"file shrank to {len(buf)} bytes while being read")
    return buf


def _check_header(buf: bytes, limits: Limits) -> tuple[int, int, int]:
    """Return (version, manifest length, data length) from a checked header."""
    if not buf.startswith(MAGIC[: len(buf)]):
        raise KpkgBadMagic("not a kpkg file (bad magic at offset 0)", offset=0)
    if len(buf) < HEADER_SIZE:
        if len(buf) >= 12:
            version = int.from_bytes(buf[8:12], "little")
            if version not in SUPPORTED_VERSIONS:
                raise _version_error(version)
        raise KpkgTruncated(f"file has {len(buf)} bytes, shorter than the header", offset=len(buf))
    _, version, flags, manifest_len, data_len, _ = HEADER.unpack_from(buf)
    if version not in SUPPORTED_VERSIONS:
        raise _version_error(version)
    if hashlib.sha256(buf[: HEADER.size]).digest() != buf[HEADER.size : HEADER_SIZE]:
        raise KpkgChecksumError(f"header sha256 mismatch (stored at offset {HEADER.size})")
    if flags != 0:
        raise KpkgFormatError(f"unknown header flags {flags:#x} at offset 12", offset=12)
    if manifest_len > limits.max_manifest_bytes:
        raise KpkgLimitError(
            f"manifest of {manifest_len} bytes exceeds {limits.max_manifest_bytes}", offset=16
        )
    if data_len > limits.max_data_bytes:
        raise KpkgLimitError(f"data of {data_len} bytes exceeds {limits.max_data_bytes}", offset=24)
    return version, manifest_len, data_len


def _version_error(version: int) -> KpkgVersionError:
    known = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
    return KpkgVersionError(
        f"unsupported format version {version} at offset 8 (this reader knows {known})", offset=8
    )


def _open(buf: bytes, label: str, limits: Limits) -> Kpkg:
    version, manifest_len, data_len = _check_header(buf, limits)
    data_start = HEADER_SIZE + manifest_len
    trailer_at = data_start + data_len
    expected = trailer_at + TRAILER_SIZE
    if len(buf) < expected:
        raise KpkgTruncated(f"file has {len(buf)} bytes, header declares {expected}")
    if len(buf) > expected:
        raise KpkgFormatError(f"{len(buf) - expected} trailing bytes at offset {expected}")
    magic, file_len = TRAILER.unpack_from(buf, trailer_at)
    if magic != TRAILER_MAGIC:
        raise KpkgFormatError(f"bad trailer magic at offset {trailer_at}", offset=trailer_at)
    if file_len != len(buf):
        raise KpkgFormatError(
            f"trailer at offset {trailer_at} declares {file_len} bytes, file has {len(buf)}"
        )
    raw = buf[HEADER_SIZE:data_start]
    if hashlib.sha256(raw).digest() != buf[HEADER.size - 32 : HEADER.size]:
        raise KpkgChecksumError(f"manifest sha256 mismatch (manifest at offset {HEADER_SIZE})")
    manifest, members = parse_manifest(raw, version, data_len, limits)
    return Kpkg(label, manifest, limits, buf, members, data_start)


def _inflate(buf: bytes, start: int, info: MemberInfo, limits: Limits) -> bytes:
    """Decompress one verified frame, never producing more than ``info.size + 1`` bytes."""
    what = f"member {quote(info.name)} at offset {start}"
    frame = memoryview(buf)[start : start + info.compressed_size]
    if hashlib.sha256(frame).hexdigest() != info.compressed_sha256:
        raise KpkgChecksumError(
            f"{what}: compressed sha256 mismatch", member=info.name, offset=start
        )
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise KpkgFormatError(f"{what}: bad zstd frame: {exc}", member=info.name) from None
    if params.window_size > limits.max_window_bytes:
        raise KpkgLimitError(
            f"{what}: zstd window {params.window_size} exceeds {limits.max_window_bytes}",
            member=info.name,
        )
    if params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, info.size):
        raise KpkgLimitError(
            f"{what}: frame declares {params.content_size} bytes, manifest {info.size}",
            member=info.name,
        )
    out = bytearray()
    dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
    try:
        with dctx.stream_reader(frame, read_size=_CHUNK, read_across_frames=True) as reader:
            while chunk := reader.read(min(_CHUNK, info.size + 1 - len(out))):
                out += chunk
                if len(out) > info.size:
                    raise KpkgLimitError(
                        f"{what}: decompresses beyond its declared {info.size} bytes",
                        member=info.name,
                    )
    except zstandard.ZstdError as exc:
        raise KpkgFormatError(f"{what}: corrupt zstd data: {exc}", member=info.name) from None
    if len(out) != info.size:
        raise KpkgFormatError(
            f"{what}: decompresses to {len(out)} bytes, declared {info.size}", member=info.name
        )
    if hashlib.sha256(out).hexdigest() != info.sha256:
        raise KpkgChecksumError(f"{what}: sha256 mismatch", member=info.name, offset=start)
    return bytes(out)
