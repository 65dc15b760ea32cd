"""Harness end to end on a tiny task: eval CLI, records, bad proxies, isolation limits."""

from __future__ import annotations

import json
import time

import pytest
from scipy import stats

from mqbench.cli.main import main
from mqbench.errors import MqbenchError
from mqbench.proxy.contract import Proxy, get_proxy, load_proxy_file
from mqbench.proxy.sandbox import run_limited
from mqbench.scoring.harness import EvalOptions, evaluate_proxy, layer_truth
from mqbench.scoring.metrics import spearman
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task
from mqbench.truth.store import load_table

GOOD = '''
"""Weight norm per module."""
from mqbench.proxy import proxy

@proxy(name="good", version=2, paper="test", kind="layer")
def good(stats):
    return [float(stats.weights[m].norm()) for m in stats.modules]
'''

BAD = {
    "nan": 'return [float("nan")] * len(stats.modules)',
    "shape": "return [1.0, 2.0]",
    "raises": 'raise RuntimeError("boom")',
    "slow": "import time\n    time.sleep(60)",
    "memory": "x = bytearray(6 << 30)\n    return x",
}


def _write(folder, name, body):
    path = folder / f"{name}.py"
    path.write_text('from mqbench.proxy import proxy\n\n'
                    f'@proxy(name="{name}", kind="layer")\ndef f(stats):\n    {body}\n')
    return path


@pytest.fixture
def lb(tiny_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(tmp_path / "lb"))
    return tmp_path / "lb"


def test_eval_cli_end_to_end(lb, tmp_path, capsys):
    path = tmp_path / "good.py"
    path.write_text(GOOD)
    assert main(["eval", "--proxy", str(path), "--task", "tiny", "--quiet",
                 "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "Spearman@top20%" in out and "ILP size @ 3.00" in out and "ILP bops @ 4.00" in out
    rec = json.loads((lb / "records" / "tiny" / "good.json").read_text())
    assert rec["proxy_version"] == 2 and rec["task_version"] == 1
    assert len(rec["scores"]) == rec["n_configs"] == 24 + 3
    for key in ("package_version", "git_commit", "seed", "table_checksum", "proxy_sha256"):
        assert rec[key] is not None
    # the recorded metrics are recomputable from the raw scores and the table
    table = load_table(load_task("tiny"))
    cfg = table.configs().set_index("key")
    keys = list(rec["scores"])
    assert rec["metrics"]["spearman"] == pytest.approx(
        spearman([rec["scores"][k] for k in keys], cfg.loc[keys, "acc"]), abs=1e-6)
    from mqbench.scoring import allocate as A
    from mqbench.truth.bench import open_bench

    space = open_bench(load_task("tiny"), progress=False).space
    assert len(rec["downstream"]) == 4  # (size, bops) x budgets (3, 4)
    for d in rec["downstream"]:
        used = d["size_bits"] if d["metric"] == "size" else d["bops"]
        assert used <= A.budget_for(space, d["budget_avg_bits"], d["metric"]) * (1 + 1e-9)


def test_harness_returns_a_typed_record(lb):
    """The record's fields: identity, provenance, registry metrics, allocations, raw scores."""
    import math

    import numpy as np

    from mqbench.provenance import software
    from mqbench.scoring import allocate as A
    from mqbench.scoring import metrics as S
    from mqbench.scoring.record import RECORD_SCHEMA, TABLE_PROVENANCE_KEYS, Allocation, Record
    from mqbench.truth.bench import open_bench

    task = load_task("tiny")
    p = get_proxy("hawqv2")
    rec = evaluate_proxy(p, task, EvalOptions(bootstrap=20, progress=False, isolate=False))
    assert isinstance(rec, Record) and rec.schema_version == RECORD_SCHEMA == 2
    assert (rec.proxy, rec.proxy_version, rec.proxy_sha256, rec.proxy_kind) == \
        (p.name, p.version, p.source_sha256, p.kind)
    assert (rec.task, rec.task_version, rec.task_checksum, rec.seed) == \
        (task.name, task.version, task.checksum, task.seed)
    table = load_table(task)
    assert rec.table_checksum == table.meta["rows_checksum"]
    assert {k: getattr(rec, k) for k in software()} == software()
    assert rec.table_provenance == {k: table.meta.get(k) for k in TABLE_PROVENANCE_KEYS}
    # every registered metric once (no spearman_top100), CIs for the bootstrapped ones
    boot = [m.name for m in S.METRICS.values() if m.bootstrap]
    assert set(rec.metrics) == set(S.METRICS) | {f"{k}_{e}" for k in boot for e in ("lo", "hi")}
    cfg = table.configs().set_index("key")
    keys = list(rec.scores)
    assert rec.n_configs == len(keys) == len(cfg)
    assert rec.metrics["kendall"] == pytest.approx(
        stats.kendalltau([rec.scores[k] for k in keys], cfg.loc[keys, "acc"]).statistic,
        abs=1e-6)
    assert rec.metrics["kl_spearman"] == pytest.approx(
        stats.spearmanr([rec.scores[k] for k in keys], -cfg.loc[keys, "kl"]).statistic, abs=1e-6)
    # allocations are typed, within budget, and phi is TAP's formula over the size budgets
    space = open_bench(task, progress=False).space
    assert all(isinstance(d, Allocation) for d in rec.downstream) and len(rec.downstream) == 4
    for d in rec.downstream:
        used = d.size_bits if d.metric == "size" else d.bops
        assert used <= A.budget_for(space, d.budget_avg_bits, d.metric) * (1 + 1e-9)
        assert d.gap_to_best == pytest.approx(d.best_table_acc - d.acc)
    accs = [d.acc for d in rec.downstream if d.metric == "size"]
    alpha = task.harness.alpha
    assert rec.metrics["fitness"] == pytest.approx(
        alpha * rec.metrics["layer_spearman"] + (1 - alpha) * float(np.mean(accs)), abs=1e-6)
    assert set(rec.sensitivity) == set(space.units) and rec.timing.proxy_seconds >= 0
    assert all(math.isfinite(v) for v in rec.scores.values())
    assert Record.from_json(rec.to_json()) == rec  # what the store writes reads back equal
    # what `mqbench eval` prints: the registry's labels in its order, then the allocations
    text = S.format_result(rec).splitlines()
    assert text[0] == f"proxy hawqv2 v{p.version} on tiny v1  ({rec.n_configs} configurations, " \
        "95% bootstrap CIs)"
    labels = [m.text for m in S.METRICS.values() if m.cli]
    assert [line[2:30].rstrip() for line in text[1:1 + len(labels)]] == labels
    assert text[3].startswith("  Spearman (all, @top100%)     ")
    assert sum(line.startswith("  ILP ") for line in text) == 4 and text[-1].startswith("  time:")


def test_layer_truth_is_loss_increase(tiny_env):
    from mqbench.truth.bench import open_bench
    from mqbench.truth.build import build_table

    task = load_task("tiny")
    build_table(task, progress=False)
    table = load_table(task)
    space = open_bench(task, progress=False).space
    truth = layer_truth(table, space)
    fp = table.kind("fp").loss.iloc[0]
    row = table.kind("layer").iloc[0]  # first unit at 2 bits
    assert truth[space.units.index(row.unit)] == pytest.approx(row.loss - fp)


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_proxies_fail_cleanly(kind, lb, tmp_path):
    path = _write(tmp_path, kind, BAD[kind])
    opts = EvalOptions(bootstrap=0, timeout=3, mem_mb=1024, progress=False)
    with pytest.raises(MqbenchError) as err:
        evaluate_proxy(load_proxy_file(path), load_task("tiny"), opts)
    msg = str(err.value)
    assert f"proxy {kind!r}" in msg and "\n" not in msg
    expect = {"nan": "NaN", "shape": "shape", "raises": "RuntimeError: boom",
              "slow": "time limit", "memory": "memory"}[kind]
    assert expect in msg
    assert not (lb / "records").exists()


def test_loading_errors(tmp_path, lb, capsys):
    with pytest.raises(MqbenchError, match="does not exist"):
        load_proxy_file(tmp_path / "nope.py")
    (tmp_path / "syntax.py").write_text("def (:\n")
    with pytest.raises(MqbenchError, match="failed to import: SyntaxError"):
        load_proxy_file(tmp_path / "syntax.py")
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(MqbenchError, match="exactly one @proxy"):
        load_proxy_file(tmp_path / "none.py")
    with pytest.raises(MqbenchError, match="unknown proxy"):
        get_proxy("definitely_not_a_proxy")
    assert main(["eval", "--proxy", str(tmp_path / "none.py"), "--task", "tiny"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_sandbox_kills_hung_code_quickly():
    start = time.perf_counter()
    with pytest.raises(MqbenchError, match="time limit"):
        run_limited(time.sleep, (30,), name="sleeper", timeout=1)
    assert time.perf_counter() - start < 5
    assert run_limited(sum, ([1, 2, 3],), name="ok") == 6


def test_leaderboard_rebuild_and_table(lb, tmp_path, capsys):
    import duckdb

    from mqbench.board.store import rebuild_db

    path = tmp_path / "good.py"
    path.write_text(GOOD)
    assert main(["eval", "--proxy", str(path), "--task", "tiny", "--quiet",
                 "--bootstrap", "0"]) == 0
    db = rebuild_db()
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT proxy, task, value FROM runs JOIN metrics USING (run_id) "
                      "WHERE metric = 'spearman'").fetchall()
    con.close()
    rec = json.loads((lb / "records" / "tiny" / "good.json").read_text())
    assert row == [("good", "tiny", rec["metrics"]["spearman"])]
    capsys.readouterr()
    assert main(["leaderboard", "table", "--task", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "| good |" in out and "ρs@20%" in out
    assert main(["leaderboard", "table", "--task", "nothing"]) == 2


def test_allocations_are_measured_once_and_cached(tiny_env, monkeypatch):
    """A re-run measures nothing (the quantizer is not even prepared), and the cached values
    equal a fresh evaluation of the same configurations."""
    from mqbench.quant.space import BitConfig
    from mqbench.truth.bench import Bench, open_bench

    task = load_task("tiny")

    def wnorm(stats):
        return [float(stats.weights[m].norm()) for m in stats.modules]

    p = Proxy("wnorm", 1, "", "layer", wnorm)
    opts = EvalOptions(bootstrap=0, isolate=False, progress=False)
    first = evaluate_proxy(p, task, opts)

    def refuse(self, *a, **k):
        raise AssertionError("the evaluator was prepared although every pick is cached")

    with monkeypatch.context() as m:
        m.setattr(Bench, "evaluator", refuse)
        second = evaluate_proxy(p, task, opts)
    assert second.downstream == first.downstream
    ev = open_bench(task, progress=False).evaluator(task.seed)
    for d in first.downstream:
        fresh = ev.evaluate(BitConfig.from_key(d.config))
        assert (fresh.acc, fresh.loss, fresh.kl) == (d.acc, d.loss, d.kl)


def test_a_proxy_runs_on_several_calibration_batches(lb):
    """batches=3: the record keeps each batch's damage matrix, the task seed's first and equal
    to the record's scores; a data-reading proxy (Fisher: gradients) changes from batch to
    batch, a data-free one (weight norm) does not; each batch's calibration samples are its
    own seeded draw and never leave the training split."""
    import numpy as np

    from mqbench.proxy.context import Stats
    from mqbench.scoring.harness import config_matrix, config_scores
    from mqbench.truth.bench import open_bench

    task = load_task("tiny")
    opts = EvalOptions(bootstrap=0, progress=False, isolate=False, downstream=False, batches=3)
    space = open_bench(task, progress=False).space
    fisher = evaluate_proxy(get_proxy("fisher"), task, opts)
    norm = evaluate_proxy(get_proxy("weight_norm"), task, opts)
    for rec in (fisher, norm):
        assert list(rec.batch_damage) == [str(task.seed + i) for i in range(3)]
        keys = list(rec.scores)
        first = config_scores(np.array(rec.batch_damage[str(task.seed)]),
                              config_matrix(space, keys))
        assert np.allclose(first, [rec.scores[k] for k in keys], rtol=1e-12, atol=0)
    mats = [np.array(m) for m in fisher.batch_damage.values()]
    assert not np.allclose(mats[0], mats[1])
    assert all(np.array_equal(np.array(m), np.array(norm.batch_damage["0"]))
               for m in norm.batch_damage.values())
    bench = open_bench(task, progress=False)
    a, b = Stats(bench)._batch()[0], Stats(bench, batch_seed=1)._batch()[0]
    assert a.shape == b.shape and not torch_equal(a, b)
    assert Stats(bench, batch_seed=1).folder != Stats(bench).folder
    assert Stats(bench, batch_seed=1).path("basic") == Stats(bench).path("basic")  # shared
    with pytest.raises(MqbenchError, match="whole number >= 1"):
        EvalOptions(batches=0)
    one = evaluate_proxy(get_proxy("fisher"), task, EvalOptions(
        bootstrap=0, progress=False, isolate=False, downstream=False, batches=1))
    assert one.batch_damage is None and one.scores == fisher.scores
    assert "batch_damage" not in one.to_dict() and "options" not in one.to_dict()
    # Hessians with BatchNorm unfolded: recorded as an option, under the variant's name
    opts1 = EvalOptions(bootstrap=0, progress=False, isolate=False, downstream=False,
                        batches=1)
    folded = evaluate_proxy(get_proxy("hawqv2"), task, opts1)
    unfolded = evaluate_proxy(get_proxy("hawqv2"), task, EvalOptions(
        bootstrap=0, progress=False, isolate=False, downstream=False, batches=1,
        hessian_bn="unfolded"))
    assert (folded.proxy, folded.options) == ("hawqv2", None)
    assert unfolded.proxy == "hawqv2@hessian-bn-unfolded"
    assert unfolded.options == {"hessian_bn": "unfolded"}
    assert unfolded.sensitivity != folded.sensitivity
    assert Record.from_json(unfolded.to_json()) == unfolded
    with pytest.raises(MqbenchError, match="hessian_bn"):
        EvalOptions(hessian_bn="both")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
