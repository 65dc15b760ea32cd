"""Ground-truth tables: build (resumable), verify and load, in DuckDB (shards.py splits and merges).

One DuckDB file per task version under `cache_dir()/tables/`. Table `results` holds one row
per (kind, calibration seed, configuration): kind is `fp` (float reference), `uniform`,
`layer` (one unit quantized alone, the rest float: per-layer sensitivity) or `sample`
(stratified random configurations). Rows with `cal_seed = table.noise_seed` re-measure a
subset under a second calibration seed: the table's own noise floor. Table `meta` holds
provenance and, once complete, a sha256 over all rows that every load verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm import tqdm

import mqbench
from mqbench.bench import Bench, open_bench
from mqbench.errors import MqbenchError
from mqbench.quant import FP
from mqbench.space import BitConfig, sample_configs
from mqbench.tasks import REPO_ROOT, Task
from mqbench.train import cache_dir

SCHEMA_VERSION = 1
COLUMNS = ["kind", "cal_seed", "key", "unit", "w_bits", "a_bits", "avg_wbits", "size_bits",
           "bops", "acc", "loss", "kl"]
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS results (
    kind VARCHAR NOT NULL, cal_seed INTEGER NOT NULL, key VARCHAR NOT NULL, unit VARCHAR,
    w_bits INTEGER[] NOT NULL, a_bits INTEGER[] NOT NULL, avg_wbits DOUBLE NOT NULL,
    size_bits BIGINT NOT NULL, bops BIGINT NOT NULL,
    acc DOUBLE NOT NULL, loss DOUBLE NOT NULL, kl DOUBLE NOT NULL,
    PRIMARY KEY (kind, cal_seed, key));
"""


@dataclass(frozen=True)
class Item:
    """One planned measurement."""

    kind: str
    cal_seed: int
    cfg: BitConfig
    unit: str | None = None


@dataclass(frozen=True)
class Table:
    """A complete, verified ground-truth table."""

    task: Task
    rows: pd.DataFrame
    meta: dict[str, str]
    path: Path

    def kind(self, kind: str, cal_seed: int | None = None) -> pd.DataFrame:
        seed = self.task.seed if cal_seed is None else cal_seed
        return self.rows[(self.rows.kind == kind) & (self.rows.cal_seed == seed)]

    def quality(self, rows: pd.DataFrame) -> np.ndarray:
        """What proxies are ranked against: accuracy, or for LM tasks minus the per-token
        cross-entropy (ranking by perplexity, the LM metric; next-token accuracy is coarser:
        its noise-floor Spearman is 0.88 on pydocs-llama against 1.00 for KL)."""
        return (-rows.loss if self.task.is_lm else rows.acc).to_numpy()

    def configs(self) -> pd.DataFrame:
        """The configuration-level rows proxies are ranked on: uniform + sampled."""
        rows = self.rows[self.rows.kind.isin(["uniform", "sample"])]
        return rows[rows.cal_seed == self.task.seed].reset_index(drop=True)


def table_path(task: Task, shard: tuple[int, int] | None = None) -> Path:
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    return cache_dir() / "tables" / f"{task.key}{suffix}.duckdb"


def plan(bench: Bench) -> list[Item]:
    """Every measurement of the task's table, in a deterministic order."""
    task, space = bench.task, bench.space
    seed, tspec = task.seed, task.table
    items = [Item("fp", seed, space.uniform(FP, FP))]
    items += [Item("uniform", seed, space.uniform(w, a))
              for w in space.weight_bits for a in space.act_bits]
    n = len(space.units)
    for u, unit in enumerate(space.units):
        for w in space.weight_bits:
            wb, ab = [FP] * n, [FP] * n
            wb[u], ab[u] = w, space.act_bits[-1]
            items.append(Item("layer", seed, BitConfig(tuple(wb), tuple(ab)), unit))
    samples = [Item("sample", seed, c)
               for c in sample_configs(space, tspec.configs, tspec.strata, seed)]
    items += samples
    if tspec.noise_configs:
        pick = np.linspace(0, len(samples) - 1, min(tspec.noise_configs, len(samples)))
        repeat = [items[1 + i] for i in range(len(space.weight_bits) * len(space.act_bits))]
        repeat += [samples[int(round(i))] for i in pick]
        items += [Item(it.kind, tspec.noise_seed, it.cfg) for it in repeat]
    return items


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            con.execute(_DDL)
        return con
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise MqbenchError(f"table {path} is being written by another mqbench process; "
                               f"wait for it to finish (builds resume, nothing is lost)") from None
        raise MqbenchError(f"table {path} is unreadable ({str(exc).splitlines()[0][:100]}); "
                           f"delete it and rebuild with `mqbench build`") from None


def _meta(con) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM meta").fetchall())


def _set_meta(con, values: dict) -> None:
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [(k, str(v)) for k, v in values.items()])


def _provenance(bench: Bench) -> dict[str, str]:
    task = bench.task
    return {"schema_version": SCHEMA_VERSION, "task": task.name, "task_version": task.version,
            "task_checksum": task.checksum, "seed": task.seed,
            "package_version": mqbench.__version__, "git_commit": _git_commit(),
            "torch_version": torch.__version__,
            "weights_checksum": bench.weights_manifest.get("checksum", "pretrained"),
            "eval_samples": len(bench.eval_split), "units": ",".join(bench.space.units),
            **_text_provenance(bench)}


def _text_provenance(bench: Bench) -> dict[str, str]:
    """LM tasks: which tokenizer and corpus the windows came from."""
    if not bench.task.is_lm:
        return {}
    man = bench.weights_manifest
    corpus = man.get("corpus", {})
    return {"tokenizer_sha256": man.get("tokenizer_sha256", man.get("tokenizer", "")),
            "corpus_sha256": ",".join(corpus[s]["sha256"] for s in ("train", "validation", "test")
                                      if s in corpus)}


def _check_provenance(stored: dict, bench: Bench, path: Path) -> None:
    fresh = _provenance(bench)
    for key in ("task_version", "task_checksum", "seed", "weights_checksum", "units",
                "tokenizer_sha256"):
        if key in stored and stored[key] != str(fresh[key]):
            raise MqbenchError(f"table {path} was built with a different {key} than the "
                               f"current task; rebuild with `mqbench build {bench.task.name} "
                               f"--force` (or bump the task's version)")


def rows_checksum(rows: pd.DataFrame) -> str:
    """sha256 over every row in canonical order, floats by their exact hex form."""
    h = hashlib.sha256()
    rows = rows.sort_values(["kind", "cal_seed", "key"])
    for r in rows.itertuples(index=False):
        h.update("|".join([r.kind, str(r.cal_seed), r.key, str(r.unit), str(list(r.w_bits)),
                           str(list(r.a_bits)), float(r.avg_wbits).hex(),
                           float(r.acc).hex(), float(r.loss).hex(), float(r.kl).hex(),
                           str(r.size_bits), str(r.bops)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _row(bench: Bench, item: Item, m) -> tuple:
    space, cfg = bench.space, item.cfg
    size = space.size_bits(cfg)
    return (item.kind, item.cal_seed, cfg.key, item.unit, list(cfg.w), list(cfg.a),
            size / sum(space.params), size, space.bops(cfg), m.acc, m.loss, m.kl)


def _read_rows(con) -> pd.DataFrame:
    return con.execute(f"SELECT {', '.join(COLUMNS)} FROM results").df()


def noise_floor(rows: pd.DataFrame, seed: int, noise_seed: int) -> dict[str, float]:
    """Spearman between the two calibration seeds on the re-measured configurations."""
    a = rows[rows.cal_seed == seed].set_index(["kind", "key"])
    b = rows[rows.cal_seed == noise_seed].set_index(["kind", "key"])
    common = a.index.intersection(b.index)
    if len(common) < 3:
        return {}
    out = {"noise_pairs": len(common)}
    for metric in ("acc", "loss", "kl"):
        out[f"noise_spearman_{metric}"] = float(
            stats.spearmanr(a.loc[common, metric], b.loc[common, metric]).statistic)
    out["noise_mean_abs_acc_diff"] = float(np.abs(a.loc[common, "acc"] -
                                                  b.loc[common, "acc"]).mean())
    return out


def _finish(con, bench: Bench, items: list[Item]) -> None:
    rows = _read_rows(con)
    planned = {(it.kind, it.cal_seed, it.cfg.key) for it in items}
    have = set(zip(rows.kind, rows.cal_seed, rows.key))
    if planned != have:
        return
    t = bench.task
    _set_meta(con, {**noise_floor(rows, t.seed, t.table.noise_seed),
                    "rows": len(rows), "rows_checksum": rows_checksum(rows), "complete": "true"})


def build_table(task: Task, shard: tuple[int, int] | None = None, force: bool = False,
                progress: bool = True, chunk: int = 16, stop_after: int | None = None,
                report=None) -> Path:
    """Build (or resume) the task's table, or one shard of it; returns the file path.

    Rows are committed every `chunk` measurements, so an interrupted build resumes where it
    stopped with no duplicated or missing rows. `stop_after` ends the run after that many
    new rows (used to simulate a crash in tests). `report(n)` is called after each commit
    with the number of rows just stored (the parallel build's progress channel).
    """
    path = table_path(task, shard)
    bench = open_bench(task, progress)
    items = plan(bench)
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise MqbenchError(f"--shard {i}/{n}: need 0 <= i < n")
        items = items[i::n]
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        path.unlink()
        Path(str(path) + ".wal").unlink(missing_ok=True)
    con = _connect(path)
    try:
        stored = _meta(con)
        _check_provenance(stored, bench, path)
        if not stored:
            _set_meta(con, {**_provenance(bench), "shard": f"{shard[0]}/{shard[1]}"
                            if shard else "", "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        done = set(con.execute("SELECT kind, cal_seed, key FROM results").fetchall())
        todo = [it for it in items if (it.kind, it.cal_seed, it.cfg.key) not in done]
        if stop_after is not None:
            todo = todo[:stop_after]
        evaluators = {}
        start = time.perf_counter()
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"build {task.key}",
                   disable=not progress, unit="cfg")
        for j in range(0, len(todo), chunk):
            batch = []
            for it in todo[j:j + chunk]:
                if it.cal_seed not in evaluators:
                    evaluators[it.cal_seed] = bench.evaluator(it.cal_seed)
                batch.append(_row(bench, it, evaluators[it.cal_seed].evaluate(it.cfg)))
                bar.update()
            con.begin()
            con.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(COLUMNS))})",
                            batch)
            con.commit()
            if report is not None:
                report(len(batch))
        bar.close()
        elapsed = time.perf_counter() - start
        prev = float(_meta(con).get("build_seconds", 0))
        _set_meta(con, {"build_seconds": round(prev + elapsed, 2)})
        _finish(con, bench, items)
    finally:
        con.close()
    return path


def export_table(task: Task) -> Path:
    """Write the verified table as Parquet + JSON meta next to the shipped weights."""
    from mqbench.train import shipped_dir

    table = load_table(task)
    out = shipped_dir(task)
    out.mkdir(parents=True, exist_ok=True)
    con = _connect(table.path, read_only=True)
    try:
        con.execute(f"COPY (SELECT {', '.join(COLUMNS)} FROM results ORDER BY kind, cal_seed, "
                    f"key) TO '{out / 'table.parquet'}' (FORMAT PARQUET)")
    finally:
        con.close()
    (out / "table_meta.json").write_text(json.dumps(table.meta, indent=1, sort_keys=True) + "\n")
    models = cache_dir() / "models" / task.key
    for name in ("weights.pt", "manifest.json"):
        if (models / name).exists():
            shutil.copyfile(models / name, out / name)
    return out


def import_shipped(task: Task) -> bool:
    """Install the repository's shipped table for `task` into the cache; False if none."""
    from mqbench.train import shipped_dir

    src = shipped_dir(task)
    if not (src / "table.parquet").exists():
        return False
    path = table_path(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".import{os.getpid()}")
    tmp.unlink(missing_ok=True)
    con = _connect(tmp)
    try:
        con.execute(f"INSERT INTO results SELECT {', '.join(COLUMNS)} FROM "
                    f"read_parquet('{src / 'table.parquet'}')")
        _set_meta(con, json.loads((src / "table_meta.json").read_text()))
    finally:
        con.close()
    os.replace(tmp, path)
    load_table(task)  # verifies checksum and provenance; raises if the shipped copy is stale
    return True


def load_table(task: Task) -> Table:
    """Open and verify a complete table (checksum and provenance)."""
    path = table_path(task)
    if not path.exists():
        raise MqbenchError(f"no table for {task.key}; build it with `mqbench build {task.name}`")
    con = _connect(path, read_only=True)
    try:
        meta = _meta(con)
        rows = _read_rows(con)
    finally:
        con.close()
    if meta.get("complete") != "true":
        raise MqbenchError(f"table {path} is incomplete; resume with `mqbench build {task.name}`")
    if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
        raise MqbenchError(f"table {path} has schema version {meta.get('schema_version')}, this "
                           f"mqbench reads {SCHEMA_VERSION}; rebuild with --force")
    if meta.get("task_version") != str(task.version) or meta.get("task_checksum") != task.checksum:
        raise MqbenchError(f"table {path} was built from a different version of task file "
                           f"{task.path}; rebuild with `mqbench build {task.name} --force`")
    if rows_checksum(rows) != meta.get("rows_checksum"):
        raise MqbenchError(f"table {path} fails its checksum (corrupt or modified); rebuild "
                           f"with `mqbench build {task.name} --force`")
    return Table(task, rows, meta, path)
