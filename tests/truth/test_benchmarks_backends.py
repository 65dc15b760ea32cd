"""Backend benchmarks (pytest-benchmark). Run: python -m pytest -m benchmark --benchmark-enable
tests/truth/test_benchmarks_backends.py

Targets, as ratios measured in one run on an otherwise idle machine:
  * scheduling overhead <= 5% of the batches' evaluation time: per worker, the idle time
    between one batch's end and the next one's start, over the batches' time (printed beside
    it: all idle worker time, start-up and the pause between protocol 2's phases included);
  * Ray and local builds of the same table within 15% of each other (2 workers each);
  * (gpu) configurations per second on ResNet-18 at 224x224, random weights and synthetic
    images, and the ratio of one configuration's evaluation to a float forward.
The table is a 1/8 slice of fmnist-resnet8 (all fixed rows, 1/8 of the samples) when
Fashion-MNIST is installed, else of digits-resnet8.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mqbench.task.datasets import FMNIST_SYSTEM_DIR
from mqbench.task.spec import load_task
from mqbench.testing import best_of
from mqbench.truth import backends as B
from mqbench.truth.bench import open_bench
from mqbench.truth.build import fill_table
from mqbench.truth.store import load_table, table_path

pytestmark = pytest.mark.benchmark
FMNIST = (FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists()
TASK = "fmnist-resnet8" if FMNIST else "digits-resnet8"
SECONDS: dict[str, float] = {}


def _slice():
    task = load_task(TASK)
    return dataclasses.replace(task, table=dataclasses.replace(
        task.table, configs=task.table.configs // 8,
        noise_configs=max(1, task.table.noise_configs // 8)))


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_backend_build_and_overhead(benchmark, backend, tmp_path, monkeypatch):
    if backend == "ray":
        pytest.importorskip("ray")
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    task = _slice()
    open_bench(task, progress=False)  # install the shipped weights outside the timing
    worker_s = []

    def build():
        table_path(task).unlink(missing_ok=True)
        fill_table(task, B.Options(backend, jobs=2), progress=False)
        worker_s.append(float(load_table(task).meta["build_seconds"]))

    benchmark.pedantic(build, rounds=1, iterations=1)
    wall = benchmark.stats.stats.min
    meta = load_table(task).meta
    gap, busy = float(meta["build_gap_seconds"]), float(meta["build_batch_seconds"])
    idle = (wall * 2 - worker_s[-1]) / worker_s[-1]
    SECONDS[backend] = wall
    benchmark.extra_info.update(wall_s=wall, worker_s=worker_s[-1], overhead=gap / busy,
                                idle=idle)
    print(f"\n{backend}: {task.key} slice ({meta['rows']} rows) in {wall:.1f} s wall, "
          f"{worker_s[-1]:.1f} s in 2 workers; scheduling overhead between batches "
          f"{gap / busy:.1%} of the batches' time (target <= 5%); all idle worker time "
          f"(start-up, the pause between the two phases, the last batch) {idle:.1%}")
    if len(SECONDS) == 2:
        ratio = SECONDS["ray"] / SECONDS["local"]
        print(f"ray / local wall time: {ratio:.2f} (target within 0.85..1.15)")


@pytest.mark.gpu
def test_gpu_configurations_per_second(benchmark):
    """ResNet-18 at 224x224 (random weights, synthetic images): configurations per second
    and one configuration's evaluation time over a float forward of the same images."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    tv = pytest.importorskip("torchvision")
    from mqbench.quant.quantizer import FP, prepare
    from mqbench.quant.space import build_space, sample_configs

    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=1000).eval()
    images = torch.randn(256, 3, 224, 224)
    space = build_space(model, images[:1], ("*",), (), {}, (2, 4, 8), (8,))
    qm = prepare(model, list(space.modules), images[:64], (2, 4, 8), (8,), device="cuda")
    cfgs = sample_configs(space, 16, 4, seed=0)
    x = images.cuda()

    def fp():
        with torch.inference_mode():
            for i in range(0, len(x), 128):
                qm.model(x[i:i + 128])
        torch.cuda.synchronize()

    qm.apply(space.layer_bits(space.uniform(FP, FP)))
    fp_s = best_of(fp)

    def configs():
        for cfg in cfgs:
            model_q = qm.apply(space.layer_bits(cfg))
            with torch.inference_mode():
                for i in range(0, len(x), 128):
                    model_q(x[i:i + 128])
        torch.cuda.synchronize()

    benchmark.pedantic(configs, rounds=3, warmup_rounds=1)
    per_cfg = benchmark.stats.stats.min / len(cfgs)
    benchmark.extra_info.update(configs_per_s=1 / per_cfg, ratio_to_fp=per_cfg / fp_s)
    print(f"\nResNet-18 224x224 on {torch.cuda.get_device_name()}: {1 / per_cfg:.1f} "
          f"configurations/s over {len(x)} images; one configuration = {per_cfg / fp_s:.2f}x "
          f"a float forward")


def test_prepared_size_resnet18(benchmark, tmp_path):
    """Bytes a worker loads instead of preparing: ResNet-18 (random weights, MQ-Bench-101's
    W{2,3,4} A8 space) measured, and a 7B LLM at W{2,3,4} extrapolated per parameter."""
    tv = pytest.importorskip("torchvision")
    from mqbench.quant.quantizer import prepare, prepared_state
    from mqbench.quant.space import build_space

    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=1000).eval()
    images = torch.randn(32, 3, 224, 224)
    space = build_space(model, images[:1], ("*",), (), {}, (2, 3, 4), (8,))

    def prep():
        return prepare(model, list(space.modules), images, (2, 3, 4), (8,))

    qm = benchmark.pedantic(prep, rounds=1, iterations=1)
    path = tmp_path / "prepared.pt"
    torch.save(prepared_state(qm), path)
    size = path.stat().st_size
    params = sum(space.params)
    per_param = size / (params * 3)  # bytes per parameter per bit-width choice (float32)
    llm = 7e9 * 3 * 2  # the same tensors kept in bf16, as the LM tasks load 7-8B models
    benchmark.extra_info.update(bytes=size, params=params, llm_7b_bytes=llm)
    print(f"\nResNet-18 prepared W{{2,3,4}} A8: {size / 1e6:.0f} MB for {params / 1e6:.1f} M "
          f"quantized parameters ({per_param:.2f} B per parameter and bit-width), prepared in "
          f"{benchmark.stats.stats.min:.1f} s; a 7B LLM at W{{2,3,4}} in bf16: "
          f"~{llm / 1e9:.0f} GB")
