"""The .kpkg container: one file holding an esperc artifact's manifest and members.

Importable without torch or triton (stdlib, zstandard and tomli-w only). The byte layout,
manifest schema, limits and error exit codes are in docs/kpkg.md.

Example::

    from esperc.kpkg import read_kpkg, write_kpkg

    write_kpkg("out.kpkg", {"blueprint": {"name": "softmax"}}, {"source.esp": src})
    pkg = read_kpkg("out.kpkg")
    src = pkg.member("source.esp")  # verified against its SHA-256
"""

from __future__ import annotations

from esperc.kpkg.errors import (
    KpkgBadMagic,
    KpkgChecksumError,
    KpkgError,
    KpkgFormatError,
    KpkgIOError,
    KpkgLimitError,
    KpkgMemberNameError,
    KpkgMissingMember,
    KpkgTruncated,
    KpkgVersionError,
)
from esperc.kpkg.format import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MEMBER_NAME_RE,
    Limits,
    MemberInfo,
    check_member_name,
)
from esperc.kpkg.reader import Kpkg, read_kpkg
from esperc.kpkg.writer import KpkgWriter, pack_kpkg, write_kpkg

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MEMBER_NAME_RE",
    "Kpkg",
    "KpkgBadMagic",
    "KpkgChecksumError",
    "KpkgError",
    "KpkgFormatError",
    "KpkgIOError",
    "KpkgLimitError",
    "KpkgMemberNameError",
    "KpkgMissingMember",
    "KpkgTruncated",
    "KpkgVersionError",
    "KpkgWriter",
    "Limits",
    "MemberInfo",
    "check_member_name",
    "pack_kpkg",
    "read_kpkg",
    "write_kpkg",
]
