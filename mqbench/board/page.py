"""The static leaderboard page, leaderboard/site/index.html: one self-contained HTML file.

Everything is in the HTML itself: the protocol and metric definitions (from the metrics
registry), each task's description and quantizer (from its task file), the tables as
ordinary rows, the plots (PNG files next to the page) and every proxy's source file and
paper. JavaScript only sorts (headers carry `aria-sort`) and filters sections by task and
model family; with it off the page reads the same. No external assets, no network.

Row roles follow mqbench.board.render: reference rows (floors, oracles, the noise ceiling)
are shown shaded with a badge and never bold; rows marked `in_sample` carry a dagger. Each
table's notes are the report's own (`Report.notes`), so the page and the Markdown agree.
"""

from __future__ import annotations

import html
import math
import re
from itertools import pairwise
from pathlib import Path

from mqbench.board import page_text as T
from mqbench.board import report as R
from mqbench.board.render import RANKED_ROLES, Column, Report
from mqbench.errors import MqbenchError
from mqbench.paths import REPO_ROOT
from mqbench.proxy.contract import LEGACY_NAMES
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record
from mqbench.task.spec import Task, load_task

_FILE_OF = {name: stem for stem, name in LEGACY_NAMES.items()}  # registered name -> file stem


def role(row: dict) -> str:
    """A report row's role (mqbench.board.render): "proxy" unless the row says otherwise."""
    return str(row.get("role") or "proxy")


def source_link(proxy: str) -> str | None:
    """Link from the page (leaderboard/site/) to the proxy's file in the repository's
    proxies/, or None when that file does not exist (a variant `name@option` links to the
    proxy's own file)."""
    proxy = proxy.partition("@")[0]
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
        if key not in METRICS and key in T.GLOSSARY:
            items.append(f"<dt>{_e(c.md)}</dt><dd>{_e(T.GLOSSARY[key])}.</dd>")
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
            "max": "min&ndash;max range"}.get(q.weight_clip, q.weight_clip)
    acts = [b for b in q.act_bits if b < 32]
    act = (f"{'/'.join(map(str, acts))}-bit per tensor, asymmetric, range "
           f"{'chosen to minimise the squared error' if q.act_clip == 'mse' else 'min-max'} "
           f"on the calibration set") if acts else "float (weight-only quantization)"
    bn = "BatchNorm folded into the preceding convolution; " if q.fold_bn else ""
    how = ("round to nearest" if q.method == "rtn" else
           "GPTQ (column-wise error feedback through the layer's input Hessian, against the "
           "float model's inputs; <a href=\"../../mqbench/quant/gptq.py\">details</a>) on "
           "the same grid")
    return (f"post-training uniform fake quantization, method {q.method}: {how}; weights {w}, "
            f"{clip}; {bn}"
            f"activations {act} (<a href=\"../../mqbench/quant/quantizer.py\">exact scheme</a>)")


def _task_spec(t: Task) -> str:
    d, q, tb, h = t.data, t.quant, t.table, t.harness
    evals = "the whole split" if d.eval_samples == 0 else f"{d.eval_samples:,} samples"
    if d.seq_len:
        evals = f"{d.eval_samples:,} windows of {d.seq_len} tokens"
    tie = f"; tied: {len(q.tie)} layer(s) share their leader's bit-width" if q.tie else ""
    name = _e(Path(t.path).name)
    rows = [("model", f"{t.model.arch} ({t.model.source}), family: {family(t)}"),
            ("data", (f"{d.dataset}: calibration {d.calibration_samples:,} samples, evaluated "
                      f"on the {d.eval_split} split ({evals})")),
            ("bit-widths", (f"weights {{{', '.join(map(str, q.weight_bits))}}}, activations "
                            f"{{{', '.join(map(str, q.act_bits))}}} (32 = float){tie}")),
            ("quantizer", _quantizer(t)),
            ("table", (f"ground truth v{tb.protocol}: {tb.configs:,} sampled "
                       f"configurations ({tb.sampling} sampling, {tb.strata} strata), "
                       f"{tb.noise_configs} re-measured under seed {tb.noise_seed}" + (
                           f"; every row also on two test halves and on {d.val_samples:,} "
                           f"validation samples" if tb.protocol == 2 else ""))),
            ("downstream", (f"ILP budgets {', '.join(f'{b:g}' for b in h.budgets)} average "
                            f"weight bits, priced by size and by BOPs; &phi; uses "
                            f"&alpha; = {h.alpha:g}")),
            ("task file", f"<a href=\"../../tasks/{name}\">{name}</a>, version {t.version}")]
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
            vals = [sign * _num(r.get(c.key)) for r in rows if role(r) in RANKED_ROLES]
            fin = [v for v in vals if math.isfinite(v)]
            if len(fin) < 2 or any(a < b for a, b in pairwise(fin)) or \
                    any(math.isfinite(b) and not math.isfinite(a) for a, b in pairwise(vals)):
                ok = False
                break
        if ok:
            return c.key
    return None


def _proxy_cell(row: dict, rec: Record | None, cites: dict[str, int]) -> str:
    name = str(row["proxy"])
    r = role(row)
    link = source_link(name) if rec is not None else None
    text = f"<a href=\"{link}\">{_e(name)}</a>" if link else _e(name)
    if row.get("in_sample"):
        text += ("<span class=\"dagger\" title=\"in-sample: searched or tuned on this "
                 "task\">†</span>")
    if rec is not None and name in cites:
        text += (f" <a class=\"cite\" href=\"#proxy-{_slug(name)}\" title=\"{_e(rec.paper)}\">"
                 f"[{cites[name]}]</a>")
    if row.get("best_floor"):
        r = "best floor"
    if r != "proxy":
        text += f" <span class=\"badge {_e(r.split()[-1])}\">{_e(r)}</span>"
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
        note = T.GLOSSARY.get(c.key) or (METRICS[c.key].description if c.key in METRICS else "")
        title = f" title=\"{_e(note)}\"" if note else ""
        heads.append(f"<th scope=\"col\" class=\"num\" aria-sort=\"{sort}\" "
                     f"data-key=\"{_e(c.key)}\" data-better=\"{better}\"{title}>{_e(c.md)}</th>")
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
            r = role(row)
            cls = "row" if r in RANKED_ROLES else f"row ref {_e(r)}"
            cells = []
            for k, _ in labels:
                cells.append(_proxy_cell(row, rec, cites) if k == "proxy"
                             else f"<td data-v=\"{_e(row.get(k, ''))}\">{_e(row.get(k, ''))}</td>")
            for c in report.columns:
                v = _num(row.get(c.key))
                text = _fmt(v, c.digits)
                if (i, c.key) in best and r in RANKED_ROLES and math.isfinite(v):
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
    notes = list(report.notes) or ["Bold: best among ranked rows" + (
        " within each group." if report.group else ".")]
    if any(role(row) not in RANKED_ROLES for row in report.rows):
        notes.append("Shaded rows with a badge are references (floors, oracles, the noise "
                     "ceiling): shown for comparison, never ranked.")
    if not report.rows:
        notes.insert(0, "No rows.")
    legend = "".join(f"<p class=\"note\">{_e(n)}</p>" for n in notes)
    return (f"<h3 id=\"{_e(tid)}-title\">{_e(report.title)}</h3>\n<div class=\"scroll\" "
            f"tabindex=\"0\" role=\"region\" aria-labelledby=\"{_e(tid)}-title\">"
            f"<table id=\"{_e(tid)}\" class=\"board\"><thead><tr>{''.join(heads)}</tr></thead>"
            "\n" + "\n".join(bodies) + "</table></div>\n" + legend)


def _figure(img: str) -> str:
    kind = img.rsplit("_", 1)[-1].removesuffix(".png")
    cap = T.CAPTIONS.get(kind, "")
    return (f"<figure><a href=\"{_e(img)}\"><img src=\"{_e(img)}\" alt=\"{_e(kind)} plot: "
            f"{_e(cap)}\" loading=\"lazy\"></a><figcaption>{_e(cap)}</figcaption></figure>")


def _options(values: list[str]) -> str:
    return "<option value=\"\">all</option>" + "".join(
        f"<option value=\"{_e(v)}\">{_e(v)}</option>" for v in values)


def _proxy_list(papers: dict[str, Record], by_task: dict, cites: dict[str, int]) -> str:
    items = []
    for name, rec in sorted(papers.items()):
        link = source_link(name)
        src = (f"<a href=\"{link}\">{_e(link.removeprefix('../../'))}</a>" if link
               else "not in this repository")
        tasks = ", ".join(t for t in sorted(by_task) if name in by_task[t])
        items.append(f"<li id=\"proxy-{_slug(name)}\">[{cites[name]}] <strong>{_e(name)}"
                     f"</strong> ({_e(rec.proxy_kind)}, v{rec.proxy_version}): "
                     f"{_e(rec.paper)}. Source: {src}. Tasks: {_e(tasks)}.</li>")
    return ("<section id=\"proxies\"><h2>Proxies</h2><p>Every proxy's registered name, kind, "
            "version, the paper it comes from and its source file.</p>"
            f"<ul class=\"refs\">{''.join(items)}</ul></section>")


def _spec(task: str) -> Task | None:
    try:
        return load_task(task)
    except MqbenchError:  # records of a task no longer registered: no description
        return None


Tables = list[tuple[str, Report, set]]  # (table id, report, bold cells)


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` and **bold** spans (the README's paragraphs)."""
    out = _e(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def page(sections: list[tuple[str, Tables, list[str]]], note: str,
         records: dict[str, list[Record]] | None = None, summary: str = "",
         task_notes: dict[str, str] | None = None) -> str:
    """HTML for [(task, [(table id, report, bold cells)], [png file names])].

    A section whose name has no records (e.g. "across tasks") is shown as a plain section
    before the tasks, outside the filters. `records` (task -> its records) gives rows their
    paper, kind and source link (read from the leaderboard database when not given);
    `summary` is what the leaderboard concludes and `task_notes` one paragraph per task
    (Markdown `code` and **bold** allowed).
    """
    if records is None:
        records = {t: R.load_records(t) for t, _, _ in sections}
    task_notes = task_notes or {}
    tasks = [t for t, _, _ in sections if records.get(t)]
    by_task = {t: {r.proxy: r for r in records[t]} for t in tasks}
    papers: dict[str, Record] = {}
    for t in sorted(by_task):
        for name, rec in sorted(by_task[t].items()):
            papers.setdefault(name, rec)
    every = {name: rec for t in by_task.values() for name, rec in t.items()}
    cites = {name: i + 1 for i, name in enumerate(sorted(papers))}
    specs = {t: _spec(t) for t in tasks}
    columns: dict[str, Column] = {}
    roles = set()
    general, body = [], []
    for t, reports, images in sections:
        recs = by_task.get(t, every)
        if t in by_task:
            spec = specs[t]
            part = [(f"<section class=\"task\" id=\"{_e(_slug(t))}\" data-task=\"{_e(t)}\" "
                     f"data-family=\"{_e(family(spec) if spec else '')}\"><h2>{_e(t)}</h2>"),
                    _task_spec(spec) if spec else ""]
            if task_notes.get(t):
                part.append(f"<p class=\"summary\">{_inline(task_notes[t])}</p>")
        else:
            part = [f"<section id=\"{_e(_slug(t))}\"><h2>{_e(t)}</h2>"]
        for tid, report, best in reports:
            columns.update((c.key, c) for c in report.columns)
            roles.update(role(row) for row in report.rows)
            part.append(_table(tid, report, best, recs, cites))
        part += [_figure(img) for img in images]
        (body if t in by_task else general).append("\n".join(part) + "</section>")
    refs = "".join(f"<li><strong>{k}</strong>: {v}</li>" for r, (k, v) in T.REFERENCE.items()
                   if r in roles)
    refs = f"<p>Reference rows, shown shaded and never ranked:</p><ul>{refs}</ul>" if refs else ""
    nav = "".join(f"<li><a href=\"#{_e(_slug(t))}\">{_e(t)}</a></li>"
                  for t in [t for t, _, _ in sections if t not in by_task] + tasks)
    fams = sorted({family(x) for x in specs.values() if x})
    filters = ("<form id=\"filters\" hidden aria-label=\"filter tasks\">"
               f"<label>Task <select name=\"task\">{_options(tasks)}</select></label>"
               f"<label>Model family <select name=\"family\">{_options(fams)}</select></label>"
               "</form>")
    concl = (f"<section id=\"conclusion\"><h2>What the leaderboard concludes</h2>"
             f"<p>{_inline(summary)}</p></section>") if summary else ""
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>mqbench leaderboard</title><style>{T.STYLE}</style></head><body>",
        f"<header><h1>mqbench leaderboard</h1><p>{T.INTRO}</p>",
        (f"<p class=\"note\">{_e(note)} Click a column header to sort (JavaScript; the "
         "tables read the same without it).</p>"),
        ("<nav aria-label=\"contents\"><ul>"
         + ("<li><a href=\"#conclusion\">conclusions</a></li>" if concl else "")
         + "<li><a href=\"#protocol\">protocol</a></li>"
         f"<li><a href=\"#metrics\">metrics</a></li>{nav}"
         "<li><a href=\"#proxies\">proxies</a></li></ul></nav></header><main>"),
        concl,
        f"<section id=\"protocol\"><h2>Protocol</h2>{T.PROTOCOL}{refs}</section>",
        f"<section id=\"metrics\"><h2>Metrics</h2>{_metric_list(columns)}</section>",
        *general, filters, *body, _proxy_list(papers, by_task, cites),
        f"</main><script>{T.SCRIPT}</script></body></html>", ""])
