"""The bundled tasks' shipped weights and tables: intact, and reproduced by re-evaluation.

`mqbench build TASK --export` writes tasks/artifacts/<task>-v<version>/; these tests check
that the files verify (checksums) and that re-measuring a slice of rows with the shipped
weights gives the stored numbers (what `mqbench build` would write again).
"""

from __future__ import annotations

import pytest

from mqbench.bench import open_bench
from mqbench.data import FMNIST_SYSTEM_DIR
from mqbench.space import BitConfig
from mqbench.table import import_shipped, load_table
from mqbench.tasks import load_task
from mqbench.train import shipped_dir

BUNDLED = ["fmnist-resnet8", "fmnist-vit"]


@pytest.mark.parametrize("name", BUNDLED)
def test_shipped_table_rebuilds(name, tmp_path, monkeypatch):
    task = load_task(name)
    if not (shipped_dir(task) / "table.parquet").exists():
        pytest.skip(f"no shipped artifacts for {task.key}")
    if not (FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    assert import_shipped(task)
    table = load_table(task)  # verifies the rows checksum and the task checksum
    bench = open_bench(task, progress=False)  # verifies the shipped weights' checksum
    assert bench.weights_manifest["checksum"] == table.meta["weights_checksum"]
    assert len(table.configs()) >= 1000
    rows = table.rows[table.rows.cal_seed == task.seed]
    picks = [rows[rows.kind == k].iloc[0] for k in ("fp", "uniform", "layer", "sample")]
    ev = bench.evaluator(task.seed)
    for row in picks:
        m = ev.evaluate(BitConfig.from_key(row.key))
        # Same numbers up to float summation order on another CPU: one flipped prediction
        # out of the evaluation set at most.
        assert m.acc == pytest.approx(row.acc, abs=1.5 / len(bench.eval_split))
        assert m.loss == pytest.approx(row.loss, rel=1e-4, abs=1e-6)
        assert m.kl == pytest.approx(row.kl, rel=1e-3, abs=1e-5)
