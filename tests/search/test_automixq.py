"""AutoMixQ: channel protection, the distillation loss, Algorithm 1 search with resume, and
the Table-1 comparison (on the tiny Llama task, and on the bundled one when present)."""

from __future__ import annotations

import math

import pytest
import torch


def test_protection_strategies():
    from mqbench.search.automixq.search import Option, options, protected_channels

    s = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 0.5, 2.0, 8.0])
    top = protected_channels(s, 0.25, both_ends=False)
    assert top.nonzero().flatten().tolist() == [2, 7]  # 9 and 8
    both = protected_channels(s, 0.5, both_ends=True)
    assert sorted(both.nonzero().flatten().tolist()) == [1, 2, 5, 7]  # 9, 8 and 0.5, 1
    assert Option(2, 1, 0.25).avg_bits == 2.5 and Option(4).avg_bits == 4.0
    opts = options([0.25])
    assert [o.key for o in opts][0] == "w4" and opts[-1].key == "w2" and len(opts) == 6


def test_mixed_weight_protects_the_right_columns():
    from mqbench.quant.quantizer import quantize_groups
    from mqbench.search.automixq.search import mixed_weight

    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(32, dtype=torch.bool)
    mask[[0, 5, 9, 31]] = True
    out = mixed_weight(w, mask, 16, "max")
    assert torch.allclose(out[:, mask], quantize_groups(w[:, mask], 4, 16))
    assert torch.allclose(out[:, ~mask], quantize_groups(w[:, ~mask], 2, 16))


def test_distill_loss_by_hand():
    from mqbench.search.automixq.search import distill_loss

    q = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    fp = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 1])
    t, a = 2.0, 1.0
    ce = -sum(float(torch.log_softmax(q[i], 0)[y[i]]) for i in range(2))
    p, lq = torch.softmax(fp / t, -1), torch.log_softmax(q / t, -1)
    kl = float((p * (p.log() - lq)).sum())
    assert math.isclose(distill_loss(q, fp, y, a, t), ce + a * t * t * kl, rel_tol=1e-6)


def test_automixq_search_resume_and_report(lm_env, tmp_path):
    import dataclasses

    from mqbench.search.automixq.compare import compare, markdown, random_mixed
    from mqbench.search.automixq.search import Search
    from mqbench.task.spec import load_task
    from mqbench.truth.bench import open_bench

    task = load_task("tinylm")
    bench = open_bench(task, progress=False)
    search = Search(bench, progress=False)
    full = search.run(tmp_path / "a.json")
    assert set(full.found) == {"3.5", "3"}
    for b, f in full.found.items():
        assert f["avg_bits"] <= float(b) + 1e-9
        assert math.isclose(search.avg_bits(f["config"]), f["avg_bits"])
    losses = [h["loss"] for h in full.history]
    assert len(losses) == full.cycle and full.evaluations <= full.cycle * 4
    # Interrupted after 2 cycles, then resumed: the same search, cycle for cycle.
    short = dataclasses.replace(task, automixq=dataclasses.replace(task.automixq, max_cycles=2))
    s2 = Search(open_bench(short, progress=False), progress=False)
    part = s2.run(tmp_path / "b.json")
    assert part.cycle == 2
    resumed = search.run(tmp_path / "b.json", resume=True)
    assert resumed.found == full.found and resumed.history == full.history
    # A random baseline is within budget; the report has Table 1's rows.
    keys = random_mixed(search, 3.0, 0)
    assert search.avg_bits(keys) <= 3.0 + 1e-9 and set(keys) <= {"w2", "w4"}
    result = compare(search, full, [], random_seeds=2)
    methods = [r["method"] for r in result["rows"]]
    assert methods[0] == "FP" and methods[-1] == "AutoMixQ" and "Uniform" in methods
    assert "W3.5A16" in markdown(result)
    # AutoMixQ's result is a Record (kind "search"): one allocation per budget, whose test
    # perplexities are the table's AutoMixQ row
    from mqbench.scoring.record import Record

    auto = Record.from_dict(result["record"])
    assert auto.proxy_kind == "search" and [d.budget_avg_bits for d in auto.downstream] == [3.0, 3.5]
    assert result["rows"][-1]["cells"] == {f"{d.budget_avg_bits:g}": math.exp(d.loss)
                                           for d in auto.downstream}
    assert [d.config.split(",") for d in auto.downstream] == [full.found[b]["config"]
                                                              for b in ("3", "3.5")]


def test_automixq_bad_input(lm_env, tmp_path):
    from mqbench.cli.main import main

    (tmp_path / "x.json").write_text("{not json")
    assert main(["automixq", "--task", "tinylm", "--budgets", "1.5", "--quiet"]) == 2
    assert main(["automixq", "--task", "tiny-nonexistent", "--quiet"]) == 2
    assert main(["automixq", "--task", "tinylm", "--quiet", "--resume", "--checkpoint",
                 str(tmp_path / "x.json")]) == 2


def test_automixq_beats_random_on_the_bundled_lm(tmp_path, monkeypatch):
    """The issue's check, on the shipped pydocs-llama weights: at a 3.5-bit budget the
    searched 2/4-bit configuration has lower test perplexity than random 2/4-bit mixes."""
    import dataclasses

    from mqbench.paths import shipped_dir
    from mqbench.search.automixq.compare import heldout_metrics, random_mixed
    from mqbench.search.automixq.search import Search
    from mqbench.task.spec import load_task
    from mqbench.task.text.corpus import PYTHON_DOCS_DIR
    from mqbench.truth.bench import Evaluator, open_bench

    task = load_task("pydocs-llama")
    if not PYTHON_DOCS_DIR.is_dir() or not (shipped_dir(task.key) / "weights.pt").exists():
        pytest.skip("needs python3.11-doc and the shipped pydocs-llama weights")
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    task = dataclasses.replace(task, automixq=dataclasses.replace(task.automixq,
                                                                  budgets=(3.5,)))
    search = Search(open_bench(task, progress=False), progress=False)
    state = search.run()
    ev = Evaluator(search.bench, search.mixed, task.table.batch_size)
    auto = heldout_metrics(search, ev, state.found["3.5"]["config"]).loss
    rand = [heldout_metrics(search, ev, random_mixed(search, 3.5, s)).loss for s in range(3)]
    assert state.found["3.5"]["avg_bits"] <= 3.5
    assert auto < min(rand), (math.exp(auto), [math.exp(r) for r in rand])

