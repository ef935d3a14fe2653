"""The kernel cache and the performance database under concurrency, killed writers, full disks,
read-only folders and corrupt files. CPU only; outcomes are deterministic even where timing is
not (kill points vary, the invariants checked after them do not)."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esperc import driver
from esperc.cache import CacheKey, KernelCache
from esperc.kpkg import pack_kpkg, read_kpkg
from esperc.tune import PerfDB, Row, Versions

REPO = Path(__file__).resolve().parents[2]
V = Versions("0.1.0", "3.9.0", "2.13.0", "12.8")
# fork: the children only use objects they create themselves (no inherited connections or locks)
FORK = mp.get_context("fork")


def _key(i: int = 0) -> CacheKey:
    opts = driver.Options(blueprint="tiny", pipeline="dce")
    return CacheKey.build(b"blueprint tiny", opts, extra={"i": str(i)},
                          versions={"esperc": "0", "triton": "0", "torch": "0"})  # fmt: skip


def _pkg(n: int = 4000, seed: int = 0) -> bytes:
    return pack_kpkg({"blueprint": {"name": "tiny"}},
                     {"kernels/k.sm_90.cubin": random.Random(seed).randbytes(n)})  # fmt: skip


def _rows(tag: str, n: int, start: int = 0) -> list[Row]:
    return [Row(f"{tag}{i:08d}".ljust(64, "0"), "pointwise/f32", "sm_90", "H100", "B=64",
                {"BLOCK": i}, V, 0.5, 0.6, 10) for i in range(start, start + n)]  # fmt: skip


def _visible_files(root: Path) -> tuple[list[Path], list[Path]]:
    files = [p for p in (root / "kpkg").rglob("*") if p.is_file() and p.parent.name != "locks"]
    entries = [p for p in files if p.suffix == ".kpkg" and not p.name.startswith(".")]
    temps = [p for p in files if p.name.endswith(".tmp")]
    return entries, temps


def _run_all(procs: list) -> None:
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)


# ----- kernel cache: N processes, one key --------------------------------------------------------


def _put_same_key(root: str, barrier, data: bytes) -> None:
    barrier.wait()
    assert KernelCache(root).put(_key(), data, {"blueprint": "tiny"})


def _build_once(root: str, barrier, log: str) -> None:
    def build() -> tuple[bytes, dict]:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # a slow compile: the other processes must wait, not build
        return _pkg(), {"blueprint": "tiny"}

    barrier.wait()
    data, _hit = KernelCache(root).get_or_build(_key(), build)
    assert data == _pkg()


def test_parallel_puts_of_one_key_leave_one_valid_file(tmp_path: Path) -> None:
    data, barrier = _pkg(200_000), FORK.Barrier(4)
    _run_all([FORK.Process(target=_put_same_key, args=(str(tmp_path), barrier, data))
              for _ in range(4)])  # fmt: skip
    entries, temps = _visible_files(tmp_path)
    assert len(entries) == 1 and temps == []
    assert entries[0].read_bytes() == data and read_kpkg(entries[0], verify=True)
    assert KernelCache(tmp_path).get(_key()) == data


def test_parallel_get_or_build_builds_once(tmp_path: Path) -> None:
    log, barrier = tmp_path / "builds.log", FORK.Barrier(4)
    _run_all([FORK.Process(target=_build_once, args=(str(tmp_path), barrier, str(log)))
              for _ in range(4)])  # fmt: skip
    assert len(log.read_text().splitlines()) == 1
    assert len(_visible_files(tmp_path)[0]) == 1


# ----- kernel cache: a writer killed at random points --------------------------------------------

_WRITER = """
import dataclasses, json, random, sys
from esperc.cache import CacheKey, KernelCache
from esperc.kpkg import pack_kpkg
key = CacheKey.from_dict(json.loads(sys.argv[2]))
data = pack_kpkg({"blueprint": {"name": "big"}}, {"kernels/k.sm_90.cubin": random.Random(1).randbytes(4 << 20)})
cache, i = KernelCache(sys.argv[1]), int(sys.argv[3])
print("ready", flush=True)
while True:
    cache.put(dataclasses.replace(key, extra=(("i", str(i)),)), data, {"blueprint": "big"})
    i += 1
"""


def test_a_writer_killed_at_random_points_leaves_only_whole_entries(tmp_path: Path) -> None:
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), json.dumps(_key().to_dict()),
             str(round_ * 1000)],
            stdout=subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    entries, _temps = _visible_files(tmp_path)
    for path in entries:  # every visible entry is a whole, verifiable package
        assert read_kpkg(path, verify=True).member_names() == ("kernels/k.sm_90.cubin",)
    cache = KernelCache(tmp_path)
    listed = cache.ls()
    assert sorted(e.path for e in listed) == sorted(entries)
    assert all(cache.get(e.key) is not None for e in listed if e.key is not None)
    cache.sweep(max_age_s=0.0)
    assert _visible_files(tmp_path)[1] == []
    cache.clear()
    assert _visible_files(tmp_path) == ([], [])


# ----- kernel cache: full disk and read-only folder ----------------------------------------------


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_full_disk_skips_the_write_without_a_torn_file(tmp_path, monkeypatch, caplog, failing):
    cache = KernelCache(tmp_path)
    assert cache.put(_key(0), _pkg())
    real_write = os.write

    def full_write(fd: int, data) -> int:
        real_write(fd, bytes(data[: max(len(data) // 2, 1)]))  # part of it lands, then ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, full_write if failing == "write" else full_fsync)
    with caplog.at_level(logging.WARNING, "esperc.cache"):
        assert not cache.put(_key(1), _pkg(300_000))
        assert not cache.put(_key(2), _pkg(300_000))
    monkeypatch.undo()
    assert len(caplog.records) == 1 and "write skipped" in caplog.text
    entries, temps = _visible_files(tmp_path)
    assert entries == [cache.path_for(_key(0))] and temps == []
    assert cache.get(_key(0)) == _pkg() and cache.get(_key(1)) is None


def _make_read_only(root: Path, monkeypatch) -> str:
    """Make ``root`` unwritable: chmod where that binds, else (root user) deny in ``os``."""
    dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o500)
    probe = root / "kpkg" / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return "chmod"
    probe.unlink()
    for d in dirs:
        d.chmod(0o700)
    inside = str(root.resolve())

    def denied(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(inside)

    def deny(real, writes_only: bool = False):
        def wrapper(path, *args, **kwargs):
            flags = args[0] if args else kwargs.get("flags", 0)
            writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if denied(path) and (writes or not writes_only):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "open", deny(os.open, writes_only=True))
    for name in ("mkdir", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, deny(getattr(os, name)))
    real_replace = os.replace

    def replace(src, dst, **kwargs) -> None:
        if denied(dst):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(dst))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return "monkeypatch"


def test_a_read_only_cache_reads_and_skips_writes(tmp_path: Path, monkeypatch, caplog) -> None:
    cache = KernelCache(tmp_path)
    cache.put(_key(0), _pkg(), {"blueprint": "tiny"})
    cache.put(_key(1), _pkg(seed=1))
    cache.path_for(_key(1)).write_bytes(b"corrupt")
    how = _make_read_only(tmp_path, monkeypatch)
    try:
        ro = KernelCache(tmp_path)
        with caplog.at_level(logging.WARNING, "esperc.cache"):
            assert ro.get(_key(0)) == _pkg()  # the hit is not counted, silently
            assert not ro.put(_key(2), _pkg(seed=2))
            assert not ro.put(_key(3), _pkg(seed=3))
            assert ro.get(_key(1)) is None  # corrupt and cannot be removed: still a miss
            data, hit = ro.get_or_build(_key(4), lambda: (_pkg(seed=4), {}))
        assert data == _pkg(seed=4) and not hit  # built, returned, not stored
        assert [e.blueprint for e in ro.ls() if e.digest == _key(0).digest()] == ["tiny"]
        assert ro.explain(_key(0)).startswith("hit")
        skipped = [r for r in caplog.records if "write skipped" in r.message]
        assert len(skipped) == 1, (how, caplog.text)
    finally:
        monkeypatch.undo()
        for d in [tmp_path, *(p for p in tmp_path.rglob("*") if p.is_dir())]:
            d.chmod(0o700)
    assert ro.get(_key(2)) is None and len(_visible_files(tmp_path)[0]) == 2


# ----- performance database ----------------------------------------------------------------------


def _record_many(path: str, tag: str, barrier) -> None:
    db = PerfDB(path)
    barrier.wait()
    for t in range(40):
        assert db.record(_rows(tag, 10, start=t * 10))
        assert db.best(_rows(tag, 1)[0].kernel_hash, "sm_90", "B=64", V) is not None
    assert db.mode == "rw"


def test_parallel_writers_keep_every_row(tmp_path: Path) -> None:
    path, barrier = str(tmp_path / "perf.sqlite"), FORK.Barrier(4)
    _run_all([FORK.Process(target=_record_many, args=(path, tag, barrier)) for tag in "abcd"])
    with PerfDB(path) as db:
        stats = db.stats()
    assert stats["rows"] == 4 * 400 and stats["hits"] == 4 * 40 and stats["mode"] == "rw"


def _damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(random.Random(7).randbytes(64 * 1024))
    elif how == "header":
        path.write_bytes(path.read_bytes()[:60])
    else:  # half the pages gone
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("how", ["garbage", "header", "half"])
def test_a_corrupt_database_is_moved_aside(tmp_path: Path, caplog, how: str) -> None:
    path = tmp_path / "perf.sqlite"
    with PerfDB(path) as db:
        db.record(_rows("a", 3000))
    assert not Path(f"{path}-wal").exists()  # checkpointed on close: the damage hits the data
    _damage(path, how)
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING, "esperc.perfdb"):
        db = PerfDB(path)
    (aside,) = tmp_path.glob("perf.sqlite.corrupt-*")
    assert aside.read_bytes() == damaged and "moved aside" in caplog.text
    assert db.mode == "rw" and db.stats()["rows"] == 0
    assert db.record(_rows("b", 5)) and db.stats()["rows"] == 5
    db.close()


_DB_WRITER = """
import sys
from esperc.tune import PerfDB, Row, Versions
V = Versions("0.1.0", "3.9.0", "2.13.0", "12.8")
def _rows(tag, n):
    return [Row(f"{tag}{i:08d}".ljust(64, "0"), "pointwise/f32", "sm_90", "H100", "B=64",
                {"BLOCK": i}, V, 0.5, 0.6, 10) for i in range(n)]
db = PerfDB(sys.argv[1])
if sys.argv[2] == "hold":
    db._conn.execute("BEGIN IMMEDIATE")
    db._conn.executemany(
        "INSERT INTO measurements VALUES (" + ",".join("?" * 17) + ")",
        [(r.kernel_hash, "", r.family, r.arch, r.gpu, r.bucket, r.config, "0", "0", "0", "0",
          1.0, 1.0, 1, "ok", "", 0.0) for r in _rows("held", 50)])
    print("ready", flush=True)
    sys.stdin.read()
print("ready", flush=True)
i = 0
while True:
    db.record(_rows(f"k{i:04d}", 50))
    i += 1
"""


def _spawn_db_writer(path: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _DB_WRITER, str(path), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def test_a_writer_killed_inside_a_transaction_leaves_a_usable_database(tmp_path: Path) -> None:
    path = tmp_path / "perf.sqlite"
    PerfDB(path).close()
    _kill(_spawn_db_writer(path, "hold"))  # killed holding the write lock, mid-transaction
    rng = random.Random(99)
    for _ in range(3):  # killed at random points of a loop of committed transactions
        proc = _spawn_db_writer(path, "loop")
        time.sleep(rng.uniform(0.0, 0.3))
        _kill(proc)
    with PerfDB(path) as db:
        assert db.mode == "rw"
        assert db._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.stats()["rows"]
        assert rows % 50 == 0 and not db.query(kernel="held")  # whole transactions only
        assert db.record(_rows("after", 7)) and db.stats()["rows"] == rows + 7


def _patched_connect(monkeypatch, pragma: str | None, fail_open: bool = False) -> None:
    real = sqlite3.connect

    def connect(target, *args, **kwargs):
        if fail_open and not kwargs.get("uri"):
            raise sqlite3.OperationalError("unable to open database file")
        conn = real(target, *args, **kwargs)
        if pragma:
            conn.execute(pragma)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.mark.parametrize("case", ["read-only-file", "read-only-open", "full-disk"])
def test_an_unwritable_database_reads_and_skips_writes(tmp_path, monkeypatch, caplog, case):
    path = tmp_path / "perf.sqlite"
    with PerfDB(path) as db:
        db.record(_rows("a", 20))
    pragma = {"read-only-file": "PRAGMA query_only = 1", "read-only-open": None,
              "full-disk": "PRAGMA max_page_count = 1"}[case]  # fmt: skip
    _patched_connect(monkeypatch, pragma, fail_open=case == "read-only-open")
    with caplog.at_level(logging.WARNING, "esperc.perfdb"):
        db = PerfDB(path)
        assert db.mode in ("rw", "ro")
        assert not db.record(_rows("b", 500))
        assert not db.record(_rows("c", 500))
        assert db.best(_rows("a", 1)[0].kernel_hash, "sm_90", "B=64", V) is not None
        assert db.stats()["rows"] == 20 and db.mode == "ro"
    db.close()
    assert len(caplog.records) == 1, caplog.text
    assert not list(tmp_path.glob("*.corrupt-*"))
