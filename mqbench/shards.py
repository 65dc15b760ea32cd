"""Split a table build across processes (`--jobs`) or machines (`--shard`), and merge.

A shard is an ordinary resumable build of every n-th planned measurement, in its own DuckDB
file; `merge_shards` checks that the complete shards cover the plan exactly and writes the
task's table atomically. `build_parallel` runs the shards side by side on one machine.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from mqbench.bench import open_bench
from mqbench.errors import MqbenchError
from mqbench.table import (COLUMNS, _check_provenance, _connect, _finish, _meta, _provenance,
                           _read_rows, _set_meta, build_table, plan, table_path)
from mqbench.tasks import Task


def default_jobs() -> int:
    """Worker processes for a build: one per core on a CPU (see `build_parallel`), one on a GPU."""
    from mqbench.bench import eval_device

    if eval_device().type != "cpu":
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _shard_worker(task: Task, shard: tuple[int, int], force: bool, queue) -> None:
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
    procs = [ctx.Process(target=_shard_worker, args=(task, (i, jobs), force, queue),
                         daemon=True) for i in range(jobs)]
    total = len(plan(open_bench(task, progress=False)))
    start = time.perf_counter()
    with _main_hidden():
        for proc in procs:
            proc.start()
    bar = tqdm(total=total, desc=f"build {task.key} ({jobs} jobs)", disable=not progress,
               unit="cfg")
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
    con = _connect(path)
    try:  # build_seconds (merged) sums the workers; the wall time is what a user waits
        _set_meta(con, {"build_jobs": jobs,
                        "build_wall_seconds": round(time.perf_counter() - start, 2)})
    finally:
        con.close()
    for i in range(jobs):  # the merged table holds every row; the shards are spent
        shard = table_path(task, (i, jobs))
        shard.unlink(missing_ok=True)
        Path(str(shard) + ".wal").unlink(missing_ok=True)
    return path


def merge_shards(task: Task, n: int, progress: bool = True) -> Path:
    """Merge complete shard files 0..n-1 into the task's table (all must be complete)."""
    out = table_path(task)
    shards = [table_path(task, (i, n)) for i in range(n)]
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise MqbenchError(f"cannot merge: shard file(s) missing: {', '.join(missing)}; "
                           f"run `mqbench build {task.name} --shard i/{n}` for each")
    bench = open_bench(task, progress)
    frames, seconds = [], 0.0
    for p in shards:
        con = _connect(p, read_only=True)
        meta = _meta(con)
        if meta.get("complete") != "true":
            raise MqbenchError(f"cannot merge: shard {p} is incomplete; resume it with "
                               f"`mqbench build {task.name} --shard {meta.get('shard')}`")
        _check_provenance(meta, bench, p)
        frames.append(_read_rows(con))
        seconds += float(meta.get("build_seconds", 0))
        con.close()
    rows = pd.concat(frames, ignore_index=True)
    tmp = out.with_suffix(".merging")
    tmp.unlink(missing_ok=True)
    con = _connect(tmp)
    con.register("incoming", rows)
    con.execute(f"INSERT INTO results SELECT {', '.join(COLUMNS)} FROM incoming")
    _set_meta(con, {**_provenance(bench), "shard": "", "build_seconds": round(seconds, 2),
                    "merged_from": n})
    _finish(con, bench, plan(bench))
    complete = _meta(con).get("complete") == "true"
    con.close()
    if not complete:
        tmp.unlink()
        raise MqbenchError("merged shards do not cover the task's plan; were they built with "
                           "different --shard counts?")
    os.replace(tmp, out)  # the finished table appears atomically
    return out
