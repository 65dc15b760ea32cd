"""Speed benchmarks (pytest-benchmark). Run: python -m pytest -m benchmark --benchmark-enable.

Targets are reported as ratios measured in the same run, printed at the end of each test:
  * one configuration's evaluation <= 1.3x a full-precision forward pass over the same set;
  * scoring every configuration of a table with cached statistics < 50 ms;
  * one ILP allocation for a 20-unit model < 20 ms.
They use the bundled Fashion-MNIST tasks when the data is installed, else the digits tasks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mqbench.quant.space import Space, sample_configs
from mqbench.scoring import allocate as A
from mqbench.scoring.harness import config_matrix, config_scores
from mqbench.task.datasets import FMNIST_SYSTEM_DIR
from mqbench.task.spec import load_task
from mqbench.testing import best_of
from mqbench.truth.bench import open_bench

pytestmark = pytest.mark.benchmark
FMNIST = (FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists()
TASKS = ["fmnist-resnet8", "fmnist-vit"] if FMNIST else ["digits-resnet8", "digits-vit"]


@pytest.mark.parametrize("task_name", TASKS)
def test_config_eval_vs_fp_forward(benchmark, task_name):
    bench = open_bench(load_task(task_name), progress=False)
    ev = bench.evaluator(bench.task.seed)
    cfg = sample_configs(bench.space, 1, 1, seed=0)[0]
    fp_model = bench.model

    def fp_pass():
        with torch.inference_mode():
            for x in ev._batches():
                fp_model(x.contiguous())

    fp = best_of(fp_pass)
    benchmark.pedantic(ev.evaluate, args=(cfg,), rounds=5, warmup_rounds=1)
    ratio = benchmark.stats.stats.min / fp
    benchmark.extra_info.update(fp_forward_s=fp, ratio=ratio)
    print(f"\n{task_name}: eval {benchmark.stats.stats.min:.3f} s vs FP forward {fp:.3f} s "
          f"-> ratio {ratio:.2f} (target <= 1.3)")


def test_scoring_all_configs(benchmark):
    bench = open_bench(load_task(TASKS[0]), progress=False)
    keys = [c.key for c in sample_configs(bench.space, 1000, 10, seed=0)]
    idx = config_matrix(bench.space, keys)
    damage = np.random.default_rng(0).random((len(bench.space.units), 4))
    benchmark(config_scores, damage, idx)
    print(f"\nscoring {len(keys)} configurations: {1000 * benchmark.stats.stats.mean:.3f} ms "
          f"(target < 50 ms)")


def test_ilp_20_units(benchmark):
    n = 20
    params = tuple(int(p) for p in np.random.default_rng(0).integers(1_000, 500_000, n))
    space = Space(tuple(map(str, range(n))), tuple(range(n)), tuple(map(str, range(n))),
                  (2, 3, 4, 8), (8,), params, params)
    damage = np.sort(np.random.default_rng(1).random((n, 4)), axis=1)[:, ::-1].copy()
    cost, budget = A.costs(space), A.budget_for(space, 3.0)
    benchmark(A.allocate, damage, cost, budget)
    print(f"\nILP, 20 units x 4 bit choices: {1000 * benchmark.stats.stats.mean:.2f} ms "
          f"(target < 20 ms)")


@pytest.mark.parametrize("task_name", TASKS)
def test_table_build_time(benchmark, task_name, tmp_path, monkeypatch):
    """Wall time of a full bundled-table build, extrapolated from a 1/8-size build.

    The slice is the same task with 1/8 of the sampled and noise-floor configurations (all
    uniform and per-layer rows kept), built exactly like `mqbench build` (one worker per
    core). Per-build setup (loading, calibration, worker start) is counted once in the
    slice but scaled by 8 in the estimate, so the estimate errs on the slow side.
    """
    import dataclasses

    from mqbench.truth.build import build_parallel, default_jobs
    from mqbench.truth.store import plan

    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    task = load_task(task_name)
    small = dataclasses.replace(task, table=dataclasses.replace(
        task.table, configs=task.table.configs // 8,
        noise_configs=max(1, task.table.noise_configs // 8)))
    full_rows = len(plan(open_bench(task, progress=False)))
    small_rows = len(plan(open_bench(small, progress=False)))
    jobs = default_jobs()
    benchmark.pedantic(build_parallel, args=(small, jobs), kwargs={"force": True,
                                                                   "progress": False},
                       rounds=1, iterations=1)
    est = benchmark.stats.stats.min * full_rows / small_rows
    benchmark.extra_info.update(rows=full_rows, slice_rows=small_rows, estimate_s=est, jobs=jobs)
    print(f"\n{task_name}: {small_rows} rows in {benchmark.stats.stats.min:.1f} s with {jobs} "
          f"jobs -> full table ({full_rows} rows) ~{est / 60:.1f} min (target < 10 min)")
