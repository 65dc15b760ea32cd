"""Comparison tables, plots, the static page and the generated README section."""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mqbench.board import publish
from mqbench.board import report as R
from mqbench.scoring import metrics as S
from mqbench.scoring import verdicts as V
from mqbench.scoring.record import Record

REPO = Path(__file__).resolve().parents[2]
RECORDS = REPO / "leaderboard" / "records"
SUBSET = ["fisher", "hawqv2", "random", "tap", "weight_norm"]


def _copy_records(dest: Path, proxies: list[str] | None = None) -> None:
    for task_dir in sorted(RECORDS.iterdir()):
        for f in sorted(task_dir.glob("*.json")):
            if proxies is None or f.stem in proxies:
                (dest / "records" / task_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest / "records" / task_dir.name / f.name)


@pytest.fixture
def board(tmp_path, monkeypatch):
    """A private leaderboard holding copies of a few committed records, and a README."""
    lb = tmp_path / "leaderboard"
    _copy_records(lb, SUBSET)
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(lb))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{publish.START}\nstale\n{publish.END}\n\nafter\n")
    return lb, readme


def _records(task: str) -> list[Record]:
    return [Record.from_json(p.read_text()) for p in sorted((RECORDS / task).glob("*.json"))]


# fmnist-resnet8's retired protocol-1 table and its records (the audit's verdicts: fisher
# above the count_low_bits floor, hawqv2 at it), loaded by path
V1 = str(REPO / "tasks" / "v1" / "fmnist-resnet8.toml")


def _records_v1() -> list[Record]:
    folder = REPO / "leaderboard" / "archive" / "fmnist-resnet8-v1"
    return [Record.from_json(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in {".md", ".csv", ".tex", ".html", ".png"}}


def test_regenerate_is_byte_identical(board):
    lb, readme = board
    publish.regenerate(readme=readme)
    first = {**_snapshot(lb), "README": readme.read_bytes()}
    assert any(k.endswith(".png") for k in first) and any(k.endswith(".tex") for k in first)
    pngs = [v for k, v in first.items() if k.endswith(".png")]
    assert all(v.startswith(b"\x89PNG") and b"Software" not in v for v in pngs)
    shutil.rmtree(lb / "tables")
    shutil.rmtree(lb / "site")
    (lb / "mqbench.duckdb").unlink()
    V.clear_cache()  # the verdicts are recomputed too, not only re-rendered
    publish.regenerate(readme=readme)
    assert {**_snapshot(lb), "README": readme.read_bytes()} == first
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n")
    assert "stale" not in text and text.count(publish.START) == 1


def test_correlation_table_matches_records():
    recs = _records_v1()
    rep = R.correlation_report(V1, recs)
    v = R.verdict_of(V1, recs)
    rows = {row["proxy"]: row for row in rep.rows}
    # every record, then the reference rows: floors, oracles, the random band, the ceiling
    assert set(rows) == {r.proxy for r in recs} | {e.name for e in v.entries} | {
        R.RANDOM_BAND, R.CEILING}
    vals = [row["spearman"] for row in rep.rows]
    assert vals == sorted(vals, reverse=True)  # ranked by ρs@100% (no NaN here)
    assert {rows[n]["role"] for n in ("uniform", "count_low_bits", "size", "random",
                                      R.RANDOM_BAND)} == {"floor"}
    assert rows["oracle_additive"]["role"] == "oracle" and rows[R.CEILING]["role"] == "ceiling"
    assert rows["discovered_symbolic"].get("in_sample") and rows["weight_norm"]["role"] == \
        "baseline"
    md = R.to_markdown(rep)
    fisher = next(r for r in recs if r.proxy == "fisher")
    line = next(line for line in md.splitlines() if line.startswith("| fisher |"))
    m = fisher.metrics
    assert (f"**{m['spearman']:.3f}** [{m['spearman_lo']:.3f}, "
            f"{m['spearman_hi']:.3f}]") in line  # the record's own numbers
    assert "| discovered_symbolic † |" in md and "| uniform (floor) |" in md
    # bold: for bootstrapped metrics exactly the proxies tied with the best (never in-sample
    # rows nor reference rows), else the best value among ranked rows
    best = R.best_cells(rep)
    for c in rep.columns:
        bold = {rep.rows[i]["proxy"] for i, k in best if k == c.key}
        comp = v.comparisons.get(("all", c.key))
        if comp is not None:
            assert bold == {n for n, st in comp.stats.items() if st.tied_best}, c.key
            assert comp.best in bold and "discovered_symbolic" not in bold
        elif c.ranked:
            ranked = [row for row in rep.rows if row.get("role") in ("proxy", "baseline")
                      and not row.get("in_sample") and math.isfinite(row[c.key])]
            top = max(round(row[c.key], c.digits) for row in ranked)
            assert bold == {row["proxy"] for row in ranked if round(row[c.key], c.digits)
                            == top}, c.key
        else:
            assert not bold  # ms/config is descriptive
    # CSV: the same numbers, machine-readable, with the role and in-sample columns
    df = pd.read_csv(io.StringIO(R.to_csv(rep)))
    by = {r.proxy: r for r in recs}
    for _, row in df[df.proxy.isin(list(by))].iterrows():
        mm = by[row.proxy].metrics
        assert row.spearman_top20 == pytest.approx(mm["spearman_top20"], abs=1e-6)
        assert row.spearman_hi == pytest.approx(mm["spearman_hi"], abs=1e-6)
        assert row.kendall_lo == pytest.approx(mm["kendall_lo"], abs=1e-6)
        assert row.per_config_ms == pytest.approx(by[row.proxy].timing.per_config_ms)
    assert set(df.role) == {"proxy", "baseline", "floor", "oracle", "ceiling"}
    assert df.set_index("proxy").in_sample["discovered_symbolic"] == 1
    # LaTeX: balanced braces, a bold cell, escaped names
    tex = R.to_latex(rep)
    assert tex.count("{") == tex.count("}") and r"\textbf{" in tex
    assert r"weight\_norm" in tex and "weight_norm" not in tex.replace(r"weight\_norm", "")


def test_verdict_table_states_floor_deltas_and_verdicts():
    recs = _records_v1()
    rep = R.verdict_report(V1, recs)
    v = R.verdict_of(V1, recs)
    c, u = v.comparisons[("all", "spearman")], v.comparisons[("usable", "spearman")]
    rows = {row["proxy"]: row for row in rep.rows}
    for name, st in c.stats.items():
        row = rows[name]
        assert row["spearman"] == st.value and row["u_spearman"] == u.stats[name].value
        if name != c.best_floor:
            assert (row["d_spearman"], row["d_spearman_lo"], row["d_spearman_hi"]) == \
                (st.delta, st.delta_lo, st.delta_hi)
        else:
            assert math.isnan(row["d_spearman"]) and "d_spearman_lo" not in row
    assert rows["fisher"]["verdict"] == "above" and rows["hawqv2"]["verdict"] == "at floor"
    assert rows["bparams"]["verdict"] == "below"
    assert rows["discovered_symbolic"]["verdict"] == "above, in-sample"
    assert rows["count_low_bits"]["verdict"] == "best floor"
    assert rows[R.CEILING]["spearman"] == c.ceiling
    md = R.to_markdown(rep)
    f = c.stats["fisher"]
    assert (f"| fisher | above | **{f.value:.3f}** | {f.delta:+.3f} [{f.delta_lo:+.3f}, "
            f"{f.delta_hi:+.3f}] |") in md
    assert "Holm" in md and "paired-bootstrap" in md and "Noise ceiling" in md
    # the README's sentence names the proxies above the floor and the ceiling
    text = publish.task_summary(v)
    floor = c.stats["count_low_bits"].value
    assert f"**Above the best floor** (count_low_bits, ρs@100% {floor:.3f}): fisher (" in text
    assert f"Noise ceiling {c.ceiling:.3f}" in text and "hawqv2" in text


def test_rules_table_ranks_both_rules():
    recs = _records_v1()
    rep = R.rules_report(V1, recs)
    rows = {row["proxy"]: row for row in rep.rows}
    fisher, bsnip = rows["fisher"], rows["bsnip"]
    assert fisher["own"] == fisher["perturbation"]  # a layer proxy's record is the headline
    assert bsnip["own"] == bsnip["bits"]  # EMQ's bSNIP is bit-weighted SNIP
    ranked = [r for r in rep.rows if r["role"] in ("proxy", "baseline")
              and not r.get("in_sample")]
    for rule in ("perturbation", "bits"):
        order = sorted(ranked, key=lambda r: (-r[rule], r["proxy"]))
        assert [r[f"rank_{rule}"] for r in order] == list(range(1, len(order) + 1))
    assert fisher["move"] == fisher["rank_bits"] - fisher["rank_perturbation"]
    assert math.isnan(rows["uniform"]["rank_perturbation"])  # floors are never ranked
    # each paper's own rule: HAWQ-V2's Omega is the perturbation rule, EMQ's is bit-weighted
    assert (rows["hawqv2"]["paper_rule"], rows["hawqv2"]["paper"]) == \
        ("perturbation", rows["hawqv2"]["perturbation"])
    assert (bsnip["paper_rule"], bsnip["paper"]) == ("bits", bsnip["bits"])
    assert rows["snip"]["paper_rule"] == "–" and math.isnan(rows["snip"]["paper"])


def test_cross_task_report():
    recs = {t: _records(t) for t in ("fmnist-resnet8", "fmnist-vit", "pydocs-llama")}
    rep = R.cross_task_report(recs)
    rows = {row["proxy"]: row for row in rep.rows}
    verdicts = [R.verdict_of(t, recs[t]) for t in sorted(recs)]
    ranked = set.intersection(*({e.name for e in v.entries if e.ranked} for v in verdicts))
    assert {n for n, r in rows.items() if math.isfinite(r["mean_rank"])} == ranked | {
        "best floor"}
    for name in ranked:
        above = sum(v.comparisons[("all", "spearman")].stats[name].verdict == "above"
                    for v in verdicts)
        assert rows[name]["beats"] == f"{above} of 3"
        per_task = [rows[name][f"rank_{t}"] for t in sorted(recs)]
        assert rows[name]["mean_rank"] == pytest.approx(np.mean(per_task))
    assert math.isnan(rows["discovered_symbolic"]["mean_rank"])  # in-sample on one task
    assert "Kendall's W" in R.to_markdown(rep)


def test_lm_downstream_table_is_in_perplexity():
    recs = _records("pydocs-llama")
    rep = R.downstream_report("pydocs-llama", recs)
    assert "perplexity" in rep.title and {"ppl", "best_table_ppl"} <= {c.key for c in rep.columns}
    want = {(r.proxy, f"{d.budget_avg_bits:g} bits ({d.metric})"): d for r in recs
            for d in r.downstream}
    for row in rep.rows:
        assert row["ppl"] == pytest.approx(math.exp(want[(row["proxy"], row["budget"])].loss))
    best = R.best_cells(rep)
    for b in {row["budget"] for row in rep.rows}:
        idx = [i for i, row in enumerate(rep.rows) if row["budget"] == b]
        ppl = [rep.rows[i]["ppl"] for i in idx]
        assert ppl == sorted(ppl)  # lower is better
        assert (idx[0], "ppl") in best and (idx[-1], "ppl") not in best or len(set(ppl)) == 1


def test_downstream_table_ranks_within_budget_and_bolds_best():
    recs = _records("fmnist-vit")
    rep = R.downstream_report("fmnist-vit", recs)
    assert len(rep.rows) == sum(len(r.downstream) for r in recs)
    budgets = [row["budget"] for row in rep.rows]
    for b in set(budgets):
        accs = [row["acc"] for row in rep.rows if row["budget"] == b]
        assert accs == sorted(accs, reverse=True)  # ranked inside each budget
    best = R.best_cells(rep)
    for b in set(budgets):
        idx = [i for i, row in enumerate(rep.rows) if row["budget"] == b]
        top = max(rep.rows[i]["acc"] for i in idx)
        bold = {i for i in idx if (i, "acc") in best}
        assert bold == {i for i in idx if round(rep.rows[i]["acc"], 4) == round(top, 4)}
        assert not any((i, "size_kb") in best for i in idx)  # descriptive columns never bold
    df = pd.read_csv(io.StringIO(R.to_csv(rep)))
    want = [(r.proxy, d) for r in recs for d in r.downstream]
    got = {(row.proxy, row.budget): row for _, row in df.iterrows()}
    for proxy, d in want:
        row = got[(proxy, f"{d.budget_avg_bits:g} bits ({d.metric})")]
        assert row.acc == pytest.approx(d.acc) and row.size_kb == pytest.approx(
            d.size_bits / 8192, abs=1e-6)
        assert row.best_table_acc - row.acc == pytest.approx(d.gap_to_best, abs=1e-9)


def test_pareto_front_matches_brute_force():
    from mqbench.board.plots import pareto_front

    rng = np.random.default_rng(0)
    size, acc = rng.integers(0, 30, 200).astype(float), rng.random(200).round(2)
    fx, fy = pareto_front(size, acc)
    # brute force: a point is on the front iff nothing at most as large is strictly better
    # (ties at one size keep the first, ties in accuracy keep the smallest)
    want = sorted({(s, a) for s, a in zip(size, acc)
                   if not any((s2 <= s and a2 >= a) and (s2, a2) != (s, a)
                              for s2, a2 in zip(size, acc))})
    assert list(zip(fx, fy)) == want


def test_committed_readme_section_is_current(tmp_path, monkeypatch):
    """The README's leaderboard section is what `regenerate` writes from the records now."""
    lb = tmp_path / "lb"
    _copy_records(lb)
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(lb))
    tasks = R.record_tasks()
    section = publish.readme_section(tasks, {t: R.load_records(t) for t in tasks})
    text = (REPO / "README.md").read_text()
    committed = text[text.index(publish.START):text.index(publish.END) + len(publish.END)]
    assert committed == section, "README is stale: run `mqbench leaderboard regenerate`"
    for task in tasks:  # and the committed tables next to it
        for kind in R.TABLES:
            for fmt in R.RENDERERS:
                path = REPO / "leaderboard" / "tables" / f"{task}_{kind}.{fmt}"
                assert path.read_text() == R.render(task, kind, fmt), path.name
    # and SCHEMA.md's metric list is the registry's
    schema = (REPO / "leaderboard" / "SCHEMA.md").read_text()
    assert publish.schema_section() in schema, "SCHEMA.md is stale: run regenerate"


def test_registry_drives_the_report_columns():
    recs = _records("fmnist-vit")
    rep = R.correlation_report("fmnist-vit", recs)
    board = [m for m in S.METRICS.values() if m.board]
    assert [c.key for c in rep.columns] == [m.name for m in board] + ["per_config_ms"]
    assert [(c.md, c.tex, c.ci, c.higher_better) for c in rep.columns[:-1]] == \
        [(m.label, m.tex, m.bootstrap, m.higher_is_better) for m in board]
    assert [c.md for c in rep.columns][:3] == ["ρs@20%", "ρs@50%", "ρs@100%"]
    # one registration adds a metric to the table, the CSV, the schema doc and `mqbench eval`
    try:
        S.register("neg_kendall", label="−τ", tex=r"$-\tau$", text="minus Kendall",
                   description="test metric", higher_is_better=False)(
            lambda d: -S.kendall(d.scores, d.truth))
        recs = [dataclasses.replace(r, metrics={**r.metrics, "neg_kendall": -r.metrics["kendall"]})
                for r in recs]
        rep = R.correlation_report("fmnist-vit", recs)
        assert rep.columns[-2].key == "neg_kendall" and not rep.columns[-2].higher_better
        assert "| −τ | ms/config |" in R.to_markdown(rep)
        assert ",neg_kendall,per_config_ms" in R.to_csv(rep).splitlines()[0]
        assert "`neg_kendall`" in S.metrics_markdown()
        assert "minus Kendall" in S.format_result(recs[0])
        # lower is better: the bold cell is the smallest value
        (i,), = [[i for i, k in R.best_cells(rep) if k == "neg_kendall"]]
        ranked = [row["neg_kendall"] for row in rep.rows if row["role"] in ("proxy", "baseline")]
        assert rep.rows[i]["neg_kendall"] == min(ranked)  # reference rows have none
    finally:
        S.METRICS.pop("neg_kendall", None)


def test_readme_without_markers_is_refused(board):
    _, readme = board
    readme.write_text("# no markers\n")
    with pytest.raises(Exception, match="leaderboard:start"):
        publish.regenerate(readme=readme, plots=False)
    assert readme.read_text() == "# no markers\n"


def test_table_cli_formats_and_errors(board, capsys):
    from mqbench.cli.main import main

    assert main(["leaderboard", "table", "--task", "fmnist-vit", "--kind", "correlation",
                 "--format", "csv"]) in (0, None)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("proxy,version,role,spearman_top20")
    table = pd.read_csv(io.StringIO(out))
    assert set(SUBSET) <= set(table.proxy) and {"uniform", "noise ceiling"} <= set(table.proxy)
    assert main(["leaderboard", "table", "--task", "fmnist-vt"]) == 2
    assert "did you mean 'fmnist-vit'" in capsys.readouterr().err
