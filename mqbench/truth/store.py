"""Ground-truth tables: build (resumable), verify and load, in DuckDB (shards.py splits and merges).

One DuckDB file per task version under `cache_dir()/tables/`. Table `results` holds one row
per (kind, calibration seed, configuration): kind is `fp` (float reference), `uniform`,
`layer` (one unit quantized alone, the rest float: per-layer sensitivity) or `sample`
(stratified random configurations). Rows with `cal_seed = table.noise_seed` re-measure a
subset under a second calibration seed: the table's own noise floor. Table `meta` holds
provenance and, once complete, a sha256 over all rows that every load verifies.

Protocol-2 tables (schema 2) add, per row, the metrics on the two halves of the test set
(`*_h0`, `*_h1`: split-half noise) and on the validation split (`val_*`), and store their
noise ceilings and table statistics (`mqbench.truth.noise`) in `meta`. Schema-1 tables
load exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from mqbench.errors import MqbenchError
from mqbench.paths import atomic_path, cache_dir, remove_stale_temps, shipped_dir
from mqbench.provenance import software
from mqbench.task import artifacts
from mqbench.task.spec import Task
from mqbench.truth.bench import Bench

SCHEMA_VERSION = 1  # protocol-1 tables
SCHEMA_V2 = 2  # protocol-2 tables: SPLIT_COLUMNS added
COLUMNS = ["kind", "cal_seed", "key", "unit", "w_bits", "a_bits", "avg_wbits", "size_bits",
           "bops", "acc", "loss", "kl"]
# Protocol 2: metrics on the test set's two halves and on the validation split (NaN = not
# measured, e.g. split_half = false).
SPLITS = {"h0": ("acc_h0", "loss_h0", "kl_h0"), "h1": ("acc_h1", "loss_h1", "kl_h1"),
          "val": ("val_acc", "val_loss", "val_kl")}
SPLIT_COLUMNS = [c for cols in SPLITS.values() for c in cols]
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS results (
    kind VARCHAR NOT NULL, cal_seed INTEGER NOT NULL, key VARCHAR NOT NULL, unit VARCHAR,
    w_bits INTEGER[] NOT NULL, a_bits INTEGER[] NOT NULL, avg_wbits DOUBLE NOT NULL,
    size_bits BIGINT NOT NULL, bops BIGINT NOT NULL,
    acc DOUBLE NOT NULL, loss DOUBLE NOT NULL, kl DOUBLE NOT NULL,{extra}
    PRIMARY KEY (kind, cal_seed, key));
"""


def schema_of(task: Task) -> int:
    """The table schema a task's protocol writes."""
    return SCHEMA_V2 if task.table.protocol == 2 else SCHEMA_VERSION


def columns(schema: int = SCHEMA_VERSION) -> list[str]:
    """The `results` columns of a table schema, in storage order."""
    return COLUMNS + (SPLIT_COLUMNS if schema == SCHEMA_V2 else [])


def _ddl(schema: int) -> str:
    extra = "".join(f"\n    {c} DOUBLE," for c in SPLIT_COLUMNS) if schema == SCHEMA_V2 else ""
    return _DDL.format(extra=extra)


@dataclass(frozen=True)
class Table:
    """A complete, verified ground-truth table."""

    task: Task
    rows: pd.DataFrame
    meta: dict[str, str]
    path: Path

    @property
    def protocol(self) -> int:
        return 2 if int(self.meta.get("schema_version", 1)) == SCHEMA_V2 else 1

    def on(self, rows: pd.DataFrame, split: str) -> pd.DataFrame:
        """`rows` with acc/loss/kl taken from `split`: "test" (as stored), "val" (the
        validation split: what searches and tuning may use) or "h0"/"h1" (test halves)."""
        if split == "test":
            return rows
        if split not in SPLITS:
            raise MqbenchError(f"split {split!r}: choose test, val, h0 or h1")
        if self.protocol != 2:
            raise MqbenchError(f"table of {self.task.key} is protocol 1: it holds test "
                               f"metrics only; build a protocol-2 task for {split!r} rows")
        return rows.assign(**dict(zip(("acc", "loss", "kl"),
                                      (rows[c] for c in SPLITS[split]))))

    def kind(self, kind: str, cal_seed: int | None = None, split: str = "test") -> pd.DataFrame:
        seed = self.task.seed if cal_seed is None else cal_seed
        return self.on(self.rows[(self.rows.kind == kind) & (self.rows.cal_seed == seed)], split)

    def quality(self, rows: pd.DataFrame) -> np.ndarray:
        """What proxies are ranked against: accuracy, or for LM tasks minus the per-token
        cross-entropy (ranking by perplexity, the LM metric; next-token accuracy is coarser:
        its noise-floor Spearman is 0.88 on pydocs-llama against 1.00 for KL)."""
        return (-rows.loss if self.task.is_lm else rows.acc).to_numpy()

    def configs(self, split: str = "test") -> pd.DataFrame:
        """The configuration-level rows proxies are ranked on: uniform + sampled (on
        `split`, see `on`: discovery and tuning rank on "val", reports on "test")."""
        rows = self.rows[self.rows.kind.isin(["uniform", "sample"])]
        return self.on(rows[rows.cal_seed == self.task.seed].reset_index(drop=True), split)


def table_path(task: Task, shard: tuple[int, int] | None = None) -> Path:
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    return cache_dir() / "tables" / f"{task.key}{suffix}.duckdb"


def connect(path: Path, read_only: bool = False,
            schema: int = SCHEMA_VERSION) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            con.execute(_ddl(schema))
        return con
    except duckdb.Error as exc:
        if re.search(r"\block\b", str(exc).lower()):  # not "block" in a corruption message
            raise MqbenchError(f"table {path} is being written by another mqbench process; "
                               f"wait for it to finish (builds resume, nothing is lost)") from None
        raise MqbenchError(f"table {path} is unreadable ({str(exc).splitlines()[0][:100]}); "
                           f"delete it and rebuild with `mqbench build`") from None


def read_meta(con) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM meta").fetchall())


def write_meta(con, values: dict) -> None:
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [(k, str(v)) for k, v in values.items()])


def table_provenance(bench: Bench) -> dict[str, str]:
    task = bench.task
    return {"schema_version": schema_of(task), "task": task.name, "task_version": task.version,
            "task_checksum": task.checksum, "task_spec_checksum": task.spec_checksum,
            "seed": task.seed, "quant_method": task.quant.method,
            **software(),
            "weights_checksum": bench.weights_manifest.get("checksum", "pretrained"),
            "eval_samples": len(bench.eval_split), "units": ",".join(bench.space.units),
            **_text_provenance(bench), **_split_provenance(bench)}


def _split_provenance(bench: Bench) -> dict[str, str]:
    """Protocol 2: the sizes of its sets and a checksum of which samples each holds."""
    sp = bench.splits
    if sp is None:
        return {}
    h = hashlib.sha256()
    for name, idx in (("train", sp.train), ("val", sp.val), ("test", sp.test),
                      *((f"half{i}", half) for i, half in enumerate(sp.halves or ()))):
        h.update(f"{name}:".encode() + (b"all" if idx is None else idx.numpy().tobytes()))
    return {"protocol": 2, "val_split": sp.val_split, "val_samples": len(bench.val_split),
            "train_samples": "all" if sp.train is None else len(sp.train),
            "test_halves": ",".join(str(len(x)) for x in sp.halves) if sp.halves else "",
            "splits_checksum": h.hexdigest()}


def _text_provenance(bench: Bench) -> dict[str, str]:
    """LM tasks: which tokenizer and corpus the windows came from."""
    if not bench.task.is_lm:
        return {}
    man = bench.weights_manifest
    corpus = man.get("corpus", {})
    return {"tokenizer_sha256": man.get("tokenizer_sha256", man.get("tokenizer", "")),
            "corpus_sha256": ",".join(corpus[s]["sha256"] for s in ("train", "validation", "test")
                                      if s in corpus)}


def same_task(meta: dict, task: Task) -> bool:
    """The table was built from this task: the same values (tables that record them), or
    for older tables the same file bytes."""
    if meta.get("task_version", str(task.version)) != str(task.version):
        return False
    if meta.get("task_spec_checksum"):
        return meta["task_spec_checksum"] == task.spec_checksum
    return meta.get("task_checksum", task.checksum) == task.checksum


def check_provenance(stored: dict, bench: Bench, path: Path) -> None:
    fresh = table_provenance(bench)
    if not same_task(stored, bench.task):  # keys a new shard has not written yet pass
        raise MqbenchError(f"table {path} was built from a different version of the task "
                           f"file; rebuild with `mqbench build --task {bench.task.name} "
                           f"--force` (or bump the task's version)")
    for key in ("seed", "weights_checksum", "units", "tokenizer_sha256", "splits_checksum"):
        if key in stored and stored[key] != str(fresh[key]):
            raise MqbenchError(f"table {path} was built with a different {key} than the "
                               f"current task; rebuild with `mqbench build --task "
                               f"{bench.task.name} --force` (or bump the task's version)")


def rows_checksum(rows: pd.DataFrame) -> str:
    """sha256 over every row in canonical order, floats by their exact hex form (schema-2
    rows add their split columns; schema-1 rows hash exactly as they always did)."""
    h = hashlib.sha256()
    rows = rows.sort_values(["kind", "cal_seed", "key"])
    extra = [c for c in SPLIT_COLUMNS if c in rows.columns]
    for r in rows.itertuples(index=False):
        fields = [r.kind, str(r.cal_seed), r.key, str(r.unit), str(list(r.w_bits)),
                  str(list(r.a_bits)), float(r.avg_wbits).hex(),
                  float(r.acc).hex(), float(r.loss).hex(), float(r.kl).hex(),
                  str(r.size_bits), str(r.bops)]
        fields += [float(getattr(r, c)).hex() for c in extra]
        h.update("|".join(fields).encode())
        h.update(b"\n")
    return h.hexdigest()


def read_rows(con, schema: int = SCHEMA_VERSION) -> pd.DataFrame:
    rows = con.execute(f"SELECT {', '.join(columns(schema))} FROM results").df()
    for c in SPLIT_COLUMNS if schema == SCHEMA_V2 else ():
        rows[c] = rows[c].astype("float64")  # NULL (not measured) reads back as NaN
    return rows


def stored_schema(con) -> int:
    """The schema of an open table file, from its columns (meta may not be written yet)."""
    names = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                       "WHERE table_name = 'results'").fetchall()}
    return SCHEMA_V2 if "val_acc" in names else SCHEMA_VERSION


def export_table(task: Task) -> Path:
    """Write the verified table as Parquet + JSON meta next to the shipped weights, and pin
    every shipped file's checksum in tasks/artifacts/SHA256SUMS."""
    table = load_table(task)
    out = shipped_dir(task.key)
    out.mkdir(parents=True, exist_ok=True)
    con = connect(table.path, read_only=True)
    try:
        con.execute(f"COPY (SELECT {', '.join(columns(schema_of(task)))} FROM results ORDER BY "
                    f"kind, cal_seed, key) TO '{out / 'table.parquet'}' (FORMAT PARQUET)")
    finally:
        con.close()
    (out / "table_meta.json").write_text(json.dumps(table.meta, indent=1, sort_keys=True) + "\n")
    models = cache_dir() / "models" / task.model_key
    for name in ("weights.pt", "manifest.json"):  # shipped once, beside the rtn table
        if task.key == task.model_key and (models / name).exists():
            shutil.copyfile(models / name, out / name)
    artifacts.pin(sorted(p for p in out.iterdir() if p.is_file()))
    return out


def import_shipped(task: Task) -> bool:
    """Install the repository's shipped table for `task` into the cache; False if none.

    The shipped files must match tasks/artifacts/SHA256SUMS, and the rows their own checksum;
    a damaged artifact is a one-line error and leaves nothing behind in the cache.
    """
    src = shipped_dir(task.key)
    if not (src / "table.parquet").exists():
        return False
    for name in ("table.parquet", "table_meta.json"):
        artifacts.verify(src / name)
    path = table_path(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    with atomic_path(path) as tmp:
        schema = schema_of(task)
        con = connect(tmp, schema=schema)
        try:
            con.execute(f"INSERT INTO results SELECT {', '.join(columns(schema))} FROM "
                        f"read_parquet('{src / 'table.parquet'}')")
            write_meta(con, json.loads((src / "table_meta.json").read_text()))
        except (duckdb.Error, ValueError) as exc:
            raise MqbenchError(f"shipped table {src} is unreadable "
                               f"({str(exc).splitlines()[0][:80]}); restore it with "
                               f"`git checkout -- {src}`") from None
        finally:
            con.close()
            Path(f"{tmp}.wal").unlink(missing_ok=True)
    load_table(task)  # verifies checksum and provenance; raises if the shipped copy is stale
    return True


def installed(task: Task) -> bool:
    """True when the task's table is in the cache, installing the shipped copy if needed."""
    return table_path(task).exists() or import_shipped(task)


def open_table(task: Task) -> Table:
    """The task's verified table from the cache or the shipped copy; never builds one."""
    installed(task)
    return load_table(task)


def load_table(task: Task) -> Table:
    """Open and verify a complete table (checksum and provenance)."""
    path = table_path(task)
    if not path.exists():
        raise MqbenchError(f"no table for {task.key}; build it with `mqbench build --task "
                           f"{task.name}`")
    con = connect(path, read_only=True)
    try:
        meta = read_meta(con)
        rows = read_rows(con, stored_schema(con))
    except duckdb.Error as exc:
        raise MqbenchError(f"table {path} is corrupt ({str(exc).splitlines()[0][:80]}); delete "
                           f"it and rerun: the shipped copy or a rebuild replaces it") from None
    finally:
        con.close()
    if meta.get("complete") != "true":
        raise MqbenchError(f"table {path} is incomplete; resume with `mqbench build --task "
                           f"{task.name}`")
    if int(meta.get("schema_version", -1)) != schema_of(task):
        raise MqbenchError(f"table {path} has schema version {meta.get('schema_version')}; "
                           f"task {task.name} (protocol {task.table.protocol}) reads "
                           f"{schema_of(task)}; rebuild with --force")
    if not same_task(meta, task):
        raise MqbenchError(f"table {path} was built from a different version of task file "
                           f"{task.path}; rebuild with `mqbench build --task {task.name} --force`")
    if rows_checksum(rows) != meta.get("rows_checksum"):
        raise MqbenchError(f"table {path} fails its checksum (corrupt or modified); rebuild "
                           f"with `mqbench build --task {task.name} --force`")
    if meta.get("quant_method", "rtn") != task.quant.method:
        raise MqbenchError(f"table {path} was built with quantization method "
                           f"{meta.get('quant_method')!r}, not {task.quant.method!r}; rebuild "
                           f"it with `mqbench build --task {task.label} --force`")
    # tables built before methods existed are round-to-nearest ones
    meta = {**meta, "quant_method": meta.get("quant_method", "rtn")}
    return Table(task, rows, meta, path)
