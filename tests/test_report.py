"""Comparison tables, plots, the static page and the generated README section."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mqbench.board import publish
from mqbench.board import report as R
from mqbench.scoring import metrics as S
from mqbench.scoring.record import Record

REPO = Path(__file__).resolve().parent.parent
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
    publish.regenerate(readme=readme)
    assert {**_snapshot(lb), "README": readme.read_bytes()} == first
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n")
    assert "stale" not in text and text.count(publish.START) == 1


def test_correlation_table_matches_records():
    recs = _records("fmnist-resnet8")
    rep = R.correlation_report("fmnist-resnet8", recs)
    want = sorted(recs, key=lambda r: (-r.metrics["spearman"], r.proxy))
    assert [row["proxy"] for row in rep.rows] == [r.proxy for r in want]
    md = R.to_markdown(rep)
    best = max(want, key=lambda r: r.metrics["spearman"])
    line = next(line for line in md.splitlines() if line.startswith(f"| {best.proxy} |"))
    m = best.metrics
    assert (f"**{m['spearman']:.3f}** [{m['spearman_lo']:.3f}, "
            f"{m['spearman_hi']:.3f}]") in line
    # bold marks exactly the best value of each column (lower is better for ms/config)
    best_cells = R.best_cells(rep)
    for c in rep.columns:
        vals = [round(row[c.key], c.digits) for row in rep.rows]
        finite = [v for v in vals if not math.isnan(v)]  # NaN (undefined for the proxy kind) never wins
        top = max(finite) if c.higher_better else min(finite)
        assert {i for i, v in enumerate(vals) if v == top} == \
            {i for i, key in best_cells if key == c.key}, c.key
    # CSV: the same numbers, machine-readable
    df = pd.read_csv(io.StringIO(R.to_csv(rep)))
    by = {r.proxy: r for r in recs}
    for _, row in df.iterrows():
        mm = by[row.proxy].metrics
        assert row.spearman_top20 == pytest.approx(mm["spearman_top20"], abs=1e-6)
        assert row.spearman_hi == pytest.approx(mm["spearman_hi"], abs=1e-6)
        assert row.kendall_lo == pytest.approx(mm["kendall_lo"], abs=1e-6)
        assert row.per_config_ms == pytest.approx(by[row.proxy].timing.per_config_ms)
    # LaTeX: balanced braces, a bold cell, escaped names
    tex = R.to_latex(rep)
    assert tex.count("{") == tex.count("}") and r"\textbf{" in tex
    assert r"weight\_norm" in tex and "weight_norm" not in tex.replace(r"weight\_norm", "")


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
        assert rep.rows[i]["neg_kendall"] == min(row["neg_kendall"] for row in rep.rows)
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
    assert out.splitlines()[0].startswith("proxy,version,spearman_top20")
    assert len(out.strip().splitlines()) == 1 + len(SUBSET)
    assert main(["leaderboard", "table", "--task", "fmnist-vt"]) == 2
    assert "did you mean 'fmnist-vit'" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") \
    or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs Debian's)")
def test_html_page_renders_rows_in_headless_chromium(board, tmp_path):
    lb, readme = board
    publish.regenerate(readme=readme, plots=False)
    page = lb / "site" / "index.html"
    html = page.read_text()
    assert "<tr class=\"row\">" not in html  # rows exist only once the script has run
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no external assets
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
         f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    dom = out.stdout
    assert "</table>" in dom, out.stderr[-2000:]
    tasks = sorted(p.name for p in (lb / "records").iterdir())
    n_down = sum(len(json.loads(f.read_text())["downstream"])
                 for t in tasks for f in (lb / "records" / t).glob("*.json"))
    assert dom.count('<tr class="row">') == len(tasks) * len(SUBSET) + n_down
    for proxy in SUBSET:
        assert f"<td>{proxy}</td>" in dom
    assert 'class="best"' in dom
