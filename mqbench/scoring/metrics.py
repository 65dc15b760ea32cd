"""Rank-correlation metrics of proxy scores against ground truth, with bootstrap CIs.

Conventions: correlations are signed (an anti-correlated proxy scores negative). Orders by
predicted score are descending with ties broken by the configuration key, ascending, so the
top-k cut is deterministic (EMQ's code reverses an unstable argsort instead).
Spearman@top-k (EMQ, `rank_consistency.py`): order configurations by the proxy's predicted
score, keep the first k = floor(N*r), and compute Spearman(proxy, truth) on those.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

TOPK = (0.2, 0.5, 1.0)


def predicted_order(scores: np.ndarray, keys) -> np.ndarray:
    """Indices sorted by score descending, ties by key ascending."""
    return np.lexsort((np.asarray(keys), -np.asarray(scores, dtype=np.float64)))


def spearman(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    """Kendall's tau-b (scipy's default variant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def spearman_at_topk(scores, truth, keys, r: float) -> float:
    order = predicted_order(scores, keys)[: int(len(scores) * r)]
    return spearman(np.asarray(scores)[order], np.asarray(truth)[order])


def precision_at_topk(scores, truth, keys, r: float) -> float:
    """Share of the proxy's top-k configurations that are in the true top-k."""
    k = max(1, int(len(scores) * r))
    pred = set(predicted_order(scores, keys)[:k].tolist())
    true = set(predicted_order(truth, keys)[:k].tolist())
    return len(pred & true) / k


def _all(scores, truth, keys) -> dict[str, float]:
    out = {"spearman": spearman(scores, truth), "kendall": kendall(scores, truth)}
    for r in TOPK:
        pct = int(r * 100)
        out[f"spearman_top{pct}"] = spearman_at_topk(scores, truth, keys, r)
        if r < 1:
            out[f"precision_top{pct}"] = precision_at_topk(scores, truth, keys, r)
    return out


def config_metrics(scores, truth, keys, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Every config-level metric with a percentile bootstrap 95% CI (`<metric>_lo/_hi`).

    Bootstrap resamples configurations with replacement; resampled duplicates keep their key,
    so tie-breaking stays deterministic.
    """
    scores, truth, keys = (np.asarray(scores, dtype=float), np.asarray(truth, dtype=float),
                           np.asarray(keys))
    point = _all(scores, truth, keys)
    if bootstrap <= 0 or len(scores) < 3:
        return point
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in point}
    for _ in range(bootstrap):
        idx = rng.integers(0, len(scores), len(scores))
        for k, v in _all(scores[idx], truth[idx], keys[idx]).items():
            samples[k].append(v)
    out = dict(point)
    for k, vals in samples.items():
        vals = np.asarray(vals)
        vals = vals[np.isfinite(vals)]
        out[f"{k}_lo"], out[f"{k}_hi"] = ((float(np.percentile(vals, 2.5)),
                                           float(np.percentile(vals, 97.5)))
                                          if len(vals) else (float("nan"), float("nan")))
    return out
