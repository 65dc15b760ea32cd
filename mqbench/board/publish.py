"""`mqbench leaderboard regenerate`: every published artifact from the records, in one go.

From the committed record files (via the DuckDB index, rebuilt first) it writes:

* `leaderboard/tables/<task>_<kind>.{md,csv,tex}` for every kind of mqbench.board.report's
  TABLES (correlation, verdict, rules, downstream) and `leaderboard/tables/cross_task.*`;
* `leaderboard/site/index.html` and the plots `leaderboard/site/<task>_<plot>.png`;
* README.md's section between the leaderboard markers: what the leaderboard concludes (a
  paragraph written from the verdicts, whatever they say), how to read it, the cross-task
  ranking, and per task which proxies are significantly above the best floor, with the
  noise ceiling beside them, and the verdict table;
* the metric list of `leaderboard/SCHEMA.md` (between the metrics markers), from the metrics
  registry (mqbench.scoring.metrics).

Everything is a pure function of the records and the ground-truth tables, so running it
twice gives byte-identical files, and a test checks the committed copies are current: the
README's leaderboard section is never edited by hand.
"""

from __future__ import annotations

import io
import math
import os
import statistics
from pathlib import Path

from mqbench.board import page as H
from mqbench.board import plots as P
from mqbench.board import report as R
from mqbench.board.store import rebuild_db
from mqbench.errors import MqbenchError
from mqbench.paths import leaderboard_dir, readme_path
from mqbench.scoring import floors as F
from mqbench.scoring import verdicts as V
from mqbench.scoring.metrics import metrics_markdown
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task
from mqbench.truth.store import installed, load_table

START = "<!-- leaderboard:start -->"
END = "<!-- leaderboard:end -->"
METRICS_START = "<!-- metrics:start -->"
METRICS_END = "<!-- metrics:end -->"
COMMAND = "mqbench leaderboard regenerate"
README = readme_path()  # the default README whose section regenerate rewrites


def _table(task_name: str):
    """The task's verified ground-truth table if it is at hand (cached or shipped), else None:
    regenerating the leaderboard never builds a table."""
    try:
        task = load_task(task_name)
    except MqbenchError:
        return None
    return load_table(task) if installed(task) else None


def _write(path: Path, text: str | None = None, data: bytes | None = None) -> Path:
    """Write atomically, and only if the bytes changed (keeps mtimes and diffs quiet)."""
    new = text.encode() if text is not None else data
    if path.exists() and path.read_bytes() == new:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(new)
    os.replace(tmp, path)
    return path


CROSS = "cross_task"  # leaderboard/tables/cross_task.* and the page's section id


def _names(names: list[str], limit: int = 40) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                       else "") if names else "none"


def _delta(s: V.Stat) -> str:
    return f"{s.delta:+.3f} [{s.delta_lo:+.3f}, {s.delta_hi:+.3f}]"


def task_summary(v: V.TaskVerdict) -> str:
    """Per task, in words: which proxies are above the best floor, which are not, the noise
    ceiling beside them, the usable configurations and the oracles."""
    c = v.comparisons[("all", V.HEADLINE)]
    u = v.comparisons[("usable", V.HEADLINE)]
    ranked = [e for e in v.entries if e.ranked]
    by = {k: sorted((e.name for e in ranked if c.stats[e.name].verdict == k),
                    key=lambda n: (-c.stats[n].value, n)) for k in ("above", "at floor", "below")}
    floor = f"{c.best_floor}, ρs@100% {c.stats[c.best_floor].value:.3f}"
    parts = [f"**Above the best floor** ({floor}): "
             + (", ".join(f"{n} ({_delta(c.stats[n])})" for n in by["above"]) or "none") + ".",
             f"**Not distinguishable from it:** {_names(by['at floor'])}.",
             f"**Below it:** {_names(by['below'])}."]
    inside = [e for e in v.entries if e.in_sample]
    if inside:
        parts.append("In-sample, not ranked: " + ", ".join(
            f"{e.name} ({_delta(c.stats[e.name])})" for e in inside) + ".")
    near = [e.name for e in ranked if c.stats[e.name].at_ceiling]
    parts.append(f"Noise ceiling {c.ceiling:.3f} "
                 f"({F.NOISE_WORDS[v.noise_source].format(n=c.ceiling_n)}); "
                 + (f"within noise of it: {_names(near)}." if near
                    else "no proxy's interval reaches it."))
    above_u = [n for n in v.above("usable", V.HEADLINE)]
    parts.append(f"On the {u.n} usable configurations ({v.usable_rule}) the best floor is "
                 f"{u.best_floor} ({u.stats[u.best_floor].value:.3f}); above it: "
                 f"{_names(above_u)}.")
    oracles = [f"{n.removeprefix('oracle_')} {c.stats[n].value:.3f}" for n in
               ("oracle_layer", "oracle_curvature", "oracle_additive") if n in c.stats]
    if oracles:
        parts.append("Oracles (the table's single-layer measurements as the proxy): "
                     + ", ".join(oracles) + ".")
    return " ".join(parts)


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, ..."""
    tail = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{tail}"


def _mean(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def conclusion(verdicts: list[V.TaskVerdict], cross: V.CrossTask | None) -> str:
    """What the leaderboard concludes, written from the verdicts (whatever they say)."""
    n = len(verdicts)
    floors = ", ".join(f"{c.stats[c.best_floor].value:.3f} ({v.task}, {c.best_floor})"
                       for v in verdicts for c in [v.comparisons[("all", V.HEADLINE)]])
    out = [(f"A configuration score built from no per-layer sensitivity at all is a strong "
           f"baseline here: the best structural floor reaches ρs@100% {floors}.")]
    if cross is not None:
        every = sorted((p for p, (k, m) in cross.beats.items() if k == m == n),
                       key=lambda p: cross.mean_rank.get(p, (99,))[0])
        some = sorted((p for p, (k, m) in cross.beats.items() if 0 < k and p not in every),
                      key=lambda p: (-cross.beats[p][0], p))
        never = [p for p, (k, m) in cross.beats.items() if k == 0]
        out.append(f"Significantly above it on all {n} tasks (paired bootstrap, Holm): "
                   f"{_names(every)}; on some tasks: "
                   + (", ".join(f"{p} ({cross.beats[p][0]} of {cross.beats[p][1]})"
                                for p in some) or "none")
                   + f"; never: {len(never)} of {len(cross.beats)} proxies.")
    leads = []
    for v in verdicts:
        c = v.comparisons[("all", V.HEADLINE)]
        if c.best is not None:
            leads.append(f"{c.stats[c.best].delta:+.3f} ({v.task}, {c.best})")
    out.append("The best ranked proxy's lead over the best floor: " + ", ".join(leads) + ".")
    gains, above_bit, tops = [], set(), []
    for v in verdicts:
        c = v.comparisons[("all", V.HEADLINE)]
        bit = [e for e in v.entries if e.kind == "layer_bit" and e.name in v.rules]
        above_bit |= {e.name for e in bit if c.stats[e.name].verdict == "above"}
        moved = {e.name: v.rules[e.name]["perturbation"] for e in bit}
        gains.append(_mean([moved[n] - v.rules[n]["own"] for n in moved]))
        if moved:
            top = max(moved, key=lambda n: (moved[n], n))
            tops.append(f"{top} {moved[top]:.3f} on {v.task}")
    if not all(math.isnan(g) for g in gains):
        own = (f"are above the best floor under their own rule for {_names(sorted(above_bit))}"
               if above_bit else "are never above the best floor under their own rule")
        rise = all(g > 0 for g in gains if not math.isnan(g))
        out.append(f"Layer_bit proxies (EMQ's searched proxy and bit-weighted baselines, "
                   f"OMPQ, bops, bparams) {own}. Scored "
                   f"with the same sensitivity under the perturbation-weighted rule their "
                   f"ρs@100% changes by " + ", ".join(f"{g:+.3f}" for g in gains)
                   + " on average per task (best: " + "; ".join(tops) + ")"
                   + (", so comparing the two kinds mostly compares aggregation rules "
                      "(each task's rules table)." if rise else " (each task's rules table)."))
    exact = []
    for v in verdicts:
        c = v.comparisons[("all", V.HEADLINE)]
        if "oracle_layer" in c.stats:
            o = c.stats["oracle_layer"]
            exact.append(f"{o.value:.3f} on {v.task} ({o.delta:+.3f} vs the best floor)")
    if exact:
        out.append("A proxy that orders the layers exactly as measured (ρ_sens = 1: the "
                   "table's unit-alone loss increase as s_l, `oracle_layer`) reaches "
                   + "; ".join(exact) + " under the headline rule, so ρ_sens and ρs@100% "
                   "reward different things.")
    usable = []
    for v in verdicts:
        u = v.comparisons[("usable", V.HEADLINE)]
        usable.append(f"{len(v.above('usable', V.HEADLINE))} of "
                      f"{sum(e.ranked for e in v.entries)} on {v.task} (best floor "
                      f"{u.best_floor} {u.stats[u.best_floor].value:.3f})")
    out.append("On the usable configurations only, proxies significantly above the best "
               "floor: " + "; ".join(usable) + ".")
    room = []
    for v in verdicts:
        c = v.comparisons[("all", V.HEADLINE)]
        if "oracle_additive" in c.stats and c.best is not None:
            o = c.stats["oracle_additive"].value
            room.append(f"{o:.3f} on {v.task} (best proxy {o - c.stats[c.best].value:.3f} "
                        f"below it; {1 - o:.3f} left to interactions)")
    if room:
        out.append("The additive oracle (the table's own single-layer measurements summed) "
                   "reaches " + "; ".join(room) + ".")
    draws = [f"{_ordinal(round(100 * v.random_percentile))} percentile on {v.task}"
             for v in verdicts if v.random_percentile is not None]
    if draws:
        out.append("The `random` record is a single draw of the random floor: at the "
                   + ", ".join(draws) + f" of {verdicts[0].random_draws} draws.")
    for v in verdicts:
        c = v.comparisons[("all", V.HEADLINE)]
        for e in v.entries:
            if not e.in_sample:
                continue
            elsewhere = [f"{w.task}: {w.comparisons[('all', V.HEADLINE)].stats[e.name].verdict}"
                         for w in verdicts if w is not v and any(
                             x.name == e.name and x.ranked for x in w.entries)]
            value = c.stats[e.name].value
            ranked = [x.name for x in v.entries if x.ranked]
            place = 1 + sum(c.stats[n].value > value for n in ranked)
            base = v.task.partition("@")[0]
            where = ("the table it was searched on" if base == v.task else
                     f"in-sample: the model and images it was searched on ({base})")
            out.append(f"{e.name} scores {value:.3f} on {v.task}, {where}; it would rank "
                       f"{_ordinal(place)} of {len(ranked) + 1} there; out of sample it is "
                       + (", ".join(elsewhere) or "not scored") + ".")
    if cross is not None and not math.isnan(cross.kendall_w):
        word = ("largely agree" if cross.kendall_w >= 0.7 else
                "partly agree" if cross.kendall_w >= 0.4 else "disagree")
        out.append(f"The tasks' rankings {word} (Kendall's W = {cross.kendall_w:.2f}).")
    out.extend(_method_sentences(verdicts))
    out.append(_batch_sentence(verdicts))
    seed_only = [v.task for v in verdicts if v.noise_source == "seed"]
    if seed_only:
        out.append(f"Not yet measured: test-sample noise in the ceilings of "
                   f"{', '.join(seed_only)} (protocol-1 tables), so margins of a few "
                   f"thousandths there should not be read as a ranking.")
    return " ".join(out)


def _method_sentences(verdicts: list[V.TaskVerdict]) -> list[str]:
    """Per task with tables under several quantization methods: does the proxy order
    survive the change, and how many configurations collapse under each method."""
    by_base: dict[str, list[V.TaskVerdict]] = {}
    for v in verdicts:
        by_base.setdefault(load_task(v.task).name, []).append(v)
    out = []
    for base, vs in by_base.items():
        ref = next((v for v in vs if V.method_of(v.task) == "rtn"), None)
        for v in vs:
            if ref is None or v is ref:
                continue
            agree = V.method_agreement(ref, v)
            if agree is None:
                continue
            a, b = agree.methods
            shares = [_collapsed(x.task) for x in (ref, v)]
            collapse = ("" if any(math.isnan(s) for s in shares) else
                        f"; configurations more than 5 points below full precision: "
                        f"{a} {100 * shares[0]:.0f}%, {b} {100 * shares[1]:.0f}%")
            out.append(
                f"{base} under {b} instead of {a} (the same configurations): the "
                f"{len(agree.proxies)} proxies' ρs@100% order agrees with Kendall τ = "
                f"{agree.tau:.2f} [{agree.lo:.2f}, {agree.hi:.2f}]; above the best floor under "
                f"both: {agree.floor_both} (under either: {agree.floor_either}){collapse}.")
    return out


def _collapsed(task: str) -> float:
    """A vision table's share of configurations more than 5 points below full precision."""
    table = _table(task)
    return float(table.meta.get("share_below_fp_minus_5pts", "nan")) if table else math.nan


def _batch_sentence(verdicts: list[V.TaskVerdict]) -> str:
    """What the proxies' calibration-batch variance amounts to (ρs@100%)."""
    spread, missing = [], []
    for v in verdicts:
        stats = v.comparisons[("all", V.HEADLINE)].stats
        proxies = [e.name for e in v.entries if e.role == "proxy"]
        one = []
        for name in proxies:
            b = stats[name].batch
            if b is None or not math.isfinite(b[1]):
                one.append(name)
            else:
                spread.append((b[1], b[2], name, v.task))
        if one:
            missing.append(f"all {len(one)} proxies on {v.task}" if len(one) == len(proxies)
                           else f"{', '.join(one)} on {v.task}")
    if not spread:
        return ("Not yet measured: each proxy's variance over calibration batches (records "
                "hold one batch), so margins of a few thousandths should not be read as a "
                "ranking.")
    top = max(spread)
    n = sorted({s[1] for s in spread})
    text = (f"Over {n[0] if len(n) == 1 else f'{n[0]}–{n[-1]}'} calibration batches a proxy's "
            f"ρs@100% moves by a standard deviation of {statistics.median(s[0] for s in spread):.3f} "
            f"(median over proxies and tasks; largest {top[0]:.3f}: {top[2]} on {top[3]}); "
            f"every interval and verdict above includes it.")
    if missing:
        text += (f" One batch only (recorded before batches; not yet re-run): "
                 f"{'; '.join(missing)}.")
    return text


def _protocol(verdicts: list[V.TaskVerdict]) -> str:
    b = sorted({v.resamples for v in verdicts})
    return (
        "Headline: ρs@100% (Spearman over every table configuration) of each proxy's "
        "configuration scores; layer proxies are scored with the harness's "
        "perturbation-weighted rule −Σ_l s_l·‖Q_b(W_l) − W_l‖², layer_bit proxies with their "
        "own damage matrix (both rules for every proxy in each task's rules table). Floors "
        "(labelled, never ranked): `uniform` (s_l = 1: the rule alone), `count_low_bits` "
        "(units at the lowest bit-width), `size` (Σ params·bits) and `random` "
        f"({V.RANDOM_LABEL}: mean and 2.5–97.5% band; the `random` record is one draw); the "
        "best floor is the one with the highest value of the metric on that task. Δ and "
        "significance: a paired bootstrap (every proxy and floor scored on the same "
        f"{'/'.join(map(str, b))} resamples of the configurations), two-sided p-values "
        f"Holm-adjusted over the task's proxies, α = {V.ALPHA:g}. Proxy variance: each "
        "proxy is run on several calibration batches (`mqbench eval --batches`, default 5: "
        "the task seed's and the next seeds'); the value shown is the task seed's batch, "
        "σ batches its standard deviation, and bootstrap resample b scores batch b mod n, so "
        "intervals and verdicts include that variance. Bold: the best ranked "
        "proxy and every proxy not significantly below it. Usable: configurations within 5 "
        "accuracy points of full precision (language model: perplexity within 5%). Noise "
        "ceiling: the metric between the table's two measurements of the same "
        "configurations: two disjoint halves of the test set (ground truth v2: test-sample "
        "noise), else two calibration seeds on a re-measured subset. † in-sample: searched or tuned on that task (proxies/IN_SAMPLE.toml), "
        "never counted as best.")


def task_verdicts(tasks: list[str], records: dict[str, list[Record]]) -> dict:
    """{task: TaskVerdict} for the tasks whose table is at hand."""
    return {t: v for t in tasks if (v := R.verdict_of(t, records[t])) is not None}


def conclusions(verdicts: dict) -> tuple[str, dict[str, str]]:
    """What the leaderboard concludes, and one paragraph per task: README and page alike."""
    if not verdicts:
        return "", {}
    ct = V.cross_task(list(verdicts.values())) if len(verdicts) >= 2 else None
    return (conclusion(list(verdicts.values()), ct),
            {t: task_summary(v) for t, v in verdicts.items()})


def readme_section(tasks: list[str], records: dict[str, list[Record]],
                   verdicts: dict | None = None) -> str:
    verdicts = task_verdicts(tasks, records) if verdicts is None else verdicts
    cross = R.cross_task_report(records)
    summary, notes = conclusions(verdicts)
    lines = [START, f"<!-- generated by `{COMMAND}` from leaderboard/records/; do not edit -->",
             "", ("Generated from the committed records by `mqbench leaderboard regenerate`. "
                  "Per task, the full correlation table (every metric), the aggregation rules "
                  "and the downstream tables (ILP allocations under size and BOPs budgets), "
                  "with CSV and LaTeX versions, are in [`leaderboard/tables/`]"
                  "(leaderboard/tables/); plots and the page in "
                  "[`leaderboard/site/`](leaderboard/site/index.html)."), ""]
    if verdicts:
        lines += [f"**What the leaderboard concludes.** {summary}",
                  "", f"**How to read it.** {_protocol(list(verdicts.values()))}", ""]
    if cross is not None:
        lines += ["### Across tasks", "", R.to_markdown(cross).rstrip(), ""]
    for task in tasks:
        lines += [f"### {task}", ""]
        if task in verdicts:
            lines += [notes[task], "",
                      R.render(task, "verdict", "md", records[task]).rstrip(), "",
                      (f"More: [every metric](leaderboard/tables/{task}_correlation.md), "
                      f"[aggregation rules](leaderboard/tables/{task}_rules.md), "
                      f"[downstream](leaderboard/tables/{task}_downstream.md)."), ""]
        else:
            lines += [R.render(task, "correlation", "md", records[task]).rstrip(), ""]
        lines += [f"![{task} scatter](leaderboard/site/{task}_scatter.png)", ""]
    lines.append(END)
    return "\n".join(lines)


def schema_section() -> str:
    """SCHEMA.md's generated metric list, markers included."""
    note = (f"<!-- generated by `{COMMAND}` from the metrics registry "
            f"(mqbench/scoring/metrics.py); do not edit -->")
    return "\n".join([METRICS_START, note, "", metrics_markdown().rstrip(), METRICS_END])


def splice(text: str, section: str, start: str = START, end: str = END,
           name: str = "README.md") -> str:
    """`text` with the section between `start` and `end` replaced (each must occur once)."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise MqbenchError(f"{name} must contain {start} ... {end} once each, in that "
                           f"order; put them where the generated section goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + section + tail


def splice_readme(text: str, section: str) -> str:
    """README text with the leaderboard section replaced (markers must exist, once each)."""
    return splice(text, section)


def regenerate(readme: Path | None = README, plots: bool = True) -> list[Path]:
    """Rebuild the database from the records and write every artifact; returns the paths."""

    rebuild_db()
    root = leaderboard_dir()
    tasks = R.record_tasks()
    if not tasks:
        raise MqbenchError(f"no records under {root / 'records'}; run `mqbench eval` first")
    records = {t: R.load_records(t) for t in tasks}
    written, sections = [], []
    for task in tasks:
        reports = []
        for kind, build in R.TABLES.items():
            rep = build(task, records[task])
            for fmt, render in R.RENDERERS.items():
                written.append(_write(root / "tables" / f"{task}_{kind}.{fmt}", render(rep)))
            reports.append((f"{task}-{kind}", rep, R.best_cells(rep)))
        images = []
        table = _table(task) if plots else None
        if table is not None:
            for name, fn in P.PLOTS.items():
                out = root / "site" / f"{task}_{name}.png"
                buf = io.BytesIO()
                fn(task, records[task], table, buf)
                written.append(_write(out, data=buf.getvalue()))
                images.append(out.name)
        sections.append((task, reports, images))
    cross = R.cross_task_report(records)
    if cross is not None:
        for fmt, render in R.RENDERERS.items():
            written.append(_write(root / "tables" / f"{CROSS}.{fmt}", render(cross)))
        sections.insert(0, ("across tasks", [(CROSS, cross, R.best_cells(cross))], []))
    note = (f"Generated by `{COMMAND}` from {sum(map(len, records.values()))} records "
            f"in leaderboard/records/.")
    verdicts = task_verdicts(tasks, records)
    summary, notes = conclusions(verdicts)
    written.append(_write(root / "site" / "index.html",
                          H.page(sections, note, records, summary=summary, task_notes=notes)))
    if readme is not None:
        written.append(_write(readme, splice_readme(readme.read_text(), readme_section(
            tasks, records, verdicts))))
    schema = root / "SCHEMA.md"
    if schema.exists():  # a private leaderboard folder (tests) may have none
        written.append(_write(schema, splice(schema.read_text(), schema_section(),
                                             METRICS_START, METRICS_END, "SCHEMA.md")))
    return written
