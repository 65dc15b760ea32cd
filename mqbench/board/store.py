"""The leaderboard: one JSON record file per (task, proxy), and a DuckDB index built from them.

Records live in `leaderboard/records/<task>/<proxy>.json` (small, reviewable in a pull
request; the source of truth); `leaderboard/mqbench.duckdb` is derived from them by
mqbench.board.db (schema in `leaderboard/SCHEMA.md`) and never committed.

Records are mqbench.scoring.record.Record values; a file in an older record schema reads
as the current one (Record.from_dict migrates it) and `upgrade_records` rewrites such files.

Replace rule: a new result replaces the stored record only when one of IDENTITY changed
(proxy version or source, task version, package version, ground-truth table, record
schema of the stored file). Otherwise the run is "unchanged": records contain timings, so a
re-run is never byte-identical; we keep the stored record and leave file and database
untouched.

Concurrency and crashes: every writer (and `query`) holds an exclusive flock on
`leaderboard/.lock`, because DuckDB allows one writing process at a time. A record is
written to a temp file first; then, inside one database transaction, the run is indexed,
the temp file is renamed over the record (the commit point), and the transaction commits.
A writer killed before the rename leaves records and database as before (the uncommitted
transaction is discarded); one killed after it leaves the new record with a lagging
database, which the next writer's `sync` (or `mqbench leaderboard rebuild`) catches up.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from mqbench.board import db as D
from mqbench.errors import MqbenchError
from mqbench.paths import leaderboard_dir, remove_stale_temps
from mqbench.scoring.record import RECORD_SCHEMA, Record

IDENTITY = ("proxy_version", "proxy_sha256", "task_version", "package_version",
            "table_checksum", "schema_version")


@dataclass(frozen=True)
class Saved:
    """What save_record did: status is "new", "replaced" or "unchanged"."""

    path: Path
    status: str
    changed: tuple[str, ...] = ()  # the identity fields that differed (for "replaced")
    db_note: str = ""  # "created" / "migrated from schema N" when the database was rebuilt


def record_path(task: str, proxy: str) -> Path:
    return leaderboard_dir() / "records" / task / f"{proxy}.json"


def _pause(point: str) -> None:
    """Test hook: MQBENCH_TEST_PAUSE=point:seconds sleeps there (to kill a writer mid-write)."""
    want, _, seconds = os.environ.get("MQBENCH_TEST_PAUSE", "").partition(":")
    if want == point:
        print(f"paused at {point}", flush=True)
        time.sleep(float(seconds or 30))


@contextmanager
def _locked():
    folder = leaderboard_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a concurrent writer to finish
        try:
            # temp files of a writer that died (we hold the lock, so none is live)
            for stale in (folder / "records").glob("*/*.json.tmp*"):
                stale.unlink(missing_ok=True)
            remove_stale_temps(folder)  # a killed `rebuild`'s temporary database
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def identity_changes(old: Record, new: Record, old_schema: int = RECORD_SCHEMA
                     ) -> tuple[str, ...]:
    """The IDENTITY fields that differ; `old_schema` is the stored file's own schema version
    (a migrated record's `schema_version` is already the current one)."""
    return tuple(k for k in IDENTITY if (old_schema if k == "schema_version"
                                         else getattr(old, k)) != getattr(new, k))


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_record(rec: Record, force: bool = False) -> Saved:
    """Store `rec` under the replace rule (force=True always replaces); see the module doc."""
    if not isinstance(rec, Record):
        raise MqbenchError(f"save_record takes an mqbench Record, got {type(rec).__name__}; "
                           f"convert a dict with mqbench.scoring.record.Record.from_dict")
    if rec.proxy_kind == "search":
        raise MqbenchError(f"{rec.proxy!r} is a search method's result (no per-configuration "
                           f"scores); it is a report, not a leaderboard record")
    with _locked() as folder:
        path = record_path(rec.task, rec.proxy)
        old, existed = None, path.exists()
        if existed:
            try:
                old, _, old_schema = D.read_record(path)
            except MqbenchError:
                old = None  # a damaged record file is replaced by the fresh result
        changed = identity_changes(old, rec, old_schema) if old is not None else ()
        if old is not None and not changed and not force:
            note = _index_if_stale(folder)
            return Saved(path, "unchanged", db_note=note)
        rec = dataclasses.replace(
            rec, recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        text = rec.to_json()
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _fsync_write(tmp, text)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _unsaved(rec, text, path, exc) from None
        try:
            con, note = D.open_db(folder)
        except MqbenchError as exc:
            tmp.unlink(missing_ok=True)
            raise _unsaved(rec, text, path, exc) from None
        try:
            # catch up with records changed by git or by a writer killed after its rename
            D.sync(con, folder, skip={(rec.task, rec.proxy)})
            con.begin()
            D.delete_run(con, rec.task, rec.proxy)
            D.insert_run(con, rec, hashlib.sha256(text.encode()).hexdigest())
            D.refresh_derived(con)
            _pause("in_transaction")
            os.replace(tmp, path)  # the commit point: the record is the source of truth
            _fsync_dir(path.parent)
            _pause("after_rename")
            con.commit()
        except (OSError, duckdb.Error) as exc:  # e.g. a full disk: keep the result, say where
            con.rollback()
            tmp.unlink(missing_ok=True)
            raise _unsaved(rec, text, path, exc) from None
        except BaseException:
            con.rollback()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            con.close()
    return Saved(path, "replaced" if existed else "new", changed, note)


def _unsaved(rec: Record, text: str, path: Path, exc: Exception) -> MqbenchError:
    """The error for a record that could not be stored, after saving its JSON elsewhere (the
    system temp folder, then stdout) so a long evaluation's result is never lost."""
    if isinstance(exc, MqbenchError):  # e.g. a refused database: its own message says why
        what = str(exc)
    else:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            str(exc).splitlines()[0][:80]
        what = f"could not write the leaderboard record {path} ({reason})"
    name = f"mqbench-unsaved-{rec.task}-{rec.proxy}-{os.getpid()}.json"
    for folder in (Path(tempfile.gettempdir()), Path.cwd()):
        try:
            (folder / name).write_text(text)
            return MqbenchError(f"{what}; the result is saved in {folder / name}: copy it to "
                                f"{path} when the problem is fixed")
        except OSError:
            continue
    print(text)
    return MqbenchError(f"{what}; the record was printed above: save it as {path} when the "
                        f"problem is fixed")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _index_if_stale(folder: Path) -> str:
    """Bring the database up to date without writing to it when it already is."""
    path = folder / "mqbench.duckdb"
    if path.exists():
        con = D.connect(path, read_only=True)
        try:
            fine = D.schema_of(con) == D.SCHEMA_VERSION and not D.out_of_sync(con, folder)
        except Exception:  # noqa: BLE001 - any problem: fall through to open_db's checks
            fine = False
        finally:
            con.close()
        if fine:
            return ""
    con, note = D.open_db(folder)
    try:
        D.sync(con, folder)
    finally:
        con.close()
    return note


def upgrade_records() -> list[Path]:
    """Rewrite every record file written in an older record schema in the current one (the
    migration of mqbench.scoring.record; nothing else in the file changes); returns them."""
    done = []
    with _locked() as folder:
        for path in D.record_files(folder).values():
            rec, _, schema = D.read_record(path)
            if schema == RECORD_SCHEMA:
                continue
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            _fsync_write(tmp, rec.to_json())
            os.replace(tmp, path)
            done.append(path)
        if done and (folder / "mqbench.duckdb").exists():
            _index_if_stale(folder)
    return done


def rebuild_db() -> Path:
    """Recreate the DuckDB index from the record files (the records are the source of truth)."""
    with _locked() as folder:
        return D.rebuild(folder)


def query(sql: str, params: list | None = None) -> list[tuple]:
    """Run a read query on the up-to-date database (created/migrated/synced first).

    Use this rather than opening the file directly: it waits for a concurrent writer.
    """
    with _locked() as folder:
        con, _ = D.open_db(folder)
        try:
            D.sync(con, folder)
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()
