"""Speed benchmarks (pytest-benchmark). Run: python -m pytest -m benchmark --benchmark-enable.

Targets are reported as ratios measured in the same run, printed at the end of each test:
  * one configuration's evaluation <= 1.3x a full-precision forward pass over the same set;
  * scoring every configuration of a table with cached statistics < 50 ms;
  * one ILP allocation for a 20-unit model < 20 ms;
  * protocol 2: amortised cost per row of a table build <= 0.7x (ResNet-8) / 0.9x (ViT) one
    full-precision forward over the same images (prefix-shared evaluation).
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

    from mqbench.truth.build import build_parallel, default_jobs, plan

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


# ---------------------------------------------------------------- protocol 2
def _fp_forward(bench, split) -> float:
    """Best-of time of one full-precision forward over `split`, in the table's batches."""
    from mqbench.task.datasets import to_input

    x = to_input(split.x, bench.mean, bench.std)
    batches = list(x.split(bench.task.table.batch_size))

    def run():
        with torch.inference_mode():
            for b in batches:
                bench.model(b)

    return best_of(run, 3)


def _measure_plan(bench, items, prefix: bool, chunk: int = 64) -> float:
    """Seconds to measure `items` on the test split exactly as a protocol-2 build does:
    grouped by seed, sorted by prefix, `chunk` rows per group (evaluator setup excluded)."""
    import time

    total = 0.0
    for seed in dict.fromkeys(it.cal_seed for it in items):
        ev = bench.evaluator(seed)
        group = [it.cfg for it in items if it.cal_seed == seed]
        if ev.runner is not None:
            group.sort(key=ev.runner.key)
        start = time.perf_counter()
        for j in range(0, len(group), chunk):
            ev.measure(group[j:j + chunk], prefix=prefix)
        total += time.perf_counter() - start
    return total


def _v2_task(task_name: str, tmp_path):
    """The protocol-2 variant to time: the tiny test task, or a bundled Fashion-MNIST task
    made protocol 2 on a 1,024-image test slice (its shipped v1 weights; the ratio depends on
    the configurations, not on the number of images, which only scales both sides)."""
    import dataclasses
    import os

    from mqbench.testing import TINY_TASK

    if task_name == "tiny":
        text = TINY_TASK.format(name="tiny2", version=1, configs=200, steps=40).replace(
            "eval_samples = 120", 'eval_samples = 240\nval_split = "train"\nval_samples = 160')
        (tmp_path / "tiny2.toml").write_text(text.replace(
            "[table]\n", '[table]\nprotocol = 2\nsampling = "size"\nnoise_configs = 20\n'
        ).replace("noise_configs = 6\n", ""))
        return load_task(tmp_path / "tiny2.toml")
    task = load_task(task_name)
    images = int(os.environ.get("MQBENCH_BENCH_IMAGES", "1024"))
    return dataclasses.replace(
        task, data=dataclasses.replace(task.data, eval_samples=images, val_split="train",
                                       val_samples=5000),
        table=dataclasses.replace(task.table, protocol=2, sampling="size"))


@pytest.mark.parametrize("task_name", ["tiny", *TASKS[:2]] if FMNIST else ["tiny"])
def test_v2_amortised_cost_per_row(benchmark, task_name, tmp_path, monkeypatch):
    """Protocol 2's whole plan (fixed rows, samples, noise repeats) measured prefix-shared,
    per row, as a ratio to one FP forward over the same images; the same without sharing."""
    from mqbench.truth.build import plan

    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MQBENCH_TASKS", str(tmp_path))
    task = _v2_task(task_name, tmp_path)
    bench = open_bench(task, progress=False)
    from mqbench.truth import protocol2 as P2

    items = P2.fixed_items(bench) + P2.sample_items(bench, None)
    assert len(items) == len(plan(bench))
    fp = _fp_forward(bench, bench.eval_split)
    shared = benchmark.pedantic(_measure_plan, args=(bench, items, True), rounds=1,
                                iterations=1)
    alone = _measure_plan(bench, items, False)
    ratio, plain = shared / len(items) / fp, alone / len(items) / fp
    benchmark.extra_info.update(rows=len(items), fp_forward_s=fp, ratio=ratio,
                                ratio_without_sharing=plain)
    print(f"\n{task_name} (protocol 2, {len(bench.eval_split)} test images, {len(items)} rows): "
          f"{shared / len(items) * 1000:.1f} ms per row vs FP forward {fp * 1000:.1f} ms -> "
          f"ratio {ratio:.2f} prefix-shared, {plain:.2f} each alone (target <= "
          f"{0.9 if 'vit' in task_name else 0.7})")
