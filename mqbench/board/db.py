"""The leaderboard's DuckDB index: schema, versioning/migration, and sync from the record files.

The database is derived: every row comes from a record file under `leaderboard/records/`,
and `sync` makes the database agree with those files (it re-indexes a record whose bytes
changed and drops a run whose file is gone). Callers hold the leaderboard lock
(mqbench.board.store) around every function here. The layout is documented, table by
table, in `leaderboard/SCHEMA.md`; bump SCHEMA_VERSION whenever it changes.

Migration: a database from an older schema version is rebuilt from the records (they are
the source of truth, so nothing is lost); a newer or unreadable one is refused with a
one-line error, never read with the wrong layout.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import duckdb

from mqbench.errors import MqbenchError

SCHEMA_VERSION = 2
_DDL = """
CREATE TABLE info (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE tasks (task VARCHAR NOT NULL, task_version INTEGER NOT NULL,
    task_checksum VARCHAR, seed INTEGER);
CREATE TABLE ground_truth (task VARCHAR NOT NULL, task_version INTEGER NOT NULL,
    table_checksum VARCHAR NOT NULL, seed INTEGER, n_configs INTEGER, package_version VARCHAR,
    git_commit VARCHAR, torch_version VARCHAR, weights_checksum VARCHAR);
CREATE TABLE proxies (proxy VARCHAR NOT NULL, proxy_version INTEGER NOT NULL,
    proxy_sha256 VARCHAR NOT NULL, paper VARCHAR, kind VARCHAR);
CREATE TABLE runs (run_id INTEGER PRIMARY KEY, task VARCHAR NOT NULL, proxy VARCHAR NOT NULL,
    proxy_version INTEGER, proxy_sha256 VARCHAR, task_version INTEGER, table_checksum VARCHAR,
    package_version VARCHAR, torch_version VARCHAR, git_commit VARCHAR, recorded_at VARCHAR,
    record_sha256 VARCHAR NOT NULL, record JSON NOT NULL);
CREATE TABLE metrics (run_id INTEGER NOT NULL, metric VARCHAR NOT NULL, value DOUBLE,
    ci_lo DOUBLE, ci_hi DOUBLE);
"""
# The small tables are recomputed from the runs' records after every change (no stale rows).
_DERIVED = {
    "tasks": "SELECT DISTINCT task, task_version, record->>'task_checksum', "
             "CAST(record->>'seed' AS INTEGER) FROM runs",
    "ground_truth": "SELECT DISTINCT task, task_version, table_checksum, "
                    "CAST(record->>'seed' AS INTEGER), CAST(record->>'n_configs' AS INTEGER), "
                    "record->'table_provenance'->>'package_version', "
                    "record->'table_provenance'->>'git_commit', "
                    "record->'table_provenance'->>'torch_version', "
                    "record->'table_provenance'->>'weights_checksum' FROM runs",
    "proxies": "SELECT DISTINCT proxy, proxy_version, proxy_sha256, record->>'paper', "
               "record->>'proxy_kind' FROM runs",
}


def schema_of(con) -> int | None:
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                       "WHERE table_schema = 'main'").fetchall()}
    if not names:
        return None  # an empty, new database
    if "info" not in names:
        return 0  # not ours, or older than versioning
    row = con.execute("SELECT value FROM info WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else 0
    except ValueError:
        return 0


def connect(path: Path, read_only: bool = False):
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MqbenchError(f"leaderboard database {path} is unreadable ({first}); rebuild it "
                           f"from the records with `mqbench leaderboard rebuild`") from None


def _create(path: Path):
    path.unlink(missing_ok=True)
    Path(str(path) + ".wal").unlink(missing_ok=True)
    con = connect(path)
    con.execute(_DDL)
    con.execute("INSERT INTO info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    return con


def rebuild(folder: Path) -> Path:
    """Recreate `folder`/mqbench.duckdb from the record files (atomic: temp file + rename)."""
    path = folder / "mqbench.duckdb"
    tmp = folder / f"mqbench.rebuild{os.getpid()}.duckdb"
    con = _create(tmp)
    try:
        sync(con, folder)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    Path(str(path) + ".wal").unlink(missing_ok=True)
    os.replace(tmp, path)
    return path


def open_db(folder: Path) -> tuple[object, str]:
    """A read-write connection to the current-schema database, and what was done to get it.

    The second value is "" (opened as is), "created", or "migrated from schema N".
    """
    path = folder / "mqbench.duckdb"
    if not path.exists():
        rebuild(folder)
        return connect(path), "created"
    con = connect(path)
    try:
        version = schema_of(con)
    except duckdb.Error as exc:
        con.close()
        raise MqbenchError(f"leaderboard database {path} is unreadable ({exc}); rebuild it with "
                           f"`mqbench leaderboard rebuild`") from None
    if version == SCHEMA_VERSION:
        return con, ""
    con.close()
    if version is not None and version > SCHEMA_VERSION:
        raise MqbenchError(f"leaderboard database {path} has schema version {version}, newer "
                           f"than this mqbench's {SCHEMA_VERSION}; upgrade mqbench, or run "
                           f"`mqbench leaderboard rebuild` to recreate it from the records")
    rebuild(folder)
    return connect(path), ("created" if version is None else f"migrated from schema {version}")


def read_record(path: Path) -> tuple[dict, str]:
    """A record file's contents and the sha256 of its bytes."""
    data = path.read_bytes()
    try:
        rec = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MqbenchError(f"record {path} is not valid JSON ({exc}); restore it from git or "
                           f"delete it") from None
    if not isinstance(rec, dict) or "task" not in rec or "proxy" not in rec:
        raise MqbenchError(f"record {path} is not an mqbench record (no task/proxy fields)")
    if (path.parent.name, path.stem) != (rec["task"], rec["proxy"]):
        raise MqbenchError(f"record {path} is for {rec['task']}/{rec['proxy']}; it belongs in "
                           f"records/{rec['task']}/{rec['proxy']}.json")
    return rec, hashlib.sha256(data).hexdigest()


def metric_rows(rec: dict) -> list[tuple]:
    """Long-format (metric, value, ci_lo, ci_hi) rows of a record."""
    m = rec.get("metrics", {})
    rows = []
    for key, value in m.items():
        base = key[:-3] if key.endswith(("_lo", "_hi")) else None
        if base in m:
            continue  # a confidence bound, stored beside its metric
        rows.append((key, value, m.get(key + "_lo"), m.get(key + "_hi")))
    for key in ("per_config_ms", "proxy_seconds"):
        if key in rec.get("timing", {}):
            rows.append((key, rec["timing"][key], None, None))
    for d in rec.get("downstream", []):
        rows.append((f"ilp_acc_{d['metric']}@{d['budget_avg_bits']:g}", d["acc"], None, None))
        rows.append((f"ilp_gap_{d['metric']}@{d['budget_avg_bits']:g}", d["gap_to_best"],
                     None, None))
    return rows


def delete_run(con, task: str, proxy: str) -> None:
    con.execute("DELETE FROM metrics WHERE run_id IN (SELECT run_id FROM runs WHERE task = ? "
                "AND proxy = ?)", [task, proxy])
    con.execute("DELETE FROM runs WHERE task = ? AND proxy = ?", [task, proxy])


def insert_run(con, rec: dict, record_sha256: str) -> int:
    """Index one record (the caller deleted any previous run of the same task and proxy)."""
    run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
    con.execute("INSERT INTO runs VALUES (" + ", ".join("?" * 13) + ")", [
        run_id, rec["task"], rec["proxy"], rec.get("proxy_version"), rec.get("proxy_sha256"),
        rec.get("task_version"), rec.get("table_checksum"), rec.get("package_version"),
        rec.get("torch_version"), rec.get("git_commit"), rec.get("recorded_at"), record_sha256,
        json.dumps(rec, sort_keys=True)])
    rows = metric_rows(rec)
    if rows:
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                        [(run_id, *r) for r in rows])
    return run_id


def refresh_derived(con) -> None:
    for table, select in _DERIVED.items():
        con.execute(f"DELETE FROM {table}")
        con.execute(f"INSERT INTO {table} {select}")


def record_files(folder: Path) -> dict[tuple[str, str], Path]:
    return {(p.parent.name, p.stem): p for p in sorted((folder / "records").glob("*/*.json"))}


def out_of_sync(con, folder: Path, skip=()) -> dict[tuple[str, str], Path | None]:
    """(task, proxy) -> record file (None: the file is gone) for every run the DB has wrong."""
    files = {k: v for k, v in record_files(folder).items() if k not in skip}
    stored = {(t, p): sha for t, p, sha in
              con.execute("SELECT task, proxy, record_sha256 FROM runs").fetchall()}
    todo: dict[tuple[str, str], Path | None] = {k: None for k in stored
                                                if k not in files and k not in skip}
    for key, path in files.items():
        if stored.get(key) != hashlib.sha256(path.read_bytes()).hexdigest():
            todo[key] = path
    return todo


def sync(con, folder: Path, skip=()) -> int:
    """Make the database agree with the record files, in one transaction; returns #changes.

    `skip`: (task, proxy) keys left alone (the one a writer is about to replace).
    """
    todo = out_of_sync(con, folder, skip)
    if not todo:
        return 0
    con.begin()
    try:
        for (task, proxy), path in todo.items():
            delete_run(con, task, proxy)
            if path is not None:
                insert_run(con, *read_record(path))
        refresh_derived(con)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return len(todo)
