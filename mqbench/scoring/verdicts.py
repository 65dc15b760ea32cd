"""Verdicts: which proxies beat the structural floors, which tie with the best, and how
rankings hold across tasks.

For one task (`task_verdict`), every proxy record, floor and oracle (mqbench.scoring.floors)
is scored on the same bootstrap resamples of the table's configurations (a paired bootstrap,
mqbench.scoring.resample), for every configuration and for the usable ones:

* Δ = proxy − best floor (the floor with the highest point value of that metric), its 95%
  percentile interval and a two-sided bootstrap p-value, Holm-adjusted over the task's
  proxies: a proxy is "above" (or "below") the floor when the adjusted p < ALPHA;
* the best proxy (highest point value; never an in-sample row or a floor) against each other
  proxy, Holm-adjusted over those comparisons: every proxy not significantly below the best
  is "tied with the best";
* the noise ceiling: the same metric computed between the table's two measurements of its
  re-measured configurations (calibration-seed noise rows); a proxy whose interval reaches
  the ceiling is "within noise of the ceiling";
* the proxy's variance over calibration batches (records with `batch_damage`): resample b
  of the bootstrap scores the proxy's batch b mod n, so every interval and p-value above
  holds it, and each value's mean ± std over the batches is reported beside it;
* ρ_sens with a bootstrap-over-units CI and a permutation p-value; the share of tied scores;
  ρs@k under the reverse tie-break where it differs; each proxy under both aggregation rules
  (perturbation-weighted, EMQ's bit-weighted) and the random floor over many seeds.

`cross_task` ranks the proxies present on every task: mean rank with a bootstrap CI,
Kendall's W between tasks, and on how many tasks each beats the best floor.
`method_agreement` asks whether two quantization methods of one task (rtn, gptq) order the
proxies alike: Kendall's tau between their values, with a bootstrap interval.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scistats  # not `stats`: that is the proxy context
from scipy.stats import rankdata

from mqbench.errors import MqbenchError
from mqbench.scoring import floors as F
from mqbench.scoring import metrics as S
from mqbench.scoring import resample as RS
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task

ALPHA = 0.05
RESAMPLES = 1000  # paired bootstrap resamples per task, at least (the records' own count)
PER_TEST = 50  # and at least this many per proxy, so Holm's smallest p (2m/(B+1)) is < 0.04
UNIT_RESAMPLES = 2000  # bootstrap over units for ρ_sens
RANDOM_LABEL = f"{F.RANDOM_DRAWS} seeds"  # how reports name the random floor's band
FLOOR_RECORDS = ("random",)  # registered baselines that are floors: shown, never ranked
HEADLINE = "spearman"  # the metric verdicts and the cross-task view are stated for
SCOPES = {"all": ("spearman", "kendall", "spearman_top20", "spearman_top50"),
          "usable": ("spearman", "kendall", "spearman_top50")}
_TOP = {"spearman_top20": 0.2, "spearman_top50": 0.5}


@dataclass(frozen=True)
class Entry:
    """One row of a task's comparison: a proxy record, a floor or an oracle."""

    name: str
    role: str  # "proxy", "floor" or "oracle"
    kind: str  # the proxy's kind ("layer", "layer_bit", "config"); "floor" / "oracle"
    scores: np.ndarray  # [configs] in key order, higher = predicted better
    sensitivity: np.ndarray | None = None  # [units]
    in_sample: bool = False  # searched or tuned on this task (proxies/IN_SAMPLE.toml)
    version: int | None = None
    # [batches, configs] scores on each calibration batch (the first is `scores`); None: one
    batch_scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def ranked(self) -> bool:
        """Eligible for "best" and the cross-task ranking."""
        return self.role == "proxy" and not self.in_sample


@dataclass(frozen=True)
class Stat:
    """One metric of one entry in one scope."""

    value: float
    lo: float  # 95% percentile interval of the value (paired bootstrap)
    hi: float
    delta: float  # value − best floor's value
    delta_lo: float
    delta_hi: float
    p_floor: float  # Holm-adjusted two-sided p of delta (NaN for floors and oracles)
    verdict: str  # "above", "below", "at floor", "n/a" (undefined); "" for floors, oracles
    p_best: float  # Holm-adjusted p of best − value (NaN for the best and unranked rows)
    tied_best: bool  # the best, or not significantly below it (ranked proxies only)
    at_ceiling: bool  # the interval reaches the noise ceiling
    # over the proxy's calibration batches: (mean, std, batches) of the point value; None: one
    batch: tuple[float, float, int] | None = None


@dataclass(frozen=True)
class Comparison:
    """One metric in one scope of a task: every entry against the best floor and the best."""

    scope: str  # "all" or "usable"
    metric: str  # a metrics-registry name
    n: int  # configurations in the scope
    best_floor: str
    best: str | None  # best ranked proxy
    ceiling: float  # noise ceiling (NaN: no noise rows)
    ceiling_n: int  # re-measured configuration pairs behind it
    stats: dict[str, Stat]
    random: tuple[float, float, float]  # random floor over seeds: mean, 2.5%, 97.5%
    draws: dict[str, np.ndarray] = field(repr=False)  # entry -> [resamples] values


@dataclass(frozen=True)
class Sens:
    """ρ_sens of one entry: Spearman of its per-unit sensitivity vs the single-layer truth."""

    value: float
    lo: float  # bootstrap over units, 95% percentile interval
    hi: float
    p: float  # two-sided permutation p (exact up to 9 units)
    damage: float  # the same for the per-unit term the score uses (s_u * ΔW² at low bits)
    units: int
    # per weight bit-width b below the top with single-layer rows at b (protocol-2 tables
    # have them all): (b, Spearman of s vs the truth at b, of the score's term s_u * ΔW²_b)
    by_bits: tuple[tuple[int, float, float], ...] = ()
    # aligned with by_bits: 95% bootstrap-over-units interval of the score's term's Spearman
    by_bits_ci: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class TaskVerdict:
    """Everything the leaderboard states about one task."""

    task: str
    truth_label: str  # "accuracy" or "perplexity"
    n_configs: int
    n_usable: int
    usable_rule: str
    resamples: int
    seed: int
    noise_pairs: int
    truth_ties: float  # share of configurations whose ground truth is tied
    entries: tuple[Entry, ...]
    comparisons: dict[tuple[str, str], Comparison]
    sens: dict[str, Sens]
    ties: dict[str, float]  # entry -> share of tied scores
    tiebreak: dict[tuple[str, str], tuple[float, float]]  # (entry, metric) -> (asc, desc keys)
    rules: dict[str, dict[str, float]]  # entry -> {"own", "perturbation", "bits"}: ρs@100%
    random_draws: int
    random_percentile: float | None  # where the `random` record's ρs@100% falls among draws
    excluded: dict[str, str]  # record -> why it is not compared
    noise_source: str = "seed"  # what the ceilings repeat (floors.NOISE_WORDS)

    def entry(self, name: str) -> Entry:
        return next(e for e in self.entries if e.name == name)

    def above(self, scope: str = "all", metric: str = HEADLINE) -> list[str]:
        """Ranked proxies significantly above the best floor, best first."""
        c = self.comparisons[(scope, metric)]
        names = [e.name for e in self.entries if e.ranked and c.stats[e.name].verdict == "above"]
        return sorted(names, key=lambda n: (-c.stats[n].value, n))


# ---------------------------------------------------------------- one task
def _fingerprint(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.proxy):
        h.update(f"{r.proxy}|{r.proxy_version}|{r.proxy_sha256}|{r.table_checksum}".encode())
        h.update(np.array([r.scores[k] for k in sorted(r.scores)]).tobytes())
        h.update(repr(sorted((r.batch_damage or {}).items())).encode())
    return h.hexdigest()


_CACHE: dict[tuple, TaskVerdict] = {}


def task_verdict(task: str, records: list[Record], resamples: int = RESAMPLES) -> TaskVerdict:
    """The verdicts of `task` from its records (memoised per process on their contents)."""
    key = (task, resamples, _fingerprint(records))
    if key not in _CACHE:
        if len(_CACHE) >= 8:  # a few tasks' worth; regenerate needs one task at a time
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _compute(task, records, resamples)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget memoised verdicts (the next call recomputes them from the records)."""
    _CACHE.clear()


def _entries(data: F.TaskData, records: list[Record]) -> tuple[list[Entry], dict[str, str]]:
    entries, excluded = [], {}
    keyset = set(data.keys.tolist())
    for r in sorted(records, key=lambda r: r.proxy):
        if not r.scores:
            continue  # a search record (AutoMixQ): allocations only
        if set(r.scores) != keyset:
            excluded[r.proxy] = "scored on another version of the table"
            continue
        role = "floor" if r.proxy in FLOOR_RECORDS else "proxy"
        scores = np.array([r.scores[k] for k in data.keys])
        entries.append(Entry(r.proxy, role, r.proxy_kind, scores,
                             F.sensitivity_of(data, r.sensitivity),
                             F.in_sample(r.proxy, data.task.name), r.proxy_version,
                             _batch_scores(data, r, scores)))
    ones = np.ones(len(data.units))
    for name, scores in F.floor_scores(data).items():
        entries.append(Entry(name, "floor", "floor", scores,
                             ones if name == "uniform" else None))
    oracles = F.oracle_scores(data)
    for name, scores in oracles.items():
        sens = {"oracle_layer": data.layer_truth,
                "oracle_curvature": data.layer_truth / data.pert[:, 0]}.get(name)
        entries.append(Entry(name, "oracle", "oracle", scores, sens))
    return entries, excluded


def _batch_scores(data: F.TaskData, r: Record, scores: np.ndarray) -> np.ndarray | None:
    """[batches, configs] configuration scores from the record's per-batch damage matrices
    (the task seed's batch first, which must reproduce the record's scores); None when the
    record has one batch or its matrices do not fit the table."""
    if not r.batch_damage or len(r.batch_damage) < 2:
        return None
    shape = (len(data.units), len(data.weight_bits))
    mats = [np.asarray(d, dtype=np.float64) for d in r.batch_damage.values()]
    if any(m.shape != shape or not np.all(np.isfinite(m)) for m in mats):
        return None
    out = np.stack([F.damage_scores(data, m) for m in mats])
    if not np.allclose(out[0], scores, rtol=1e-9, atol=1e-12 * np.abs(scores).max()):
        return None  # not the batches behind this record's scores
    out[0] = scores
    return out


def _metric(metric: str, scores, truth, keys, w, rt: RS.Ranking, order=None) -> np.ndarray:
    if metric == "spearman":
        return RS.spearman(scores, truth, w, ry=rt)
    if metric == "kendall":
        return RS.kendall(scores, truth, w, ry=rt)
    return RS.spearman_top(scores, truth, keys, _TOP[metric], w, order)


def _point(metric: str, scores, truth, keys) -> float:
    fn = S.METRICS[metric].fn
    return float(fn(S.ConfigData(np.asarray(scores, float), np.asarray(truth, float),
                                 np.asarray(keys))))


def _compare(scope: str, metric: str, entries: list[Entry], truth, keys, counts,
             sel: np.ndarray, ceiling: tuple[float, int], random: np.ndarray) -> Comparison:
    rt = RS.Ranking(truth)
    point = {e.name: _point(metric, e.scores[sel], truth, keys) for e in entries}
    draws = {e.name: _draws(metric, e, sel, truth, keys, counts, rt) for e in entries}
    spread = {e.name: _spread(metric, e, sel, truth, keys) for e in entries
              if e.batch_scores is not None}
    # the best floor; with none defined (too few configurations) `uniform` stands in
    best_floor = max(F.FLOORS, key=lambda n: (math.isfinite(point[n]),
                                             point[n] if math.isfinite(point[n]) else 0,
                                             n == "uniform"))
    ranked = [e.name for e in entries if e.ranked and math.isfinite(point[e.name])]
    best = max(ranked, key=lambda n: (point[n], n)) if ranked else None
    proxies = [e.name for e in entries if e.role == "proxy"]
    p_floor = dict(zip(proxies, RS.holm([RS.paired_pvalue(draws[n] - draws[best_floor])
                                         for n in proxies])))
    rivals = [n for n in ranked if n != best]
    p_best = dict(zip(rivals, RS.holm([RS.paired_pvalue(draws[best] - draws[n])
                                       for n in rivals])))
    ceil, ceil_n = ceiling
    stats = {}
    for e in entries:
        n = e.name
        lo, hi = RS.percentile_ci(draws[n])
        d = draws[n] - draws[best_floor]
        dlo, dhi = RS.percentile_ci(d)
        delta = point[n] - point[best_floor]
        pf = p_floor.get(n, math.nan)
        verdict = ""
        if e.role == "proxy":
            verdict = ("n/a" if not math.isfinite(pf) else
                       "above" if pf < ALPHA and delta > 0 else
                       "below" if pf < ALPHA and delta < 0 else "at floor")
        pb = p_best.get(n, math.nan)
        tied = e.ranked and (n == best or not (pb < ALPHA))
        stats[n] = Stat(point[n], lo, hi, delta, dlo, dhi, pf, verdict, pb, tied,
                        bool(math.isfinite(ceil) and math.isfinite(hi) and hi >= ceil),
                        spread.get(n))
    finite = random[np.isfinite(random)]
    band = ((float(finite.mean()), *RS.percentile_ci(finite)) if len(finite)
            else (math.nan, math.nan, math.nan))
    return Comparison(scope, metric, int(sel.sum()), best_floor, best, ceil, ceil_n, stats,
                      band, draws)


def _draws(metric: str, e: Entry, sel, truth, keys, counts, rt: RS.Ranking) -> np.ndarray:
    """[resamples] bootstrap values of one entry. With several calibration batches,
    resample b scores batch b mod n on its configurations: the interval then holds the
    proxy's batch-to-batch variance too, and stays paired (resample b is the same draw of
    configurations for every row)."""
    if e.batch_scores is None:
        return _metric(metric, e.scores[sel], truth, keys, counts, rt)
    n = len(e.batch_scores)
    which = np.arange(len(counts)) % n
    out = np.empty(len(counts))
    for j, scores in enumerate(e.batch_scores):
        rows = which == j
        out[rows] = _metric(metric, scores[sel], truth, keys, counts[rows], rt)
    return out


def _spread(metric: str, e: Entry, sel, truth, keys) -> tuple[float, float, int]:
    """Mean and standard deviation of the point value over the entry's batches."""
    values = np.array([_point(metric, s[sel], truth, keys) for s in e.batch_scores])
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return (math.nan, math.nan, len(values))
    return (float(values.mean()), float(values.std(ddof=1)), len(values))


def _ceiling(metric: str, data: F.TaskData, scope: str) -> tuple[float, int]:
    keys, primary, repeat, usable = F.noise_pairs(data)
    if scope == "usable":
        keys, primary, repeat = keys[usable], primary[usable], repeat[usable]
    if len(keys) < 3:
        return math.nan, len(keys)
    return _point(metric, repeat, primary, keys), len(keys)


def _sens(data: F.TaskData, e: Entry) -> Sens | None:
    if e.sensitivity is None or not np.all(np.isfinite(data.layer_truth)):
        return None
    truth, s = data.layer_truth, e.sensitivity
    seed = data.task.seed
    if e.kind == "layer_bit":
        term = s  # already the unit's damage at the lowest bits minus at the highest
    elif e.name == "oracle_additive":
        term = data.layer_damage[:, 0] - data.layer_damage[:, -1]
    else:
        term = s * (data.pert[:, 0] - data.pert[:, -1])
    lo, hi = RS.unit_bootstrap(s, truth, UNIT_RESAMPLES, seed)
    return Sens(S.spearman(s, truth), lo, hi, RS.permutation_pvalue(s, truth, seed=seed),
                S.spearman(term, truth), len(s), _by_bits(data, e), _by_bits_ci(data, e))


def _terms(data: F.TaskData, e: Entry):
    """(bit-width, single-layer truth at it, the score's per-unit term at it) for each
    measured low bit-width (a layer_bit entry's s holds only the lowest: NaN above it)."""
    for j, b in enumerate(data.weight_bits[:-1]):
        truth = data.layer_damage[:, j]
        if not np.all(np.isfinite(truth)):
            continue
        if e.kind == "layer_bit":
            term = e.sensitivity if j == 0 else np.full_like(truth, np.nan)
        elif e.name == "oracle_additive":
            term = truth  # its score adds the measured damages themselves
        else:
            term = e.sensitivity * (data.pert[:, j] - data.pert[:, -1])
        yield int(b), truth, term


def _by_bits(data: F.TaskData, e: Entry) -> tuple[tuple[int, float, float], ...]:
    """ρ_sens at each measured low bit-width: (b, of s, of the score's term)."""
    return tuple((b, S.spearman(e.sensitivity, truth),
                  S.spearman(term, truth) if np.all(np.isfinite(term)) else math.nan)
                 for b, truth, term in _terms(data, e))


def _by_bits_ci(data: F.TaskData, e: Entry) -> tuple[tuple[float, float], ...]:
    """Per bit-width, the bootstrap-over-units interval of the term's ρ_sens."""
    return tuple(RS.unit_bootstrap(term, truth, UNIT_RESAMPLES, data.task.seed)
                 if np.all(np.isfinite(term)) else (math.nan, math.nan)
                 for _, truth, term in _terms(data, e))


def _compute(task_name: str, records: list[Record], resamples: int) -> TaskVerdict:
    task = load_task(task_name)
    data = F.load_task_data(task)
    entries, excluded = _entries(data, records)
    if not any(e.role == "proxy" for e in entries):
        raise MqbenchError(f"no proxy record of {task_name} matches its table; re-run "
                           f"`mqbench eval` on the current table")
    randoms = F.random_scores(data, F.RANDOM_DRAWS, task.seed)
    resamples = max(resamples, PER_TEST * sum(e.role == "proxy" for e in entries))
    comparisons = {}
    for scope, metrics in SCOPES.items():
        sel = np.ones(data.n, bool) if scope == "all" else data.usable
        truth, keys = data.quality[sel], data.keys[sel]
        counts = RS.bootstrap_counts(int(sel.sum()), resamples, task.seed)
        for metric in metrics:
            rand = np.array([_point(metric, r[sel], truth, keys) for r in randoms])
            comparisons[(scope, metric)] = _compare(scope, metric, entries, truth, keys,
                                                    counts, sel, _ceiling(metric, data, scope),
                                                    rand)
    sens = {e.name: s for e in entries if (s := _sens(data, e)) is not None}
    ties = {e.name: F.tie_share(e.scores) for e in entries}
    desc = np.arange(data.n)[::-1]  # keys are sorted ascending: reverse key order
    tiebreak = {}
    for e in entries:
        if ties[e.name] == 0:
            continue
        order = np.lexsort((desc, -e.scores))
        for metric, r in _TOP.items():
            asc = comparisons[("all", metric)].stats[e.name].value
            alt = float(RS.spearman_top(e.scores, data.quality, data.keys, r, order=order)[0])
            if not (math.isnan(asc) and math.isnan(alt)) and not abs(asc - alt) < 5e-4:
                tiebreak[(e.name, metric)] = (asc, alt)
    rules = {}
    for e in entries:
        if e.sensitivity is None:
            continue
        pert = e.scores if e.kind in ("layer", "floor", "oracle") and e.name != "oracle_additive" \
            else F.perturbation_scores(data, e.sensitivity)
        rules[e.name] = {"own": S.spearman(e.scores, data.quality),
                         "perturbation": S.spearman(pert, data.quality),
                         "bits": S.spearman(F.bit_scores(data, e.sensitivity), data.quality)}
    rec = comparisons[("all", HEADLINE)]
    pct = None
    if "random" in rec.stats:
        rand = np.array([_point(HEADLINE, r, data.quality, data.keys) for r in randoms])
        pct = float((rand < rec.stats["random"].value).mean())
    return TaskVerdict(task_name, "perplexity" if task.is_lm else "accuracy", data.n,
                       int(data.usable.sum()), data.usable_rule, resamples, task.seed,
                       len(F.noise_pairs(data)[0]), F.tie_share(data.quality), tuple(entries),
                       comparisons, sens, ties, tiebreak, rules, F.RANDOM_DRAWS, pct, excluded,
                       F.noise_source(data))


# ---------------------------------------------------------------- across tasks
@dataclass(frozen=True)
class CrossTask:
    """Proxies ranked across tasks on one metric (rank 1 = best on a task)."""

    tasks: tuple[str, ...]
    metric: str
    names: tuple[str, ...]  # ranked rows: proxies ranked on every task, plus "best floor"
    ranks: dict[str, tuple[float, ...]]  # name -> rank on each task (average ranks for ties)
    mean_rank: dict[str, tuple[float, float, float]]  # name -> (mean, 2.5%, 97.5%)
    beats: dict[str, tuple[int, int]]  # proxy -> (tasks above the best floor, tasks scored)
    kendall_w: float  # agreement of the tasks' rankings (1 = identical)
    kendall_w_p: float  # chi-square p of W
    left_out: dict[str, str]  # proxy -> why it has no mean rank


BEST_FLOOR = "best floor"


def cross_task(verdicts: list[TaskVerdict], metric: str = HEADLINE) -> CrossTask:
    """Mean rank across tasks with a bootstrap CI (each task's paired resamples, drawn
    independently per task), Kendall's W between tasks, and "beats the best floor on k of
    n tasks" (Holm-adjusted verdicts). In-sample rows are left out of the ranks."""
    comps = [v.comparisons[("all", metric)] for v in verdicts]
    per_task = [{e.name for e in v.entries if e.ranked} for v in verdicts]
    every = sorted(set.intersection(*per_task)) if per_task else []
    anywhere = sorted({e.name for v in verdicts for e in v.entries if e.role == "proxy"})
    left_out = {}
    for name in anywhere:
        if name in every:
            continue
        why = []
        for v, names in zip(verdicts, per_task):
            if name in names:
                continue
            e = next((e for e in v.entries if e.name == name), None)
            why.append(f"in-sample on {v.task}" if e is not None and e.in_sample
                       else f"not scored on {v.task}")
        left_out[name] = "; ".join(why)
    names = [*every, BEST_FLOOR]
    values = np.array([[c.stats[n].value if n != BEST_FLOOR else c.stats[c.best_floor].value
                        for n in names] for c in comps])  # [tasks, names]
    b = min(v.resamples for v in verdicts)  # resample b of every task forms one draw
    draws = np.stack([np.stack([(c.draws[n] if n != BEST_FLOOR else c.draws[c.best_floor])[:b]
                                for n in names], axis=1) for c in comps])  # [tasks, B, names]
    ranks = np.vstack([_ranks_desc(row) for row in values])
    boot = np.mean([np.apply_along_axis(_ranks_desc, 1, np.nan_to_num(d, nan=-np.inf))
                    for d in draws], axis=0)  # [B, names]
    mean_rank = {n: (float(ranks[:, j].mean()), *RS.percentile_ci(boot[:, j]))
                 for j, n in enumerate(names)}
    beats = {}
    for name in anywhere:
        scored = [c.stats[name] for c, ok in zip(comps, per_task) if name in ok]
        beats[name] = (sum(s.verdict == "above" for s in scored), len(scored))
    w, wp = RS.concordance(values[:, :-1]) if len(every) >= 2 else (math.nan, math.nan)
    return CrossTask(tuple(v.task for v in verdicts), metric, tuple(names),
                     {n: tuple(float(x) for x in ranks[:, j]) for j, n in enumerate(names)},
                     mean_rank, beats, w, wp, left_out)


def _ranks_desc(values: np.ndarray) -> np.ndarray:
    """Average ranks, 1 = highest value (NaN ranks last)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    return rankdata(-v)


# ---------------------------------------------------------------- across quantizers
@dataclass(frozen=True)
class MethodAgreement:
    """Do two quantization methods of one task rank the proxies alike (headline metric)?"""

    task: str  # the base task's name
    methods: tuple[str, str]
    proxies: tuple[str, ...]  # ranked on both tables
    tau: float  # Kendall's tau-b between the proxies' values under the two methods
    lo: float  # 95% interval over the tables' bootstrap resamples (resample b of both)
    hi: float
    floor_both: int  # proxies above the best floor under both methods
    floor_either: int  # ... under at least one


def method_agreement(a: TaskVerdict, b: TaskVerdict,
                     metric: str = HEADLINE) -> MethodAgreement | None:
    """Kendall's tau between the proxy orders of two tables of one task under different
    quantization methods; None with fewer than 3 proxies ranked on both."""
    ca, cb = a.comparisons[("all", metric)], b.comparisons[("all", metric)]
    names = sorted({e.name for e in a.entries if e.ranked} & {e.name for e in b.entries
                                                             if e.ranked})
    if len(names) < 3:
        return None
    tau = float(scistats.kendalltau([ca.stats[n].value for n in names],
                                    [cb.stats[n].value for n in names]).statistic)
    k = min(len(ca.draws[names[0]]), len(cb.draws[names[0]]))
    da = np.stack([ca.draws[n][:k] for n in names], axis=1)
    db = np.stack([cb.draws[n][:k] for n in names], axis=1)
    boot = np.array([scistats.kendalltau(x, y).statistic for x, y in zip(da, db)])
    lo, hi = RS.percentile_ci(boot[np.isfinite(boot)])
    above = [(ca.stats[n].verdict == "above", cb.stats[n].verdict == "above") for n in names]
    base = load_task(a.task).name
    return MethodAgreement(base, (method_of(a.task), method_of(b.task)), tuple(names), tau,
                           lo, hi, sum(x and y for x, y in above), sum(x or y for x, y in above))


def method_of(task: str) -> str:
    """The quantization method a leaderboard task label names (`name@method`, else rtn)."""
    return load_task(task).quant.method
