"""Speed benchmark of the discover path's isolation. Run:
python -m pytest tests/test_benchmarks_discover.py -m benchmark --benchmark-enable

Target (issue 5): isolation overhead per candidate < 50 ms, i.e. scoring a trivial valid
proxy through the sandboxed worker (`generator_llm.score_code`: fork, confinement layers,
limits, result through a pipe) minus doing the same steps in-process. Uses the bundled
fmnist-resnet8 task when its data is installed (a realistic parent process to fork), else
the tiny digits task of conftest.py.
"""

from __future__ import annotations

import statistics
import time

import pytest

from mqbench.proxy.contract import Proxy, damage_matrix, load_proxy_file
from mqbench.search.evolution.fitness import context, from_damage
from mqbench.search.evolution.generator_llm import score_code
from mqbench.search.evolution.loop import signature
from mqbench.task.spec import load_task

pytestmark = pytest.mark.benchmark

TRIVIAL = '''from mqbench.proxy import proxy

@proxy(name="candidate", version=1, kind="layer")
def candidate(stats):
    return [float(stats.params[i]) for i in range(len(stats.modules))]
'''


def test_sandbox_overhead_per_candidate(benchmark, tiny_env, tmp_path):
    from mqbench.task.datasets import FMNIST_SYSTEM_DIR

    name = "fmnist-resnet8" if (FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists() \
        else "tiny"
    ctx = context(load_task(name), split="test")
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def in_process():
        # The same steps as score_code, without the worker process.
        path = scratch / "cand_inproc.py"
        path.write_text(TRIVIAL)
        p = load_proxy_file(path)
        damage, sens = damage_matrix(Proxy("candidate", 1, "", p.kind, None), p.fn(ctx.stats),
                                     ctx.stats)
        signature(sens)
        return from_damage(ctx, damage, sens, spearman=False).phi

    def sandboxed():
        return score_code(ctx, TRIVIAL, scratch, "bench", timeout=10.0, mem_mb=2048)

    scored = sandboxed()
    assert scored.why == "" and scored.signature  # same candidate, same fitness:
    assert scored.fitness.phi == pytest.approx(in_process())
    local = []
    for _ in range(20):
        t = time.perf_counter()
        in_process()
        local.append(time.perf_counter() - t)
    benchmark.pedantic(sandboxed, rounds=20, warmup_rounds=2)
    overhead = benchmark.stats.stats.median - statistics.median(local)
    benchmark.extra_info.update(in_process_s=statistics.median(local), overhead_s=overhead,
                                task=name)
    print(f"\n{name}: sandboxed {1000 * benchmark.stats.stats.median:.1f} ms vs in-process "
          f"{1000 * statistics.median(local):.2f} ms per candidate -> isolation overhead "
          f"{1000 * overhead:.1f} ms (target < 50 ms)")
    assert overhead < 0.050
