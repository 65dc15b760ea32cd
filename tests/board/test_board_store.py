"""Leaderboard store: schema round trip, replace rule, two real writers, killed writers, migration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from mqbench.board import db as D
from mqbench.board import store as L
from mqbench.errors import MqbenchError
from mqbench.scoring.record import RECORD_SCHEMA, Record

# The schema-1 layout (mqbench before the schema-2 store), verbatim, to test migration.
OLD_DDL = """
CREATE TABLE IF NOT EXISTS info (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    task VARCHAR NOT NULL, proxy VARCHAR NOT NULL, proxy_version INTEGER, task_version INTEGER,
    package_version VARCHAR, git_commit VARCHAR, proxy_sha256 VARCHAR, table_checksum VARCHAR,
    spearman DOUBLE, kendall DOUBLE, spearman_top20 DOUBLE, spearman_top50 DOUBLE,
    spearman_top100 DOUBLE, layer_spearman DOUBLE, fitness DOUBLE, per_config_ms DOUBLE,
    record JSON NOT NULL, PRIMARY KEY (task, proxy));
"""


def make_record(proxy="p1", task="t1", spearman=0.5, **over) -> Record:
    rec = {"schema_version": RECORD_SCHEMA, "proxy": proxy, "proxy_version": 1, "proxy_sha256": "a" * 64,
           "proxy_kind": "layer", "paper": "test", "task": task, "task_version": 1,
           "task_checksum": "c" * 64, "table_checksum": "d" * 64, "seed": 0,
           "package_version": "0.1.0", "git_commit": "e" * 40, "torch_version": "2.14.1",
           "n_configs": 10, "bootstrap": 10,
           "metrics": {"spearman": spearman, "spearman_lo": spearman - 0.1,
                       "spearman_hi": spearman + 0.1, "layer_spearman": None},
           "downstream": [{"budget_avg_bits": 3.0, "metric": "size", "config": "w:4|a:8",
                           "acc": 0.8, "loss": 0.5, "kl": 0.1, "size_bits": 400, "bops": 6400,
                           "best_table_acc": 0.81, "gap_to_best": 0.01}],
           "timing": {"proxy_seconds": 0.5, "score_seconds": 0.001, "per_config_ms": 0.05},
           "table_provenance": {"package_version": "0.1.0", "git_commit": "f" * 40,
                                "torch_version": "2.14.1", "weights_checksum": "w1"},
           "scores": {"k1": 1.0}, "sensitivity": {"u1": 0.25}}
    rec.update(over)
    return Record.from_dict(rec)


@pytest.fixture
def lb(tmp_path, monkeypatch):
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(tmp_path / "lb"))
    return tmp_path / "lb"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def db_state(lb):
    """Everything in the database, read directly (no sync), for before/after comparisons."""
    con = duckdb.connect(str(lb / "mqbench.duckdb"), read_only=True)
    try:
        return {t: sorted(map(str, con.execute(f"SELECT * FROM {t}").fetchall()))
                for t in ("runs", "metrics", "tasks", "ground_truth", "proxies", "info")}
    finally:
        con.close()


def test_schema_round_trip(lb):
    rec = make_record()
    saved = L.save_record(rec)
    assert saved.status == "new" and saved.db_note == "created"
    stored = json.loads(saved.path.read_text())
    assert Record.from_dict(stored) == dataclasses.replace(rec, recorded_at=stored["recorded_at"])
    # the query engineer A's report uses
    (task, proxy, record), = L.query("SELECT task, proxy, record FROM runs")
    assert (task, proxy) == ("t1", "p1") and json.loads(record) == stored
    got = {r[0]: r[1:] for r in L.query(
        "SELECT metric, value, ci_lo, ci_hi FROM metrics JOIN runs USING (run_id)")}
    assert got["spearman"] == pytest.approx((0.5, 0.4, 0.6))
    assert got["layer_spearman"] == (None, None, None)
    assert got["per_config_ms"][0] == 0.05 and got["ilp_acc_size@3"][0] == 0.8
    assert "spearman_lo" not in got
    assert L.query("SELECT * FROM tasks") == [("t1", 1, "c" * 64, 0)]
    assert L.query("SELECT * FROM proxies") == [("p1", 1, "a" * 64, "test", "layer")]
    assert L.query("SELECT task, table_checksum, n_configs, git_commit, weights_checksum "
                   "FROM ground_truth") == [("t1", "d" * 64, 10, "f" * 40, "w1")]
    assert L.query("SELECT value FROM info WHERE key = 'schema_version'") == \
        [(str(D.SCHEMA_VERSION),)]
    # the database is derived: deleting it and rebuilding gives the same contents
    before = db_state(lb)
    (lb / "mqbench.duckdb").unlink()
    L.rebuild_db()
    assert db_state(lb) == before


def test_replace_rule(lb):
    rec = make_record()
    path = L.save_record(rec).path
    db = lb / "mqbench.duckdb"
    before = (digest(path), digest(db))
    # same identity, different timings/metrics (a re-run): kept byte-for-byte
    rerun = make_record(spearman=0.7, timing={"proxy_seconds": 9.0, "score_seconds": 1.0,
                                              "per_config_ms": 1.0})
    assert L.save_record(rerun).status == "unchanged"
    assert (digest(path), digest(db)) == before
    for field, value in [("proxy_version", 2), ("proxy_sha256", "b" * 64),
                         ("task_version", 2), ("package_version", "0.2.0")]:
        saved = L.save_record(make_record(spearman=0.7, **{field: value}))
        assert saved.status == "replaced" and saved.changed == (field,)
        assert json.loads(path.read_text())[field] == value
        (row,) = L.query("SELECT runs." + field + ", value FROM runs JOIN metrics USING "
                         "(run_id) WHERE metric = 'spearman'")
        assert row == (value, 0.7)
        L.save_record(rec, force=True)  # back to the original identity
    assert L.save_record(rec, force=True).status == "replaced"
    assert L.query("SELECT count(*) FROM runs") == [(1,)]
    assert L.query("SELECT count(*) FROM proxies") == [(1,)]  # stale versions dropped


def test_sync_follows_record_files(lb):
    L.save_record(make_record("p1"))
    L.save_record(make_record("p2"))
    # a git pull changes one record and deletes another; a third appears
    p1 = L.record_path("t1", "p1")
    p1.write_text(make_record("p1", spearman=0.9).to_json())
    L.record_path("t1", "p2").unlink()
    L.record_path("t1", "p3").write_text(make_record("p3").to_json())
    rows = L.query("SELECT proxy, value FROM runs JOIN metrics USING (run_id) "
                   "WHERE metric = 'spearman' ORDER BY proxy")
    assert rows == [("p1", 0.9), ("p3", 0.5)]


WRITER = """
import json, sys
from mqbench.board.store import save_record
from mqbench.scoring.record import Record
print(save_record(Record.from_json(sys.argv[1])).status, flush=True)
"""


def _writer(rec, pause="", lb=None):
    env = {**os.environ, "MQBENCH_TEST_PAUSE": pause}
    return subprocess.Popen([sys.executable, "-c", WRITER, rec.to_json()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_real_writers_at_once(lb):
    L.save_record(make_record("p0"))  # an existing database both writers update
    # both pause 1 s inside their transaction: without the lock they would collide
    start = time.perf_counter()
    procs = [_writer(make_record(f"w{i}", spearman=0.1 * i), "in_transaction:1")
             for i in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(o[0].strip().endswith("new") for o in outs)
    assert time.perf_counter() - start >= 2.0  # serialised by the lock
    assert L.query("SELECT proxy FROM runs ORDER BY proxy") == [("p0",), ("w0",), ("w1",)]
    for i in range(2):
        assert json.loads(L.record_path("t1", f"w{i}").read_text())["metrics"]["spearman"] \
            == pytest.approx(0.1 * i)
    # same (task, proxy) from both: one wins, the other sees an identical identity
    procs = [_writer(make_record("same"), "in_transaction:0.5") for _ in range(2)]
    statuses = sorted(p.communicate(timeout=60)[0].split()[-1] for p in procs)
    assert statuses == ["new", "unchanged"]
    assert L.query("SELECT count(*) FROM runs WHERE proxy = 'same'") == [(1,)]


def _kill_at(point, rec):
    proc = _writer(rec, f"{point}:60")
    line = proc.stdout.readline()
    assert line.strip() == f"paused at {point}", proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_writer_killed_inside_transaction_changes_nothing(lb):
    L.save_record(make_record("p1"))
    path = L.record_path("t1", "p1")
    before = (digest(path), db_state(lb))
    _kill_at("in_transaction", make_record("p1", proxy_version=2, spearman=0.9))
    _kill_at("in_transaction", make_record("p2"))
    assert (digest(path), db_state(lb)) == before
    assert not L.record_path("t1", "p2").exists()
    # the next writer works, and the killed writers' temp files are cleared
    assert L.save_record(make_record("p3")).status == "new"
    assert not list((lb / "records").glob("*/*.tmp*"))
    assert L.query("SELECT proxy FROM runs ORDER BY proxy") == [("p1",), ("p3",)]


def test_writer_killed_after_rename_is_caught_up(lb):
    L.save_record(make_record("p1"))
    _kill_at("after_rename", make_record("p1", proxy_version=2, spearman=0.9))
    # the record (source of truth) has the new run; the database lags but is intact
    assert json.loads(L.record_path("t1", "p1").read_text())["proxy_version"] == 2
    assert L.query("SELECT proxy_version FROM runs") == [(2,)]  # synced on access


def _old_db(lb, version="1"):
    lb.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(lb / "mqbench.duckdb"))
    con.execute(OLD_DDL)
    con.execute("INSERT INTO info VALUES ('schema_version', ?)", [version])
    rec = make_record("old")
    con.execute("INSERT INTO runs VALUES (" + ", ".join("?" * 17) + ")",
                ["t1", "old", 1, 1, "0.1.0", "e", "a", "d", 0.5, 0.4, 0.3, 0.2, 0.1, None,
                 None, 0.05, rec.to_json()])
    con.close()
    return rec


def test_migrates_schema_1_database(lb):
    rec = _old_db(lb)
    (lb / "records" / "t1").mkdir(parents=True)
    L.record_path("t1", "old").write_text(rec.to_json())
    saved = L.save_record(make_record("new"))
    assert saved.db_note == "migrated from schema 1"
    assert L.query("SELECT proxy FROM runs ORDER BY proxy") == [("new",), ("old",)]
    assert L.query("SELECT value FROM info WHERE key = 'schema_version'") == \
        [(str(D.SCHEMA_VERSION),)]
    assert L.query("SELECT count(*) FROM metrics WHERE metric = 'spearman'") == [(2,)]


def test_refuses_newer_or_broken_database(lb):
    _old_db(lb, version="99")
    with pytest.raises(MqbenchError) as err:
        L.query("SELECT 1")
    assert "schema version 99, newer" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MqbenchError, match="schema version 99"):
        L.save_record(make_record())
    assert not L.record_path("t1", "p1").exists()  # nothing half-written
    (lb / "mqbench.duckdb").write_bytes(b"not a database" * 100)
    with pytest.raises(MqbenchError, match="unreadable.*mqbench leaderboard rebuild"):
        L.query("SELECT 1")
    L.rebuild_db()  # the documented fix
    assert L.query("SELECT count(*) FROM runs") == [(0,)]


def test_bad_records_are_one_line_errors(lb, capsys):
    """A bad record file is named in one warning line and left out of the index (it never
    blocks the other records); bad values passed in code are one-line errors."""
    folder = lb / "records" / "t1"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text(make_record("y").to_json())
    L.rebuild_db()
    err = capsys.readouterr().err
    assert "belongs in records/t1/y.json" in err and err.count("\n") == 1
    (folder / "x.json").write_text("{broken")
    L.rebuild_db()
    assert "not valid JSON" in capsys.readouterr().err
    assert L.query("SELECT count(*) FROM runs") == [(0,)]
    with pytest.raises(MqbenchError, match="not an mqbench result record"):
        Record.from_dict({"schema_version": RECORD_SCHEMA, "task": "t1", "proxy": "z"})
    with pytest.raises(MqbenchError, match="takes an mqbench Record"):
        L.save_record(make_record("z").to_dict())
    with pytest.raises(MqbenchError, match="not a leaderboard record"):
        L.save_record(make_record("z", proxy_kind="search"))
    assert sorted(p.name for p in folder.iterdir()) == ["x.json"]


def test_eval_cli_prints_the_case(tiny_env, lb, tmp_path, capsys):
    from mqbench.cli.main import main

    path = tmp_path / "wn.py"
    path.write_text('from mqbench.proxy import proxy\n\n@proxy(name="wn", version=1)\n'
                    'def wn(stats):\n    return [float(stats.weights[m].norm()) '
                    'for m in stats.modules]\n')
    args = ["eval", "--proxy", str(path), "--task", "tiny", "--quiet", "--bootstrap", "0"]
    assert main(args) == 0
    assert "(new)" in capsys.readouterr().out
    rec_path = L.record_path("tiny", "wn")
    before = (digest(rec_path), digest(lb / "mqbench.duckdb"))
    assert main(args) == 0
    assert "unchanged:" in capsys.readouterr().out
    assert (digest(rec_path), digest(lb / "mqbench.duckdb")) == before
    path.write_text(path.read_text().replace("version=1", "version=2"))
    assert main(args) == 0
    assert "replaced" in capsys.readouterr().out
    assert json.loads(rec_path.read_text())["proxy_version"] == 2
