"""Speed benchmarks of the bundled language-model task (pytest-benchmark, `-m benchmark`).

Targets, reported as ratios/times measured in the same run:
  * one configuration's evaluation <= 1.3x a full-precision evaluation pass (forward,
    log-softmax and cross-entropy over the same windows);
  * the AutoMixQ search on the bundled LM (all four budgets) < 10 minutes on 2 CPU cores.
Both need Debian's python3.11-doc (the bundled corpus); they skip without it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mqbench.quant.space import sample_configs
from mqbench.task.spec import load_task
from mqbench.task.text.corpus import PYTHON_DOCS_DIR
from mqbench.testing import best_of
from mqbench.truth.bench import open_bench

pytestmark = [pytest.mark.benchmark,
              pytest.mark.skipif(not PYTHON_DOCS_DIR.is_dir(),
                                 reason="python3.11-doc not installed")]


def test_lm_config_eval_vs_fp_pass(benchmark):
    bench = open_bench(load_task("pydocs-llama"), progress=False)
    ev = bench.evaluator(bench.task.seed)
    cfg = sample_configs(bench.space, 1, 1, seed=0)[0]
    y = ev.split.y

    def fp_pass():
        nll = 0.0
        for i, x in enumerate(ev._batches()):
            yb = y[i * ev.batch_size:(i + 1) * ev.batch_size].reshape(-1)
            nll += float(F.cross_entropy(bench.model(x).float(), yb, reduction="sum"))
        return nll

    ev.evaluate(cfg)  # warm-up; builds the float reference once
    fp = best_of(fp_pass)
    benchmark.pedantic(ev.evaluate, args=(cfg,), rounds=5, warmup_rounds=1)
    ratio = benchmark.stats.stats.min / fp
    benchmark.extra_info.update(fp_pass_s=fp, ratio=ratio)
    print(f"\npydocs-llama: eval {benchmark.stats.stats.min:.3f} s vs FP evaluation pass "
          f"{fp:.3f} s -> ratio {ratio:.2f} (target <= 1.3)")


def test_automixq_search_time(benchmark):
    from mqbench.search.automixq.search import Search

    bench = open_bench(load_task("pydocs-llama"), progress=False)

    def search():
        return Search(bench, progress=False).run()

    state = benchmark.pedantic(search, rounds=1, iterations=1)
    secs = benchmark.stats.stats.min
    benchmark.extra_info.update(seconds=secs, evaluations=state.evaluations)
    print(f"\nAutoMixQ search (budgets {sorted(state.found)}): {secs:.0f} s, "
          f"{state.evaluations} configurations, threads {torch.get_num_threads()} "
          f"(target < 600 s)")
    assert len(state.found) == len(bench.task.automixq.budgets)
