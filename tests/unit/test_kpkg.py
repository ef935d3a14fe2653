"""Tests of the .kpkg container: round trip, determinism, atomic writes, names, limits, errors."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import tomllib
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import zstandard

from esperc import kpkg
from esperc.kpkg import (
    FORMAT_VERSION,
    KpkgChecksumError,
    KpkgError,
    KpkgFormatError,
    KpkgIOError,
    KpkgLimitError,
    KpkgMemberNameError,
    KpkgMissingMember,
    KpkgVersionError,
    KpkgWriter,
    Limits,
    pack_kpkg,
    read_kpkg,
    write_kpkg,
)
from esperc.kpkg.format import HEADER_SIZE, assemble

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def sample_manifest() -> dict[str, Any]:
    return {
        "esperc_version": "0.1.0",
        "triton_version": "3.9.0",
        "torch_version": "2.13.0",
        "blueprint": {"name": "softmax", "ir_hash": "ab" * 32},
        "inputs": [{"name": "x", "dtype": "f32", "shape": ["B", "N"]}],
        "guards": {"dims": {"B": [1, 65536]}, "contiguous": ["x"]},
        "kernels": {"softmax_0": {"source": "kernels/softmax_0.py", "config": {"BLOCK_N": 1024}}},
        "perf": [],
    }


def sample_members() -> dict[str, bytes]:
    return {
        "source.esp": b"blueprint softmax(x: f32[B, N]) -> f32[B, N] { return softmax(x) }\n",
        "ir.eir": b"func @softmax(%x: f32[B,N]) -> f32[B,N] {\n}\n",
        "kernels/softmax_0.py": b"import triton\n" * 4,
        "kernels/softmax_0.sm_90a.cubin": bytes(range(256)) * 2,
        "notes.txt": b"",
    }


def frame(data: bytes, **kwargs: Any) -> bytes:
    return zstandard.ZstdCompressor(level=3, **kwargs).compress(data)


def entry(name: str, offset: int, frame_bytes: bytes, raw: bytes, **over: Any) -> dict[str, Any]:
    """A manifest member entry with correct sizes and hashes, then ``over`` applied."""
    return {
        "name": name,
        "offset": offset,
        "compressed_size": len(frame_bytes),
        "compressed_sha256": hashlib.sha256(frame_bytes).hexdigest(),
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        **over,
    }


def craft(entries: list[Any], frames: list[bytes], version: int = FORMAT_VERSION, **top: Any):
    """A package with a hand-made manifest but correct header, manifest and file checksums."""
    manifest = {"format_version": version, "blueprint": {"name": "t"}, **top, "members": entries}
    return assemble(tomli_w.dumps(manifest).encode(), frames, version=version)


def craft_pairs(pairs: list[tuple[str, bytes]]) -> bytes:
    """A package laid out in the given order with the given names, none of them checked."""
    entries, frames, offset = [], [], 0
    for name, raw in pairs:
        f = frame(raw)
        entries.append(entry(name, offset, f, raw))
        frames.append(f)
        offset += len(f)
    return craft(entries, frames)


# -- round trip and determinism ----------------------------------------------------------------


def test_round_trip_bytes() -> None:
    pkg = read_kpkg(pack_kpkg(sample_manifest(), sample_members()), verify=True)
    assert pkg.member_names() == tuple(sorted(sample_members()))
    for name, data in sample_members().items():
        assert pkg.member(name) == data
        assert pkg.info(name).size == len(data)
        assert name in pkg
    manifest = dict(pkg.manifest)
    assert manifest.pop("format_version") == FORMAT_VERSION == pkg.format_version
    assert [m["name"] for m in manifest.pop("members")] == sorted(sample_members())
    assert manifest == sample_manifest()
    assert pkg.verify() == []


def test_round_trip_file_and_writer_class(tmp_path: Path) -> None:
    path = tmp_path / "softmax.kpkg"
    write_kpkg(path, sample_manifest(), sample_members())
    writer = KpkgWriter(sample_manifest())
    for name, data in reversed(sample_members().items()):
        writer.add(name, data)
    assert writer.to_bytes() == path.read_bytes()
    writer.write(tmp_path / "again.kpkg")
    assert (tmp_path / "again.kpkg").read_bytes() == path.read_bytes()
    pkg = read_kpkg(str(path))
    assert pkg.label == str(path)
    assert pkg.member("kernels/softmax_0.sm_90a.cubin") == bytes(range(256)) * 2
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_no_members() -> None:
    pkg = read_kpkg(pack_kpkg({"blueprint": {"name": "empty"}}, {}), verify=True)
    assert pkg.member_names() == ()


def test_deterministic_regardless_of_order() -> None:
    first = pack_kpkg(sample_manifest(), sample_members())
    assert pack_kpkg(sample_manifest(), sample_members()) == first
    reordered_manifest = dict(reversed(sample_manifest().items()))
    reordered_manifest["guards"] = dict(reversed(sample_manifest()["guards"].items()))
    pairs = list(reversed(sample_members().items()))
    assert pack_kpkg(reordered_manifest, pairs) == first
    changed = sample_members() | {"notes.txt": b"x"}
    assert pack_kpkg(sample_manifest(), changed) != first


def test_list_order_is_kept() -> None:
    manifest = sample_manifest() | {"perf": [{"ms": 2.0}, {"ms": 1.0}]}
    pkg = read_kpkg(pack_kpkg(manifest, {}))
    assert pkg.manifest["perf"] == [{"ms": 2.0}, {"ms": 1.0}]


# -- atomic writes -----------------------------------------------------------------------------


def _fail(*args: object) -> None:
    raise OSError(5, "injected failure")


@pytest.mark.parametrize("where", ["fsync", "replace", "write"])
def test_atomic_write_failure_leaves_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "out.kpkg"
    path.write_bytes(b"old content")
    if where == "write":

        class HalfFile:
            def __init__(self, real: Any) -> None:
                self.real = real

            def __enter__(self) -> HalfFile:
                return self

            def __exit__(self, *exc: object) -> None:
                self.real.close()

            def fileno(self) -> int:
                return self.real.fileno()

            def write(self, data: bytes) -> None:
                self.real.write(data[: len(data) // 2])
                self.real.flush()
                raise OSError(28, "no space left on device")

        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfFile(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, where, _fail)
    with pytest.raises(KpkgIOError, match="out.kpkg"):
        write_kpkg(path, sample_manifest(), sample_members())
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["out.kpkg"]


def test_atomic_write_interrupt_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_kpkg(tmp_path / "new.kpkg", sample_manifest(), sample_members())
    assert os.listdir(tmp_path) == []


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KpkgIOError):
        write_kpkg(tmp_path / "nope" / "out.kpkg", sample_manifest(), {})


# -- member names ------------------------------------------------------------------------------

GOOD_NAMES = [
    "source.esp",
    "ir.eir",
    "autotune.json",
    "kernels/softmax_0.py",
    "kernels/k.sm_80.cubin",
    "kernels/k.sm_90a.cubin",
    "kernels/k.sm_100a.ptx",
]
BAD_NAMES = [
    "",
    "..",
    "../source.esp",
    "kernels/../ir.eir",
    "kernels/./a.py",
    "/abs.txt",
    "/etc/passwd",
    "kernels//a.py",
    "kernels\\a.py",
    "a\\b.txt",
    "C:x.txt",
    "Source.esp",
    "source.esp\n",
    "source.esp\x00",
    "a.txt/",
    "kernels/a.py -> /etc/passwd",
    "link@",
    "a.sh",
    "kernels/a.cubin",
    "kernels/a.sm_9.cubin",
    "kernels/x/a.py",
    "ké.txt",
    "a" * 65 + ".txt",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_member_names(name: str) -> None:
    pkg = read_kpkg(pack_kpkg({"blueprint": {"name": "t"}}, {name: b"x"}))
    assert pkg.member(name) == b"x"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_member_names_rejected_by_writer_and_reader(name: str) -> None:
    with pytest.raises(KpkgMemberNameError):
        pack_kpkg({"blueprint": {"name": "t"}}, {name: b"x"})
    with pytest.raises(KpkgMemberNameError):
        KpkgWriter({"blueprint": {"name": "t"}}).add(name, b"x")
    with pytest.raises(KpkgMemberNameError) as info:
        read_kpkg(craft_pairs([(name, b"x")]))
    assert "\n" not in str(info.value)
    pkg = read_kpkg(craft_pairs([]))
    with pytest.raises(KpkgMemberNameError):
        pkg.member(name)


def test_duplicate_members() -> None:
    with pytest.raises(KpkgMemberNameError, match="duplicate"):
        pack_kpkg({"blueprint": {"name": "t"}}, [("a.txt", b"1"), ("a.txt", b"2")])
    writer = KpkgWriter({"blueprint": {"name": "t"}})
    writer.add("a.txt", b"1")
    with pytest.raises(KpkgMemberNameError, match="duplicate"):
        writer.add("a.txt", b"1")
    with pytest.raises(KpkgMemberNameError, match="duplicate"):
        read_kpkg(craft_pairs([("a.txt", b"1"), ("a.txt", b"1")]))


def test_missing_member_is_a_key_error() -> None:
    pkg = read_kpkg(pack_kpkg(sample_manifest(), sample_members()))
    with pytest.raises(KpkgMissingMember, match="'absent.txt'") as info:
        pkg.member("absent.txt")
    assert isinstance(info.value, KeyError)
    assert "absent.txt" not in pkg


# -- manifest ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [
        {},
        {"blueprint": "softmax"},
        {"blueprint": {"ir_hash": "x"}},
        {"blueprint": {"name": "t"}, "members": []},
        {"blueprint": {"name": "t"}, "format_version": FORMAT_VERSION + 1},
        {"blueprint": {"name": "t"}, "x": None},
        {"blueprint": {"name": "t"}, "x": float("nan")},
        {"blueprint": {"name": "t"}, "built": datetime.datetime(2024, 1, 1)},
        {"blueprint": {"name": "t"}, "x": {1: 2}},
        {"blueprint": {"name": "t"}, "x": object()},
    ],
)
def test_writer_rejects_bad_manifest(manifest: dict[str, Any]) -> None:
    with pytest.raises(KpkgFormatError):
        pack_kpkg(manifest, {})


@pytest.mark.parametrize(
    ("top", "entry_over", "error"),
    [
        ({"blueprint": 1}, {}, KpkgFormatError),
        ({}, {"offset": 1}, KpkgFormatError),
        ({}, {"size": -1}, KpkgFormatError),
        ({}, {"size": True}, KpkgFormatError),
        ({}, {"size": 1.0}, KpkgFormatError),
        ({}, {"sha256": "AB" * 32}, KpkgFormatError),
        ({}, {"sha256": "ab"}, KpkgFormatError),
        ({}, {"extra": 1}, KpkgFormatError),
        ({}, {"size": (256 << 20) + 1}, KpkgLimitError),
        ({}, {"compressed_size": 1 << 40}, KpkgLimitError),
    ],
)
def test_reader_rejects_bad_manifest(top: dict, entry_over: dict, error: type) -> None:
    f = frame(b"data")
    with pytest.raises(error):
        read_kpkg(craft([{**entry("a.txt", 0, f, b"data"), **entry_over}], [f], **top))


def test_reader_rejects_layout_errors() -> None:
    fa, fb = frame(b"a"), frame(b"b")
    in_order = [entry("a.txt", 0, fa, b"a"), entry("b.txt", len(fa), fb, b"b")]
    assert read_kpkg(craft(in_order, [fa, fb]), verify=True).member("b.txt") == b"b"
    unsorted = [entry("b.txt", 0, fb, b"b"), entry("a.txt", len(fb), fa, b"a")]
    with pytest.raises(KpkgFormatError, match="sorted"):
        read_kpkg(craft(unsorted, [fb, fa]))
    with pytest.raises(KpkgFormatError, match="cover"):  # a gap: data the manifest misses
        read_kpkg(craft(in_order, [fa, fb, b"hidden"]))
    overlap = [entry("a.txt", 0, fa, b"a"), entry("b.txt", 0, fa, b"a")]
    with pytest.raises(KpkgFormatError, match="offset"):
        read_kpkg(craft(overlap, [fa]))
    with pytest.raises(KpkgFormatError, match="members"):
        read_kpkg(craft({"a": 1}, []))  # type: ignore[arg-type]


def test_manifest_not_toml_or_utf8() -> None:
    for raw in [b"format_version = 1\n[[[", b"\xff\xfe = 1"]:
        with pytest.raises(KpkgFormatError, match="manifest"):
            read_kpkg(assemble(raw, []))
    with pytest.raises(KpkgFormatError, match="format_version"):
        read_kpkg(assemble(b'format_version = 2\n[blueprint]\nname = "t"\nmembers = []\n', []))


# -- versions, checksums, limits ---------------------------------------------------------------


def test_unknown_format_version() -> None:
    with pytest.raises(KpkgVersionError, match="version 2"):
        read_kpkg(craft([], [], version=2))
    short = craft([], [])[:8] + (99).to_bytes(4, "little")
    with pytest.raises(KpkgVersionError, match="99"):
        read_kpkg(short)


def test_member_checksum_checked_lazily() -> None:
    blob = bytearray(pack_kpkg(sample_manifest(), sample_members()))
    pkg = read_kpkg(bytes(blob))
    info = pkg.info("ir.eir")
    at = HEADER_SIZE + len(tomli_w.dumps(pkg.manifest).encode()) + info.offset
    assert pkg._data_start + info.offset == at  # the manifest is canonical: same bytes back
    blob[at + 5] ^= 0x40
    bad = read_kpkg(bytes(blob))  # opening does not read members
    assert bad.member("source.esp") == sample_members()["source.esp"]
    with pytest.raises(KpkgChecksumError, match=f"'ir.eir' at offset {at}"):
        bad.member("ir.eir")
    problems = bad.verify(strict=False)
    assert {type(p) for p in problems} == {KpkgChecksumError}
    assert [p.member for p in problems] == [None, "ir.eir"]  # whole file, then the member
    with pytest.raises(KpkgChecksumError):
        read_kpkg(bytes(blob), verify=True)


def test_raw_checksum_mismatch() -> None:
    f = frame(b"data")
    blob = craft([entry("a.txt", 0, f, b"data", sha256="0" * 64)], [f])
    with pytest.raises(KpkgChecksumError, match="'a.txt'.*sha256"):
        read_kpkg(blob).member("a.txt")


def test_declared_size_must_match() -> None:
    f = frame(b"data", write_content_size=False)
    with pytest.raises(KpkgFormatError, match="decompresses to 4 bytes, declared 5"):
        read_kpkg(craft([entry("a.txt", 0, f, b"data", size=5)], [f])).member("a.txt")
    g = frame(b"data")  # the frame header's content size disagrees
    with pytest.raises(KpkgLimitError, match="frame declares 4"):
        read_kpkg(craft([entry("a.txt", 0, g, b"data", size=3)], [g])).member("a.txt")


def test_oversized_manifest() -> None:
    big = {"blueprint": {"name": "t"}, "pad": "x" * (1 << 20)}
    with pytest.raises(KpkgLimitError, match="manifest"):
        pack_kpkg(big, {})
    raw = tomli_w.dumps({"format_version": 1, **big, "members": []}).encode()
    with pytest.raises(KpkgLimitError, match="manifest"):
        read_kpkg(assemble(raw, []))
    assert read_kpkg(assemble(raw, []), limits=Limits(max_manifest_bytes=2 << 20))


def test_too_many_members() -> None:
    f = frame(b"")
    entries = [entry(f"m{i:04d}.txt", i * len(f), f, b"") for i in range(4097)]
    with pytest.raises(KpkgLimitError, match="4097 members"):
        read_kpkg(craft(entries, [f] * 4097))
    with pytest.raises(KpkgLimitError, match="members"):
        pack_kpkg({"blueprint": {"name": "t"}}, sample_members(), limits=Limits(max_members=2))


def test_total_size_limit() -> None:
    limits = Limits(max_member_bytes=10, max_total_bytes=15)
    members = {"a.txt": b"x" * 8, "b.txt": b"y" * 8}
    with pytest.raises(KpkgLimitError):
        pack_kpkg({"blueprint": {"name": "t"}}, members, limits=limits)
    blob = pack_kpkg({"blueprint": {"name": "t"}}, members)
    with pytest.raises(KpkgLimitError, match="in all"):
        read_kpkg(blob, limits=limits)
    with pytest.raises(KpkgLimitError, match="file"):
        read_kpkg(blob, limits=Limits(max_manifest_bytes=10, max_data_bytes=10))


def _bomb(raw_size: int, **kwargs: Any) -> bytes:
    """A frame of ``raw_size`` zero bytes, compressed without holding them in memory."""
    cobj = zstandard.ZstdCompressor(level=1, **kwargs).compressobj()
    zeros = bytes(MiB)
    parts = [cobj.compress(zeros) for _ in range(raw_size // MiB)]
    return b"".join([*parts, cobj.flush()])


def test_decompression_bomb_fails_without_allocating() -> None:
    bomb = _bomb(512 * MiB)  # no content size in the frame header: only streaming catches it
    blob = craft([entry("a.txt", 0, bomb, b"small")], [bomb])
    pkg = read_kpkg(blob)
    tracemalloc.start()
    try:
        with pytest.raises(KpkgLimitError, match="beyond its declared 5 bytes"):
            pkg.member("a.txt")
        with pytest.raises(KpkgLimitError):
            pkg.verify()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB


def test_member_declaring_over_limit_fails_at_open() -> None:
    f = frame(b"x")
    blob = craft([entry("a.txt", 0, f, b"x", size=300 * MiB)], [f])
    tracemalloc.start()
    try:
        with pytest.raises(KpkgLimitError, match="declares 314572800 bytes"):
            read_kpkg(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB


def test_huge_zstd_window_rejected() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=28)
    f = zstandard.ZstdCompressor(compression_params=params).compressobj()
    big = f.compress(b"abc") + f.flush()
    assert zstandard.get_frame_parameters(big).window_size == 1 << 28
    with pytest.raises(KpkgLimitError, match="window"):
        read_kpkg(craft([entry("a.txt", 0, big, b"abc")], [big])).member("a.txt")


def test_bad_zstd_frame() -> None:
    junk = b"not a zstd frame"
    with pytest.raises(KpkgFormatError, match="zstd"):
        read_kpkg(craft([entry("a.txt", 0, junk, b"x")], [junk])).member("a.txt")
    two = frame(b"ab") + b"garbage"
    with pytest.raises(KpkgFormatError, match="zstd"):
        read_kpkg(craft([entry("a.txt", 0, two, b"ab")], [two])).member("a.txt")


# -- sources, errors, imports ------------------------------------------------------------------


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(KpkgIOError, match="missing.kpkg"):
        read_kpkg(tmp_path / "missing.kpkg")
    with pytest.raises(KpkgIOError):
        read_kpkg(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(KpkgIOError, match="regular"):
            read_kpkg("/dev/zero")


def test_error_classes_have_distinct_exit_codes() -> None:
    classes = [c for c in vars(kpkg).values() if isinstance(c, type) and issubclass(c, KpkgError)]
    codes = [c.exit_code for c in classes]
    assert len(classes) == 10
    assert sorted(codes) == list(range(10, 20))


def test_error_names_path_and_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.kpkg"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(KpkgError) as info:
        read_kpkg(path)
    assert str(info.value).startswith(f"{path}: ")
    assert info.value.exit_code == 12 and info.value.offset == 0


def test_import_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, esperc.kpkg\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'triton', 'numpy'})\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_docs_example_manifest_is_accepted() -> None:
    text = (REPO / "docs" / "kpkg.md").read_text()
    example = text.split("```toml\n", 1)[1].split("[[members]]", 1)[0]
    manifest = tomllib.loads(example)
    members = {m: b"" for m in ("source.esp", "ir.eir", "kernels/softmax_0.py")}
    pkg = read_kpkg(pack_kpkg(manifest, members), verify=True)
    assert pkg.manifest["kernels"]["softmax_0"]["cubins"] == {
        "sm_90a": "kernels/softmax_0.sm_90a.cubin"
    }
