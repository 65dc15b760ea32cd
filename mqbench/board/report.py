"""Comparison tables from the leaderboard: EMQ-style correlations, TAP-style downstream.

Both are built from the stored records (read through the DuckDB index) and rendered as
Markdown (README, docs), CSV (analysis) and LaTeX/booktabs (papers). Output is
byte-deterministic: rows ranked by a fixed key with the proxy name as tie-break, numbers
formatted with fixed precision, no timestamps.

* Correlation table (EMQ Table 2 shape): one column per metric of the registry
  (mqbench.scoring.metrics.METRICS) marked for the board, in registration order: ρs@20%,
  ρs@50%, ρs@100% (Spearman among the proxy's top-k% configurations by predicted score,
  EMQ's definition), Kendall τ over all configurations, ρ_sens (Spearman of the proxy's
  per-layer sensitivity against the table's single-layer loss increase), TAP's fitness
  φ = α·ρ_sens + (1−α)·mean ILP accuracy; then milliseconds per configuration (proxy plus
  scoring time / #configs). 95% bootstrap intervals in brackets for bootstrapped metrics.
  Ranked by ρs@100% (`spearman`).
* Downstream table (TAP Table 2/3 shape): for each budget (average weight bits, priced by
  model size or by BOPs), the exact-ILP allocation each proxy picks, quantized and
  evaluated: top-1 accuracy, its gap to the best table configuration within the budget,
  size, BOPs, and the search cost (proxy seconds, statistics shared by all proxies are not
  counted). Ranked by accuracy within each budget.

The best value of each metric column is bold (all ties). Missing values print as "–".
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from mqbench.board.store import query
from mqbench.errors import MqbenchError
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task

DASH = "–"
RANK_BY = "spearman"  # the correlation table's order (ρs@100%)


def load_records(task: str | None = None) -> list[Record]:
    """Stored records, one per proxy, for `task` or all tasks; sorted by task and proxy."""
    sql = "SELECT record FROM runs" + (" WHERE task = ?" if task else "") + " ORDER BY task, proxy"
    return [Record.from_dict(json.loads(r[0]), "leaderboard database record")
            for r in query(sql, [task] if task else None)]


def _truth_label(task: str) -> str:
    """What the task's proxies are ranked against (LM tasks: perplexity)."""

    try:
        return "perplexity" if load_task(task).is_lm else "accuracy"
    except MqbenchError:  # a record of a task no longer registered
        return "accuracy"


def record_tasks() -> list[str]:
    """Tasks that have at least one stored record, sorted."""
    return [r[0] for r in query("SELECT DISTINCT task FROM runs ORDER BY task")]


@dataclass(frozen=True)
class Column:
    """One numeric column: where its value (and CI) comes from and how it prints."""

    key: str
    md: str  # Markdown / CSV header
    tex: str  # LaTeX header
    digits: int = 3
    higher_better: bool = True
    ci: bool = False
    ranked: bool = True  # False: descriptive (size, BOPs), never bold


@dataclass(frozen=True)
class Report:
    """A rendered-agnostic table: label columns, numeric columns, rows of dicts."""

    title: str
    labels: tuple[tuple[str, str], ...]  # (key, header)
    columns: tuple[Column, ...]
    rows: tuple[dict, ...]
    group: str | None = None  # a label key; bold is decided within each group


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def metric_columns() -> tuple[Column, ...]:
    """The correlation table's metric columns: the registry's board metrics, in order."""
    return tuple(Column(m.name, m.label, m.tex, m.digits, m.higher_is_better, ci=m.bootstrap)
                 for m in METRICS.values() if m.board)


PER_CONFIG_MS = Column("per_config_ms", "ms/config", r"ms/config", digits=4,
                       higher_better=False)


def correlation_report(task: str, records: list[Record]) -> Report:
    metrics = metric_columns()
    rows = []
    for r in records:
        m = r.metrics
        row = {"proxy": r.proxy, "version": r.proxy_version,
               "per_config_ms": _num(r.timing.per_config_ms)}
        for c in metrics:
            row[c.key] = _num(m.get(c.key))
            if c.ci:
                row[c.key + "_lo"] = _num(m.get(c.key + "_lo"))
                row[c.key + "_hi"] = _num(m.get(c.key + "_hi"))
        rows.append(row)
    rows.sort(key=lambda x: (-x[RANK_BY] if math.isfinite(x[RANK_BY]) else math.inf, x["proxy"]))
    return Report(f"{task}: correlation with ground-truth {_truth_label(task)} "
                  f"({records[0].n_configs if records else 0} configurations)",
                  (("proxy", "proxy"), ("version", "v")), (*metrics, PER_CONFIG_MS), tuple(rows))


DOWNSTREAM = (
    Column("acc", "top-1", "Top-1", digits=4),
    Column("best_table_acc", "best in table", "Best in table", digits=4, ranked=False),
    Column("gap", "gap to best", "gap", digits=4, higher_better=False),
    Column("size_kb", "size (KiB)", "Size (KiB)", digits=1, ranked=False),
    Column("mbops", "BOPs (M)", "BOPs (M)", digits=1, ranked=False),
    Column("search_s", "search (s)", "Search (s)", digits=3, higher_better=False),
)


def downstream_report(task: str, records: list[Record]) -> Report:
    rows = []
    for r in records:
        for d in r.downstream:
            rows.append({"budget": f"{d.budget_avg_bits:g} bits ({d.metric})",
                         "proxy": r.proxy, "acc": _num(d.acc),
                         "best_table_acc": _num(d.best_table_acc),
                         "gap": _num(d.gap_to_best),
                         "size_kb": _num(d.size_bits) / 8 / 1024,
                         "mbops": _num(d.bops) / 1e6,
                         "search_s": _num(r.timing.proxy_seconds),
                         "_order": (d.metric != "size", d.budget_avg_bits)})
    rows.sort(key=lambda x: (x["_order"], -x["acc"], x["proxy"]))
    for row in rows:
        del row["_order"]
    return Report(f"{task}: accuracy of each proxy's ILP bit allocation under a budget",
                  (("budget", "budget"), ("proxy", "proxy")), DOWNSTREAM, tuple(rows),
                  group="budget")


# ---------------------------------------------------------------- rendering
def best_cells(report: Report) -> set[tuple[int, str]]:
    """(row index, column key) pairs holding the best value of their column (per group)."""
    out = set()
    groups: dict = {}
    for i, row in enumerate(report.rows):
        groups.setdefault(row.get(report.group) if report.group else None, []).append(i)
    for idx in groups.values():
        for c in (c for c in report.columns if c.ranked):
            vals = [(report.rows[i][c.key], i) for i in idx if math.isfinite(report.rows[i][c.key])]
            if len(vals) < 2:
                continue
            target = max(v for v, _ in vals) if c.higher_better else min(v for v, _ in vals)
            out.update((i, c.key) for v, i in vals if round(v, c.digits) == round(target,
                                                                                   c.digits))
    return out


def _fmt(v: float, digits: int) -> str:
    return DASH if not math.isfinite(v) else f"{v:.{digits}f}"


def _cell(row: dict, c: Column, bold: bool, tex: bool) -> str:
    text = _fmt(row[c.key], c.digits)
    if bold and text != DASH:
        text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
    lo, hi = row.get(c.key + "_lo", math.nan), row.get(c.key + "_hi", math.nan)
    if c.ci and math.isfinite(lo) and math.isfinite(hi):
        ci = f"[{lo:.{c.digits}f}, {hi:.{c.digits}f}]"
        text += rf" {{\scriptsize {ci}}}" if tex else f" {ci}"
    return text


def to_markdown(report: Report) -> str:
    best = best_cells(report)
    heads = [h for _, h in report.labels] + [c.md for c in report.columns]
    lines = [f"**{report.title}**", "", "| " + " | ".join(heads) + " |",
             "|" + "---|" * len(report.labels) + "---:|" * len(report.columns)]
    for i, row in enumerate(report.rows):
        cells = [str(row[k]) for k, _ in report.labels]
        cells += [_cell(row, c, (i, c.key) in best, tex=False) for c in report.columns]
        lines.append("| " + " | ".join(cells) + " |")
    if any(c.ci for c in report.columns):
        lines += ["", "Brackets: 95% bootstrap confidence intervals. Bold: best in column."]
    else:
        lines += ["", "Bold: best in column" + (" within each budget." if report.group else ".")]
    if any(c.key == "gap" for c in report.columns):
        lines[-1] += (" Budget: average weight bits of a uniform model, priced by size or BOPs. "
                      "Gap: best table accuracy within the budget minus top-1 (negative: the "
                      "allocation beats every sampled table configuration). Size: weights, "
                      "KiB. Search: proxy seconds (shared cached statistics not counted).")
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    head = [k for k, _ in report.labels]
    for c in report.columns:
        head += [c.key] + ([c.key + "_lo", c.key + "_hi"] if c.ci else [])
    w.writerow(head)
    for row in report.rows:
        line = [row[k] for k, _ in report.labels]
        for c in report.columns:
            keys = [c.key] + ([c.key + "_lo", c.key + "_hi"] if c.ci else [])
            line += ["" if not math.isfinite(row[k]) else repr(round(row[k], 6)) for k in keys]
        w.writerow(line)
    return out.getvalue()


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def to_latex(report: Report) -> str:
    best = best_cells(report)
    spec = "l" * len(report.labels) + "r" * len(report.columns)
    lines = [r"% generated by `mqbench leaderboard regenerate`; do not edit",
             r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{_tex_escape(report.title)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule",
             " & ".join([_tex_escape(h) for _, h in report.labels]
                        + [c.tex for c in report.columns]) + r" \\", r"\midrule"]
    prev = None
    for i, row in enumerate(report.rows):
        if report.group and prev is not None and row[report.group] != prev:
            lines.append(r"\midrule")
        prev = row.get(report.group) if report.group else None
        cells = [_tex_escape(str(row[k])) for k, _ in report.labels]
        cells += [_cell(row, c, (i, c.key) in best, tex=True).replace(DASH, "--")
                  for c in report.columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
TABLES = {"correlation": correlation_report, "downstream": downstream_report}


def render(task: str, kind: str = "correlation", fmt: str = "md",
           records: list[Record] | None = None) -> str:
    """One comparison table of `task` as text."""
    records = load_records(task) if records is None else records
    return RENDERERS[fmt](TABLES[kind](task, records))
