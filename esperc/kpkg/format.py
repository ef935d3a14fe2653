"""The .kpkg byte layout, limits, member-name rule and manifest schema checks.

Layout (integers little-endian; see docs/kpkg.md)::

    offset      size  field
    0           8     magic b"\\x89KPKG\\r\\n\\x1a"
    8           4     format version, u32
    12          4     flags, u32, must be 0
    16          8     manifest length M, u64
    24          8     data length D, u64
    32          32    SHA-256 of the manifest bytes
    64          32    SHA-256 of header bytes [0, 64)
    96          M     manifest: UTF-8 TOML
    96+M        D     data: one zstd frame per member, sorted by name, no gaps, no padding
    96+M+D      8     trailer magic b"\\x1aKPKEND\\n"
    104+M+D     8     file length, u64
    112+M+D     32    SHA-256 of every byte before this field

Every byte is covered by a check: header fields by the header SHA-256 (magic and version by
value), the manifest by its SHA-256, the data region by the per-member SHA-256s (members tile it
exactly) and the whole file by the trailer SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import struct
import tomllib
from dataclasses import dataclass
from typing import Any

from esperc.kpkg.errors import (
    KpkgFormatError,
    KpkgLimitError,
    KpkgMemberNameError,
    quote,
)

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAGIC = b"\x89KPKG\r\n\x1a"
TRAILER_MAGIC = b"\x1aKPKEND\n"
HEADER = struct.Struct("<8sIIQQ32s")  # magic, version, flags, manifest len, data len, sha
HEADER_SIZE = HEADER.size + 32  # + SHA-256 of the fields above
TRAILER = struct.Struct("<8sQ")  # magic, file length; then the file SHA-256
TRAILER_SIZE = TRAILER.size + 32
ZSTD_LEVEL = 12

_STEM = r"[a-z][a-z0-9_]{0,63}"
_TARGET = r"sm_[0-9]{2,3}a?"
MEMBER_NAME_RE = re.compile(
    rf"{_STEM}\.(?:esp|eir|txt|json|toml|py)"
    rf"|kernels/{_STEM}\.(?:py|ttir|json)"
    rf"|kernels/{_STEM}\.{_TARGET}\.(?:cubin|ptx|ttgir|llir)"
)
"""Allowed member names, matched with ``fullmatch``. Names are keys, never file-system paths."""

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset(
    {"name", "offset", "compressed_size", "compressed_sha256", "size", "sha256"}
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size bounds checked before anything of that size is allocated. All in bytes.

    Attributes:
        max_manifest_bytes: Manifest TOML size.
        max_members: Number of members.
        max_member_bytes: Declared (raw) size of one member.
        max_member_compressed_bytes: Compressed size of one member (raw bound plus zstd slack).
        max_total_bytes: Sum of declared raw sizes.
        max_data_bytes: Size of the data region (sum of compressed sizes).
        max_window_bytes: zstd window a frame may ask the decoder to allocate.
    """

    max_manifest_bytes: int = 1 << 20
    max_members: int = 4096
    max_member_bytes: int = 256 << 20
    max_member_compressed_bytes: int = 258 << 20
    max_total_bytes: int = 1 << 30
    max_data_bytes: int = (1 << 30) + (16 << 20)
    max_window_bytes: int = 1 << 27

    @property
    def max_file_bytes(self) -> int:
        """Largest file a reader accepts: header, manifest, data and trailer at their bounds."""
        return HEADER_SIZE + self.max_manifest_bytes + self.max_data_bytes + TRAILER_SIZE


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member's entry in the manifest.

    Attributes:
        name: Member name, matching ``MEMBER_NAME_RE``.
        offset: Start of its zstd frame, relative to the data region, in bytes.
        compressed_size: Length of its zstd frame, in bytes.
        compressed_sha256: Lower-case hex SHA-256 of the zstd frame.
        size: Decompressed length, in bytes.
        sha256: Lower-case hex SHA-256 of the decompressed bytes.
    """

    name: str
    offset: int
    compressed_size: int
    compressed_sha256: str
    size: int
    sha256: str

    def to_toml(self) -> dict[str, Any]:
        """The entry as a manifest table."""
        return {
            "name": self.name,
            "offset": self.offset,
            "compressed_size": self.compressed_size,
            "compressed_sha256": self.compressed_sha256,
            "size": self.size,
            "sha256": self.sha256,
        }


def check_member_name(name: object) -> str:
    """Return ``name`` if it is an allowed member name.

    Raises:
        KpkgMemberNameError: ``name`` is not a str or does not fully match ``MEMBER_NAME_RE``
            (this rejects ``..``, absolute paths, backslashes, empty parts, upper case, NUL).
    """
    if not isinstance(name, str) or MEMBER_NAME_RE.fullmatch(name) is None:
        shown = quote(name) if isinstance(name, str) else type(name).__name__
        raise KpkgMemberNameError(f"invalid member name {shown}", member=str(name))
    return name


def pack_header(version: int, manifest: bytes, data_len: int) -> bytes:
    """The 96-byte header for a manifest and a data region of ``data_len`` bytes."""
    fields = HEADER.pack(
        MAGIC, version, 0, len(manifest), data_len, hashlib.sha256(manifest).digest()
    )
    return fields + hashlib.sha256(fields).digest()


def assemble(manifest: bytes, frames: list[bytes], version: int = FORMAT_VERSION) -> bytes:
    """Concatenate header, manifest, frames and trailer into a whole file, checksums included.

    This is the container's lowest layer: it checks nothing about the manifest's content.

    Args:
        manifest: The manifest bytes (UTF-8 TOML).
        frames: The members' zstd frames, in manifest order.
        version: The format version written into the header.

    Returns:
        The file's bytes.
    """
    data_len = sum(len(f) for f in frames)
    body = b"".join([pack_header(version, manifest, data_len), manifest, *frames])
    trailer = TRAILER.pack(TRAILER_MAGIC, len(body) + TRAILER_SIZE)
    file_hash = hashlib.sha256(body)
    file_hash.update(trailer)
    return body + trailer + file_hash.digest()


def _entry_int(entry: dict[str, Any], key: str, name: str) -> int:
    value = entry[key]
    if type(value) is not int or value < 0:
        raise KpkgFormatError(f"member {quote(name)}: '{key}' is not a non-negative integer")
    return value


def _entry_sha(entry: dict[str, Any], key: str, name: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or _SHA_RE.fullmatch(value) is None:
        raise KpkgFormatError(f"member {quote(name)}: '{key}' is not 64 lower-case hex digits")
    return value


def _parse_entry(entry: object, index: int, limits: Limits) -> MemberInfo:
    if not isinstance(entry, dict):
        raise KpkgFormatError(f"members[{index}] is not a table")
    if set(entry) != _ENTRY_KEYS:
        extra = sorted(set(entry) ^ _ENTRY_KEYS)
        raise KpkgFormatError(f"members[{index}]: missing or unknown keys {quote(str(extra))}")
    name = check_member_name(entry["name"])
    info = MemberInfo(
        name=name,
        offset=_entry_int(entry, "offset", name),
        compressed_size=_entry_int(entry, "compressed_size", name),
        compressed_sha256=_entry_sha(entry, "compressed_sha256", name),
        size=_entry_int(entry, "size", name),
        sha256=_entry_sha(entry, "sha256", name),
    )
    if info.size > limits.max_member_bytes:
        raise KpkgLimitError(
            f"member {quote(name)} declares {info.size} bytes (limit {limits.max_member_bytes})",
            member=name,
        )
    if info.compressed_size > limits.max_member_compressed_bytes:
        raise KpkgLimitError(
            f"member {quote(name)} has {info.compressed_size} compressed bytes "
            f"(limit {limits.max_member_compressed_bytes})",
            member=name,
        )
    return info


def parse_members(entries: object, data_len: int, limits: Limits) -> dict[str, MemberInfo]:
    """Validate the manifest's ``members`` array against the data region.

    Args:
        entries: The parsed ``members`` value.
        data_len: Length of the data region, in bytes.
        limits: Size bounds.

    Returns:
        Entries by name, in (sorted) file order.

    Raises:
        KpkgFormatError: Not an array of tables, unknown keys, bad types, names not sorted,
            frames not contiguous from offset 0 to ``data_len``.
        KpkgMemberNameError: A bad or repeated name.
        KpkgLimitError: Too many members or a size over its limit.
    """
    if not isinstance(entries, list):
        raise KpkgFormatError("manifest 'members' is not an array of tables")
    if len(entries) > limits.max_members:
        raise KpkgLimitError(f"{len(entries)} members (limit {limits.max_members})")
    members: dict[str, MemberInfo] = {}
    end = total = 0
    previous = ""
    for index, entry in enumerate(entries):
        info = _parse_entry(entry, index, limits)
        if info.name in members:
            raise KpkgMemberNameError(f"duplicate member {quote(info.name)}", member=info.name)
        if info.name < previous:
            raise KpkgFormatError(f"member {quote(info.name)} is out of sorted order")
        if info.offset != end:
            raise KpkgFormatError(
                f"member {quote(info.name)} starts at data offset {info.offset}, expected {end}",
                member=info.name,
            )
        end += info.compressed_size
        total += info.size
        if total > limits.max_total_bytes:
            raise KpkgLimitError(f"members declare over {limits.max_total_bytes} bytes in all")
        members[info.name] = info
        previous = info.name
    if end != data_len:
        raise KpkgFormatError(f"members cover {end} of {data_len} data bytes")
    return members


def parse_manifest(
    raw: bytes, version: int, data_len: int, limits: Limits
) -> tuple[dict[str, Any], dict[str, MemberInfo]]:
    """Decode and validate a manifest: required keys strictly, the rest left free-form.

    Args:
        raw: The manifest bytes (already length-bounded and checksum-verified).
        version: The header's format version, which ``format_version`` must repeat.
        data_len: Length of the data region, in bytes.
        limits: Size bounds.

    Returns:
        The manifest as a dict, and the member entries by name.

    Raises:
        KpkgFormatError: Not UTF-8 TOML, or a required key missing or malformed.
        KpkgMemberNameError: A bad or repeated member name.
        KpkgLimitError: A size over its limit.
    """
    try:
        manifest = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise KpkgFormatError(f"manifest is not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise KpkgFormatError(f"manifest is not valid TOML: {exc}") from None
    found = manifest.get("format_version")
    if type(found) is not int or found != version:
        raise KpkgFormatError(f"manifest format_version {found!r} differs from header {version}")
    blueprint = manifest.get("blueprint")
    if not isinstance(blueprint, dict) or not isinstance(blueprint.get("name"), str):
        raise KpkgFormatError("manifest has no [blueprint] table with a string 'name'")
    return manifest, parse_members(manifest.get("members"), data_len, limits)
