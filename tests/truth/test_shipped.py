"""The bundled tasks' shipped weights and tables: intact, and reproduced by re-evaluation.

`mqbench build TASK --export` writes tasks/artifacts/<task>-v<version>/; these tests check
that the files verify (checksums) and that re-measuring a slice of rows with the shipped
weights gives the stored numbers (what `mqbench build` would write again).
"""

from __future__ import annotations

import pytest

from mqbench.paths import shipped_dir
from mqbench.quant.space import BitConfig
from mqbench.task.datasets import FMNIST_SYSTEM_DIR
from mqbench.task.spec import load_task
from mqbench.task.text.corpus import PYTHON_DOCS_DIR
from mqbench.truth.bench import open_bench
from mqbench.truth.store import import_shipped, load_table

BUNDLED = ["fmnist-resnet8", "fmnist-vit", "pydocs-llama"]


def _need_shipped_and_data(task) -> None:
    if not (shipped_dir(task.key) / "table.parquet").exists():
        pytest.skip(f"no shipped artifacts for {task.key}")
    if task.is_lm:
        if not PYTHON_DOCS_DIR.is_dir():
            pytest.skip("Python docs not installed (apt-get install python3.11-doc)")
    elif not (FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("name", BUNDLED)
def test_shipped_table_rebuilds(name, tmp_path, monkeypatch):
    task = load_task(name)
    _need_shipped_and_data(task)
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    assert import_shipped(task)
    table = load_table(task)  # verifies the rows checksum and the task checksum
    bench = open_bench(task, progress=False)  # verifies the shipped weights' checksum
    assert bench.weights_manifest["checksum"] == table.meta["weights_checksum"]
    assert len(table.configs()) >= 1000
    if task.is_lm:  # the tokenizer is retrained from the corpus: it must come out the same
        assert bench.weights_manifest["tokenizer_sha256"] == table.meta["tokenizer_sha256"]
    rows = table.rows[table.rows.cal_seed == task.seed]
    picks = [rows[rows.kind == k].iloc[0] for k in ("fp", "uniform", "layer", "sample")]
    ev = bench.evaluator(task.seed)
    for row in picks:
        m = ev.evaluate(BitConfig.from_key(row.key))
        # Same numbers up to float summation order on another CPU: one flipped prediction
        # out of the evaluation set at most.
        assert m.acc == pytest.approx(row.acc, abs=1.5 / bench.eval_split.y.numel())
        assert m.loss == pytest.approx(row.loss, rel=1e-4, abs=1e-6)
        assert m.kl == pytest.approx(row.kl, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("name", ["fmnist-resnet8", "fmnist-vit"])
def test_shipped_plan_is_todays_plan(name, tmp_path, monkeypatch):
    """The shipped configurations are the ones today's code draws from the table's own
    validation-split per-layer rows (a plan drawn from test numbers, or by older code, fails
    here): same items, same plan checksum."""
    from mqbench.truth import protocol2 as P2

    task = load_task(name)
    _need_shipped_and_data(task)
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    assert import_shipped(task)
    table = load_table(task)
    samples = P2.sample_items(open_bench(task, progress=False), table.rows)
    assert P2.plan_checksum(samples) == table.meta["plan_checksum"]
    stored = set(zip(table.rows.kind, table.rows.cal_seed, table.rows.key))
    assert {(it.kind, it.cal_seed, it.cfg.key) for it in samples} <= stored


def test_cli_eval_on_the_default_bundled_task(tmp_path, monkeypatch, capsys):
    """The README's main job: `mqbench eval --proxy proxies/tap_best.py`, default task."""
    import json

    from mqbench.cli.main import main
    from mqbench.paths import REPO_ROOT
    from mqbench.task.spec import DEFAULT_TASK

    task = load_task(DEFAULT_TASK)
    _need_shipped_and_data(task)
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(tmp_path / "lb"))
    assert main(["eval", "--proxy", str(REPO_ROOT / "proxies" / "tap_best.py"), "--quiet",
                 "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert f"proxy tap v1 on {DEFAULT_TASK}" in out
    rec = json.loads((tmp_path / "lb" / "records" / DEFAULT_TASK / "tap.json").read_text())
    assert rec["n_configs"] >= 1000
    assert rec["table_checksum"] == load_table(task).meta["rows_checksum"]
    assert -1 <= rec["metrics"]["spearman"] <= 1 and rec["metrics"]["spearman"] > 0
