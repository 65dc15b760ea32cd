"""Leaderboard tables as data (`Report`, `Column`) and their Markdown, CSV and LaTeX forms.

A `Report` is renderer-agnostic: label columns (strings), numeric columns (`Column`), rows
of dicts, and what to print under it. Row dicts hold, besides their values:

* `<key>_lo`, `<key>_hi`: the bracketed interval of a `ci` column;
* `role`: "proxy" or "baseline" (ranked), or a reference row that is shown but never bold
  nor ranked: "floor", "oracle", "ceiling";
* `in_sample`: True for a proxy searched or tuned on this task (marked †, never best).

Bold cells are `Report.best` when the report says which (significance groups: everything
tied with the best), else the best value of each ranked column among ranked rows (per
group). Output is byte-deterministic: fixed precision, no timestamps.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

DASH = "–"
RANKED_ROLES = ("proxy", "baseline")  # row roles that compete for "best"
REFERENCE_ROLES = ("floor", "oracle", "ceiling")  # shown, labelled, never ranked


@dataclass(frozen=True)
class Column:
    """One numeric column: where its value (and CI) comes from and how it prints."""

    key: str
    md: str  # Markdown / CSV header
    tex: str  # LaTeX header
    digits: int = 3
    higher_better: bool = True
    ci: bool = False
    ranked: bool = True  # False: descriptive (size, BOPs, deltas, ranks), never bold
    signed: bool = False  # print an explicit sign (differences: +0.029)


@dataclass(frozen=True)
class Report:
    """A renderer-agnostic table: label columns, numeric columns, rows of dicts."""

    title: str
    labels: tuple[tuple[str, str], ...]  # (key, header)
    columns: tuple[Column, ...]
    rows: tuple[dict, ...]
    group: str | None = None  # a label key; bold is decided within each group
    best: frozenset | None = None  # explicit bold (row index, column key) cells
    notes: tuple[str, ...] = ()  # lines printed under the table (legend, caveats)


def ranked_row(row: dict) -> bool:
    """A row that may be bold: a proxy or baseline, not in-sample."""
    return row.get("role", "proxy") in RANKED_ROLES and not row.get("in_sample")


def value_best(report: Report, keys=None) -> set[tuple[int, str]]:
    """(row, column) cells holding the best value of their ranked column among ranked rows
    (per group; ties at the printed precision all bold)."""
    out = set()
    groups: dict = {}
    for i, row in enumerate(report.rows):
        groups.setdefault(row.get(report.group) if report.group else None, []).append(i)
    for idx in groups.values():
        for c in (c for c in report.columns if c.ranked and (keys is None or c.key in keys)):
            vals = [(report.rows[i][c.key], i) for i in idx if ranked_row(report.rows[i])
                    and math.isfinite(report.rows[i].get(c.key, math.nan))]
            if len(vals) < 2:
                continue
            target = max(v for v, _ in vals) if c.higher_better else min(v for v, _ in vals)
            out.update((i, c.key) for v, i in vals if round(v, c.digits) == round(target,
                                                                                   c.digits))
    return out


def best_cells(report: Report) -> set[tuple[int, str]]:
    """(row index, column key) pairs shown bold: `report.best`, else the best values."""
    return set(report.best) if report.best is not None else value_best(report)


def name_cell(row: dict, key: str) -> str:
    """A label cell as text; the proxy name carries its role and in-sample mark."""
    text = str(row.get(key, ""))
    if key == "proxy":
        if row.get("in_sample"):
            text += " †"
        if row.get("role") in REFERENCE_ROLES:
            text += f" ({row['role']})"
    return text


def fmt(v: float, c: Column) -> str:
    """One number as the column prints it (a dash when missing)."""
    if not math.isfinite(v):
        return DASH
    return f"{v:+.{c.digits}f}" if c.signed else f"{v:.{c.digits}f}"


def _cell(row: dict, c: Column, bold: bool, tex: bool) -> str:
    text = fmt(row.get(c.key, math.nan), c)
    if bold and text != DASH:
        text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
    lo, hi = row.get(c.key + "_lo", math.nan), row.get(c.key + "_hi", math.nan)
    if c.ci and math.isfinite(lo) and math.isfinite(hi):
        ci = f"[{fmt(lo, c)}, {fmt(hi, c)}]"
        text += rf" {{\scriptsize {ci}}}" if tex else f" {ci}"
    return text


def _default_notes(report: Report) -> list[str]:
    lines = []
    if any(c.ci for c in report.columns):
        lines.append("Brackets: 95% bootstrap confidence intervals. Bold: best in column.")
    else:
        lines.append("Bold: best in column" + (" within each budget." if report.group else "."))
    if any(c.key == "gap" for c in report.columns):
        lines[-1] += (" Budget: average weight bits of a uniform model, priced by size or BOPs. "
                      "Gap: best table accuracy within the budget minus top-1 (negative: the "
                      "allocation beats every sampled table configuration). Size: weights, "
                      "KiB. Search: proxy seconds (shared cached statistics not counted).")
    return lines


def notes_of(report: Report) -> list[str]:
    """The lines printed under the table."""
    return list(report.notes) if report.notes else _default_notes(report)


def to_markdown(report: Report) -> str:
    best = best_cells(report)
    heads = [h for _, h in report.labels] + [c.md for c in report.columns]
    lines = [f"**{report.title}**", "", "| " + " | ".join(heads) + " |",
             "|" + "---|" * len(report.labels) + "---:|" * len(report.columns)]
    for i, row in enumerate(report.rows):
        cells = [name_cell(row, k) for k, _ in report.labels]
        cells += [_cell(row, c, (i, c.key) in best, tex=False) for c in report.columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += notes_of(report)
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    extra = [k for k in ("role", "in_sample") if any(k in row for row in report.rows)]
    head = [k for k, _ in report.labels] + extra
    for c in report.columns:
        head += [c.key] + ([c.key + "_lo", c.key + "_hi"] if c.ci else [])
    w.writerow(head)
    for row in report.rows:
        line = [row.get(k, "") for k, _ in report.labels]
        line += [row.get("role", "proxy") if k == "role" else int(bool(row.get(k)))
                 for k in extra]
        for c in report.columns:
            keys = [c.key] + ([c.key + "_lo", c.key + "_hi"] if c.ci else [])
            line += ["" if not math.isfinite(row.get(k, math.nan)) else repr(round(row[k], 6))
                     for k in keys]
        w.writerow(line)
    return out.getvalue()


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$"), ("†", r"$^\dagger$"), ("≈", r"$\approx$"),
                 ("Δ", r"$\Delta$"), ("ρ", r"$\rho$"), ("τ", r"$\tau$"), ("φ", r"$\phi$"),
                 ("−", "-"), ("→", r"$\to$"), ("α", r"$\alpha$"), ("²", r"$^2$"),
                 ("Σ", r"$\Sigma$"), ("‖", r"$\|$"), ("·", r"$\cdot$"), ("≥", r"$\geq$"),
                 ("χ", r"$\chi$"), ("–", "--")):
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
        cells = [_tex_escape(name_cell(row, k)) for k, _ in report.labels]
        cells += [_cell(row, c, (i, c.key) in best, tex=True).replace(DASH, "--")
                  for c in report.columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if report.notes:
        lines.append(r"\par\smallskip\footnotesize " + _tex_escape(" ".join(report.notes)))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
