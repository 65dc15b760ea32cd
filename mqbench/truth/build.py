"""Building ground-truth tables: the plan, resumable builds, backends, shards, `ensure_table`.

The plan lists every measurement (uniform, sampled and per-layer configurations, noise
repeats); `build_table` measures what is missing in this process and stores it.
`fill_table` does the same through a backend (`mqbench.truth.backends`: local processes,
Ray, SLURM): the missing rows go out as content-keyed batches, and this process alone
stores what comes back, refusing a row measured twice with different values. Every path
writes the same table file, so a build started one way can be finished another. A shard
(`--shard i/n`) is an ordinary resumable build of every n-th planned measurement in its own
DuckDB file, for schedulers mqbench does not drive; `merge_shards` checks that the complete
shards cover the plan exactly and writes the task's table atomically.

Protocol-2 tasks (`mqbench.truth.protocol2`) build in two phases, fixed rows then samples
(the sample plan reads the fixed rows); every shard measures the (small) fixed phase
itself, and merging keeps shard 0's copy. Their rows are measured in groups sorted by
prefix, each group evaluated prefix-shared on the test and validation sets.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats as scistats  # not `stats`: that is the proxy context

from mqbench.errors import MqbenchError
from mqbench.progress import bar as progress_bar
from mqbench.quant.quantizer import FP
from mqbench.quant.space import BitConfig, sample_configs
from mqbench.task import datasets as D
from mqbench.task.spec import Task
from mqbench.truth import backends as B
from mqbench.truth import protocol2 as P2
from mqbench.truth.bench import Bench, eval_device, open_bench
from mqbench.truth.noise import CONFIG_KINDS, noise_ceilings, table_stats
from mqbench.truth.protocol2 import Item
from mqbench.truth.store import (
    SCHEMA_VERSION,
    check_provenance,
    columns,
    connect,
    installed,
    load_table,
    read_meta,
    read_rows,
    rows_checksum,
    schema_of,
    table_path,
    table_provenance,
    write_meta,
)
from mqbench.truth.work import make_batches, measure_batch, row_v1

__all__ = ["Item", "build_parallel", "build_table", "ensure_table", "fill_table",
           "merge_shards", "noise_floor", "plan", "store_rows"]


def plan(bench: Bench, rows: pd.DataFrame | None = None) -> list[Item]:
    """Every measurement of the task's table, in a deterministic order.

    Protocol 2 with damage sampling draws its samples from the table's own per-layer rows:
    pass `rows` (the stored rows, or at least the fixed phase's).
    """
    if bench.task.table.protocol == 2:
        return P2.fixed_items(bench) + P2.sample_items(bench, rows)
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
            scistats.spearmanr(a.loc[common, metric], b.loc[common, metric]).statistic)
    out["noise_mean_abs_acc_diff"] = float(np.abs(a.loc[common, "acc"] -
                                                  b.loc[common, "acc"]).mean())
    return out


def _finish(con, bench: Bench, items: list[Item]) -> None:
    t = bench.task
    rows = read_rows(con, schema_of(t))
    planned = {(it.kind, it.cal_seed, it.cfg.key) for it in items}
    have = set(zip(rows.kind, rows.cal_seed, rows.key))
    if planned != have:
        return
    extra = {}
    if t.table.protocol == 2:  # noise floor over configurations, as protocol 1 reports it
        floor = noise_floor(rows[rows.kind.isin(CONFIG_KINDS)], t.seed, t.table.noise_seed)
        extra = {**noise_ceilings(rows, t), **table_stats(rows, t, D.num_classes(t.data))}
    else:
        floor = noise_floor(rows, t.seed, t.table.noise_seed)
    write_meta(con, {**floor, **extra, "rows": len(rows), "rows_checksum": rows_checksum(rows),
                    "complete": "true"})


def build_table(task: Task, shard: tuple[int, int] | None = None, force: bool = False,
                progress: bool = True, chunk: int | None = None, stop_after: int | None = None,
                report=None) -> Path:
    """Build (or resume) the task's table, or one shard of it; returns the file path.

    Rows are committed every `chunk` measurements (default 16; protocol 2: 64, one
    prefix-shared group), so an interrupted build resumes where it stopped with no
    duplicated or missing rows. `stop_after` ends the run after that many new rows (used to
    simulate a crash in tests). `report(n)` is called after each commit with the number of
    rows just stored (the parallel build's progress channel).
    """
    path = table_path(task, shard)
    bench = open_bench(task, progress)
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise MqbenchError(f"--shard {i}/{n}: need 0 <= i < n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        path.unlink()
        Path(str(path) + ".wal").unlink(missing_ok=True)
    if task.table.protocol == 2:
        return _build_v2(task, bench, path, shard, progress, chunk or 64, stop_after, report)
    items = plan(bench)
    if shard is not None:
        items = items[shard[0]::shard[1]]
    chunk = chunk or 16
    con = _open_build(path, bench, shard, SCHEMA_VERSION)
    try:
        done = set(con.execute("SELECT kind, cal_seed, key FROM results").fetchall())
        todo = [it for it in items if (it.kind, it.cal_seed, it.cfg.key) not in done]
        if stop_after is not None:
            todo = todo[:stop_after]
        evaluators = {}
        start = time.perf_counter()
        bar = progress_bar(len(items), f"build {task.key}", progress,
                           initial=len(items) - len(todo), unit="cfg")
        for j in range(0, len(todo), chunk):
            batch = []
            for it in todo[j:j + chunk]:
                if it.cal_seed not in evaluators:
                    evaluators[it.cal_seed] = bench.evaluator(it.cal_seed)
                batch.append(row_v1(bench, it, evaluators[it.cal_seed].evaluate(it.cfg)))
                bar.update()
            con.begin()
            con.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(columns()))})",
                            batch)
            con.commit()
            if report is not None:
                report(len(batch))
        bar.close()
        elapsed = time.perf_counter() - start
        prev = float(read_meta(con).get("build_seconds", 0))
        write_meta(con, {"build_seconds": round(prev + elapsed, 2)})
        _finish(con, bench, items)
    finally:
        con.close()
    return path



def _open_build(path: Path, bench: Bench, shard, schema: int):
    """Open (or start) the table file of a build: its stored provenance must be this
    build's, and a new file gets it written first."""
    con = connect(path, schema=schema)
    try:
        stored = read_meta(con)
        check_provenance(stored, bench, path)
        if not stored:
            write_meta(con, {**table_provenance(bench), "shard": f"{shard[0]}/{shard[1]}"
                            if shard else "", "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except BaseException:
        con.close()
        raise
    return con


def _build_v2(task: Task, bench: Bench, path: Path, shard, progress: bool, chunk: int,
              stop_after: int | None, report) -> Path:
    """Protocol 2: the fixed phase (every shard), then this shard's share of the samples."""
    schema = schema_of(task)
    con = _open_build(path, bench, shard, schema)
    try:
        start = time.perf_counter()
        fixed = P2.fixed_items(bench)
        total = P2.planned_rows(bench)
        if shard is not None:
            total = len(fixed) + len(range(shard[0], total - len(fixed), shard[1]))
        have = con.execute("SELECT count(*) FROM results").fetchone()[0]
        bar = progress_bar(total, f"build {task.key}", progress, initial=have, unit="cfg")

        def stored(n: int) -> None:
            bar.update(n)
            if report is not None:
                report(n)

        evaluators: dict = {}
        done = P2.measure_items(con, bench, fixed, chunk, evaluators, stored, stop_after)
        left = None if stop_after is None else stop_after - done
        have = set(con.execute("SELECT kind, cal_seed, key FROM results").fetchall())
        fixed_done = {(it.kind, it.cal_seed, it.cfg.key) for it in fixed} <= have
        if fixed_done:  # the sample plan may read the fixed rows
            samples = P2.sample_items(bench, read_rows(con, schema))
            write_meta(con, {"plan_checksum": P2.plan_checksum(samples),
                            "sampling": task.table.sampling})
            mine = samples if shard is None else samples[shard[0]::shard[1]]
            P2.measure_items(con, bench, mine, chunk, evaluators, stored, left)
        bar.close()
        prev = float(read_meta(con).get("build_seconds", 0))
        write_meta(con, {"build_seconds": round(prev + time.perf_counter() - start, 2)})
        if evaluators:
            shared = any(ev.runner is not None for ev, _ in evaluators.values())
            write_meta(con, {"prefix_shared": "yes" if shared else "no"})
        if fixed_done:
            _finish(con, bench, fixed + mine)
    finally:
        con.close()
    return path


def default_jobs() -> int:
    """Worker processes for a build: one per core on a CPU (see `build_parallel`), one on a GPU."""

    if eval_device().type != "cpu":
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def build_parallel(task: Task, jobs: int, force: bool = False, progress: bool = True) -> Path:
    """Build the table with `jobs` single-threaded local worker processes (`fill_table` on
    the local backend; one job builds in this process, multi-threaded).

    The small models of the bundled tasks do not keep two cores busy inside one forward
    pass (a 2-thread ViT evaluation is only ~1.5x a 1-thread one), so on a CPU, workers side
    by side finish ~1.3x sooner than one 2-thread build. Row values can differ from a 1-job
    build in the last float digits (thread count changes summation order), so compare
    tables built with the same number of threads per worker.
    """
    if jobs <= 1:
        return build_table(task, force=force, progress=progress)
    return fill_table(task, B.Options("local", jobs=jobs), force=force, progress=progress)


def store_rows(con, rows: list[tuple], keys: dict[tuple, tuple]) -> int:
    """Insert the rows not yet stored; returns how many were new. `keys` maps each stored
    row's (kind, cal_seed, key) to its values and is updated. A row measured again with a
    different value means workers disagree (different threads, library versions or
    hardware): that is an error, never an overwrite."""
    new = []
    for r in rows:
        r = tuple(r)
        k = (r[0], int(r[1]), r[2])
        old = keys.get(k)
        if old is None:
            keys[k] = r
            new.append(r)
        elif _canon(old) != _canon(r):
            raise MqbenchError(f"row {k[0]} {k[2]} (seed {k[1]}) was measured twice with "
                               f"different values; every worker must run the same mqbench, "
                               f"torch and threads (--jobs workers use 1 thread)")
    if new:
        con.begin()
        con.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(new[0]))})", new)
        con.commit()
    return len(new)


def _canon(r: tuple) -> tuple:
    """A row's values as comparable data (lists of bits, floats with NaN equal to NaN)."""
    return tuple(tuple(v) if isinstance(v, list | tuple) else
                 ("nan" if isinstance(v, float) and math.isnan(v) else v) for v in r)


def _stored(con) -> dict[tuple, tuple]:
    rows = con.execute("SELECT * FROM results").fetchall()
    return {(r[0], int(r[1]), r[2]): tuple(r) for r in rows}


def _missing(items: list[Item], keys: dict) -> list[Item]:
    return [it for it in items if (it.kind, it.cal_seed, it.cfg.key) not in keys]


def fill_table(task: Task, opts: B.Options, force: bool = False, progress: bool = True,
               dry_run: bool = False, worker=measure_batch) -> Path:
    """Build (or resume, or complete) the task's table with any backend.

    The missing planned rows are cut into batches (`mqbench.truth.work`), the backend runs
    `worker` on each wherever it likes, and this process alone stores the rows as batches
    come back: a lost batch costs only itself, a batch run twice adds nothing, and any mix
    of backends, sequential builds and reruns fills the same table. Protocol 2 runs its
    fixed phase first (the sample plan reads those rows), then the samples. `dry_run`
    prints the plan and an estimate from one timed batch, and writes nothing.
    """
    eval_device()  # a bad --device fails here, before anything runs or is written
    backend = B.load_module(opts.backend)
    backend.check(opts)
    path = table_path(task)
    if force and not dry_run:
        path.unlink(missing_ok=True)
        Path(str(path) + ".wal").unlink(missing_ok=True)
    bench = open_bench(task, progress)  # trains or installs the weights workers will read
    if dry_run:
        _dry_run(task, bench, opts, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = schema_of(task)
    con = _open_build(path, bench, None, schema)
    threads = 1 if opts.backend != "local" or opts.jobs > 1 else torch.get_num_threads()
    start = time.perf_counter()
    try:
        keys = _stored(con)
        total = P2.planned_rows(bench) if task.table.protocol == 2 else len(plan(bench))
        bar = progress_bar(total, f"build {task.key} ({opts.backend}, {opts.jobs} jobs)"
                           if opts.backend == "local" else f"build {task.key} ({opts.backend})",
                           progress, initial=len(keys), unit="cfg")

        worker_s, shared, spans, phase_no = 0.0, set(), {}, 0

        def phase(items: list[Item]) -> None:  # one phase of the plan, run on the backend
            nonlocal worker_s, phase_no
            todo = _missing(items, keys)
            for seed in sorted({it.cal_seed for it in todo}):
                bench.prepared(seed)  # once, here: workers load it from the cache
            # full --batch-rows groups (the most prefix sharing): equal per-worker shares of a
            # phase were tried and not measurably faster (fmnist-resnet8 1/8 slice, 2 workers:
            # 280-300 s against 253-315 s wall over repeated single runs)
            batches = make_batches(task, todo, opts.batch_rows, threads)
            for _, result in backend.run(worker, batches, opts):
                bar.update(store_rows(con, result["rows"], keys))
                worker_s += result["seconds"]
                shared.add(result["prefix_shared"])
                # per phase: the pause between the phases is not scheduling overhead
                spans.setdefault((phase_no, result["worker"]), []).append(
                    (result["t0"], result["t1"]))
            phase_no += 1

        if task.table.protocol == 2:
            fixed = P2.fixed_items(bench)
            phase(fixed)
            items = fixed + P2.sample_items(bench, read_rows(con, schema))
            write_meta(con, {"plan_checksum": P2.plan_checksum(items[len(fixed):]),
                            "sampling": task.table.sampling})
            phase(items[len(fixed):])
        else:
            items = plan(bench)
            phase(items)
        bar.close()
        took = time.perf_counter() - start
        meta = read_meta(con)
        # build_seconds sums the workers' time (what the build costs); the wall time is what
        # a user waits
        write_meta(con, {"build_seconds": round(float(meta.get("build_seconds", 0)) + worker_s,
                                                2),
                        "build_wall_seconds": round(took, 2), "build_backend": opts.backend,
                        "build_jobs": opts.jobs, **_gaps(spans)})
        shared.discard(None)
        if shared:
            write_meta(con, {"prefix_shared": "yes" if shared == {True} else "no"})
        _finish(con, bench, items)
    finally:
        con.close()
    return path


def _gaps(spans: dict[tuple, list[tuple[float, float]]]) -> dict:
    """Scheduling overhead of a build: per phase and worker, the idle time between one
    batch's end and the next one's start (dispatch, result transfer, storing), and the
    batches' own time. Start-up and the pause between protocol 2's phases are not in it."""
    gap = busy = 0.0
    for runs in spans.values():
        runs.sort()
        busy += sum(t1 - t0 for t0, t1 in runs)
        gap += sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(runs))
    return {"build_batch_seconds": round(busy, 2), "build_gap_seconds": round(gap, 2)}


def _dry_run(task: Task, bench: Bench, opts: B.Options, path: Path) -> None:
    """Print what a build would do and how long it would take, from one timed batch."""
    keys = {}
    if path.exists():
        con = connect(path, read_only=True)
        try:
            keys = _stored(con)
        finally:
            con.close()
    if task.table.protocol == 2:
        total = P2.planned_rows(bench)
        fixed = _missing(P2.fixed_items(bench), keys)
        known = fixed if fixed else _missing(P2.sample_items(bench, _rows_of(keys, task)), keys)
        todo = total - len(keys)
    else:
        known = _missing(plan(bench), keys)
        total, todo = len(plan(bench)), len(known)
    batches = -(-todo // opts.batch_rows)
    print(f"plan {task.key} ({opts.backend}): {total} rows, {len(keys)} stored, {todo} to "
          f"measure in {batches} batches of up to {opts.batch_rows}")
    if not known:
        return
    sample = make_batches(task, known, min(8, opts.batch_rows))[0]
    saved = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        measure_batch(sample)  # also opens the evaluator once, as each worker will
        t1 = time.perf_counter()
        measure_batch(sample)
        t2 = time.perf_counter()
    finally:
        torch.set_num_threads(saved)
    per_row = (t2 - t1) / len(sample.items)
    dev = eval_device().type
    print(f"  timed sample: {len(sample.items)} rows in {t2 - t1:.2f} s on 1 {dev} thread "
          f"(+{t1 - t0 - (t2 - t1):.1f} s worker set-up); estimate {todo * per_row / 3600:.2f} "
          f"{'GPU' if dev == 'cuda' else 'CPU'}-hours for the {todo} rows")


def _rows_of(keys: dict, task: Task) -> pd.DataFrame:
    return pd.DataFrame([list(v) for v in keys.values()], columns=columns(schema_of(task)))


def ensure_table(task: Task, progress: bool = True):
    """The task's verified table, built and cached on first use (the one way to get a table)."""
    if not installed(task):
        build_parallel(task, default_jobs(), progress=progress)
    else:
        try:
            return load_table(task)
        except MqbenchError as exc:
            if "incomplete" not in str(exc):
                raise
            build_table(task, progress=progress)  # resume an interrupted build
    return load_table(task)



def merge_shards(task: Task, n: int, progress: bool = True) -> Path:
    """Merge complete shard files 0..n-1 into the task's table (all must be complete)."""
    out = table_path(task)
    shards = [table_path(task, (i, n)) for i in range(n)]
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise MqbenchError(f"cannot merge: shard file(s) missing: {', '.join(missing)}; "
                           f"run `mqbench build --task {task.name} --shard i/{n}` for each")
    bench = open_bench(task, progress)
    schema = schema_of(task)
    frames, seconds, plans = [], 0.0, set()
    for p in shards:
        con = connect(p, read_only=True)
        meta = read_meta(con)
        if meta.get("complete") != "true":
            raise MqbenchError(f"cannot merge: shard {p} is incomplete; resume it with "
                               f"`mqbench build --task {task.name} --shard {meta.get('shard')}`")
        check_provenance(meta, bench, p)
        frames.append(read_rows(con, schema))
        plans.add(meta.get("plan_checksum"))
        seconds += float(meta.get("build_seconds", 0))
        con.close()
    if len(plans) > 1:
        raise MqbenchError("cannot merge: the shards drew different sample plans (their "
                           "per-layer rows differ); build every shard with the same --jobs "
                           "on one machine")
    # protocol 2: every shard holds the fixed rows; shard 0's copy is kept
    rows = pd.concat(frames, ignore_index=True).drop_duplicates(["kind", "cal_seed", "key"])
    tmp = out.with_suffix(".merging")
    tmp.unlink(missing_ok=True)
    con = connect(tmp, schema=schema)
    con.register("incoming", rows)
    con.execute(f"INSERT INTO results SELECT {', '.join(columns(schema))} FROM incoming")
    write_meta(con, {**table_provenance(bench), "shard": "", "build_seconds": round(seconds, 2),
                    "merged_from": n, **({"plan_checksum": plans.pop(), "sampling":
                                          task.table.sampling} if None not in plans else {})})
    _finish(con, bench, plan(bench, rows))
    complete = read_meta(con).get("complete") == "true"
    con.close()
    if not complete:
        tmp.unlink()
        raise MqbenchError("merged shards do not cover the task's plan; were they built with "
                           "different --shard counts?")
    os.replace(tmp, out)  # the finished table appears atomically
    return out
