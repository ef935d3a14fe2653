"""The .kpkg error hierarchy: one base class, one subclass per failure kind.

Each class carries a distinct ``exit_code`` (10-19) that the CLI returns when the error escapes.
Messages are one line, lower-case, and name the member and/or file offset involved.
"""

from __future__ import annotations

__all__ = [
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
    "quote",
]


def quote(text: str, limit: int = 80) -> str:
    """Quote untrusted text for a one-line message: ASCII-escaped and shortened.

    Args:
        text: A member name or other value read from a file.
        limit: Longest quoted text kept, in characters, before an ellipsis.

    Returns:
        The quoted text, without newlines or non-ASCII characters.
    """
    shown = ascii(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class KpkgError(Exception):
    """Base class of every .kpkg failure.

    Attributes:
        exit_code: Process exit status the CLI uses for this class.
        path: The file (or ``<bytes>``) the error is about, once known.
        member: The member name involved, if any.
        offset: The byte offset in the file involved, if any.
    """

    exit_code: int = 10

    def __init__(
        self,
        message: str,
        *,
        member: str | None = None,
        offset: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = " ".join(message.split("\n"))
        self.member = member
        self.offset = offset
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class KpkgTruncated(KpkgError):
    """The file ends before the length its header and trailer declare."""

    exit_code = 11


class KpkgBadMagic(KpkgError):
    """The file does not start with the .kpkg magic bytes."""

    exit_code = 12


class KpkgVersionError(KpkgError):
    """The file's format version is not one this reader understands."""

    exit_code = 13


class KpkgChecksumError(KpkgError):
    """A SHA-256 (header, manifest, member or whole file) does not match."""

    exit_code = 14


class KpkgLimitError(KpkgError):
    """A declared or actual size exceeds a limit (see ``Limits``)."""

    exit_code = 15


class KpkgMemberNameError(KpkgError):
    """A member name does not match ``MEMBER_NAME_RE`` or appears twice."""

    exit_code = 16


class KpkgFormatError(KpkgError):
    """A structural error: bad header field, manifest, offsets, zstd data or sizes."""

    exit_code = 17


class KpkgMissingMember(KpkgError, KeyError):
    """A well-formed member name that the package does not contain."""

    exit_code = 18

    def __str__(self) -> str:  # KeyError.__str__ would repr() the message
        return KpkgError.__str__(self)


class KpkgIOError(KpkgError):
    """The operating system failed to read or write the file."""

    exit_code = 19
