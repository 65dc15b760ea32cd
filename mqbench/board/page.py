"""The static leaderboard page, leaderboard/site/index.html: one self-contained HTML file.

Everything is in the HTML itself: the protocol and metric definitions (from the metrics
registry), each task's description and quantizer (from its task file), the tables as
ordinary rows, the plots (PNG files next to the page) and every proxy's source file and
paper. JavaScript only sorts (headers carry `aria-sort`) and filters sections by task and
model family; with it off the page reads the same. No external assets, no network.

Rows of the reports whose `role` is not a ranked one (floors, oracles, the noise ceiling)
are shown, marked, and never bold; rows marked `in_sample` carry a dagger.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from mqbench.board import report as R
from mqbench.board.report import Column, Report
from mqbench.errors import MqbenchError
from mqbench.paths import REPO_ROOT
from mqbench.proxy.contract import LEGACY_NAMES
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record
from mqbench.task.spec import Task, load_task

RANKED = ("proxy", "baseline")  # row roles that compete; anything else is a reference row
NOT_RANKED = ("floor", "oracle", "ceiling")  # the reference roles the page explains
SITE = REPO_ROOT / "leaderboard" / "site"  # where the page lives: links are relative to it
_FILE_OF = {name: stem for stem, name in LEGACY_NAMES.items()}  # registered name -> file stem


def role(row: dict, record: Record | None = None) -> str:
    """A report row's role: its `role` field, else "baseline" for a record whose paper says
    so, else "proxy"."""
    if row.get("role"):
        return str(row["role"])
    if record is not None and record.paper.lower().startswith("baseline"):
        return "baseline"
    return "proxy"


def source_link(proxy: str) -> str | None:
    """Relative link from the page to the proxy's file in proxies/, if the repository has it."""
    path = REPO_ROOT / "proxies" / f"{_FILE_OF.get(proxy, proxy)}.py"
    return f"../../proxies/{path.name}" if path.is_file() else None


def family(task: Task) -> str:
    """The model family a task's filter uses."""
    if task.is_lm:
        return "language model"
    arch = task.model.arch.lower()
    return "vision transformer" if any(s in arch for s in ("vit", "deit", "swin")) else "CNN"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# ---------------------------------------------------------------- protocol text
_PROTOCOL = """
<p>A <dfn>configuration</dfn> gives every quantizable unit of a model one weight bit-width
from the task's choices (a unit is a layer, plus any layer tied to it, such as a residual
block's 1&times;1 downsample convolution); activations keep the task's fixed bit-width.
For each task the ground-truth <dfn>table</dfn> holds every uniform configuration and about
a stratified random sample (sizes below), each quantized with the task's <a href="#quantizer">quantizer</a>
and evaluated on held-out data: top-1 accuracy for vision tasks, perplexity (exp of the mean
per-token cross-entropy) for language-model tasks. The table also measures each unit alone at
each bit-width with the rest in float (the per-layer sensitivity behind &rho;_sens and the
heatmaps), and re-measures a subset under a second calibration seed (its noise).</p>
<p>A <dfn>proxy</dfn> is training-free: it sees the full-precision model and one calibration
batch, never the table. A <em>layer</em> proxy returns one sensitivity s<sub>l</sub> per unit
and a configuration scores &minus;&Sigma;<sub>l</sub> s<sub>l</sub>&middot;&Vert;Q<sub>b<sub>l</sub></sub>(W<sub>l</sub>)&minus;W<sub>l</sub>&Vert;&sup2;
(HAWQ's rule: the quantization error of each layer at its bit-width, weighted by the
proxy); a <em>layer_bit</em> proxy returns a damage d<sub>l,b</sub> per unit and bit-width and
a configuration scores &minus;&Sigma;<sub>l</sub> d<sub>l,b<sub>l</sub></sub>; a
<em>config</em> proxy scores whole configurations. Layer proxies get the quantization-error
term for free; layer_bit proxies do not, so compare kinds with care. Each proxy's scores are
then correlated with the table (the correlation table) and turned into bit allocations under
budgets by an exact integer linear program, which are quantized and measured (the downstream
table).</p>
<p><dfn>Ties</dfn>: orders by predicted score are descending, ties broken by the
configuration key in ascending order, so the top-k% cut is deterministic (EMQ's code
reverses an unstable argsort, which can put other tied configurations inside the cut).
<dfn>Bootstrap CIs</dfn> (in brackets) are 95% percentile intervals over configurations
resampled with replacement (1,000 resamples, seeded by the task), so they say how much a
number depends on which configurations the table happened to sample; they do not include
the proxy's own variance across calibration batches.</p>
"""
_REFERENCE = {
    "floor": ("Floors", "scores that use no knowledge of the model beyond what every proxy gets "
              "for free: the aggregation formula with s<sub>l</sub> = 1 (<code>uniform</code>), "
              "the number of units at the lowest bit-width, the model size, and random "
              "sensitivities over many seeds. A proxy is informative only by what it adds "
              "over the best floor."),
    "oracle": ("Oracles", "the table's own single-layer measurements used as the proxy: the "
               "best an additive proxy can do. The gap from the oracle to the best proxy is "
               "the room left; the gap from the oracle to 1 comes from interactions between "
               "layers that no per-layer score can see."),
    "ceiling": ("Noise ceiling", "the correlation of the table with itself re-measured under a "
                "second calibration seed: no proxy can be expected to exceed it, and a metric "
                "within noise of it cannot be improved on this table."),
}
_GLOSSARY = {  # report columns that are not registered metrics
    "per_config_ms": "milliseconds per configuration: proxy time plus scoring time divided by "
                     "the number of configurations; measured on whatever machine produced the "
                     "record, so compare with care",
    "acc": "top-1 accuracy (LM tasks: next-token accuracy) of the ILP allocation, quantized "
           "and evaluated",
    "best_table_acc": "best table configuration within the same budget",
    "gap": "best table value within the budget minus the allocation's (negative: the "
           "allocation beats every sampled table configuration)",
    "size_kb": "weight storage of the allocation, KiB", "mbops": "bit operations, millions",
    "search_s": "seconds the proxy took (statistics shared by all proxies not counted)",
}


def _metric_list(columns: dict[str, Column]) -> str:
    items = []
    for m in METRICS.values():
        if not m.board:
            continue
        better = "higher" if m.higher_is_better else "lower"
        ci = "; 95% bootstrap CI" if m.bootstrap else ""
        items.append(f"<dt>{_e(m.label)} <code>{_e(m.name)}</code></dt><dd>{_e(m.description)}"
                     f" ({m.level} level; {better} is better{ci}).</dd>")
    for key, c in columns.items():
        if key not in METRICS and key in _GLOSSARY:
            items.append(f"<dt>{_e(c.md)}</dt><dd>{_e(_GLOSSARY[key])}.</dd>")
    others = [m.name for m in METRICS.values() if not m.board]
    tail = (f"<p>Also in every record (and its JSON), not in the tables: "
            f"{', '.join(f'<code>{_e(n)}</code>' for n in others)}.</p>") if others else ""
    return "<dl class=\"defs\">" + "".join(items) + "</dl>" + tail


# ---------------------------------------------------------------- task descriptions
def _quantizer(t: Task) -> str:
    q = t.quant
    if q.group_size > 0:
        w = f"group-wise asymmetric (groups of {q.group_size} input channels)"
    else:
        w = "per output channel, symmetric"
    clip = {"mse": "clip range chosen to minimise the squared error",
            "max": "min&ndash;max range (round to nearest)"}.get(q.weight_clip, q.weight_clip)
    acts = [b for b in q.act_bits if b < 32]
    act = (f"{'/'.join(map(str, acts))}-bit per tensor, asymmetric, range "
           f"{'chosen to minimise the squared error' if q.act_clip == 'mse' else 'min-max'} "
           f"on the calibration set") if acts else "float (weight-only quantization)"
    bn = "BatchNorm folded into the preceding convolution; " if q.fold_bn else ""
    return (f"post-training uniform fake quantization: weights {w}, {clip}; {bn}"
            f"activations {act} (<a href=\"../../mqbench/quant/quantizer.py\">exact scheme</a>)")


def _task_spec(t: Task) -> str:
    d, q, tb, h = t.data, t.quant, t.table, t.harness
    evals = "the whole split" if d.eval_samples == 0 else f"{d.eval_samples:,} samples"
    if d.seq_len:
        evals = f"{d.eval_samples:,} windows of {d.seq_len} tokens"
    tie = f"; tied: {len(q.tie)} layer(s) share their leader's bit-width" if q.tie else ""
    rows = [("model", f"{t.model.arch} ({t.model.source}), family: {family(t)}"),
            ("data", f"{d.dataset}: calibration {d.calibration_samples:,} samples, evaluated "
                     f"on the {d.eval_split} split ({evals})"),
            ("bit-widths", f"weights {{{', '.join(map(str, q.weight_bits))}}}, activations "
                           f"{{{', '.join(map(str, q.act_bits))}}} (32 = float){tie}"),
            ("quantizer", _quantizer(t)),
            ("table", f"{tb.configs:,} sampled configurations in {tb.strata} strata of average "
                      f"bits, {tb.noise_configs} re-measured under seed {tb.noise_seed}"),
            ("downstream", f"ILP budgets {', '.join(f'{b:g}' for b in h.budgets)} average "
                           f"weight bits, priced by size and by BOPs; &phi; uses "
                           f"&alpha; = {h.alpha:g}"),
            ("task file", f"<a href=\"../../tasks/{_e(Path(t.path).name)}\">"
                          f"{_e(Path(t.path).name)}</a>, version {t.version}")]
    raw = ("quantizer", "downstream", "task file")  # already HTML
    body = "".join(f"<dt>{k}</dt><dd>{v if k in raw else _e(v)}</dd>" for k, v in rows)
    return f"<p>{_e(t.description)}</p><dl class=\"spec\">{body}</dl>"


# ---------------------------------------------------------------- tables
def _num(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def _fmt(v: float, digits: int) -> str:
    return R.DASH if not math.isfinite(v) else f"{v:.{digits}f}"


def _sorted_by(report: Report) -> str | None:
    """The numeric column the report's rows are already ranked by (within groups), if any."""
    groups: dict = {}
    for row in report.rows:
        groups.setdefault(row.get(report.group) if report.group else None, []).append(row)
    for c in report.columns:
        if not c.ranked:
            continue
        sign = 1 if c.higher_better else -1
        ok = True
        for rows in groups.values():
            vals = [sign * _num(r.get(c.key)) for r in rows if role(r) in RANKED]
            fin = [v for v in vals if math.isfinite(v)]
            if len(fin) < 2 or any(a < b for a, b in zip(fin, fin[1:])) or \
                    any(math.isfinite(b) and not math.isfinite(a) for a, b in zip(vals, vals[1:])):
                ok = False
                break
        if ok:
            return c.key
    return None


def _proxy_cell(row: dict, rec: Record | None, cites: dict[str, int]) -> str:
    name = str(row["proxy"])
    r = role(row, rec)
    link = source_link(name) if rec is not None else None
    text = f"<a href=\"{link}\">{_e(name)}</a>" if link else _e(name)
    if row.get("in_sample"):
        text += "<span class=\"dagger\" title=\"in-sample: searched or tuned on this task\">†</span>"
    if rec is not None and name in cites:
        text += (f" <a class=\"cite\" href=\"#proxy-{_slug(name)}\" title=\"{_e(rec.paper)}\">"
                 f"[{cites[name]}]</a>")
    if r != "proxy":
        text += f" <span class=\"badge {_e(r)}\">{_e(r)}</span>"
    if rec is not None:
        text += f" <span class=\"kind\">{_e(rec.proxy_kind)}</span>"
    return f"<td class=\"name\" data-v=\"{_e(name)}\">{text}</td>"


def _table(tid: str, report: Report, best: set, recs: dict[str, Record],
           cites: dict[str, int]) -> str:
    labels = [(k, h) for k, h in report.labels if k != report.group]
    sorted_by = _sorted_by(report)
    heads = []
    for k, h in labels:
        heads.append(f"<th scope=\"col\" aria-sort=\"none\" data-key=\"{_e(k)}\">{_e(h)}</th>")
    for c in report.columns:
        better = "higher" if c.higher_better else "lower"
        sort = "descending" if c.key == sorted_by and c.higher_better else \
            "ascending" if c.key == sorted_by else "none"
        note = _GLOSSARY.get(c.key) or (METRICS[c.key].description if c.key in METRICS else "")
        title = f" title=\"{_e(note)}\"" if note else ""
        heads.append(f"<th scope=\"col\" class=\"num\" aria-sort=\"{sort}\" data-key=\"{_e(c.key)}\" "
                     f"data-better=\"{better}\"{title}>{_e(c.md)}</th>")
    groups: dict = {}
    for i, row in enumerate(report.rows):
        groups.setdefault(row.get(report.group) if report.group else None, []).append(i)
    bodies = []
    for g, idx in groups.items():
        lines = []
        if g is not None:
            lines.append(f"<tr class=\"group\"><th scope=\"rowgroup\" colspan=\"{len(heads)}\">"
                         f"{_e(dict(report.labels).get(report.group, ''))}: {_e(g)}</th></tr>")
        for i in idx:
            row = report.rows[i]
            rec = recs.get(str(row.get("proxy")))
            r = role(row, rec)
            cls = "row" if r in RANKED else f"row ref {_e(r)}"
            cells = []
            for k, _ in labels:
                cells.append(_proxy_cell(row, rec, cites) if k == "proxy"
                             else f"<td data-v=\"{_e(row.get(k, ''))}\">{_e(row.get(k, ''))}</td>")
            for c in report.columns:
                v = _num(row.get(c.key))
                text = _fmt(v, c.digits)
                if (i, c.key) in best and r in RANKED and math.isfinite(v):
                    text = f"<strong>{text}</strong>"
                    cls_c = "num best"
                else:
                    cls_c = "num"
                lo, hi = _num(row.get(c.key + "_lo")), _num(row.get(c.key + "_hi"))
                if c.ci and math.isfinite(lo) and math.isfinite(hi):
                    text += f" <small>[{lo:.{c.digits}f}, {hi:.{c.digits}f}]</small>"
                data = repr(v) if math.isfinite(v) else ""
                cells.append(f"<td class=\"{cls_c}\" data-v=\"{data}\">{text}</td>")
            lines.append(f"<tr class=\"{cls}\" data-role=\"{_e(r)}\">" + "".join(cells) + "</tr>")
        bodies.append("<tbody>" + "\n".join(lines) + "</tbody>")
    notes = ["Bold: best among ranked rows" + (" within each group" if report.group else "")
             + "."]
    if any(c.ci for c in report.columns):
        notes.append("Brackets: 95% bootstrap confidence intervals.")
    if any(role(row) not in RANKED for row in report.rows):
        notes.append("Shaded rows are references (floors, oracles, noise ceiling), not ranked.")
    if any(row.get("in_sample") for row in report.rows):
        notes.append("†: in-sample (the proxy was searched or tuned on this task's table); "
                     "never counted as best.")
    return (f"<h3 id=\"{_e(tid)}-title\">{_e(report.title)}</h3>\n<div class=\"scroll\" "
            f"tabindex=\"0\" role=\"region\" aria-labelledby=\"{_e(tid)}-title\">"
            f"<table id=\"{_e(tid)}\" class=\"board\"><thead><tr>{''.join(heads)}</tr></thead>\n"
            + "\n".join(bodies) + f"</table></div>\n<p class=\"note\">{' '.join(notes)}</p>")


_CAPTIONS = {
    "scatter": "Each panel: a proxy's score rank against the ground truth of every table "
               "configuration; ρs in the title (and its difference from the best floor, "
               "where floors are computed).",
    "pareto": "Ground truth against model size: the table's configurations (grey), its "
              "Pareto front (line), and each proxy's ILP allocations under the size budgets "
              "(the top proxies named; the others, baselines and floors grouped).",
    "sensitivity": "Per-unit damage, units × weight bit-widths: measured (loss increase with "
                   "the unit alone at that bit-width) beside what the top proxies predict "
                   "(recovered from their configuration scores, relative to the highest "
                   "bit-width); colour is log10 of the value over the panel's maximum.",
}


def _figure(img: str) -> str:
    kind = img.rsplit("_", 1)[-1].removesuffix(".png")
    cap = _CAPTIONS.get(kind, "")
    return (f"<figure><a href=\"{_e(img)}\"><img src=\"{_e(img)}\" alt=\"{_e(kind)} plot: "
            f"{_e(cap)}\" loading=\"lazy\"></a><figcaption>{_e(cap)}</figcaption></figure>")


# ---------------------------------------------------------------- the page
_STYLE = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 12px 3em;
color:#222;overflow-wrap:anywhere}
h1{margin:.6em 0 .2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
nav ul{display:flex;flex-wrap:wrap;gap:.3em 1em;list-style:none;padding:0}
code{font-size:90%;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;border:1px solid #eee}
table.board{border-collapse:collapse;font-size:13px;overflow-wrap:normal;white-space:nowrap}
th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
th.num,td.num{text-align:right}thead th{background:#f4f4f4;position:sticky;top:0}
th button{all:inherit;cursor:pointer;padding:0}th button:focus-visible{outline:2px solid #36c}
th[aria-sort=descending]::after{content:" \\25BE"}th[aria-sort=ascending]::after{content:" \\25B4"}
th[aria-sort=none]::after{content:" \\2195";color:#aaa}
tr.group th{background:#e8eef8;text-align:left}
tr.ref td{background:#f6f6f6;color:#555;font-style:italic}
td.best{font-weight:bold}small{color:#777}
.badge{font:11px system-ui;font-style:normal;border:1px solid #999;border-radius:3px;padding:0 3px;
color:#444}.badge.floor,.badge.oracle,.badge.ceiling{border-color:#a60;color:#a60}
.kind{font-size:11px;color:#888}.cite{font-size:11px;text-decoration:none}.dagger{color:#a00}
.note{font-size:13px;color:#555}dl.defs dt{font-weight:600;margin-top:.4em}dl.defs dd{margin-left:1.2em}
dl.spec{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em}dl.spec dd{margin:0}
@media (max-width:600px){dl.spec{grid-template-columns:1fr}dl.spec dd{margin-left:1em}}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}ul.refs{list-style:none;padding:0}
#filters{margin:1em 0;display:flex;flex-wrap:wrap;gap:1em}
"""

_SCRIPT = """
(function () {
  function val(td) { const v = td.dataset.v; return v === "" ? null : (isNaN(+v) ? v : +v); }
  function sortBy(table, i) {
    const th = table.tHead.rows[0].cells[i], cur = th.getAttribute("aria-sort");
    const first = th.classList.contains("num") && th.dataset.better !== "lower"
      ? "descending" : "ascending";
    const dir = cur === "none" ? first : (cur === "descending" ? "ascending" : "descending");
    for (const h of table.tHead.rows[0].cells) h.setAttribute("aria-sort", "none");
    th.setAttribute("aria-sort", dir);
    const s = dir === "ascending" ? 1 : -1;
    for (const body of table.tBodies) {
      const rows = Array.from(body.rows).filter(r => !r.classList.contains("group"));
      rows.sort((a, b) => {
        const x = val(a.cells[i]), y = val(b.cells[i]);
        if (x === null || y === null) return (x === null) - (y === null);
        return (x < y ? -1 : x > y ? 1 : 0) * s;
      });
      for (const r of rows) body.appendChild(r);
    }
  }
  for (const table of document.querySelectorAll("table.board")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
      const b = document.createElement("button");
      b.type = "button";
      while (th.firstChild) b.appendChild(th.firstChild);
      th.appendChild(b);
      b.addEventListener("click", () => sortBy(table, i));
    });
  }
  const form = document.getElementById("filters");
  if (!form) return;
  form.hidden = false;
  const pick = () => {
    const t = form.elements.task.value, f = form.elements.family.value;
    for (const s of document.querySelectorAll("section.task"))
      s.hidden = !((t === "" || s.dataset.task === t) && (f === "" || s.dataset.family === f));
  };
  form.addEventListener("change", pick);
  pick();
})();
"""


def _options(values: list[str]) -> str:
    return "<option value=\"\">all</option>" + "".join(
        f"<option value=\"{_e(v)}\">{_e(v)}</option>" for v in values)


def page(sections: list[tuple[str, list[tuple[str, Report, set]], list[str]]], note: str,
         records: dict[str, list[Record]] | None = None) -> str:
    """HTML for [(task, [(table id, report, best cells)], [png file names])].

    `records` (task -> its records) gives each row its paper, kind and source link; read
    from the leaderboard database when not given.
    """
    records = records if records is not None else {t: R.load_records(t) for t, _, _ in sections}
    by_task = {t: {r.proxy: r for r in records.get(t, [])} for t, _, _ in sections}
    papers: dict[str, Record] = {}
    for t in sorted(by_task):
        for name, rec in sorted(by_task[t].items()):
            papers.setdefault(name, rec)
    cites = {name: i + 1 for i, name in enumerate(sorted(papers))}
    specs: dict[str, Task | None] = {}
    for t, _, _ in sections:
        try:
            specs[t] = load_task(t)
        except MqbenchError:  # records of a task no longer registered: no description
            specs[t] = None
    columns: dict[str, Column] = {}
    roles = set()
    body = []
    for t, reports, images in sections:
        spec = specs[t]
        fam = family(spec) if spec else ""
        part = [f"<section class=\"task\" id=\"{_e(_slug(t))}\" data-task=\"{_e(t)}\" "
                f"data-family=\"{_e(fam)}\"><h2>{_e(t)}</h2>",
                _task_spec(spec) if spec else ""]
        for tid, report, best in reports:
            columns.update((c.key, c) for c in report.columns)
            roles.update(role(row) for row in report.rows)
            part.append(_table(tid, report, best, by_task[t], cites))
        part += [_figure(img) for img in images]
        body.append("\n".join(part) + "</section>")
    refs = "".join(f"<li><strong>{_e(k)}</strong>: {v}</li>" for r, (k, v) in _REFERENCE.items()
                   if r in roles)
    proxies = []
    for name, rec in sorted(papers.items()):
        link = source_link(name)
        src = f"<a href=\"{link}\">{_e(link.removeprefix('../../'))}</a>" if link else "not in this repository"
        tasks = ", ".join(t for t in sorted(by_task) if name in by_task[t])
        proxies.append(f"<li id=\"proxy-{_slug(name)}\">[{cites[name]}] <strong>{_e(name)}</strong>"
                       f" ({_e(rec.proxy_kind)}, v{rec.proxy_version}): {_e(rec.paper)}. "
                       f"Source: {src}. Tasks: {_e(tasks)}.</li>")
    fams = sorted({family(s) for s in specs.values() if s})
    nav = "".join(f"<li><a href=\"#{_e(_slug(t))}\">{_e(t)}</a></li>" for t, _, _ in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>mqbench leaderboard</title>\n"
        f"<style>{_STYLE}</style></head><body>\n<header><h1>mqbench leaderboard</h1>\n"
        "<p>How well do training-free proxies predict which mixed-precision bit "
        "configurations of a model quantize best? Each task's proxies are scored against a "
        "measured table of quantized configurations.</p>\n"
        f"<p class=\"note\">{_e(note)} Click a column header to sort (JavaScript; the tables "
        "read the same without it).</p>\n"
        "<nav aria-label=\"contents\"><ul><li><a href=\"#protocol\">protocol</a></li>"
        "<li><a href=\"#metrics\">metrics</a></li>" + nav +
        "<li><a href=\"#proxies\">proxies</a></li></ul></nav></header>\n<main>\n"
        f"<section id=\"protocol\"><h2>Protocol</h2>{_PROTOCOL}"
        + (f"<p>Reference rows, shown shaded and never ranked:</p><ul>{refs}</ul>" if refs else "")
        + "<p id=\"quantizer\">Each task's quantizer is stated with the task below; "
        "it defines the ground truth, so a proxy's ranking holds for that quantizer only.</p>"
        "</section>\n"
        f"<section id=\"metrics\"><h2>Metrics</h2>{_metric_list(columns)}</section>\n"
        "<form id=\"filters\" hidden aria-label=\"filter tasks\">"
        f"<label>Task <select name=\"task\">{_options([t for t, _, _ in sections])}</select></label>"
        f"<label>Model family <select name=\"family\">{_options(fams)}</select></label></form>\n"
        + "\n".join(body)
        + "\n<section id=\"proxies\"><h2>Proxies</h2><p>Every proxy's registered name, kind, "
        "version, the paper it comes from and its source file (relative to the repository "
        f"root).</p><ul class=\"refs\">{''.join(proxies)}</ul></section>\n</main>\n"
        f"<script>{_SCRIPT}</script>\n</body></html>\n")
