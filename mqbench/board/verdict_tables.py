"""The verdict tables: each task's proxies against the floors, both aggregation rules, and
the ranking across tasks, from mqbench.scoring.verdicts (see mqbench.board.report for the
table kinds). Also the pieces the correlation table shares with them: row roles, the
reference rows (floors, oracles, random band, noise ceiling) and significance-group bold.
"""

from __future__ import annotations

import math

from mqbench.board.render import DASH, Column, Report, ranked_row, value_best
from mqbench.errors import MqbenchError
from mqbench.scoring import verdicts as V
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task

RANK_BY = "spearman"  # the correlation table's order (ρs@100%)
CEILING = "noise ceiling"
RANDOM_BAND = f"random ({V.RANDOM_LABEL})"


def truth_label(task: str) -> str:
    """What the task's proxies are ranked against (LM tasks: perplexity)."""
    try:
        return "perplexity" if load_task(task).is_lm else "accuracy"
    except MqbenchError:  # a record of a task no longer registered
        return "accuracy"


def verdict_of(task: str, records: list[Record]) -> V.TaskVerdict | None:
    """The task's verdicts, or None when its table is not at hand or no record matches it."""
    try:
        load_task(task)
    except MqbenchError:
        return None
    try:
        return V.task_verdict(task, records)
    except MqbenchError:
        return None


def role_of(rec: Record) -> str:
    if rec.proxy in V.FLOOR_RECORDS:
        return "floor"
    return "baseline" if rec.paper.lower().startswith("baseline") else "proxy"


def sort_rows(rows: list[dict], key: str = RANK_BY) -> list[dict]:
    return sorted(rows, key=lambda x: (-x[key] if math.isfinite(x.get(key, math.nan))
                                       else math.inf, x["proxy"]))


def tied_best(report_rows: list[dict], v: V.TaskVerdict | None, scope: str,
               pairs: dict[str, str]) -> set[tuple[int, str]]:
    """Bold cells from the verdict's significance groups: column key -> verdict metric."""
    out = set()
    if v is None:
        return out
    for col, metric in pairs.items():
        comp = v.comparisons.get((scope, metric))
        if comp is None:
            continue
        for i, row in enumerate(report_rows):
            s = comp.stats.get(row["proxy"])
            if s is not None and s.tied_best and ranked_row(row) and \
                    math.isfinite(row.get(col, math.nan)):
                out.add((i, col))
    return out


def reference_rows(v: V.TaskVerdict, columns: tuple[Column, ...]) -> list[dict]:
    """Floors, oracles, the random band and the noise ceiling as correlation-table rows."""
    rows = []
    best_floor = v.comparisons[("all", RANK_BY)].best_floor
    for e in v.entries:
        if e.role == "proxy" or e.name in V.FLOOR_RECORDS:
            continue
        row = {"proxy": e.name, "version": DASH, "role": e.role, "per_config_ms": math.nan}
        if e.name == best_floor:
            row["best_floor"] = True
        for c in columns:
            comp = v.comparisons.get(("all", c.key))
            if comp is not None:
                s = comp.stats[e.name]
                row.update({c.key: s.value, c.key + "_lo": s.lo, c.key + "_hi": s.hi})
            elif c.key == "layer_spearman" and e.name in v.sens:
                row[c.key] = v.sens[e.name].value
            else:
                row[c.key] = math.nan
        rows.append(row)
    band = {"proxy": RANDOM_BAND, "version": DASH, "role": "floor", "per_config_ms": math.nan}
    ceil = {"proxy": CEILING, "version": DASH, "role": "ceiling", "per_config_ms": math.nan}
    for c in columns:
        comp = v.comparisons.get(("all", c.key))
        mean, lo, hi = comp.random if comp else (math.nan,) * 3
        band.update({c.key: mean, c.key + "_lo": lo, c.key + "_hi": hi})
        ceil[c.key] = comp.ceiling if comp else math.nan
    return rows + [band, ceil]


def tiebreak_note(v: V.TaskVerdict) -> str:
    items = [f"{name} {METRICS[m].label} {asc:.3f} → {desc:.3f}"
             for (name, m), (asc, desc) in sorted(v.tiebreak.items())
             if v.entry(name).role != "oracle"]
    if not items:
        return ""
    return ("Ties: ρs@k breaks tied scores by configuration key, ascending; with the reverse "
            "tie-break: " + "; ".join(items) + ".")


# ---------------------------------------------------------------- the verdict table
VERDICT_COLUMNS = (
    Column("spearman", "ρs@100%", r"$\rho_s$@100\%"),
    Column("d_spearman", "Δ vs floor", r"$\Delta$ floor", ci=True, ranked=False, signed=True),
    Column("kendall", "Kendall τ", r"Kendall $\tau$"),
    Column("d_kendall", "Δτ vs floor", r"$\Delta\tau$ floor", ci=True, ranked=False, signed=True),
    Column("u_spearman", "ρs@100% usable", r"$\rho_s$ usable"),
    Column("d_u_spearman", "Δ usable", r"$\Delta$ usable", ci=True, ranked=False, signed=True),
    Column("batch_std", "σ batches", r"$\sigma$ batches", ranked=False),
    Column("layer_spearman", "ρ_sens", r"$\rho_{sens}$", ci=True),
    Column("ties", "ties", "ties", digits=2, ranked=False),
)
_VERDICT_PAIRS = {"spearman": ("all", "spearman"), "kendall": ("all", "kendall"),
                  "u_spearman": ("usable", "spearman")}


def _verdict_label(v: V.TaskVerdict, e: V.Entry) -> str:
    s = v.comparisons[("all", RANK_BY)].stats[e.name]
    if e.role == "floor":
        text = "best floor" if e.name == v.comparisons[("all", RANK_BY)].best_floor else "floor"
    elif e.role == "oracle":
        text = "oracle"
    else:
        text = s.verdict
    flags = (["in-sample"] if e.in_sample else []) + (["≈ ceiling"] if s.at_ceiling else [])
    return ", ".join([text, *flags])


def verdict_report(task: str, records: list[Record]) -> Report:
    """The headline table: each proxy against the best floor (see the module docstring)."""
    v = verdict_of(task, records)
    title = (f"{task}: proxies against the best floor (ρs@100% vs ground-truth "
             f"{truth_label(task)})")
    labels = (("proxy", "proxy"), ("verdict", "vs best floor"))
    if v is None:
        return Report(title, labels, VERDICT_COLUMNS, (), notes=(("No ground-truth table at "
                                                                  "hand for this task."),))
    by_name = {r.proxy: r for r in records}
    rows = []
    for e in v.entries:
        rec = by_name.get(e.name)
        row = {"proxy": e.name, "verdict": _verdict_label(v, e),
               "role": role_of(rec) if rec is not None else e.role,
               "ties": v.ties[e.name]}
        if e.in_sample:
            row["in_sample"] = True
        for col, (scope, metric) in _VERDICT_PAIRS.items():
            s = v.comparisons[(scope, metric)].stats[e.name]
            d = "d_" + col
            row[col] = s.value
            ref = e.role == "floor" and e.name == v.comparisons[(scope, metric)].best_floor
            row.update({d: s.delta, d + "_lo": s.delta_lo, d + "_hi": s.delta_hi} if not ref
                       else {d: math.nan})
        batch = v.comparisons[("all", RANK_BY)].stats[e.name].batch
        row["batch_std"] = batch[1] if batch else math.nan
        sens = v.sens.get(e.name)
        row.update({"layer_spearman": sens.value if sens else math.nan,
                    "layer_spearman_lo": sens.lo if sens else math.nan,
                    "layer_spearman_hi": sens.hi if sens else math.nan})
        rows.append(row)
    band = {"proxy": RANDOM_BAND, "verdict": "floor", "role": "floor", "ties": math.nan,
            "batch_std": math.nan}
    ceil = {"proxy": CEILING, "verdict": "ceiling", "role": "ceiling", "ties": v.truth_ties,
            "batch_std": math.nan}
    for col, key in _VERDICT_PAIRS.items():
        comp = v.comparisons[key]
        band[col], ceil[col] = comp.random[0], comp.ceiling
    rows = sort_rows(rows + [band, ceil])
    best = tied_best(rows, v, "all", {"spearman": "spearman", "kendall": "kendall"}) | \
        tied_best(rows, v, "usable", {"u_spearman": "spearman"})
    return Report(title, labels, VERDICT_COLUMNS, tuple(rows), best=frozenset(best),
                  notes=tuple(verdict_notes(v)))


def verdict_notes(v: V.TaskVerdict) -> list[str]:
    """The legend of a task's verdict table, with its numbers."""
    c_all, c_tau = v.comparisons[("all", "spearman")], v.comparisons[("all", "kendall")]
    c_use = v.comparisons[("usable", "spearman")]
    m = sum(e.role == "proxy" for e in v.entries)

    def fl(c: V.Comparison) -> str:
        return f"{c.best_floor} {c.stats[c.best_floor].value:.3f}"

    return [
        (f"Best floor: {fl(c_all)} (ρs@100%), {fl(c_tau)} (Kendall τ), {fl(c_use)} (usable). "
        f"Δ: minus the best floor of that column, with its 95% paired-bootstrap interval "
        f"({v.resamples} resamples of the {v.n_configs} configurations, the same for every "
        f"row). vs best floor: ρs@100% above or below the best floor with a Holm-adjusted "
        f"two-sided bootstrap p < {V.ALPHA:g} over the task's {m} proxies, else at floor. "
        f"Bold: the best ranked proxy and every proxy not significantly below it (Holm over "
        f"the other proxies). Usable: the {v.n_usable} configurations with {v.usable_rule}."),
        (f"Noise ceiling: the same metric between the table's two measurements of its "
        f"{v.noise_pairs} configurations measured twice ({c_use.ceiling_n} of them usable): "
        + ("two disjoint halves of the test set (test-sample noise; each half holds half "
           "the images, so this ceiling is conservative)" if v.noise_source == "half" else
           "two calibration seeds (it leaves out test-sample noise, so the true ceiling is "
           "lower)") + "; ≈ ceiling: the proxy's interval reaches it. ρ_sens: Spearman of "
        f"the per-unit sensitivity with the unit-alone loss increase at the lowest bits, "
        f"95% bootstrap over the units. σ batches: standard deviation of ρs@100% over the "
        f"proxy's {_batches(v)} calibration batches (every interval and p-value here includes "
        f"it: bootstrap resample b scores batch b mod n; – : one batch). ties: "
        f"share of configurations whose score equals another's (ceiling row: of the ground "
        f"truth). {RANDOM_BAND}: mean over seeds. † in-sample: searched or tuned on this "
        f"task, never best."),
    ]


def _batches(v: V.TaskVerdict) -> str:
    """How many calibration batches the task's records hold, in words."""
    n = sorted({len(e.batch_scores) for e in v.entries if e.batch_scores is not None})
    return "–" if not n else str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"


# ---------------------------------------------------------------- aggregation rules
# The configuration rule each proxy's own paper (or code) uses, as the proxy files' docstrings
# document it: HAWQ-V2's Omega and FIT are -sum s_l * ||Q(W_l) - W_l||^2 (perturbation);
# EMQ's baselines and searched proxy, OMPQ's ILP objective and bops/bparams are sum s_l * b_l
# (bits). HAWQ (V1) only orders layers, SNIP/SynFlow are pruning scores, QE designs networks,
# TAP publishes no code: no rule of their own.
PAPER_RULES = {"hawqv2": "perturbation", "fisher": "perturbation", "ompq": "bits",
               "emq": "bits", "emq_aligned": "bits", "emq_hawqv1": "bits",
               "emq_hawqv2": "bits", "emq_ompq": "bits", "bsnip": "bits", "bsynflow": "bits",
               "bops": "bits", "bparams": "bits"}

RULE_COLUMNS = (
    Column("own", "ρs@100% (record)", r"$\rho_s$ record"),
    Column("paper", "ρs paper's rule", r"$\rho_s$ paper"),
    Column("perturbation", "ρs perturbation-weighted", r"$\rho_s$ pert."),
    Column("rank_perturbation", "rank", "rank", digits=0, higher_better=False, ranked=False),
    Column("bits", "ρs bit-weighted", r"$\rho_s$ bits"),
    Column("rank_bits", "rank", "rank", digits=0, higher_better=False, ranked=False),
    Column("move", "rank gain, bits → perturbation", "rank gain", digits=0, ranked=False,
           signed=True),
    Column("layer_spearman", "ρ_sens of s", r"$\rho_{sens}(s)$"),
    Column("layer_spearman_term", "ρ_sens of the score's term", r"$\rho_{sens}$(term)"),
)


def rules_report(task: str, records: list[Record]) -> Report:
    """Every proxy with a per-unit sensitivity under both aggregation rules."""
    v = verdict_of(task, records)
    title = f"{task}: ρs@100% under each aggregation rule (headline: perturbation-weighted)"
    labels = (("proxy", "proxy"), ("kind", "kind"), ("paper_rule", "paper's rule"))
    if v is None:
        return Report(title, labels, RULE_COLUMNS, (), notes=(("No ground-truth table at hand "
                                                               "for this task."),))
    by_name = {r.proxy: r for r in records}
    # ρ_sens at the other measured low bit-widths (protocol-2 tables: every one below the top)
    extra = sorted({b for x in v.sens.values() for b, _, _ in x.by_bits[1:]})
    columns = RULE_COLUMNS + tuple(
        c for b in extra for c in (
            Column(f"sens_{b}", f"ρ_sens of s @{b} bits", rf"$\rho_{{sens}}(s)$@{b}"),
            Column(f"sens_term_{b}", f"ρ_sens of the term @{b} bits",
                   rf"$\rho_{{sens}}$(term)@{b}", ci=True)))
    rows = []
    for e in v.entries:
        if e.name not in v.rules:
            continue
        rec = by_name.get(e.name)
        sens = v.sens.get(e.name)
        paper = PAPER_RULES.get(e.name.partition("@")[0]) if e.role == "proxy" else None
        row = {"proxy": e.name, "kind": e.kind, "paper_rule": paper or "–",
               "role": role_of(rec) if rec is not None else e.role,
               **v.rules[e.name],
               "paper": v.rules[e.name][paper] if paper else math.nan,
               "layer_spearman": sens.value if sens else math.nan,
               "layer_spearman_term": sens.damage if sens else math.nan}
        at = {b: (x, t, *ci) for (b, x, t), ci in
              zip(sens.by_bits if sens else (), sens.by_bits_ci if sens else ())}
        for b in extra:
            (row[f"sens_{b}"], row[f"sens_term_{b}"], row[f"sens_term_{b}_lo"],
             row[f"sens_term_{b}_hi"]) = at.get(b, (math.nan,) * 4)
        if e.in_sample:
            row["in_sample"] = True
        rows.append(row)
    for rule in ("perturbation", "bits"):
        ranked = [r for r in rows if ranked_row(r)]
        order = sort_rows(ranked, rule)
        for i, r in enumerate(order):
            r[f"rank_{rule}"] = float(i + 1)
    for r in rows:
        r["move"] = r.get("rank_bits", math.nan) - r.get("rank_perturbation", math.nan)
        r.setdefault("rank_perturbation", math.nan)
        r.setdefault("rank_bits", math.nan)
    rows = sort_rows(rows, "perturbation")
    notes = (
        ("Perturbation-weighted (the headline, the harness's rule): a configuration scores "
        "−Σ_l s_l·‖Q_b(W_l) − W_l‖²; bit-weighted (EMQ's rule): Σ_l s_l·b_l. Layer proxies' "
        "records are perturbation-weighted; layer_bit proxies' records use their own damage "
        "matrix (for the EMQ family and bops/bparams: bit-weighted), their s is the damage "
        "at the lowest bits minus at the highest. Ranks among ranked proxies (1 = best). "
        "Rank gain: how many places a proxy rises when moved from the bit-weighted to the "
        "perturbation-weighted rule. ρ_sens of the score's term: the same Spearman for "
        "s_l·(‖ΔW_l‖² at the lowest bits − at the highest), what the configuration score "
        "actually adds up" + (f"; @b bits: the same against each unit alone at b bits "
        f"(layer_bit proxies: only their lowest-bit s is recorded)" if extra else "") +
        ". Paper's rule: the configuration rule of the proxy's own paper or code, where it "
        "has one (HAWQ-V2 and FIT: perturbation-weighted, their Ω; EMQ's proxies and "
        "baselines, OMPQ's ILP objective, bops, bparams: bit-weighted); – : the paper only "
        "orders layers (HAWQ), scores pruning (SNIP, SynFlow), designs networks (QE) or "
        "publishes no rule (TAP)."),)
    return Report(title, labels, columns, tuple(rows),
                  best=frozenset(value_best(Report(title, labels, columns, tuple(rows)))),
                  notes=notes)


# ---------------------------------------------------------------- across tasks
def cross_task_report(records: dict[str, list[Record]]) -> Report | None:
    """Mean rank across the tasks that have verdicts (None when fewer than two do)."""
    verdicts = [v for t in sorted(records) if (v := verdict_of(t, records[t])) is not None]
    if len(verdicts) < 2:
        return None
    ct = V.cross_task(verdicts)
    columns = (Column("mean_rank", "mean rank", "mean rank", digits=2, higher_better=False,
                      ci=True),
               *(Column(f"rank_{t}", t, _tex(t), digits=1, higher_better=False, ranked=False)
                 for t in ct.tasks))
    rows = []
    for name in ct.names:
        mean, lo, hi = ct.mean_rank[name]
        k, n = ct.beats.get(name, (0, 0))
        row = {"proxy": name, "beats": f"{k} of {n}" if name in ct.beats else DASH,
               "role": "floor" if name == V.BEST_FLOOR else "proxy",
               "mean_rank": mean, "mean_rank_lo": lo, "mean_rank_hi": hi}
        row.update({f"rank_{t}": x for t, x in zip(ct.tasks, ct.ranks[name])})
        rows.append(row)
    for name, why in sorted(ct.left_out.items()):
        k, n = ct.beats.get(name, (0, 0))
        rows.append({"proxy": name, "beats": f"{k} of {n}", "role": "proxy",
                     "mean_rank": math.nan, "note": why,
                     **{f"rank_{t}": math.nan for t in ct.tasks}})
    rows.sort(key=lambda r: (not math.isfinite(r["mean_rank"]), r["mean_rank"]
                             if math.isfinite(r["mean_rank"]) else 0, r["proxy"]))
    labels = (("proxy", "proxy"), ("beats", "above best floor"))
    left = "; ".join(f"{n}: {w}" for n, w in sorted(ct.left_out.items()))
    notes = (
        (f"Rank of ρs@100% among the {len(ct.names) - 1} proxies ranked on every task plus the "
        f"best floor (1 = best), averaged over {len(ct.tasks)} tasks, each task weighing the "
        f"same; brackets: 2.5–97.5% over the tasks' paired bootstrap resamples (resample b "
        f"of every task together). Above best floor: tasks on which the proxy's ρs@100% is "
        f"significantly above the best floor (Holm), of the tasks it is ranked on. Kendall's "
        f"W between the tasks' rankings: {ct.kendall_w:.2f} (χ² p = {ct.kendall_w_p:.2g}; "
        f"1 = every task ranks the proxies alike)."),
        (f"Caveats: ranks hide the size of differences (on some tasks every proxy is within a "
        f"few hundredths of the floor); {_population(ct.tasks)} are not a population of "
        f"models; without a mean rank: {left or 'none'}."))
    return Report(f"Across tasks: mean rank by ρs@100% ({', '.join(ct.tasks)})", labels,
                  columns, tuple(rows), notes=notes)


def _population(tasks: tuple[str, ...]) -> str:
    """`3 small models on one quantizer`, or `2 small models under 2 quantizers (a task@method
    column is the same model again)`."""
    models = {t.partition("@")[0] for t in tasks}
    methods = {t.partition("@")[2] or "rtn" for t in tasks}
    if len(methods) == 1:
        return f"{len(models)} small models on one quantizer"
    return (f"{len(models)} small models under {len(methods)} quantizers (a task@method column "
            f"is the same model again, so those columns are not independent)")


def _tex(text: str) -> str:
    return text.replace("_", r"\_")
