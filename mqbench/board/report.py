"""Comparison tables from the leaderboard, built from the stored records and the verdicts.

Per task (`TABLES`, each `fn(task, records) -> Report`):

* `correlation` (EMQ Table 2 shape): one column per board metric of the registry
  (mqbench.scoring.metrics.METRICS) in registration order, each record's own values and 95%
  bootstrap intervals, then ms/config (descriptive, never ranked: it is measured on the
  contributor's machine). Reference rows beside the proxies: the floors, the random floor
  over many seeds (brackets: its 2.5-97.5% band), the oracles and the noise ceiling
  (mqbench.scoring.verdicts). Bold: the best ranked proxy and every proxy not significantly
  below it (paired bootstrap, Holm) for bootstrapped metrics; the best value otherwise.
  Ranked by ρs@100% (`spearman`).
* `verdict`: the headline. ρs@100%, Kendall τ and ρs@100% on the usable configurations,
  each with Δ over the best floor and its paired-bootstrap interval; whether the proxy is
  significantly above the best floor; ρ_sens with a bootstrap-over-units interval; the
  share of tied scores.
* `rules`: every proxy with a per-unit sensitivity under both aggregation rules
  (perturbation-weighted, the headline; EMQ's bit-weighted) and its rank under each.
* `downstream` (TAP Table 2/3 shape): for each budget, the exact-ILP allocation each proxy
  picks, quantized and evaluated. Ranked by accuracy within each budget.

`cross_task_report` ranks proxies across tasks. Without a ground-truth table at hand (a task
no longer registered), the correlation table shows the records alone and the verdict tables
are empty. The verdict, rules and cross-task tables are built in mqbench.board.verdict_tables,
rendering (Markdown, CSV, LaTeX) is mqbench.board.render; both are re-exported here.
"""

from __future__ import annotations

import json

import numpy as np

from mqbench.board import verdict_tables as VT
from mqbench.board.render import (
    DASH,
    RENDERERS,
    Column,
    Report,
    best_cells,
    to_csv,
    to_latex,
    to_markdown,
    value_best,
)
from mqbench.board.store import query
from mqbench.board.verdict_tables import (
    CEILING,
    RANDOM_BAND,
    RANK_BY,
    cross_task_report,
    rules_report,
    verdict_of,
    verdict_report,
)
from mqbench.scoring import verdicts as V
from mqbench.scoring.floors import in_sample
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record

# Re-exported: readers take tables, structures and renderers from this one module.
__all__ = ["CEILING", "DASH", "RANDOM_BAND", "RANK_BY", "RENDERERS", "TABLES", "Column",
           "Report", "best_cells", "correlation_report", "cross_task_report",
           "downstream_report", "load_records", "record_tasks", "render", "rules_report",
           "to_csv", "to_latex", "to_markdown", "verdict_of", "verdict_report"]


def load_records(task: str | None = None) -> list[Record]:
    """Stored records, one per proxy, for `task` or all tasks; sorted by task and proxy."""
    sql = "SELECT record FROM runs" + (" WHERE task = ?" if task else "") + " ORDER BY task, proxy"
    return [Record.from_dict(json.loads(r[0]), "leaderboard database record")
            for r in query(sql, [task] if task else None)]


def record_tasks() -> list[str]:
    """Tasks that have at least one stored record, sorted."""
    return [r[0] for r in query("SELECT DISTINCT task FROM runs ORDER BY task")]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def metric_columns() -> tuple[Column, ...]:
    """The correlation table's metric columns: the registry's board metrics, in order."""
    return tuple(Column(m.name, m.label, m.tex, m.digits, m.higher_is_better, ci=m.bootstrap)
                 for m in METRICS.values() if m.board)


PER_CONFIG_MS = Column("per_config_ms", "ms/config", r"ms/config", digits=4,
                       higher_better=False, ranked=False)


def correlation_report(task: str, records: list[Record]) -> Report:
    metrics = metric_columns()
    v = VT.verdict_of(task, records)
    rows = []
    for r in records:
        if not r.scores:
            continue  # a search record (AutoMixQ): allocations only
        m = r.metrics
        row = {"proxy": r.proxy, "version": r.proxy_version, "role": VT.role_of(r),
               "per_config_ms": _num(r.timing.per_config_ms)}
        if in_sample(r.proxy, r.task):
            row["in_sample"] = True
        for c in metrics:
            row[c.key] = _num(m.get(c.key))
            if c.ci:
                row[c.key + "_lo"] = _num(m.get(c.key + "_lo"))
                row[c.key + "_hi"] = _num(m.get(c.key + "_hi"))
        rows.append(row)
    if v is not None:
        rows += VT.reference_rows(v, metrics)
    rows = VT.sort_rows(rows)
    n = records[0].n_configs if records else 0
    title = f"{task}: correlation with ground-truth {VT.truth_label(task)} ({n} configurations)"
    if v is None:
        rep = Report(title, (("proxy", "proxy"), ("version", "v")), (*metrics, PER_CONFIG_MS),
                     tuple(rows))
        return Report(rep.title, rep.labels, rep.columns, rep.rows, best=frozenset(
            value_best(rep)))
    boot = {c.key: c.key for c in metrics if ("all", c.key) in v.comparisons}
    draft = Report(title, (("proxy", "proxy"), ("version", "v")), (*metrics, PER_CONFIG_MS),
                   tuple(rows))
    best = VT.tied_best(rows, v, "all", boot) | value_best(
        draft, [c.key for c in metrics if c.key not in boot])
    notes = [(f"Brackets: the record's 95% bootstrap interval ({records[0].bootstrap} "
             f"resamples); reference rows: the verdicts' paired bootstrap; {RANDOM_BAND}: "
             f"mean and 2.5–97.5% range over seeds. Bold: the best ranked proxy and every "
             f"proxy not significantly below it (paired bootstrap, Holm, α = {V.ALPHA:g}) for "
             f"bootstrapped metrics, the best value otherwise. † in-sample (never best). "
             f"ms/config: measured on the contributor's machine, descriptive only."),
             VT.tiebreak_note(v)]
    return Report(title, draft.labels, draft.columns, draft.rows, best=frozenset(best),
                  notes=tuple(x for x in notes if x))


# ---------------------------------------------------------------- downstream
DOWNSTREAM = (
    Column("acc", "top-1", "Top-1", digits=4),
    Column("best_table_acc", "best in table", "Best in table", digits=4, ranked=False),
    Column("gap", "gap to best", "gap", digits=4, higher_better=False),
    Column("size_kb", "size (KiB)", "Size (KiB)", digits=1, ranked=False),
    Column("mbops", "BOPs (M)", "BOPs (M)", digits=1, ranked=False),
    Column("search_s", "search (s)", "Search (s)", digits=3, higher_better=False),
)


# LM tasks: perplexity exp(cross-entropy), as their correlation table (lower is better)
DOWNSTREAM_LM = (
    Column("ppl", "perplexity", "PPL", digits=3, higher_better=False),
    Column("best_table_ppl", "best in table", "Best in table", digits=3, ranked=False),
    Column("gap", "gap to best", "gap", digits=3, higher_better=False),
    *DOWNSTREAM[3:],
)


def _ppl(loss) -> float:
    return float("nan") if loss is None else float(np.exp(loss))


def downstream_report(task: str, records: list[Record]) -> Report:
    lm = VT.truth_label(task) == "perplexity"
    rows = []
    for r in records:
        for d in r.downstream:
            row = {"budget": f"{d.budget_avg_bits:g} bits ({d.metric})", "proxy": r.proxy,
                   "size_kb": _num(d.size_bits) / 8 / 1024, "mbops": _num(d.bops) / 1e6,
                   "search_s": _num(r.timing.proxy_seconds),
                   "_order": (d.metric != "size", d.budget_avg_bits)}
            if lm:  # gap: how much higher its perplexity is than the best table entry's
                row.update(ppl=_ppl(d.loss), best_table_ppl=_ppl(d.best_table_loss),
                           gap=_ppl(d.loss) - _ppl(d.best_table_loss))
            else:
                row.update(acc=_num(d.acc), best_table_acc=_num(d.best_table_acc),
                           gap=_num(d.gap_to_best))
            rows.append(row)
    rows.sort(key=lambda x: (x["_order"], x["ppl"] if lm else -x["acc"], x["proxy"]))
    for row in rows:
        del row["_order"]
    what = "perplexity" if lm else "accuracy"
    return Report(f"{task}: {what} of each proxy's ILP bit allocation under a budget",
                  (("budget", "budget"), ("proxy", "proxy")), DOWNSTREAM_LM if lm else DOWNSTREAM,
                  tuple(rows), group="budget")


TABLES = {"correlation": correlation_report, "verdict": verdict_report, "rules": rules_report,
          "downstream": downstream_report}


def render(task: str, kind: str = "correlation", fmt: str = "md",
           records: list[Record] | None = None) -> str:
    """One comparison table of `task` as text."""
    records = load_records(task) if records is None else records
    return RENDERERS[fmt](TABLES[kind](task, records))
