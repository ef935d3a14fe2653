"""The kernel cache: keys, put/get, verification of reads, explain, ls/size/clear, the in-memory
LRU, the ``esperc cache`` commands, and ``esperc compile`` answered from the cache."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from esperc import driver
from esperc.cache import BytesLRU, CacheKey, KernelCache, read_file_cached
from esperc.cache.key import _dist_info_version
from esperc.cli_fast import compile_hit, parse_plain_compile, resolve_targets
from esperc.cli_tune import cache_key_for, register
from esperc.kpkg import FORMAT_VERSION, KpkgError, pack_kpkg, read_kpkg
from esperc.runtime import cuda_driver

SOURCE = b"blueprint tiny(x: f32[N]) -> f32[N] { return x }\n"
VERSIONS = {"esperc": "0.1.0", "triton": "3.9.0", "torch": "2.13.0"}


def _key(source: bytes = SOURCE, **changes) -> CacheKey:
    opts = driver.Options(blueprint="tiny", overrides={"eps": "1e-5"}, pipeline="dce,fuse")
    versions = {**VERSIONS, **changes.pop("versions", {})}
    for name, value in changes.items():
        setattr(opts, name, value)
    return CacheKey.build(source, opts, versions=versions)


def _pkg(tag: str = "a", size: int = 2000) -> bytes:
    return pack_kpkg({"blueprint": {"name": "tiny"}}, {"source.esp": SOURCE,
                     "kernels/k.py": (tag * size).encode()})  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path) -> KernelCache:
    return KernelCache(tmp_path)


# ----- keys --------------------------------------------------------------------------------------


def test_key_digest_is_stable_and_covers_every_field() -> None:
    base = _key()
    assert base.digest() == _key().digest() and len(base.digest()) == 64
    variants = [
        _key(SOURCE + b" "), _key(blueprint="other"), _key(overrides={"eps": "1e-6"}),
        _key(pipeline="dce"), _key(targets=("sm_90", "sm_80")), _key(targets=("sm_80",)),
        _key(validate=False), _key(backward=True), _key(versions={"triton": "3.8.0"}), _key(versions={"torch": "2.12"}),
        _key(versions={"esperc": "0.2.0"}), dataclasses.replace(base, format_version=FORMAT_VERSION + 1),
        CacheKey.build(SOURCE, driver.Options(blueprint="tiny", overrides={"eps": "1e-5"},
                       pipeline="dce,fuse"), versions=VERSIONS, extra={"budget": "60"}),
    ]  # fmt: skip
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests


def test_key_ignores_override_order_and_round_trips_through_dicts() -> None:
    a = _key(overrides={"a": "1", "b": "2"})
    b = _key(overrides={"b": "2", "a": "1"})
    assert a == b and a.digest() == b.digest()
    assert CacheKey.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert a.describe().splitlines()[0] == f"digest: {a.digest()}"
    assert "validate: true" in a.describe()
    assert [f for f, _, _ in _key().diff(_key(validate=False, pipeline="x"))] == [
        "pipeline",
        "validate",
    ]


def test_versions_come_from_dist_info_as_importlib_metadata_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("torch", "triton"):
        assert _dist_info_version(name) == importlib.metadata.version(name)
    info = tmp_path / "fake_pkg-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake_pkg\nVersion: 1.2.3+x\n\n"
                                   "Version: 9 (the body, not a header)\n")  # fmt: skip
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path)])
    assert _dist_info_version("fake_pkg") == "1.2.3+x" and _dist_info_version("fake") is None


def test_cache_key_for_reads_the_file_like_compile(tmp_path: Path) -> None:
    f = tmp_path / "tiny.esp"
    f.write_bytes(SOURCE)
    opts = driver.Options(blueprint="tiny", targets=("sm_90",))
    assert cache_key_for(f, opts) == CacheKey.build(SOURCE, opts)
    assert cache_key_for(f, opts).esperc_version == __import__("esperc").__version__


# ----- put, get, verification --------------------------------------------------------------------


def test_put_then_get_returns_the_same_bytes(cache: KernelCache) -> None:
    key, data = _key(), _pkg()
    assert cache.get(key) is None
    assert cache.put(key, data, {"blueprint": "tiny", "source": "tiny.esp"})
    path = cache.path_for(key)
    assert path == cache.dir / key.digest()[:2] / f"{key.digest()}.kpkg" and path.is_file()
    assert cache.get(key) == data
    assert KernelCache(cache.dir.parent).get(key) == data  # a fresh process-like instance
    assert cache.get(_key(validate=False)) is None


def test_put_refuses_bytes_that_are_not_a_package(cache: KernelCache) -> None:
    with pytest.raises(KpkgError):
        cache.put(_key(), b"not a package")
    assert cache.ls() == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_corrupt_entry_is_a_logged_miss_and_is_removed(
    cache: KernelCache, caplog, damage
) -> None:
    key, data = _key(), _pkg()
    cache.put(key, data)
    path = cache.path_for(key)
    blob = bytearray(data)
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x40
    bad = {"flip": bytes(blob), "truncate": data[:-7], "empty": b"", "garbage": b"\x00" * 999}
    path.write_bytes(bad[damage])
    with caplog.at_level(logging.WARNING, "esperc.cache"):
        assert KernelCache(cache.dir.parent).get(key) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert key.digest()[:12] in caplog.text and not path.exists()
    assert cache.put(key, data) and cache.get(key) == data  # rebuilt


def test_get_or_build_builds_on_a_miss_only(cache: KernelCache) -> None:
    calls = []

    def build() -> tuple[bytes, dict]:
        calls.append(1)
        return _pkg(), {"blueprint": "tiny"}

    data, hit = cache.get_or_build(_key(), build)
    assert not hit and read_kpkg(data, verify=True)
    again, hit = cache.get_or_build(_key(), build)
    assert hit and again == data and len(calls) == 1


# ----- explain, ls, size, clear ------------------------------------------------------------------


def test_explain_hit_and_the_fields_of_near_misses(cache: KernelCache) -> None:
    assert cache.explain(_key()).startswith("miss: no entry")
    cache.put(_key(), _pkg(), {"blueprint": "tiny"})
    cache.put(_key(pipeline="dce"), _pkg("b"), {"blueprint": "tiny"})
    assert cache.explain(_key()).startswith(f"hit: {_key().digest()[:12]}")
    text = cache.explain(_key(validate=False, versions={"triton": "3.10.0"}))
    assert "2 entries for the same source" in text
    near = text.splitlines()[2]
    assert _key().digest()[:12] in near and "validate" in near and "triton_version" in near
    assert "pipeline" not in near  # the nearest entry is listed first
    other = cache.explain(_key(SOURCE + b"#"))
    assert "entries for blueprint 'tiny'" in other and "source_sha256" in other


def test_ls_size_and_clear(cache: KernelCache) -> None:
    a, b = _pkg("a"), _pkg("b", 5000)
    cache.put(_key(), a, {"blueprint": "tiny", "source": "s/tiny.esp"})
    cache.put(_key(validate=False), b, {"blueprint": "tiny2"})
    cache.get(_key())
    cache.get(_key())
    entries = {e.blueprint: e for e in cache.ls()}
    assert set(entries) == {"tiny", "tiny2"}
    assert entries["tiny"].hits == 2 and entries["tiny"].size == len(a)
    assert entries["tiny"].key == _key() and entries["tiny"].source == "s/tiny.esp"
    assert cache.size() == len(a) + len(b)
    assert cache.clear() == (2, len(a) + len(b))
    assert cache.ls() == [] and cache.size() == 0 and cache.get(_key()) is None


def test_ls_survives_a_lost_or_torn_index(cache: KernelCache) -> None:
    cache.put(_key(), _pkg(), {"blueprint": "tiny"})
    with open(cache.index.path, "ab") as f:
        f.write(b'{"op": "put", "dig')
    assert [e.blueprint for e in cache.ls()] == ["tiny"]
    cache.index.path.unlink()
    (entry,) = cache.ls()
    assert entry.blueprint == "" and entry.key is None and cache.get(_key()) is not None


def test_sweep_compacts_the_index_to_live_entries(cache: KernelCache) -> None:
    cache.put(_key(), _pkg(), {"blueprint": "tiny"})
    cache.put(_key(validate=False), _pkg("b"), {"blueprint": "gone"})
    for _ in range(3):
        cache.get(_key())
    cache.path_for(_key(validate=False)).unlink()
    cache.sweep()
    lines = cache.index.path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["hits"] == 3
    assert [(e.blueprint, e.hits) for e in cache.ls()] == [("tiny", 3)]


# ----- in-memory LRU -----------------------------------------------------------------------------


def test_lru_is_bounded_by_count_and_bytes() -> None:
    lru = BytesLRU(max_items=3, max_bytes=100)
    for i in range(4):
        lru.put(i, b"x" * 10)
    assert lru.get(0) is None and len(lru) == 3
    lru.get(1)  # most recently used now
    lru.put("big", b"y" * 80)
    assert lru.nbytes <= 100 and lru.get(1) is not None and lru.get(2) is None
    lru.put("huge", b"z" * 101)
    assert lru.get("huge") is None


def test_read_file_cached_rereads_a_replaced_file(tmp_path: Path) -> None:
    lru = BytesLRU()
    f = tmp_path / "p.kpkg"
    f.write_bytes(_pkg("a"))
    assert read_file_cached(f, lru) == _pkg("a") and len(lru) == 1
    assert read_file_cached(f, lru) == _pkg("a") and len(lru) == 1
    f.write_bytes(_pkg("b", 2100))
    assert read_file_cached(f, lru) == _pkg("b", 2100)
    with pytest.raises(KpkgError):
        f.write_bytes(b"junk")
        read_file_cached(f, BytesLRU(), check=lambda d: read_kpkg(d, verify=True) and None)


# ----- CLI ---------------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str):
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return CliRunner().invoke(app, list(args), env={"ESPERC_CACHE_DIR": str(tmp_path)})


def test_cli_cache_ls_clear(tmp_path: Path) -> None:
    r = _cli(tmp_path, "cache", "ls")
    assert r.exit_code == 0 and "empty" in r.stdout
    cache = KernelCache(tmp_path)
    cache.put(_key(), _pkg(), {"blueprint": "tiny", "source": "tiny.esp"})
    r = _cli(tmp_path, "cache", "ls")
    assert r.exit_code == 0 and _key().digest()[:12] in r.stdout and "tiny" in r.stdout
    r = _cli(tmp_path, "cache", "ls", "--json")
    (entry,) = json.loads(r.stdout)["entries"]
    assert entry["digest"] == _key().digest() and entry["key"]["blueprint"] == "tiny"
    assert _cli(tmp_path, "cache", "clear").exit_code == 2  # not a terminal, no --yes
    assert cache.ls() != []
    r = _cli(tmp_path, "cache", "clear", "--yes", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == 1 and cache.ls() == []


def test_cli_cache_explain_builds_the_compile_key(tmp_path: Path) -> None:
    f = tmp_path / "tiny.esp"
    f.write_bytes(SOURCE)
    opts = driver.Options(blueprint="tiny", overrides={"eps": "1e-5"}, targets=("sm_80",))
    KernelCache(tmp_path).put(cache_key_for(f, opts), _pkg(), {"blueprint": "tiny"})
    args = ["cache", "explain", str(f), "--blueprint", "tiny", "--target", "sm_80", "--json"]
    r = _cli(tmp_path, *args, "-D", "eps=1e-5")
    assert r.exit_code == 0 and json.loads(r.stdout)["hit"]
    r = _cli(tmp_path, *args, "-D", "eps=1e-6")
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and not out["hit"] and "overrides" in out["explanation"]
    r = _cli(tmp_path, "cache", "explain", str(tmp_path / "missing.esp"), "--target", "sm_90")
    assert r.exit_code == 1 and "E0502" in r.stderr
    r = _cli(tmp_path, "cache", "explain", str(f), "--target", "sm_99")
    assert r.exit_code == 1 and "E0401" in r.stderr


# ----- esperc compile on a hit -------------------------------------------------------------------

# Runs the console entry point, then writes the names of every imported module to $MODULES_OUT.
_MAIN = """import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write("\\n".join(sys.modules)))
from esperc.cli import main
main()
"""


def _stored_hit(tmp_path: Path) -> tuple[Path, bytes]:
    """A blueprint file and the package the cache holds for a plain compile of it."""
    f = tmp_path / "tiny.esp"
    f.write_bytes(SOURCE)
    opts = driver.Options()
    opts.targets = resolve_targets("auto")
    manifest = {"blueprint": {"name": "tiny", "ir_hash": "ab" * 32}, "targets": list(opts.targets),
                "kernels": {}, "validation": {"status": "skipped"}}  # fmt: skip
    data = pack_kpkg(manifest, {"source.esp": SOURCE})
    assert KernelCache(tmp_path / "cache").put(cache_key_for(f, opts), data)
    return f, data


def _run_main(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**os.environ, "ESPERC_CACHE_DIR": str(tmp_path / "cache"),
           "MODULES_OUT": str(tmp_path / "modules.txt")}  # fmt: skip
    env.pop("ESPERC_NO_CACHE", None)
    run = subprocess.run([sys.executable, "-c", _MAIN, *args], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    return run, set((tmp_path / "modules.txt").read_text().split())


def test_a_plain_compile_hit_writes_the_stored_bytes_without_heavy_imports(tmp_path: Path) -> None:
    f, data = _stored_hit(tmp_path)
    a, b = tmp_path / "a.kpkg", tmp_path / "b.kpkg"
    fast, fast_mods = _run_main(tmp_path, "compile", str(f), "-o", str(a))
    assert fast.returncode == 0 and fast.stdout == "" and "esperc.cli_fast" in fast_mods
    assert a.read_bytes() == data
    # typer, rich and pydantic are ~150 ms; importlib.metadata and filelock ~10-20 ms each.
    heavy = {"torch", "triton", "lark", "typer", "rich", "pydantic", "importlib.metadata",
             "filelock"}  # fmt: skip
    assert not heavy & fast_mods
    # Any other flag goes through the full CLI: the same bytes and line, still no torch.
    full, full_mods = _run_main(tmp_path, "compile", str(f), "--output", str(b), "--color", "never")
    assert full.returncode == 0 and "typer" in full_mods
    assert not {"torch", "triton", "lark"} & full_mods
    assert b.read_bytes() == data

    def line(run: subprocess.CompletedProcess[str], out: Path) -> str:  # no path, no seconds
        return re.sub(r"[0-9.]+ s \(", "T s (", run.stderr.replace(str(out), "OUT"))

    arch = resolve_targets("auto")[0]
    want = (
        f"wrote OUT: @tiny, 0 kernels x 1 targets ({arch}), validation skipped, T s (cache hit)\n"
    )
    assert line(fast, a) == line(full, b) == want


def test_the_fast_path_answers_hits_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    f, data = _stored_hit(tmp_path)
    out = tmp_path / "o.kpkg"
    monkeypatch.setenv("ESPERC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ESPERC_NO_CACHE", "1")
    assert not compile_hit(["compile", str(f), "-o", str(out)])
    monkeypatch.delenv("ESPERC_NO_CACHE")
    assert not compile_hit(["compile", str(f), "-o", str(out), "--json"])
    assert not compile_hit(["compile", str(f), "-o", str(out), "--target", "sm_80"])  # a miss
    assert not compile_hit(["compile", str(tmp_path / "missing.esp"), "-o", str(out)])
    assert not compile_hit(["compile", str(f), "-o", str(out), "--target", "sm_99"])
    assert not out.exists() and capsys.readouterr().err == ""
    assert compile_hit(["compile", str(f), f"--output={out}"]) and out.read_bytes() == data
    assert "(cache hit)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "plain"),
    [
        (["compile", "a.esp"], ("a.esp", None, "auto")),
        (["compile", "-o", "x.kpkg", "a.esp", "--target", "sm_80"], ("a.esp", "x.kpkg", "sm_80")),
        (["compile", "a.esp", "--output=x.kpkg", "--target=sm_90,sm_80"],
         ("a.esp", "x.kpkg", "sm_90,sm_80")),
        (["compile"], None), (["run", "a.esp"], None), (["compile", "a.esp", "b.esp"], None),
        (["compile", "a.esp", "-o"], None), (["compile", "a.esp", "--output="], None),
        (["compile", "a.esp", "-o", "x", "-o", "y"], None), (["compile", "a.esp", "-o", "--json"], None),
        (["compile", "a.esp", "--emit", "ir"], None), (["compile", "a.esp", "-h"], None),
        (["compile", "--", "a.esp"], None), (["compile", "a.esp", "-ox.kpkg"], None),
    ],
)  # fmt: skip
def test_only_a_plain_compile_takes_the_fast_path(argv: list[str], plain: tuple | None) -> None:
    assert parse_plain_compile(argv) == plain


class _FakeLibcuda:
    """Stands in for libcuda.so.1: ``count`` devices, the first of compute capability 8.6."""

    def __init__(self, count: int) -> None:
        def put(value: Callable[..., int]) -> Callable[..., int]:  # writes through a byref arg
            return lambda ref, *args: setattr(ref._obj, "value", value(*args)) or 0  # CUDA_SUCCESS

        capability = {cuda_driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: 8,
                      cuda_driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: 6}  # fmt: skip
        self.cuInit = lambda flags: 0 if count else 100  # CUDA_ERROR_NO_DEVICE
        self.cuDeviceGetCount = put(lambda: count)
        self.cuDeviceGet = put(lambda ordinal: ordinal)
        self.cuDeviceGetAttribute = put(lambda attribute, device: capability[attribute])
        self.cuGetErrorName = self.cuGetErrorString = lambda code, ref: 0

    def __getattr__(self, name: str) -> Callable[..., int]:  # the rest: present, never called
        return lambda *_: 0


@pytest.mark.parametrize(("count", "arch"), [(0, None), (2, "sm_86")])
def test_the_gpu_probe_asks_libcuda(
    monkeypatch: pytest.MonkeyPatch, count: int, arch: str | None
) -> None:
    cuda_driver.driver.cache_clear()
    monkeypatch.setattr(cuda_driver.ctypes, "CDLL", lambda name: _FakeLibcuda(count))
    try:
        assert cuda_driver.local_arch() == arch
        assert resolve_targets("auto") == (arch or "sm_90",)
    finally:
        cuda_driver.driver.cache_clear()


def test_the_gpu_probe_is_none_without_libcuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    cuda_driver.driver.cache_clear()
    monkeypatch.setattr(cuda_driver.ctypes, "CDLL", no_library)
    try:
        assert cuda_driver.local_arch() is None
        assert resolve_targets("auto") == ("sm_90",) and resolve_targets(" sm_80 ") == ("sm_80",)
    finally:
        cuda_driver.driver.cache_clear()


def test_a_training_build_is_cached_apart_from_the_forward_one(tmp_path: Path) -> None:
    from esperc import build
    from esperc.build_backward import prepare

    src = tmp_path / "ln.esp"
    src.write_text(
        "blueprint ln {\n  dim N in [1, 64]\n  input x: f32[N, 8]\n  param g: f32[8]\n"
        "  param b: f32[8]\n  return layer_norm(x, g, b)\n}\n"
    )
    cache = KernelCache(tmp_path / "cache")
    fwd = driver.Options(targets=(), validate=False)
    func, _ = driver.compile_ir(src, fwd)
    first = build.build_package(src, func, fwd, tmp_path / "f.kpkg", cache=cache)
    train = driver.Options(targets=(), validate=False, backward=True)
    tf = prepare(driver.lower(src, train), train)
    made = build.build_package(
        src, tf.forward, train, tmp_path / "t.kpkg", cache=cache, training=tf
    )
    assert not first.cache_hit and not made.cache_hit  # the forward entry is not the training one
    again = build.build_package(src, tf.forward, train, tmp_path / "t2.kpkg", cache=cache,
                                training=tf)  # fmt: skip
    assert again.cache_hit and len(again.kernels) == len(made.kernels) > len(first.kernels)
    assert (tmp_path / "t2.kpkg").read_bytes() == (tmp_path / "t.kpkg").read_bytes()
    assert "backward" in read_kpkg(tmp_path / "t2.kpkg").manifest
    with pytest.raises(ValueError, match="opts.backward"):
        build.build_package(src, tf.forward, fwd, tmp_path / "x.kpkg", cache=cache, training=tf)
