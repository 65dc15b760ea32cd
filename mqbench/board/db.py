"""The leaderboard's DuckDB index: schema, versioning/migration, and sync from the record files.

The database is derived: every row comes from a record file under `leaderboard/records/`,
and `sync` makes the database agree with those files (it re-indexes a record whose bytes
changed and drops a run whose file is gone). Callers hold the leaderboard lock
(mqbench.board.store) around every function here. The layout is documented, table by
table, in `leaderboard/SCHEMA.md`; bump SCHEMA_VERSION whenever it changes.

Migration: a database from an older schema version is rebuilt from the records (they are
the source of truth, so nothing is lost); a newer or unreadable one is refused with a
one-line error, never read with the wrong layout.

Records are read through mqbench.scoring.record.Record, so `runs.record` always holds the
current record schema (a file of an older one is migrated as it is indexed).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import duckdb

from mqbench.errors import MqbenchError
from mqbench.paths import atomic_path
from mqbench.scoring.record import Record

# 3: runs.record holds records migrated to record schema 2 (no `spearman_top100` metric rows)
SCHEMA_VERSION = 3
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
    """Recreate `folder`/mqbench.duckdb from the record files (atomic: temp file + rename).

    The temporary database is removed on any failure (a full disk must not stay full), and
    those of killed rebuilds are removed by the next writer (`remove_stale_temps`)."""
    path = folder / "mqbench.duckdb"
    with atomic_path(path) as tmp:
        try:
            con = _create(tmp)
            try:
                sync(con, folder)
                con.execute("CHECKPOINT")
            finally:
                con.close()
        except (duckdb.Error, OSError) as exc:
            raise MqbenchError(f"could not rebuild the leaderboard database in {folder} "
                               f"({str(exc).splitlines()[0][:80]}); free disk space and run "
                               f"`mqbench leaderboard rebuild`") from None
        finally:
            Path(f"{tmp}.wal").unlink(missing_ok=True)
        Path(str(path) + ".wal").unlink(missing_ok=True)
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


def read_record(path: Path) -> tuple[Record, str, int]:
    """A record file as a (current-schema) Record, the sha256 of its bytes, and the schema
    version the file itself is written in."""
    data = path.read_bytes()
    rec = Record.from_json(data, source=f"record {path}")
    if (path.parent.name, path.stem) != (rec.task, rec.proxy):
        raise MqbenchError(f"record {path} is for {rec.task}/{rec.proxy}; it belongs in "
                           f"records/{rec.task}/{rec.proxy}.json")
    return rec, hashlib.sha256(data).hexdigest(), json.loads(data)["schema_version"]


def metric_rows(rec: Record) -> list[tuple]:
    """Long-format (metric, value, ci_lo, ci_hi) rows of a record."""
    m = rec.metrics
    rows = []
    for key, value in m.items():
        base = key[:-3] if key.endswith(("_lo", "_hi")) else None
        if base in m:
            continue  # a confidence bound, stored beside its metric
        rows.append((key, value, m.get(key + "_lo"), m.get(key + "_hi")))
    rows.append(("per_config_ms", rec.timing.per_config_ms, None, None))
    rows.append(("proxy_seconds", rec.timing.proxy_seconds, None, None))
    for d in rec.downstream:
        rows.append((f"ilp_acc_{d.metric}@{d.budget_avg_bits:g}", d.acc, None, None))
        rows.append((f"ilp_gap_{d.metric}@{d.budget_avg_bits:g}", d.gap_to_best, None, None))
    return rows


def delete_run(con, task: str, proxy: str) -> None:
    con.execute("DELETE FROM metrics WHERE run_id IN (SELECT run_id FROM runs WHERE task = ? "
                "AND proxy = ?)", [task, proxy])
    con.execute("DELETE FROM runs WHERE task = ? AND proxy = ?", [task, proxy])


def insert_run(con, rec: Record, record_sha256: str) -> int:
    """Index one record (the caller deleted any previous run of the same task and proxy)."""
    run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
    con.execute("INSERT INTO runs VALUES (" + ", ".join("?" * 13) + ")", [
        run_id, rec.task, rec.proxy, rec.proxy_version, rec.proxy_sha256, rec.task_version,
        rec.table_checksum, rec.package_version, rec.torch_version, rec.git_commit,
        rec.recorded_at, record_sha256, json.dumps(rec.to_dict(), sort_keys=True)])
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
            if path is None:
                continue
            try:
                rec, sha, _ = read_record(path)
            except MqbenchError as exc:  # one bad file must not block every other record
                print(f"mqbench: warning: skipped a damaged leaderboard record: {exc}",
                      file=sys.stderr)
                continue
            insert_run(con, rec, sha)
        refresh_derived(con)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return len(todo)
