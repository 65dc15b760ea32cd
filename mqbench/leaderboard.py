"""The leaderboard: one JSON record file per (task, proxy), and a DuckDB index built from them.

Records live in `leaderboard/records/<task>/<proxy>.json` (small, reviewable in a pull
request); `leaderboard/mqbench.duckdb` is derived from them and never committed. Writers
take an exclusive file lock, because DuckDB allows one writing process at a time, and write
records atomically (temp file + rename), so a killed run leaves the previous state intact.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import duckdb

from mqbench.errors import MqbenchError
from mqbench.tasks import REPO_ROOT

DB_SCHEMA = 1
_DDL = """
CREATE TABLE IF NOT EXISTS info (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    task VARCHAR NOT NULL, proxy VARCHAR NOT NULL, proxy_version INTEGER, task_version INTEGER,
    package_version VARCHAR, git_commit VARCHAR, proxy_sha256 VARCHAR, table_checksum VARCHAR,
    spearman DOUBLE, kendall DOUBLE, spearman_top20 DOUBLE, spearman_top50 DOUBLE,
    spearman_top100 DOUBLE, layer_spearman DOUBLE, fitness DOUBLE, per_config_ms DOUBLE,
    record JSON NOT NULL, PRIMARY KEY (task, proxy));
"""
_METRICS = ["spearman", "kendall", "spearman_top20", "spearman_top50", "spearman_top100",
            "layer_spearman", "fitness"]


def leaderboard_dir() -> Path:
    return Path(os.environ.get("MQBENCH_LEADERBOARD") or REPO_ROOT / "leaderboard")


def record_path(task: str, proxy: str) -> Path:
    return leaderboard_dir() / "records" / task / f"{proxy}.json"


@contextmanager
def _locked():
    folder = leaderboard_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a concurrent writer to finish
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _connect(path: Path):
    try:
        con = duckdb.connect(str(path))
        con.execute(_DDL)
    except duckdb.Error as exc:
        raise MqbenchError(f"leaderboard database {path} is unreadable ({exc}); rebuild it from "
                           f"the records with `mqbench leaderboard rebuild`") from None
    version = con.execute("SELECT value FROM info WHERE key = 'schema_version'").fetchone()
    if version is None:
        con.execute("INSERT INTO info VALUES ('schema_version', ?)", [str(DB_SCHEMA)])
    elif int(version[0]) != DB_SCHEMA:
        con.close()
        raise MqbenchError(f"leaderboard database {path} has schema version {version[0]}, this "
                           f"mqbench uses {DB_SCHEMA}; rebuild it with `mqbench leaderboard "
                           f"rebuild`")
    return con


def _upsert(con, rec: dict) -> None:
    m = rec["metrics"]
    con.execute("INSERT OR REPLACE INTO runs VALUES (" + ", ".join("?" * 17) + ")", [
        rec["task"], rec["proxy"], rec["proxy_version"], rec["task_version"],
        rec["package_version"], rec["git_commit"], rec["proxy_sha256"], rec["table_checksum"],
        *[m.get(k) for k in _METRICS], rec["timing"]["per_config_ms"],
        json.dumps(rec, sort_keys=True)])


def save_record(rec: dict) -> Path:
    """Write the record file and index it; returns the record's path."""
    path = record_path(rec["task"], rec["proxy"])
    with _locked() as folder:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        con = _connect(folder / "mqbench.duckdb")
        try:
            con.begin()
            _upsert(con, rec)
            os.replace(tmp, path)
            con.commit()
        except BaseException:
            con.rollback()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            con.close()
    return path


def rebuild_db() -> Path:
    """Recreate the DuckDB index from the record files (the records are the source of truth)."""
    with _locked() as folder:
        path = folder / "mqbench.duckdb"
        tmp = folder / f"mqbench.rebuild{os.getpid()}.duckdb"
        tmp.unlink(missing_ok=True)
        con = _connect(tmp)
        try:
            for rec_path in sorted((folder / "records").glob("*/*.json")):
                try:
                    rec = json.loads(rec_path.read_text())
                except json.JSONDecodeError as exc:
                    raise MqbenchError(f"record {rec_path} is not valid JSON ({exc})") from None
                _upsert(con, rec)
        finally:
            con.close()
        os.replace(tmp, path)
        Path(str(path) + ".wal").unlink(missing_ok=True)
    return path


def ranking(task: str) -> list[dict]:
    """The task's records, best Spearman@top20% first (NaN last)."""
    folder = leaderboard_dir() / "records" / task
    recs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    def key(r):
        v = r["metrics"].get("spearman_top20")
        return (v is None, -(v or 0.0), r["proxy"])
    return sorted(recs, key=key)


def markdown_table(task: str) -> str:
    """A Markdown comparison table (EMQ-style correlations + TAP-style downstream accuracy)."""
    rows = ranking(task)
    if not rows:
        raise MqbenchError(f"no records for task {task!r}; run `mqbench eval --task {task}`")
    head = ("| proxy | ρs@20% | ρs@50% | ρs@100% | Kendall τ | ρ_sens | acc @3 bits | "
            "acc @4 bits | fitness φ | ms/config |\n|" + "---|" * 10)
    def f(v):
        return "—" if v is None else f"{v:+.3f}"
    lines = [head]
    for r in rows:
        m = r["metrics"]
        acc = {d["budget_avg_bits"]: d["acc"] for d in r["downstream"] if d["metric"] == "size"}
        lines.append(f"| {r['proxy']} | {f(m.get('spearman_top20'))} | "
                     f"{f(m.get('spearman_top50'))} | {f(m.get('spearman_top100'))} | "
                     f"{f(m.get('kendall'))} | {f(m.get('layer_spearman'))} | "
                     f"{acc.get(3.0, float('nan')):.4f} | {acc.get(4.0, float('nan')):.4f} | "
                     f"{f(m.get('fitness'))} | {r['timing']['per_config_ms']:.3f} |")
    return "\n".join(lines)
