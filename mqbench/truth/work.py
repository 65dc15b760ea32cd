"""Units of build work, keyed by content: batches of planned rows and the worker that measures one.

A `Batch` names a task (its frozen spec, so workers need no task files), the planned rows it
holds (kind, calibration seed, configuration key, unit) and how the worker runs (threads,
the MQBENCH_* environment). `measure_batch` is the one function every backend runs: it
returns the batch's rows as plain tuples and stores nothing, so any backend may run any
batch twice, in any order, anywhere; the build that receives the rows decides what is new
(`mqbench.truth.build.fill_table`). A worker process keeps its opened task (model, prepared
quantizer, evaluators) between batches, so preparation is paid once per worker and seed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field

import torch

from mqbench.task.spec import Task
from mqbench.truth import protocol2 as P2
from mqbench.truth.bench import Bench, Metrics, open_bench
from mqbench.truth.protocol2 import Item


@dataclass(frozen=True)
class Batch:
    """Planned rows of one task and calibration seed, measured together (prefix-shared)."""

    task: Task
    items: tuple[Item, ...]
    threads: int = 1  # torch threads in the worker: rows are bit-identical at equal threads
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        """Content key: the task version, method and the rows it holds (not their order)."""
        h = hashlib.sha256(self.task.key.encode())
        for k in sorted(f"{it.kind}|{it.cal_seed}|{it.cfg.key}" for it in self.items):
            h.update(k.encode() + b"\n")
        return h.hexdigest()[:16]


def driver_env() -> tuple[tuple[str, str], ...]:
    """This process's MQBENCH_* variables (cache with the trained weights, data, device,
    tasks): a worker started elsewhere sees what the driver sees."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MQBENCH_")))


def make_batches(task: Task, items: list[Item], size: int, threads: int = 1) -> list[Batch]:
    """Cut planned items into batches of at most `size` rows, one calibration seed each,
    ordered so that configurations sharing a prefix land in the same batch (units in model
    order: the workers' prefix runner re-sorts exactly within a batch)."""
    env = driver_env()
    out = []
    for seed in sorted({it.cal_seed for it in items}):
        group = sorted((it for it in items if it.cal_seed == seed),
                       key=lambda it: (tuple(zip(it.cfg.w, it.cfg.a)), it.kind))
        out += [Batch(task, tuple(group[j:j + size]), threads, env)
                for j in range(0, len(group), size)]
    return out


def row_v1(bench: Bench, item: Item, m: Metrics) -> tuple:
    """One protocol-1 (schema-1) row."""
    space, cfg = bench.space, item.cfg
    size = space.size_bits(cfg)
    return (item.kind, item.cal_seed, cfg.key, item.unit, list(cfg.w), list(cfg.a),
            size / sum(space.params), size, space.bops(cfg), m.acc, m.loss, m.kl)


def measure(bench: Bench, items: list[Item], evaluators: dict) -> list[tuple]:
    """The rows of `items` (one calibration seed) in the table's schema; stores nothing."""
    if bench.task.table.protocol == 2:
        return P2.measure_rows(bench, P2.prefix_order(bench, list(items), evaluators),
                               evaluators)
    rows = []
    for it in items:
        if it.cal_seed not in evaluators:
            evaluators[it.cal_seed] = bench.evaluator(it.cal_seed)
        rows.append(row_v1(bench, it, evaluators[it.cal_seed].evaluate(it.cfg)))
    return rows


# per worker process: opened tasks and their evaluators, reused by later batches
_OPEN: dict[str, tuple[Bench, dict]] = {}


def measure_batch(batch: Batch) -> dict:
    """Worker entry point of every backend: plain data, `rows` (the batch's rows as tuples),
    `seconds` (worker time, set-up included), `prefix_shared` (None: not protocol 2), and
    `worker`, `t0`, `t1` (which process ran it, wall-clock start and end: the build's
    scheduling-overhead figure)."""
    start, t0 = time.perf_counter(), time.time()
    for k, v in batch.env:
        os.environ[k] = v
    torch.set_num_threads(batch.threads)
    task = batch.task
    if task.key not in _OPEN:
        _OPEN.clear()  # one task at a time per worker: bounded memory
        _OPEN[task.key] = (open_bench(task, progress=False), {})
    bench, evaluators = _OPEN[task.key]
    rows = measure(bench, list(batch.items), evaluators)
    shared = None
    if task.table.protocol == 2 and batch.items:
        shared = P2.evaluators_for(bench, batch.items[0].cal_seed, evaluators)[0].runner \
            is not None
    return {"rows": rows, "seconds": time.perf_counter() - start, "prefix_shared": shared,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "t0": t0, "t1": time.time()}
