"""Hostile and broken .kpkg input never crashes esperc (issue "Robustness", part 2).

A real package (``pkg_fixtures.tiny_package``) is truncated at every offset, has bytes flipped,
carries a decompression bomb, an oversized manifest, path-like and duplicated member names, an
unknown version, lying checksums, and intact containers with wrong content. Every case must fail
with a specific ``KpkgError`` subclass from ``esperc.load`` (never another exception type),
and with that class's exit status (10-19) and one line on stderr from the CLI, never exit 3.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import zstandard
from pkg_fixtures import craft, entry, repack, tiny_package, unpack

import esperc
from esperc.cli import app as cli_app
from esperc.cli import main as cli_main
from esperc.kpkg import (
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
    read_kpkg,
)
from esperc.kpkg.format import HEADER, HEADER_SIZE, TRAILER_SIZE, assemble
from esperc.runtime.artifact import PackageContentError
from esperc.runtime.packaged import compiled_kernel_from_manifest

SPECIFIC = (
    KpkgTruncated, KpkgBadMagic, KpkgVersionError, KpkgChecksumError, KpkgLimitError,
    KpkgMemberNameError, KpkgFormatError, KpkgMissingMember, KpkgIOError, PackageContentError,
)  # fmt: skip
KERNEL = "tiny_k0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def blob() -> bytes:
    return tiny_package()


def load_fails(data: bytes | Path, cls: type[KpkgError] = KpkgError) -> KpkgError:
    """``esperc.load`` raises a specific subclass of ``cls`` with a one-line message."""
    with pytest.raises(KpkgError) as info:
        esperc.load(data)
    err = info.value
    assert isinstance(err, cls) and type(err) in SPECIFIC, repr(err)
    assert "\n" not in str(err) and len(str(err)) < 400, str(err)
    return err


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the esperc CLI in this process; returns (exit status, stdout, stderr)."""
    # main() registers its sub-commands on every call: drop them again, or typer rebuilds an
    # ever longer command list (each call slower than the last).
    n_cmds, n_groups = len(cli_app.registered_commands), len(cli_app.registered_groups)
    try:
        with pytest.raises(SystemExit) as info:
            cli_main(list(argv))
    finally:
        del cli_app.registered_commands[n_cmds:], cli_app.registered_groups[n_groups:]
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def cli_fails(capsys: pytest.CaptureFixture[str], code: int, *argv: str) -> str:
    """The command exits ``code`` with exactly one line on stderr and no traceback."""
    status, _, err = cli(capsys, *argv)
    assert status == code, (status, err)
    assert err.count("\n") == 1 and "Traceback" not in err and "internal" not in err, err
    return err


def write(tmp_path: Path, data: bytes, name: str = "x.kpkg") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def layout(blob: bytes) -> tuple[int, int]:
    """(manifest length, data length) from the header."""
    _, _, _, m, d, _ = HEADER.unpack_from(blob)
    return m, d


def rehash_header(buf: bytearray) -> bytes:
    """Recompute the header SHA-256 after editing header fields (the rest stays as it is)."""
    buf[HEADER.size : HEADER_SIZE] = hashlib.sha256(bytes(buf[: HEADER.size])).digest()
    return bytes(buf)


# ------------------------------------------------------------------ truncation and bit flips


def test_sample_loads_and_runs(blob: bytes) -> None:
    art = esperc.load(blob)
    assert art.name == "tiny" and len(blob) > 8000


def test_truncated_at_every_offset(blob: bytes) -> None:
    for n in range(len(blob)):
        with pytest.raises(KpkgTruncated):
            read_kpkg(blob[:n])
        with pytest.raises(KpkgTruncated):
            esperc.load(blob[:n])


def test_truncated_file_cli_sampled(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, _ = layout(blob)
    fixed = [0, 1, 8, 12, 95, 96, 96 + m - 1, 96 + m, len(blob) - TRAILER_SIZE, len(blob) - 1]
    offsets = fixed + random.Random(0).sample(range(len(blob)), 30)
    for n in offsets:
        path = write(tmp_path, blob[:n])
        err = cli_fails(capsys, KpkgTruncated.exit_code, "inspect", str(path), "--verify")
        assert str(path) in err
        cli_fails(capsys, KpkgTruncated.exit_code, "run", str(path))


def test_every_header_manifest_trailer_byte_flipped(blob: bytes) -> None:
    m, d = layout(blob)
    offsets = [*range(HEADER_SIZE + m), *range(HEADER_SIZE + m + d, len(blob))]
    for offset in offsets:
        for mask in (0x01, 0xFF) if offset < HEADER_SIZE else (0x20,):
            bad = bytearray(blob)
            bad[offset] ^= mask
            load_fails(bytes(bad))


def test_flipped_bytes_sampled_over_the_file(blob: bytes) -> None:
    rng = random.Random(1)
    for _ in range(2000):
        bad = bytearray(blob)
        bad[rng.randrange(len(blob))] ^= rng.randrange(1, 256)
        load_fails(bytes(bad))


def test_flipped_bytes_cli_sampled(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(2)
    for offset in [0, 8, 12, 20, 40, 70, 100, len(blob) - 40, len(blob) - 1] + rng.sample(
        range(len(blob)), 11
    ):
        bad = bytearray(blob)
        bad[offset] ^= 0x10
        path = write(tmp_path, bytes(bad))
        status, _, err = cli(capsys, "inspect", str(path), "--verify")
        assert 11 <= status <= 19 and err.count("\n") == 1 and "Traceback" not in err, err


def test_processes_exit_cleanly(blob: bytes, tmp_path: Path) -> None:
    """Real processes (the in-process tests cannot see what a fresh interpreter prints)."""
    trunc = write(tmp_path, blob[: len(blob) // 2], "trunc.kpkg")
    bad_inputs = _safetensors(tmp_path, x="f32")
    exe = [sys.executable, "-m", "esperc"]
    env = {**os.environ, "ESPERC_NO_CACHE": "1"}
    runs = {  # two processes at once: each spends ~3 s importing torch
        KpkgTruncated.exit_code: [*exe, "inspect", str(trunc), "--verify"],
        1: [*exe, "run", str(write(tmp_path, blob, "ok.kpkg")), "--inputs", str(bad_inputs)],
    }
    procs = {
        code: subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True
        )  # fmt: skip
        for code, cmd in runs.items()
    }
    for code, p in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode == code, (code, err)
        assert "Traceback" not in err and "internal compiler error" not in err, err
        if code == 1:
            assert "[E0501]" in err and "x" in err, err
        else:
            assert err.count("\n") == 1, err


def _safetensors(tmp_path: Path, **dtypes: str) -> Path:
    import torch
    from safetensors.torch import save_file

    dt = {"bf16": torch.bfloat16, "f32": torch.float32}
    want = {"x": "bf16", "y": "f32", "w": "bf16", **dtypes}
    shapes = {"x": (3, 4), "y": (3, 4), "w": (4,)}
    path = tmp_path / "in.safetensors"
    save_file({k: torch.ones(shapes[k], dtype=dt[v]) for k, v in want.items()}, str(path))
    return path


def test_run_inputs_wrong_dtype_is_e0501(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, blob)
    for bad in ({"x": "f32"}, {"w": "f32"}, {"y": "bf16"}):
        status, _, err = cli(
            capsys, "run", str(path), "--inputs", str(_safetensors(tmp_path, **bad))
        )
        assert status == 1 and "[E0501]" in err and "Traceback" not in err, err
        assert next(iter(bad)) in err
    status, out, _ = cli(capsys, "run", str(path), "--inputs", str(_safetensors(tmp_path)))
    assert status == 0 and "triton interpreter" in out


# ------------------------------------------------------------------ sizes: bombs and limits


def _bomb_frame(n: int) -> bytes:
    """A zstd frame of ``n`` zero bytes that does not state its content size."""
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    return cobj.compress(bytes(n)) + cobj.flush()


def _bounded(fn: Callable[[], Any], limit: int) -> None:
    """``fn`` raises a KpkgError having allocated at most ``limit`` bytes (Python heap)."""
    tracemalloc.start()
    try:
        with pytest.raises(KpkgError):
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, peak


def test_decompression_bomb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = _bomb_frame(64 << 20)  # 2 KB that inflate to 64 MiB
    declared = b"x" * 1000
    bomb = craft([("source.esp", declared)], frames={"source.esp": frame})
    assert len(bomb) < 8192
    _bounded(lambda: esperc.load(bomb), 1 << 20)
    assert "beyond its declared" in str(load_fails(bomb, KpkgLimitError))
    cli_fails(capsys, KpkgLimitError.exit_code, "inspect", str(write(tmp_path, bomb)), "--verify")
    # The frame states a content size other than the manifest's: rejected before inflating.
    big = zstandard.ZstdCompressor(level=1).compress(bytes(16 << 20))
    load_fails(craft([("source.esp", declared)], frames={"source.esp": big}), KpkgLimitError)


def test_zstd_window_over_limit() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=28, write_content_size=0)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = cobj.compress(b"a" * 100) + cobj.flush()
    bad = craft([("source.esp", b"a" * 100)], frames={"source.esp": frame})
    assert "window" in str(load_fails(bad, KpkgLimitError))


def _header_claiming(manifest_len: int, data_len: int) -> bytes:
    fields = HEADER.pack(b"\x89KPKG\r\n\x1a", 1, 0, manifest_len, data_len, bytes(32))
    return fields + hashlib.sha256(fields).digest()


def test_oversized_manifest_and_sizes(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real 1.2 MiB manifest.
    padded = craft([("source.esp", b"x")], {"pad": "p" * (1200 << 10)})
    load_fails(padded, KpkgLimitError)
    cli_fails(capsys, KpkgLimitError.exit_code, "inspect", str(write(tmp_path, padded)))
    # Headers that claim huge lengths: rejected before anything of that size is allocated.
    for m, d in ((1 << 62, 0), (0, 1 << 62), (2 << 20, 10), ((1 << 64) - 1, (1 << 64) - 1)):
        lying = _header_claiming(m, d) + b"\0" * 200
        _bounded(lambda b=lying: esperc.load(b), 64 << 10)
        load_fails(lying, KpkgLimitError)
    # A member declaring 1 TiB, and too many members.
    raw = b"x"
    huge = craft([("source.esp", raw)], override={"source.esp": {"size": 1 << 40}})
    load_fails(huge, KpkgLimitError)
    many = craft([(f"m{i:05d}.txt", b"") for i in range(4100)])
    _bounded(lambda: esperc.load(many), 16 << 20)
    load_fails(many, KpkgLimitError)
    # A 2 GiB sparse file: refused from its size, not read.
    sparse = tmp_path / "sparse.kpkg"
    with open(sparse, "wb") as f:
        f.truncate(2 << 30)
    _bounded(lambda: esperc.load(sparse), 64 << 10)
    load_fails(sparse, KpkgLimitError)
    cli_fails(capsys, KpkgLimitError.exit_code, "inspect", str(sparse))


def test_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (tmp_path, tmp_path / "absent.kpkg"):
        load_fails(path, KpkgIOError)
        cli_fails(capsys, KpkgIOError.exit_code, "inspect", str(path))
    for junk in (b"", b"PK\x03\x04zip", b"\x89PNG\r\n\x1a\n" + bytes(200), b"\x89KPKG\r\n\x1a"):
        load_fails(junk)
        cli_fails(capsys, load_fails(junk).exit_code, "inspect", str(write(tmp_path, junk)))


# ------------------------------------------------------------------ names, duplicates, version

HOSTILE_NAMES = [
    "../evil.py", "kernels/../../evil.py", "/etc/passwd", "/tmp/evil.py", "kernels\\evil.py",
    "..\\evil.py", "C:/evil.py", "c:evil.py", "./source.esp", "kernels//x.py", "kernels/",
    "kernels/a/b.py", "", ".", "..", "Source.esp", "x.py\n", "x.py\x00", "x\u2024py", "~/.bashrc",
    "kernels/x.py/..", "x" * 300 + ".py",
]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_path_like_member_names(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = craft([("ir.eir", b"ir"), (name, b"print('pwned')\n")])
    err = load_fails(bad, KpkgMemberNameError)
    assert "\n" not in str(err)
    cli_fails(capsys, KpkgMemberNameError.exit_code, "inspect", str(write(tmp_path, bad)))


def test_no_member_touches_the_file_system_by_its_name(
    blob: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading and running a package opens no path derived from a member name, and leaves no
    file behind; hostile names are rejected before anything is opened."""
    import torch

    names = set(read_kpkg(blob).member_names()) | set(HOSTILE_NAMES[:12])
    opened: list[str] = []

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(file: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(os.fsdecode(file) if isinstance(file, str | bytes | os.PathLike) else "")
            return real(file, *args, **kwargs)

        return wrapper

    package = write(tmp_path, blob, "pkg.kpkg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    art = esperc.load(package)
    art(
        torch.ones(2, 4, dtype=torch.bfloat16),
        torch.ones(2, 4),
        torch.ones(4, dtype=torch.bfloat16),
    )
    for name in HOSTILE_NAMES[:12]:
        with pytest.raises(KpkgMemberNameError):
            esperc.load(craft([(name, b"x")]))
    touched = [p for p in opened if any(n and p.endswith(n) for n in names)]
    assert touched == [] and sorted(os.listdir(tmp_path)) == ["pkg.kpkg"], touched


def test_duplicated_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for members in (
        [("ir.eir", b"a"), ("ir.eir", b"a")],
        [("ir.eir", b"a"), ("ir.eir", b"b")],
        [("a.txt", b""), ("ir.eir", b"a"), ("ir.eir", b"")],
    ):
        bad = craft(members)
        assert "duplicate" in str(load_fails(bad, KpkgMemberNameError))
        cli_fails(capsys, KpkgMemberNameError.exit_code, "inspect", str(write(tmp_path, bad)))
    load_fails(craft([("z.txt", b""), ("a.txt", b"")]), KpkgFormatError)  # out of order


def test_unknown_format_version(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in (0, 2, 99, 0xFFFFFFFF):
        buf = bytearray(blob)
        struct.pack_into("<I", buf, 8, version)
        for data in (bytes(buf), rehash_header(buf), bytes(buf[:20])):
            assert f"version {version}" in str(load_fails(data, KpkgVersionError))
        path = write(tmp_path, rehash_header(buf))
        cli_fails(capsys, KpkgVersionError.exit_code, "inspect", str(path), "--verify")
    # A whole future-version file built consistently, and a manifest that disagrees.
    load_fails(craft([("ir.eir", b"")], version=2), KpkgVersionError)
    # A version-1 file whose manifest claims version 2.
    manifest, _ = unpack(blob)
    full = {**manifest, "format_version": 2, "members": read_kpkg(blob).manifest["members"]}
    m, d = layout(blob)
    frames = [blob[HEADER_SIZE + m : HEADER_SIZE + m + d]]
    load_fails(assemble(tomli_w.dumps(full).encode(), frames), KpkgFormatError)


# ------------------------------------------------------------------ checksums and targets


@pytest.mark.parametrize("field", ["sha256", "compressed_sha256", "size", "compressed_size"])
def test_manifest_checksums_and_sizes_that_lie(
    field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, members = unpack(tiny_package())
    pairs = sorted(members.items())
    for victim, raw in pairs:
        cctx = zstandard.ZstdCompressor(write_content_size=True)
        frame = cctx.compress(raw)
        value: Any = "0" * 64 if "sha" in field else entry(victim, 0, frame, raw)[field] + 1
        bad = craft(pairs, manifest, override={victim: {field: value}})
        err = load_fails(bad)
        want = {
            "sha256": KpkgChecksumError,
            "compressed_sha256": KpkgChecksumError,
            "size": (KpkgLimitError, KpkgFormatError),
            "compressed_size": KpkgFormatError,  # frames no longer tile the data region
        }[field]
        assert isinstance(err, want), err
        code = cli(capsys, "inspect", str(write(tmp_path, bad)), "--verify")[0]
        assert code == err.exit_code


def test_cubin_missing_for_a_listed_target(blob: bytes) -> None:
    def add_sm80(m: dict[str, Any]) -> None:
        m["targets"] = ["sm_80", "sm_90"]
        t = dict(m["kernels"][KERNEL]["targets"]["sm_90"])
        t["cubin"] = f"kernels/{KERNEL}.sm_80.cubin"  # no such member
        m["kernels"][KERNEL]["targets"]["sm_80"] = t

    data = repack(blob, add_sm80)
    art = esperc.load(data)
    kernel = art.manifest["kernels"][KERNEL]
    with pytest.raises(KpkgMissingMember, match="sm_80.cubin"):
        compiled_kernel_from_manifest(art.package, KERNEL, kernel, "sm_80")
    with pytest.raises(KpkgMissingMember):
        art._cubins("sm_80")  # noqa: SLF001 - what a call on an sm_80 GPU does first
    # An arch the kernel table does not have at all: a content error, not a KeyError.
    with pytest.raises(PackageContentError, match="sm_100"):
        art._cubins("sm_100")  # noqa: SLF001
    ck = compiled_kernel_from_manifest(art.package, KERNEL, kernel, "sm_90")
    assert ck.target == "sm_90" and ck.cubin[:4] == b"\x7fELF"


# ------------------------------------------------------------------ intact container, bad content


def _with_module(blob: bytes, source: bytes) -> bytes:
    return repack(blob, members={"kernels/module.py": source})


def _plan(blob: bytes, edit: Callable[[Any], Any]) -> bytes:
    plan = json.loads(unpack(blob)[1]["plan.json"])
    return repack(blob, members={"plan.json": json.dumps(edit(plan)).encode()})


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        if value is _DELETE:
            del m[last]
        else:
            m[last] = value

    return edit


_DELETE = object()

LOAD_CASES: dict[str, tuple[Callable[[bytes], bytes], type[KpkgError]]] = {
    "no plan.json": (lambda b: repack(b, members={"plan.json": None}), KpkgMissingMember),
    "no 'plan' key": (lambda b: repack(b, _set("plan", _DELETE)), PackageContentError),
    "plan names a bad member": (lambda b: repack(b, _set("plan", "../p.json")), KpkgMemberNameError),
    "plan unknown __type__": (
        lambda b: _plan(b, lambda p: {**p, "__type__": "os.system"}), PackageContentError),
    "plan step unknown __type__": (
        lambda b: _plan(b, lambda p: {**p, "steps": [{"__type__": "Evil"}]}), PackageContentError),
    "plan not json": (lambda b: repack(b, members={"plan.json": b"{not json"}), PackageContentError),
    "plan a list": (lambda b: repack(b, members={"plan.json": b"[1, 2]"}), PackageContentError),
    "plan not utf-8": (lambda b: repack(b, members={"plan.json": b"\xff\xfe"}), PackageContentError),
    "plan wrong results": (
        lambda b: _plan(b, lambda p: {**p, "results": ["nope"]}), PackageContentError),
    "plan step is a binding": (
        lambda b: _plan(b, lambda p: {**p, "steps": p["bindings"]}), PackageContentError),
    "plan steps a string": (
        lambda b: _plan(b, lambda p: {**p, "steps": "x"}), PackageContentError),
    "no ir.eir": (lambda b: repack(b, members={"ir.eir": None}), KpkgMissingMember),
    "ir does not parse": (
        lambda b: repack(b, members={"ir.eir": b"func @f(%x: f32[) {\n"}), PackageContentError),
    "ir empty": (lambda b: repack(b, members={"ir.eir": b""}), PackageContentError),
    "ir not utf-8": (lambda b: repack(b, members={"ir.eir": b"\xc3\x28"}), PackageContentError),
    "ir deeply nested": (
        lambda b: repack(b, members={"ir.eir": b"(" * 100_000}), PackageContentError),
    "blueprint.ir an int": (lambda b: repack(b, _set("blueprint.ir", 7)), KpkgMemberNameError),
    "kernels a string": (lambda b: repack(b, _set("kernels", "x")), PackageContentError),
    "kernel validation a string": (
        lambda b: repack(b, _set(f"kernels.{KERNEL}.validation", "fail")), PackageContentError),
    "kernel without region": (
        lambda b: repack(b, _set(f"kernels.{KERNEL}.region", _DELETE)), PackageContentError),
    "targets a table": (lambda b: repack(b, _set("targets", {"a": 1})), PackageContentError),
    "module an int": (lambda b: repack(b, _set("module", 3)), PackageContentError),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_content_errors_at_load(
    case: str, blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, cls = LOAD_CASES[case]
    data = make(blob)
    read_kpkg(data, verify=True)  # the container itself is intact
    err = load_fails(data, cls)
    assert type(err) is cls
    path = write(tmp_path, data)
    cli_fails(capsys, cls.exit_code, "run", str(path))


CALL_CASES: dict[str, tuple[Callable[[bytes], bytes], type[KpkgError], str]] = {
    "module syntax error": (lambda b: _with_module(b, b"def broken(:\n"), PackageContentError,
                            "SyntaxError"),
    "module not utf-8": (lambda b: _with_module(b, b"\xff\xfe\x00"), PackageContentError, "utf"),
    "module raises": (lambda b: _with_module(b, b"raise RuntimeError('boom')\n"),
                      PackageContentError, "boom"),
    "module lacks the kernel": (lambda b: _with_module(b, b"x = 1\n"), PackageContentError,
                                KERNEL),
    "module kernel not callable": (lambda b: _with_module(b, f"{KERNEL} = 1\n".encode()),
                                   PackageContentError, KERNEL),
    "module member missing": (lambda b: repack(b, members={"kernels/module.py": None}),
                              KpkgMissingMember, "module.py"),
    "no 'module' key": (lambda b: repack(b, _set("module", _DELETE)), PackageContentError,
                        "module"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CALL_CASES))
def test_content_errors_at_call(
    case: str, blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The packaged Triton module is only executed when the interpreter runs it; one that does
    not load is a PackageContentError at every call, never a SyntaxError or KeyError."""
    import torch

    make, cls, needle = CALL_CASES[case]
    data = make(blob)
    art = esperc.load(data)
    args = (torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(2, 4),
            torch.ones(4, dtype=torch.bfloat16))  # fmt: skip
    for _ in range(2):
        with pytest.raises(KpkgError) as info:
            art(*args)
        assert type(info.value) is cls and needle in str(info.value), info.value
        assert "\n" not in str(info.value)
    cli_fails(capsys, cls.exit_code, "run", str(write(tmp_path, data)))


def test_kernel_source_member_missing(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = repack(blob, _set(f"kernels.{KERNEL}.source", "kernels/gone.py"))
    esperc.load(data)  # the runtime runs the module, not the per-kernel source
    path = write(tmp_path, data)
    err = cli_fails(capsys, KpkgMissingMember.exit_code, "inspect", str(path), "--source", KERNEL)
    assert "gone.py" in err
    data = repack(blob, _set(f"kernels.{KERNEL}.source", "../gone.py"))
    path = write(tmp_path, data)
    cli_fails(capsys, KpkgMemberNameError.exit_code, "inspect", str(path), "--source", KERNEL)


def _inspect(capsys: pytest.CaptureFixture[str], path: Path, *argv: str) -> tuple[int, str]:
    """``esperc inspect PATH [--ir | --source K]`` without typer's per-call set-up (~30 ms):
    the command's body inside the same ``UI.guard`` that maps its errors to exit statuses."""
    from esperc.cli_io import UI, ColorMode
    from esperc.cli_kpkg import run_inspect

    source = argv[1] if argv[:1] == ("--source",) else None
    status = 0
    try:
        with UI.make(ColorMode.never, False).guard():
            run_inspect(UI.make(ColorMode.never, False), path, source, "--ir" in argv, False)
    except SystemExit as e:
        status = int(e.code or 0)
    return status, capsys.readouterr().err


def test_inspect_survives_odd_manifest_values(
    blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest beyond the container's schema is free-form TOML: ``inspect`` prints it or
    reports it as malformed (exit 17), never crashes."""
    manifest, _ = unpack(blob)
    paths = [k for k in manifest if k != "blueprint"] + [
        "blueprint.ir_hash", "blueprint.ir", f"kernels.{KERNEL}", f"kernels.{KERNEL}.config",
        f"kernels.{KERNEL}.targets", f"kernels.{KERNEL}.region_attrs", "guards.dims",
        "guards.require", "guards.dims.N",
    ]  # fmt: skip
    tried = 0
    for key in paths:
        extra = ["--ir"] if key.startswith("blueprint") else ["--source", KERNEL]
        for value in (7, "x", [], [1, 2, 3], {"a": {"b": 1}}, _DELETE):
            path = write(tmp_path, repack(blob, _set(key, value)))
            for argv in ([], extra) if key.startswith(("blueprint", "kernels")) else ([],):
                status, err = _inspect(capsys, path, *argv)
                assert status in (0, 1, 16, 17, 18), (key, value, argv, err)
                assert "Traceback" not in err and "internal" not in err, (key, value, argv, err)
                tried += 1
    assert tried > 150, tried
    # Members that are not UTF-8 where inspect prints them.
    for member in ("ir.eir", "kernels/module.py"):
        path = write(tmp_path, repack(blob, members={member: b"\xff\xfe bad"}))
        for argv in (["--ir"], ["--source", KERNEL]):
            status, _, err = cli(capsys, "inspect", str(path), *argv)
            assert status == 0 and "Traceback" not in err, err
