"""The leaderboard page (leaderboard/site/index.html) and the plots.

The page is regenerated once into a private leaderboard from copies of a few committed
records; its numbers are read back from the HTML and compared with the records, and it is
rendered in headless Chromium with and without JavaScript, at 400 and 1400 px.
"""

from __future__ import annotations

import dataclasses
import html
import html.parser
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mqbench.board import page as H
from mqbench.board import plots as P
from mqbench.board import publish
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task
from mqbench.truth.store import open_table

REPO = Path(__file__).resolve().parents[2]
RECORDS = REPO / "leaderboard" / "records"
SITE = REPO / "leaderboard" / "site"
SUBSET = ["fisher", "hawqv2", "random", "tap", "emq", "discovered_symbolic"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") \
    or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="no chromium binary (.ci/run installs Debian's)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A private leaderboard regenerated (with plots) from copies of a few records."""
    root = tmp_path_factory.mktemp("board")
    lb = root / "leaderboard"
    for task_dir in sorted(RECORDS.iterdir()):
        for name in SUBSET:
            src = task_dir / f"{name}.json"
            if src.exists():
                (lb / "records" / task_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, lb / "records" / task_dir.name / src.name)
    with pytest.MonkeyPatch.context() as mp:  # the autouse fixture resets it per test
        mp.setenv("MQBENCH_LEADERBOARD", str(lb))
        publish.regenerate(readme=None)
    return lb


def _records(lb: Path) -> dict[str, list[Record]]:
    return {d.name: [Record.from_json(f.read_text()) for f in sorted(d.glob("*.json"))]
            for d in sorted((lb / "records").iterdir())}


class _Tables(html.parser.HTMLParser):
    """Every <table class="board">: per tbody, rows of (cell data-v, cell text); the head."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.cur = self.cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "board" in (a.get("class") or ""):
            self.cur = self.tables[a["id"]] = {"head": [], "bodies": []}
        elif self.cur is None:
            return
        elif tag == "th" and not self.cur["bodies"]:
            self.cur["head"].append(a)
        elif tag == "tbody":
            self.cur["bodies"].append([])
        elif tag == "tr" and self.cur["bodies"]:
            self.cur["bodies"][-1].append({"attrs": a, "cells": []})
        elif tag == "td":
            self.cell = [a.get("data-v"), ""]
            self.cur["bodies"][-1][-1]["cells"].append(self.cell)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None
        elif tag == "table":
            self.cur = None


def _parse(text: str) -> dict[str, dict]:
    p = _Tables()
    p.feed(text)
    return p.tables


def test_page_numbers_equal_the_records(site):
    lb = site
    text = (lb / "site" / "index.html").read_text()
    tables = _parse(text)
    for task, recs in _records(lb).items():
        corr = tables[f"{task}-correlation"]
        keys = [h.get("data-key") for h in corr["head"]]
        rows = {r["cells"][0][0]: r for body in corr["bodies"] for r in body}
        for rec in recs:
            row = rows[rec.proxy]
            for m in (m for m in METRICS.values() if m.board):
                v, shown = row["cells"][keys.index(m.name)]
                want = rec.metrics.get(m.name)
                if want is None or not math.isfinite(want):
                    assert v == "" and shown.strip() == "–"
                    continue
                assert float(v) == want, (task, rec.proxy, m.name)
                assert shown.split()[0] == f"{want:.{m.digits}f}"
                if m.bootstrap:
                    lo, hi = rec.metrics[m.name + "_lo"], rec.metrics[m.name + "_hi"]
                    assert f"[{lo:.{m.digits}f}, {hi:.{m.digits}f}]" in shown
        # the downstream table: one tbody per budget, each row the record's allocation
        down = tables[f"{task}-downstream"]
        keys = [h.get("data-key") for h in down["head"]]
        seen = 0
        lm = load_task(task).is_lm  # LM tasks: perplexity, lower is better
        for body in down["bodies"]:
            accs = []
            assert body[0]["attrs"]["class"] == "group"  # the budget heads its rows
            for row in body[1:]:
                name = row["cells"][0][0]
                acc = float(row["cells"][keys.index("ppl" if lm else "acc")][0])
                rec = next(r for r in recs if r.proxy == name)
                want = [math.exp(d.loss) if lm else d.acc for d in rec.downstream]
                assert any(acc == pytest.approx(w, rel=1e-12) for w in want)
                accs.append(acc)
                seen += 1
            assert accs == sorted(accs, reverse=not lm)  # ranked within its budget
        assert seen == sum(len(r.downstream) for r in recs)
        assert len(down["bodies"]) == len({(d.metric, d.budget_avg_bits)
                                           for r in recs for d in r.downstream})


def test_page_explains_itself(site):
    lb = site
    text = (lb / "site" / "index.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # self-contained: no network
    assert "<link" not in text and "@import" not in text
    for m in METRICS.values():  # metric definitions from the registry
        if m.board:
            assert html.escape(m.description) in text, m.name
    assert "predicted score" in text and "bootstrap" in text.lower()
    for word in ("Floors", "Oracles", "Noise ceiling", "configuration", "quantizer"):
        assert word in text
    recs = _records(lb)
    for task, rs in recs.items():
        spec = load_task(task)
        start = text.index(f'data-task="{html.escape(task, quote=True)}"')
        section = text[text.rindex('<section class="task"', 0, start):]
        section = section[:section.index("</section>")]
        assert html.escape(spec.description) in section
        quantizer = "group-wise asymmetric" if spec.quant.group_size else "per output channel"
        assert quantizer in section and "quantizer.py" in section  # the quantizer in words
        assert f'data-family="{H.family(spec)}"' in text
        for r in rs:
            assert html.escape(r.paper) in text  # each proxy cites its paper
    # proxy rows link to their source file, relative to leaderboard/site/
    links = set(re.findall(r'href="(\.\./\.\./proxies/[^"]+)"', text))
    assert {"../../proxies/random_proxy.py", "../../proxies/hawqv2.py"} <= links
    assert all((SITE / link).resolve().is_file() for link in links)
    # sortable headers carry aria-sort; the ranked column says so
    tables = _parse(text)
    corr = next(t for k, t in tables.items() if k.endswith("-correlation"))
    sorts = {h["data-key"]: h.get("aria-sort") for h in corr["head"]}
    assert sorts["spearman"] == "descending" and set(sorts.values()) <= {
        "none", "descending", "ascending"}
    # reference rows (floors, oracles, ceiling) are shown, marked and never bold
    refs = [r for body in corr["bodies"] for r in body if "ref" in r["attrs"]["class"]]
    assert {r["attrs"]["data-role"] for r in refs} >= {"floor", "ceiling"}
    assert all("<strong>" not in str(r) for r in refs)
    assert "in-sample" in text and "†" in text  # discovered_symbolic on fmnist-resnet8
    # the plots are on the page
    for task in recs:
        for name in P.PLOTS:
            assert f'src="{task}_{name}.png"' in text
    # what the leaderboard concludes, and one paragraph per task: the README's own words
    summary, notes = publish.conclusions(publish.task_verdicts(list(recs), recs))
    assert summary and set(notes) == set(recs)
    plain = html.unescape(re.sub(r"<[^>]+>", "", text))
    assert "What the leaderboard concludes" in plain
    for paragraph in (summary, *notes.values()):
        words = re.sub(r"[*`]", "", paragraph)  # Markdown emphasis and code marks
        assert " ".join(words.split()[:12]) in " ".join(plain.split()), paragraph[:80]


def test_regenerate_writes_only_changed_files(site, monkeypatch):
    lb = site
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(lb))
    files = sorted(p for p in (lb / "site").iterdir()) + sorted((lb / "tables").iterdir())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    n = len(_records(lb))  # tasks with records
    assert sum(p.suffix == ".png" for p in files) == n * len(P.PLOTS)
    assert sum(len(b) for p, (_, b) in before.items() if p.suffix == ".png") < 135_000 * n
    publish.regenerate(readme=None)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert after == before  # same bytes, and not even rewritten


# ---------------------------------------------------------------- in a browser
def _chromium(tmp: Path, url: str, *flags: str) -> str:
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
         "--allow-file-access-from-files", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'chrome'}", *flags, url],
        capture_output=True, text=True, timeout=120, check=False)
    return out.stdout + out.stderr[-2000:]


@needs_chromium
def test_page_reads_the_same_without_javascript(site, tmp_path):
    """Every row is in the HTML itself; the script only adds sort buttons and filters.

    (Chromium's --dump-dom needs scripting on, so "off" is the page with its script cut.)
    """
    lb = site
    page = lb / "site" / "index.html"
    text = page.read_text()
    bare = lb / "site" / "noscript.html"
    bare.write_text(re.sub(r"<script>.*?</script>", "", text, flags=re.S))
    try:
        off = _chromium(tmp_path, bare.as_uri(), "--dump-dom")
    finally:
        bare.unlink()
    on = _chromium(tmp_path, page.as_uri(), "--dump-dom")
    n_rows = text.count('<tr class="row')
    assert n_rows > 0
    assert off.count('<tr class="row') == n_rows == on.count('<tr class="row')
    assert off.count("<td") == on.count("<td") > 0
    assert '<form id="filters" hidden=""' in off  # the filters need JavaScript: hidden
    assert '<form id="filters" aria-label' in on
    assert "<button" not in off and on.count("<button") == text.count("<th scope=\"col\"")


_PROBE = """<script>
window.addEventListener("load", () => {
  const out = {};
  const t = document.querySelector("table[id$='-downstream']");
  const th = t.tHead.rows[0].cells[0];  // proxy name: ascending on first click
  th.querySelector("button").click();
  out.sort = th.getAttribute("aria-sort");
  out.groups = Array.from(t.tBodies).map(b => ({
    head: b.rows[0].classList.contains("group"),
    names: Array.from(b.rows).slice(1).map(r => r.cells[0].dataset.v)}));
  const form = document.getElementById("filters");
  form.elements.task.value = "fmnist-vit";
  form.dispatchEvent(new Event("change"));
  out.shown = Array.from(document.querySelectorAll("section.task"))
    .filter(s => !s.hidden).map(s => s.dataset.task);
  document.body.insertAdjacentHTML("beforeend",
    "<pre id='probe'>" + JSON.stringify(out) + "</pre>");
});
</script>"""


@needs_chromium
def test_sorting_keeps_budgets_apart_and_filters_by_task(site, tmp_path):
    lb = site
    probe = lb / "site" / "probe.html"
    probe.write_text((lb / "site" / "index.html").read_text().replace(
        "</body>", _PROBE + "</body>"))
    try:
        dom = _chromium(tmp_path, probe.as_uri(), "--dump-dom", "--virtual-time-budget=5000")
    finally:
        probe.unlink()
    out = json.loads(re.search(r"<pre id=\"probe\">(.*?)</pre>", dom).group(1))
    assert out["sort"] == "ascending"
    assert len(out["groups"]) > 1 and all(g["head"] for g in out["groups"])
    for g in out["groups"]:  # each budget sorted on its own, never mixed
        assert g["names"] == sorted(g["names"]) and len(set(g["names"])) == len(g["names"])
    assert out["shown"] == ["fmnist-vit"]


_WRAP = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="index.html" style="width:{w}px;height:900px;border:0"></iframe><script>
document.getElementById("f").onload = function () {{
  const d = this.contentDocument, w = this.contentWindow;
  const wide = Array.from(d.querySelectorAll("body *")).filter(e =>
    !e.closest(".scroll") && e.getBoundingClientRect().right > w.innerWidth + 0.5)
    .map(e => e.tagName + "." + e.className).slice(0, 5);
  document.body.insertAdjacentHTML("beforeend", "<pre id='probe'>" + JSON.stringify(
    {{scroll: d.documentElement.scrollWidth, body: d.body.scrollWidth,
      inner: w.innerWidth, wide: wide,
      tables: Array.from(d.querySelectorAll(".scroll")).filter(
        s => s.scrollWidth > s.clientWidth).length}}) + "</pre>");
}};
</script></body></html>"""


@needs_chromium
@pytest.mark.parametrize("width", [400, 1400])
def test_no_horizontal_overflow(site, tmp_path, width):
    """The page body never scrolls sideways; wide tables scroll inside their own box.

    Headless Chromium lays a window out at least 500 px wide, so the page is measured in
    an iframe of the given width (its own viewport), and screenshotted the same way.
    """
    lb = site
    wrap = lb / "site" / f"wrap{width}.html"
    wrap.write_text(_WRAP.format(w=width))
    try:
        dom = _chromium(tmp_path, wrap.as_uri(), "--dump-dom", "--virtual-time-budget=5000",
                        f"--window-size={max(width, 500) + 20},900")
        shot = tmp_path / f"page{width}.png"
        _chromium(tmp_path, wrap.as_uri(), f"--screenshot={shot}",
                  f"--window-size={max(width, 500) + 20},900")
    finally:
        wrap.unlink()
    out = json.loads(re.search(r"<pre id=\"probe\">(.*?)</pre>", dom).group(1))
    assert out["inner"] == width
    assert out["scroll"] <= width and out["body"] <= width and not out["wide"], out
    if width == 400:
        assert out["tables"] > 0  # the wide tables do scroll, inside their containers
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[1] == max(width, 500) + 20
    assert (img[:, :width] < 128).mean() > 0.005  # the page rendered (text in its viewport)
    assert (img[:, width + 2:] == 255).all()  # and nothing beside it


# ---------------------------------------------------------------- plots
def test_png_bytes_do_not_depend_on_table_storage_order(site):
    """A table built in shards stores rows in another order than the shipped copy: the
    plots must be the same bytes (the reported 2-byte change of pydocs-llama_pareto)."""
    lb = site
    task = "pydocs-llama"
    recs = _records(lb)[task]
    table = open_table(load_task(task))
    shuffled = dataclasses.replace(table, rows=table.rows.sample(frac=1.0, random_state=3))
    for name, fn in P.PLOTS.items():
        a, b = io.BytesIO(), io.BytesIO()
        fn(task, recs, table, a)
        fn(task, recs, shuffled, b)
        assert a.getvalue() == b.getvalue(), name
        assert a.getvalue() == (lb / "site" / f"{task}_{name}.png").read_bytes()


def test_additive_damage_recovers_a_known_damage_matrix():
    rng = np.random.default_rng(0)
    bits = (2, 3, 4, 8)
    damage = rng.random((5, 4)) * np.array([16.0, 4.0, 1.0, 0.01])  # [units, bits]
    damage += rng.random((5, 1))  # per-unit offsets: never change a ranking
    configs = rng.choice(bits, size=(300, 5))
    idx = np.searchsorted(bits, configs)
    keys = ["w:" + ".".join(map(str, c)) + "|a:8.8.8.8.8" for c in configs]
    scores = {k: -damage[np.arange(5), i].sum() + 7.0 for k, i in zip(keys, idx)}
    got = P.additive_damage(scores, bits)
    np.testing.assert_allclose(got, damage - damage[:, -1:], atol=1e-9)
    # a score with an interaction between two units is not additive: no matrix
    inter = {k: s + 3.0 * (c[0] == 2) * (c[1] == 2) for (k, s), c in zip(scores.items(),
                                                                           configs)}
    assert P.additive_damage(inter, bits) is None


def test_measured_damage_is_the_single_unit_rows(site):
    table = open_table(load_task("fmnist-resnet8"))
    units, bits, m = P.measured_damage(table)
    assert bits == [2, 3, 4, 8] and len(units) == 8
    fp = table.rows[(table.rows.kind == "fp") & (table.rows.cal_seed == 0)].loss.iloc[0]
    rows = table.rows[(table.rows.kind == "layer") & (table.rows.cal_seed == 0)]
    measured = np.zeros_like(m, dtype=bool)
    for r in rows.itertuples():  # independent: each row's unit is the one not in float
        u = next(i for i, b in enumerate(r.w_bits) if b != 32)
        assert units[u] == r.unit
        assert m[u, bits.index(r.w_bits[u])] == pytest.approx(r.loss - fp, abs=1e-12)
        measured[u, bits.index(r.w_bits[u])] = True
    # a cell is shown exactly where a row measured it (ground truth v2: every bit below 8)
    assert np.array_equal(np.isfinite(m), measured) and measured[:, :-1].all()
