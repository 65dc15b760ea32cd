"""The metrics registry: every metric a record holds, registered once, and how each is computed.

A metric is one `@register(...)` on the function that computes it. Its registration says what
the record calls it, how reports and the terminal label it, whether higher is better, its
level, whether it gets a bootstrap CI, and a description (leaderboard/SCHEMA.md's metric list
is generated from these). The harness computes every registered metric level by level
(`config_metrics`, `layer_metrics`, `downstream_metrics`); board/report.py takes its
correlation columns from `METRICS`; the CLI prints `format_result`. Registration order is the
display order everywhere.

Levels, and the function signature each takes:
* "config": `fn(d: ConfigData) -> float`, over the table's configurations (proxy scores vs
  ground truth); may be bootstrapped (configurations resampled with replacement).
* "layer": `fn(sens, truth) -> float`, the proxy's per-unit sensitivity vs the table's
  single-layer loss increase. Undefined (None) for config proxies.
* "downstream": `fn(metrics, downstream, alpha) -> float`, from the lower levels' values and
  the ILP allocations.

Conventions: correlations are signed (an anti-correlated proxy scores negative). Orders by
predicted score are descending with ties broken by the configuration key, ascending, so the
top-k cut is deterministic (EMQ's code reverses an unstable argsort instead).
Spearman@top-k (EMQ, `rank_consistency.py`): order configurations by the proxy's predicted
score, keep the first k = floor(N*r), and compute Spearman(proxy, truth) on those.

Bootstrap: a bootstrapped metric may register a `batched` twin, `fn(d, counts) -> [rows]`,
that evaluates it on every resample at once from a [resamples, N] count matrix
(mqbench.scoring.resample); `config_metrics` uses it and falls back to one call per
resample for metrics without one. The resamples are the same for every metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as scistats  # not `stats`: that is the proxy context

from mqbench.errors import MqbenchError
from mqbench.scoring import resample as RS
from mqbench.scoring.record import Allocation, Record

LEVELS = ("config", "layer", "downstream")


@dataclass(frozen=True)
class Metric:
    """One registered metric."""

    name: str  # the key in a record's `metrics` (CI bounds: `<name>_lo`, `<name>_hi`)
    label: str  # leaderboard header (Markdown, HTML)
    tex: str  # LaTeX header
    text: str  # terminal label (`mqbench eval`)
    description: str  # one line for leaderboard/SCHEMA.md
    fn: Callable[..., float]
    level: str = "config"
    higher_is_better: bool = True
    bootstrap: bool = False  # percentile-bootstrap 95% CI over resampled configurations
    board: bool = True  # a column of the leaderboard's correlation table
    cli: bool = True  # printed by `mqbench eval`
    digits: int = 3  # decimals in the leaderboard tables
    # bootstrapped metrics: fn(d: ConfigData, counts [resamples, N]) -> [resamples] values
    batched: Callable[..., np.ndarray] | None = None


METRICS: dict[str, Metric] = {}


def register(name: str, *, label: str, tex: str, text: str, description: str,
             level: str = "config", higher_is_better: bool = True, bootstrap: bool = False,
             board: bool = True, cli: bool = True, digits: int = 3,
             batched: Callable[..., np.ndarray] | None = None):
    """Decorator: register the decorated function as metric `name` (names are unique).

    `batched`: optional vectorised twin for the bootstrap, `batched(d, counts)` returning the
    metric on every resample (row of `counts`) of `d`.
    """
    if level not in LEVELS:
        raise MqbenchError(f"metric {name!r}: level {level!r} is not one of {', '.join(LEVELS)}")
    if bootstrap and level != "config":
        raise MqbenchError(f"metric {name!r}: only config-level metrics can be bootstrapped")

    def wrap(fn):
        if name in METRICS:
            raise MqbenchError(f"metric {name!r} is registered twice; rename one")
        METRICS[name] = Metric(name, label, tex, text, description, fn, level,
                               higher_is_better, bootstrap, board, cli, digits, batched)
        return fn
    return wrap


def at_level(level: str) -> list[Metric]:
    return [m for m in METRICS.values() if m.level == level]


@dataclass(frozen=True)
class ConfigData:
    """What config-level metrics see: one row per table configuration."""

    scores: np.ndarray  # the proxy's predicted score (higher = better configuration)
    truth: np.ndarray  # ground-truth quality (accuracy; LM tasks: minus perplexity)
    keys: np.ndarray  # configuration keys (tie-break)
    kl: np.ndarray | None = None  # KL(fp || quantized) per configuration, where known

    def take(self, idx: np.ndarray) -> ConfigData:
        return ConfigData(self.scores[idx], self.truth[idx], self.keys[idx],
                          None if self.kl is None else self.kl[idx])


# ---------------------------------------------------------------- the statistics
def predicted_order(scores: np.ndarray, keys) -> np.ndarray:
    """Indices sorted by score descending, ties by key ascending."""
    return RS.predicted_order(scores, keys)


def spearman(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scistats.spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    """Kendall's tau-b (scipy's default variant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scistats.kendalltau(x, y).statistic)


def spearman_at_topk(scores, truth, keys, r: float) -> float:
    order = predicted_order(scores, keys)[: int(len(scores) * r)]
    return spearman(np.asarray(scores)[order], np.asarray(truth)[order])


def precision_at_topk(scores, truth, keys, r: float) -> float:
    """Share of the proxy's top-k configurations that are in the true top-k."""
    k = max(1, int(len(scores) * r))
    pred = set(predicted_order(scores, keys)[:k].tolist())
    true = set(predicted_order(truth, keys)[:k].tolist())
    return len(pred & true) / k


# ---------------------------------------------------------------- the registry (display order)
_TOP = "Spearman among the proxy's top {}% configurations by predicted score (EMQ)"


@register("spearman_top20", label="ρs@20%", tex=r"$\rho_s$@20\%", text="Spearman@top20%",
          description=_TOP.format(20), bootstrap=True,
          batched=lambda d, w: RS.spearman_top(d.scores, d.truth, d.keys, 0.2, w))
def _spearman_top20(d: ConfigData) -> float:
    return spearman_at_topk(d.scores, d.truth, d.keys, 0.2)


@register("spearman_top50", label="ρs@50%", tex=r"$\rho_s$@50\%", text="Spearman@top50%",
          description=_TOP.format(50), bootstrap=True,
          batched=lambda d, w: RS.spearman_top(d.scores, d.truth, d.keys, 0.5, w))
def _spearman_top50(d: ConfigData) -> float:
    return spearman_at_topk(d.scores, d.truth, d.keys, 0.5)


@register("spearman", label="ρs@100%", tex=r"$\rho_s$@100\%", text="Spearman (all, @top100%)",
          description="Spearman of proxy scores vs ground truth over all configurations",
          bootstrap=True, batched=lambda d, w: RS.spearman(d.scores, d.truth, w))
def _spearman(d: ConfigData) -> float:
    return spearman(d.scores, d.truth)


@register("kendall", label="Kendall τ", tex=r"Kendall $\tau$", text="Kendall tau-b",
          description="Kendall's tau-b over all configurations", bootstrap=True,
          batched=lambda d, w: RS.kendall(d.scores, d.truth, w))
def _kendall(d: ConfigData) -> float:
    return kendall(d.scores, d.truth)


@register("precision_top20", label="P@20%", tex=r"P@20\%", text="Precision@top20%",
          description="share of the proxy's top 20% configurations in the true top 20%",
          bootstrap=True, board=False,
          batched=lambda d, w: RS.precision_top(d.scores, d.truth, d.keys, 0.2, w))
def _precision_top20(d: ConfigData) -> float:
    return precision_at_topk(d.scores, d.truth, d.keys, 0.2)


@register("precision_top50", label="P@50%", tex=r"P@50\%", text="Precision@top50%",
          description="share of the proxy's top 50% configurations in the true top 50%",
          bootstrap=True, board=False, cli=False,
          batched=lambda d, w: RS.precision_top(d.scores, d.truth, d.keys, 0.5, w))
def _precision_top50(d: ConfigData) -> float:
    return precision_at_topk(d.scores, d.truth, d.keys, 0.5)


@register("kl_spearman", label="ρs(−KL)", tex=r"$\rho_s(-\mathrm{KL})$", text="Spearman vs -KL",
          description="Spearman of proxy scores vs minus the KL of each configuration's "
          "outputs from full precision", board=False)
def _kl_spearman(d: ConfigData) -> float:
    return float("nan") if d.kl is None else spearman(d.scores, -d.kl)


@register("layer_spearman", label="ρ_sens", tex=r"$\rho_{sens}$",
          text="layer Spearman (rho_sens)", level="layer",
          description="Spearman of the proxy's per-layer sensitivity vs the table's loss "
          "increase with that layer alone at the lowest bits (None for config proxies)")
def _layer_spearman(sens, truth) -> float:
    return float("nan") if sens is None else spearman(sens, truth)


@register("fitness", label="φ", tex=r"$\phi$", text="fitness (TAP phi)", level="downstream",
          description="TAP's fitness: alpha * layer_spearman + (1 - alpha) * mean top-1 of "
          "the size-budget ILP allocations (alpha from the task)")
def _fitness(metrics: dict, downstream, alpha: float) -> float:
    accs = [d.acc for d in downstream if d.metric == "size"]
    rho = metrics.get("layer_spearman")
    if not accs or rho is None or not math.isfinite(rho):
        return float("nan")
    return alpha * rho + (1 - alpha) * float(np.mean(accs))


# ---------------------------------------------------------------- computing a level
def _point(data: ConfigData, only_bootstrapped: bool = False) -> dict[str, float]:
    return {m.name: m.fn(data) for m in at_level("config")
            if m.bootstrap or not only_bootstrapped}


def config_metrics(scores, truth, keys, bootstrap: int = 1000, seed: int = 0,
                   kl=None) -> dict:
    """Every config-level metric, with a percentile bootstrap 95% CI (`<metric>_lo/_hi`) for
    the bootstrapped ones.

    Bootstrap resamples configurations with replacement; resampled duplicates keep their key,
    so tie-breaking stays deterministic. The resamples are drawn once (`default_rng(seed)`,
    one `integers(0, N, N)` per resample) and shared by every metric; metrics with a
    `batched` twin are evaluated on all of them at once. `kl`: per-configuration KL (for
    `kl_spearman`).
    """
    data = ConfigData(np.asarray(scores, dtype=float), np.asarray(truth, dtype=float),
                      np.asarray(keys), None if kl is None else np.asarray(kl, dtype=float))
    out = _point(data)
    n = len(data.scores)
    if bootstrap <= 0 or n < 3:
        return out
    counts = RS.bootstrap_counts(n, bootstrap, seed)
    for m in at_level("config"):
        if not m.bootstrap:
            continue
        if m.batched is not None:
            vals = np.asarray(m.batched(data, counts), dtype=float)
        else:
            vals = np.array([m.fn(data.take(np.repeat(np.arange(n), c))) for c in counts])
        out[f"{m.name}_lo"], out[f"{m.name}_hi"] = RS.percentile_ci(vals)
    return out


def layer_metrics(sens, truth) -> dict[str, float]:
    """Every layer-level metric (`sens` None: a config proxy, every value NaN)."""
    return {m.name: m.fn(sens, truth) for m in at_level("layer")}


def downstream_metrics(metrics: dict, downstream: list[Allocation] | tuple[Allocation, ...],
                       alpha: float) -> dict[str, float]:
    """Every downstream-level metric, from the lower levels' `metrics` and the allocations."""
    return {m.name: m.fn(metrics, downstream, alpha) for m in at_level("downstream")}


# ---------------------------------------------------------------- presenting
def _fmt(v, ci=None) -> str:
    if v is None:
        return "—"
    return f"{v:+.3f}" if ci is None or ci[0] is None else f"{v:+.3f} [{ci[0]:+.2f},{ci[1]:+.2f}]"


def format_result(rec: Record) -> str:
    """What `mqbench eval` prints for one record: metrics (registry order), allocations, time."""
    m = rec.metrics
    lines = [(f"proxy {rec.proxy} v{rec.proxy_version} on {rec.task} v{rec.task_version}  "
              f"({rec.n_configs} configurations, 95% bootstrap CIs)")]
    for metric in (x for x in METRICS.values() if x.cli):
        key = metric.name
        lines.append(f"  {metric.text:28s} "
                     f"{_fmt(m.get(key), (m.get(key + '_lo'), m.get(key + '_hi')))}")
    for d in rec.downstream:
        lines.append(f"  ILP {d.metric:4s} @ {d.budget_avg_bits:.2f} avg bits: acc {d.acc:.4f} "
                     f"(best in table {d.best_table_acc:.4f}, gap {d.gap_to_best:+.4f})  "
                     f"{d.config}")
    t = rec.timing
    lines.append(f"  time: proxy {t.proxy_seconds:.3f} s, scoring {1000 * t.score_seconds:.2f} "
                 f"ms for all configurations")
    return "\n".join(lines)


def metrics_markdown() -> str:
    """The registry as the Markdown table leaderboard/SCHEMA.md holds (checked by a test)."""
    lines = ["| metric | leaderboard label | level | better | 95% CI | description |",
             "|---|---|---|---|---|---|"]
    for m in METRICS.values():
        lines.append(f"| `{m.name}` | {m.label} | {m.level} | "
                     f"{'higher' if m.higher_is_better else 'lower'} | "
                     f"{'bootstrap' if m.bootstrap else '—'} | {m.description} |")
    return "\n".join(lines) + "\n"
