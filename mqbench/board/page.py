"""The static leaderboard page: one self-contained HTML file, no external assets.

The page embeds the comparison data as JSON and renders the tables with a few lines of
plain JavaScript (click a header to sort; click again to reverse), so the file works from
disk, from GitHub Pages, or any static host. Plots are PNGs next to it.
"""

from __future__ import annotations

import html
import json
import math

from mqbench.board.report import Report

_SCRIPT = """
function fmt(v, d) { return (v === null) ? "\\u2013" : v.toFixed(d); }
function render(id) {
  const spec = DATA[id], table = document.getElementById(id);
  const head = table.tHead.rows[0], body = table.tBodies[0];
  body.innerHTML = "";
  for (const row of spec.rows) {
    const tr = body.insertRow();
    tr.className = "row";
    for (const col of spec.columns) {
      const td = tr.insertCell();
      const v = row[col.key];
      if (col.digits === null) { td.textContent = v; continue; }
      td.textContent = fmt(v, col.digits);
      if (col.ci && row[col.key + "_lo"] !== null) {
        const s = document.createElement("small");
        s.textContent = " [" + fmt(row[col.key + "_lo"], col.digits) + ", " +
                        fmt(row[col.key + "_hi"], col.digits) + "]";
        td.appendChild(s);
      }
      if (row._best.includes(col.key)) td.className = "best";
    }
  }
  Array.from(head.cells).forEach((th, i) => { th.onclick = () => sortBy(id, i); });
}
function sortBy(id, i) {
  const spec = DATA[id], key = spec.columns[i].key;
  const dir = (spec.sorted === key) ? -spec.dir : (spec.columns[i].digits === null ? 1 : -1);
  spec.sorted = key; spec.dir = dir;
  spec.rows.sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === null) return 1; if (y === null) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * dir;
  });
  render(id);
}
for (const id in DATA) render(id);
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; } th:hover { background: #e4e4e4; }
td:first-child, th:first-child, td:nth-child(2), th:nth-child(2) { text-align: left; }
td.best { font-weight: bold; } small { color: #777; } img { max-width: 100%; }
"""


def _jsonable(report: Report, best: set) -> dict:
    cols = ([{"key": k, "name": h, "digits": None, "ci": False} for k, h in report.labels]
            + [{"key": c.key, "name": c.md, "digits": c.digits, "ci": c.ci}
               for c in report.columns])
    rows = []
    for i, row in enumerate(report.rows):
        out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in row.items()}
        out["_best"] = sorted(k for j, k in best if j == i)
        rows.append(out)
    return {"title": report.title, "columns": cols, "rows": rows}


def page(sections: list[tuple[str, list[tuple[str, Report, set]], list[str]]],
         note: str) -> str:
    """HTML for [(task, [(table id, report, best cells)], [png file names])]."""
    data, body = {}, []
    for task, reports, images in sections:
        body.append(f"<h2 id=\"{html.escape(task)}\">{html.escape(task)}</h2>")
        for tid, report, best in reports:
            data[tid] = _jsonable(report, best)
            heads = "".join(f"<th>{html.escape(c['name'])}</th>" for c in data[tid]["columns"])
            body.append(f"<h3>{html.escape(report.title)}</h3>\n<table id=\"{tid}\"><thead>"
                        f"<tr>{heads}</tr></thead><tbody></tbody></table>")
        body += [f"<p><img src=\"{html.escape(img)}\" alt=\"{html.escape(img)}\"></p>"
                 for img in images]
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>mqbench leaderboard</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>mqbench leaderboard</h1>\n"
            f"<p>{html.escape(note)} Click a column header to sort.</p>\n"
            + "\n".join(body)
            + f"\n<script>const DATA = {blob};{_SCRIPT}</script>\n</body></html>\n")
