"""One small real package, built once per test session, and helpers that rewrite it.

``tiny_package()`` compiles ``TINY_ESP`` (a softmax over ``x * w + y`` with two dynamic dims, a
``require`` and a param) for ``sm_90`` without validation and without the kernel cache, and
returns the package's bytes (cached: every caller gets the same build). ``repack`` rebuilds a
valid container with an edited manifest or members; ``craft`` builds one with no checks at all
(bad names, duplicates, lying sizes), for the container's own checks to reject.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tomli_w
import zstandard

from esperc.kpkg import pack_kpkg, read_kpkg
from esperc.kpkg.format import FORMAT_VERSION, assemble

TINY_ESP = """\
blueprint tiny {
  dim N in [1, 64]
  dim D in [2, 32]
  require D % 2 == 0

  input x: bf16[N, D]
  input y: f32[N, D]
  param w: bf16[D]

  return softmax(cast(x * w, f32) + y, axis=-1)
}
"""


@functools.cache
def tiny_package() -> bytes:
    """The bytes of ``TINY_ESP`` compiled to a .kpkg (about 12 KB; built once, ~3 s)."""
    from esperc import build, driver

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "tiny.esp"
        src.write_text(TINY_ESP)
        opts = driver.Options(validate=False, targets=("sm_90",))
        func, _ = driver.compile_ir(src, opts)
        out = Path(d) / "tiny.kpkg"
        build.build_package(src, func, opts, out, None, cache=None)
        return out.read_bytes()


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The caller-side manifest (no ``members``/``format_version``) and members of a package."""
    pkg = read_kpkg(blob, verify=True)
    manifest = copy.deepcopy(pkg.manifest)
    del manifest["members"], manifest["format_version"]
    return manifest, {n: pkg.member(n) for n in pkg.member_names()}


def repack(
    blob: bytes,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    members: dict[str, bytes | None] | None = None,
) -> bytes:
    """A valid container: ``blob`` with its manifest edited in place by ``edit_manifest`` and
    ``members`` replaced (``None`` deletes one)."""
    manifest, current = unpack(blob)
    if edit_manifest is not None:
        edit_manifest(manifest)
    for name, data in (members or {}).items():
        if data is None:
            current.pop(name)
        else:
            current[name] = data
    return pack_kpkg(manifest, current)


def entry(name: str, offset: int, frame: bytes, raw: bytes, **override: Any) -> dict[str, Any]:
    """A member table for ``frame`` (compressed ``raw``) at data ``offset``."""
    e = {
        "name": name,
        "offset": offset,
        "compressed_size": len(frame),
        "compressed_sha256": hashlib.sha256(frame).hexdigest(),
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    e.update(override)
    return e


def craft(
    members: Iterable[tuple[str, bytes]],
    manifest: dict[str, Any] | None = None,
    *,
    frames: dict[str, bytes] | None = None,
    override: dict[str, dict[str, Any]] | None = None,
    version: int = FORMAT_VERSION,
) -> bytes:
    """A container built with no checks: members in the given order, names as given.

    Args:
        members: (name, raw bytes) pairs, written in this order (duplicates allowed).
        manifest: extra manifest tables (``blueprint.name`` defaults to "hostile").
        frames: a zstd frame to store for a member instead of compressing its raw bytes.
        override: member-table fields to replace, by member name.
        version: the header's (and manifest's) format version.
    """
    cctx = zstandard.ZstdCompressor(write_content_size=True)
    frames = frames or {}
    override = override or {}
    entries, blobs, offset = [], [], 0
    for name, raw in members:
        frame = frames.get(name, cctx.compress(raw))
        entries.append(entry(name, offset, frame, raw, **override.get(name, {})))
        blobs.append(frame)
        offset += len(frame)
    full = {"blueprint": {"name": "hostile"}, **(manifest or {}), "format_version": version}
    full["members"] = entries
    return assemble(tomli_w.dumps(full).encode(), blobs, version)
