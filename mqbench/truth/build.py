"""Building ground-truth tables: the plan, resumable builds, shards and merging, `ensure_table`.

The plan lists every measurement (uniform, sampled and per-layer configurations, noise
repeats); `build_table` measures what is missing and stores it. A shard is an ordinary
resumable build of every n-th planned measurement, in its own DuckDB file; `merge_shards`
checks that the complete shards cover the plan exactly and writes the task's table
atomically. `build_parallel` runs the shards side by side on one machine.

Protocol-2 tasks (`mqbench.truth.protocol2`) build in two phases, fixed rows then samples;
every shard measures the (small) fixed phase itself, so that each can draw the sample plan,
and merging keeps shard 0's copy. Their rows are measured in groups sorted by prefix, each
group evaluated prefix-shared on the test and validation sets.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from contextlib import contextmanager
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

_PR_SET_PDEATHSIG = 1
__all__ = ["Item", "build_parallel", "build_table", "ensure_table", "merge_shards",
           "noise_floor", "plan"]


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


def _row(bench: Bench, item: Item, m) -> tuple:
    space, cfg = bench.space, item.cfg
    size = space.size_bits(cfg)
    return (item.kind, item.cal_seed, cfg.key, item.unit, list(cfg.w), list(cfg.a),
            size / sum(space.params), size, space.bops(cfg), m.acc, m.loss, m.kl)


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
                batch.append(_row(bench, it, evaluators[it.cal_seed].evaluate(it.cfg)))
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


def _die_with(parent: int) -> None:
    """Make this worker exit when its parent does, even on SIGKILL (Linux PR_SET_PDEATHSIG):
    a killed `build --jobs` must not leave workers running and writing shards."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def _shard_worker(task: Task, shard: tuple[int, int], force: bool, queue, parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(1)
    try:
        build_table(task, shard=shard, force=force, progress=False, report=queue.put)
        queue.put(("done", shard[0], ""))
    except BaseException as exc:  # reported to the parent, which raises it as one line
        queue.put(("error", shard[0], f"{type(exc).__name__}: {exc}"))


@contextmanager
def _main_hidden():
    """Start spawned workers without re-running the caller's script.

    `spawn` children normally re-import `__main__`; a user script without an
    `if __name__ == "__main__":` guard (or `python -` from stdin) would then run again in
    every worker. The worker function lives in this module, so the children need nothing
    from `__main__`: hide its path/spec while the processes start.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if main and k in
             main.__dict__}
    if main is not None and "__spec__" in saved:
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def build_parallel(task: Task, jobs: int, force: bool = False, progress: bool = True) -> Path:
    """Build the table with `jobs` single-threaded worker processes, then merge them.

    The small models of the bundled tasks do not keep two cores busy inside one forward
    pass (a 2-thread ViT evaluation is only ~1.5x a 1-thread one), so on a CPU, shards
    evaluated side by side finish ~1.3x sooner than one 2-thread build. The workers are
    ordinary `--shard i/jobs` builds: an interrupted parallel build resumes, and the merged
    table holds exactly the rows (and checksum rules) of a sequential one. Row values can
    differ from a 1-job build in the last float digits (thread count changes summation
    order), so compare tables built with the same `jobs`.
    """
    if jobs <= 1:
        return build_table(task, force=force, progress=progress)
    out = table_path(task)
    if force:
        out.unlink(missing_ok=True)
    elif out.exists():
        return build_table(task, progress=progress)  # complete or resumable sequential table
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_shard_worker,
                         args=(task, (i, jobs), force, queue, os.getpid()),
                         daemon=True) for i in range(jobs)]
    bench = open_bench(task, progress=progress)  # training (minutes) is shown too
    total = (P2.planned_rows(bench) + (jobs - 1) * len(P2.fixed_items(bench))
             if task.table.protocol == 2 else len(plan(bench)))
    start = time.perf_counter()
    with _main_hidden():
        for proc in procs:
            proc.start()
    bar = progress_bar(total, f"build {task.key} ({jobs} jobs)", progress, unit="cfg")
    try:
        finished = 0
        while finished < jobs:
            try:
                msg = queue.get(timeout=5)
            except Exception:  # queue.Empty: check the workers are still alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise MqbenchError(f"a build worker died (exit code {dead[0].exitcode}); "
                                       f"rerun the same command to resume") from None
                continue
            if isinstance(msg, int):
                bar.update(msg)
            elif msg[0] == "error":
                raise MqbenchError(f"build worker {msg[1]}/{jobs} failed: {msg[2]}")
            else:
                finished += 1
    finally:
        bar.close()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
    path = merge_shards(task, jobs, progress=False)
    con = connect(path)
    try:  # build_seconds (merged) sums the workers; the wall time is what a user waits
        write_meta(con, {"build_jobs": jobs,
                        "build_wall_seconds": round(time.perf_counter() - start, 2)})
    finally:
        con.close()
    for i in range(jobs):  # the merged table holds every row; the shards are spent
        shard = table_path(task, (i, jobs))
        shard.unlink(missing_ok=True)
        Path(str(shard) + ".wal").unlink(missing_ok=True)
    return path


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
