"""The performance database: keys, best/lookup/nearest/explain/query/stats, schema versions, and
the ``esperc perfdb`` commands."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from esperc.cli_tune import register
from esperc.paths import state_paths
from esperc.tune import PerfDB, Row, Versions, bucket_distance, parse_bucket, shape_bucket
from esperc.tune.perfdb_schema import SCHEMA_VERSION

V = Versions("0.1.0", "3.9.0", "2.13.0", "12.8")
V_OLD = Versions("0.1.0", "3.8.0", "2.13.0", "12.8")
H1, H2, H3 = "a1" * 32, "b2" * 32, "c3" * 32
FAM = "reduction/f32/rowwise"


def _row(h=H1, bucket="B=4096", block=64, ms=1.0, status="ok", versions=V, **kw) -> Row:
    return Row(h, kw.pop("family", FAM), kw.pop("arch", "sm_90"), kw.pop("gpu", "H100"), bucket,
               {"BLOCK": block, "num_warps": 4}, versions, ms if status == "ok" else None,
               ms * 1.1 if status == "ok" else None, 20, status, **kw)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> PerfDB:
    with PerfDB(tmp_path / "state" / "perf.sqlite") as d:
        yield d


def test_buckets_round_up_to_powers_of_two_and_parse_back() -> None:
    assert shape_bucket({"N": 1000, "B": 4096, "S": 1}) == "B=4096,N=1024,S=1"
    assert shape_bucket({}) == ""
    assert parse_bucket("B=4096,N=1024") == {"B": 4096, "N": 1024}
    assert bucket_distance("B=1024", "B=4096") == 2.0
    assert bucket_distance("B=1024", "B=1024") == 0.0
    assert bucket_distance("B=1024", "N=1024") > bucket_distance("B=1", "B=1048576")


def test_row_rejects_unknown_status_and_canonicalises_config() -> None:
    with pytest.raises(ValueError, match="status"):
        _row(status="slow")
    r = Row(H1, FAM, "sm_90", "H100", "", '{ "b": 1, "a": 2 }', V, 1.0)
    assert r.config == '{"a":2,"b":1}'


def test_file_is_created_in_wal_mode_with_schema_version(db: PerfDB) -> None:
    assert db.mode == "rw" and Path(db.path).is_file()
    con = sqlite3.connect(db.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_best_is_the_fastest_ok_row_of_the_exact_key(db: PerfDB) -> None:
    assert db.record([_row(block=32, ms=2.0), _row(block=64, ms=1.0), _row(block=128, ms=0.5,
                      status="timeout"), _row(block=16, ms=0.1, versions=V_OLD)])  # fmt: skip
    best = db.best(H1, "sm_90", "B=4096", V)
    assert best is not None and json.loads(best.config)["BLOCK"] == 64 and best.median_ms == 1.0
    rows = db.lookup(H1, "sm_90", "B=4096", V)
    assert [json.loads(r.config)["BLOCK"] for r in rows] == [64, 32, 128]  # ok first, fastest
    assert db.best(H1, "sm_90", "B=1024", V) is None
    assert db.best(H1, "sm_80", "B=4096", V) is None
    assert db.best(H1, "sm_90", "B=4096", V, gpu="A100") is None
    stats = db.stats()
    assert (stats["hits"], stats["misses"]) == (1, 3)


def test_only_failed_rows_is_a_miss_but_lookup_still_answers(db: PerfDB) -> None:
    db.record([_row(status="oom", error="out of memory"), _row(block=32, status="fault")])
    assert db.best(H1, "sm_90", "B=4096", V) is None
    assert {r.status for r in db.lookup(H1, "sm_90", "B=4096", V)} == {"oom", "fault"}


def test_recording_the_same_key_again_replaces_the_measurement(db: PerfDB) -> None:
    db.record([_row(ms=3.0)])
    db.record([_row(ms=1.5)])
    rows = db.lookup(H1, "sm_90", "B=4096", V)
    assert len(rows) == 1 and rows[0].median_ms == 1.5


def test_nearest_prefers_near_buckets_of_the_family_across_kernels(db: PerfDB) -> None:
    db.record([
        _row(H2, "B=1024", block=32, ms=0.2), _row(H2, "B=65536", block=256, ms=9.0),
        _row(H3, "B=8192", block=128, ms=3.0), _row(H3, "B=8192", block=64, ms=4.0),
        _row(H3, "B=4096", block=512, ms=0.1, family="matmul/f16/mnk"),
        _row(H3, "B=4096", block=1024, ms=0.1, arch="sm_80"),
        _row(H3, "B=4096", block=8, status="nan"),
    ])  # fmt: skip
    got = [json.loads(r.config)["BLOCK"] for r in db.nearest(FAM, "sm_90", "B=4096", k=3)]
    assert got == [128, 64, 32]  # distance 1 (fastest first), then distance 2
    assert len(db.nearest(FAM, "sm_90", "B=4096", k=10)) == 4


def test_explain_names_the_field_that_misses(db: PerfDB) -> None:
    db.record([_row(bucket="B=1024"), _row(bucket="B=65536", block=32)])
    assert db.explain(H2).startswith("miss: no rows for kernel")
    text = db.explain(H1, "sm_90", "B=4096", V)
    assert "miss: no rows with bucket 'B=4096'" in text and "nearest recorded bucket" in text
    assert "'B=1024'" in text.splitlines()[-1]
    assert "miss: no rows with arch 'sm_80'" in db.explain(H1, "sm_80", "B=1024", V)
    assert "triton version '3.8.0'" in db.explain(H1, "sm_90", "B=1024", V_OLD)
    assert "hit: best config" in db.explain(H1, "sm_90", "B=1024", V)


def test_query_filters_and_resolves_names_and_prefixes(db: PerfDB) -> None:
    db.record([_row(kernel_name="softmax"), _row(H2, status="mismatch"), _row(H3, arch="sm_80")])
    assert {r.kernel_hash for r in db.query(arch="sm_90")} == {H1, H2}
    assert [r.kernel_hash for r in db.query(status="mismatch")] == [H2]
    assert db.resolve_kernel("softmax") == [H1]
    assert db.resolve_kernel("b2b2") == [H2]
    assert db.resolve_kernel("ff") == []
    assert len(db.query(limit=2)) == 2


def test_stats_counts(db: PerfDB) -> None:
    db.record([_row(), _row(H2, status="oom"), _row(H3, arch="sm_80")])
    s = db.stats()
    assert (s["rows"], s["kernels"], s["families"]) == (3, 3, 1)
    assert s["archs"] == {"sm_90": 2, "sm_80": 1} and s["statuses"] == {"ok": 2, "oom": 1}


def test_a_newer_schema_is_refused_untouched(tmp_path: Path, caplog) -> None:
    path = tmp_path / "perf.sqlite"
    PerfDB(path).close()
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING, "esperc.perfdb"):
        db = PerfDB(path)
    assert db.mode == "memory" and "newer" in caplog.text
    assert db.record([_row()])  # measurements still work, in memory
    db.close()
    assert path.read_bytes() == before and not list(tmp_path.glob("*.corrupt-*"))


def test_a_foreign_sqlite_file_is_moved_aside(tmp_path: Path, caplog) -> None:
    path = tmp_path / "perf.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    with caplog.at_level(logging.WARNING, "esperc.perfdb"):
        db = PerfDB(path)
    assert db.mode == "rw" and len(list(tmp_path.glob("perf.sqlite.corrupt-*"))) == 1
    assert "moved aside" in caplog.text


def test_paths_come_from_one_function_with_env_overrides(tmp_path: Path) -> None:
    p = state_paths({"ESPERC_CACHE_DIR": str(tmp_path)})
    assert p.cache_dir == tmp_path and p.perfdb == tmp_path / "perfdb.sqlite"
    p = state_paths({"ESPERC_CACHE_DIR": str(tmp_path), "ESPERC_PERFDB": str(tmp_path / "x.db")})
    assert p.perfdb == tmp_path / "x.db"
    default = state_paths({})
    assert default.cache_dir.name == "esperc" and default.perfdb.parent == default.cache_dir


# ----- CLI ---------------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str):
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return CliRunner().invoke(app, list(args), env={"ESPERC_CACHE_DIR": str(tmp_path),
                                                    "ESPERC_PERFDB": ""})  # fmt: skip


def test_cli_perfdb_stats_query_explain(tmp_path: Path) -> None:
    with PerfDB(state_paths({"ESPERC_CACHE_DIR": str(tmp_path)}).perfdb) as db:
        db.record([_row(kernel_name="softmax"), _row(block=32, ms=2.0, kernel_name="softmax"),
                   _row(H2, kernel_name="gelu", status="timeout")])  # fmt: skip
    r = _cli(tmp_path, "perfdb", "stats", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["rows"] == 3
    r = _cli(tmp_path, "perfdb", "query", "softmax", "--json")
    assert r.exit_code == 0 and [x["config"]["BLOCK"] for x in json.loads(r.stdout)] == [64, 32]
    r = _cli(tmp_path, "perfdb", "query", "--status", "timeout")
    assert r.exit_code == 0 and "gelu" in r.stdout and "softmax" not in r.stdout
    r = _cli(tmp_path, "perfdb", "explain", "softmax", "--bucket", "B=2048", "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["kernel"] == H1 and not out["hit"]
    assert "B=4096" in out["explanation"]
    r = _cli(tmp_path, "perfdb", "explain", H1[:6], "--arch", "sm_90")
    assert r.exit_code == 0 and "hit: best config" in r.stdout
    assert _cli(tmp_path, "perfdb", "explain", "nosuch").exit_code == 1
    assert _cli(tmp_path, "perfdb", "query", "nosuch").exit_code == 1


def test_cli_perfdb_stats_without_a_database_creates_nothing(tmp_path: Path) -> None:
    r = _cli(tmp_path, "perfdb", "stats", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["mode"] == "absent"
    assert not any(tmp_path.iterdir())
