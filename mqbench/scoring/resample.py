"""Vectorised bootstrap of rank statistics: every resample is a vector of counts.

A bootstrap resample of N configurations (drawn with replacement) is fully described by how
often each configuration was drawn. Rank statistics of the resampled data are functions of
those counts: a configuration's average rank inside the resample is the number of drawn
copies with a strictly smaller value plus (copies tied with it + 1) / 2, Spearman is the
count-weighted Pearson correlation of those ranks, Kendall's tau-b is c^T S c over the
pairwise sign matrix S, and the proxy's top-k of a resample is a prefix of the proxy's fixed
predicted order. So one [resamples, N] count matrix, drawn once per task, serves every proxy
(a paired bootstrap) and every metric, with no Python loop over resamples.

`bootstrap_counts` draws exactly the indices the records' CI loop drew (`rng.integers(0, N,
N)` per resample from `default_rng(seed)`), so the CIs recomputed here are the records'.

Also here: two-sided bootstrap p-values of a paired difference, Holm's step-down adjustment,
Kendall's W (concordance of rankings), and a per-unit bootstrap / permutation test for
small correlations such as rho_sens.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as scistats  # not `stats`: that is the proxy context

# Kendall's tau-b costs one [resamples, N] x [N, N] product per variable pair; above this
# many configurations the sign matrix is processed in column blocks to bound memory.
KENDALL_BLOCK = 2048


def bootstrap_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] draw counts (float): row b says how often each of n items was drawn.

    The draws equal `default_rng(seed).integers(0, n, n)` called once per resample.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (resamples, n))
    flat = idx + n * np.arange(resamples)[:, None]
    counts = np.bincount(flat.ravel(), minlength=resamples * n).reshape(resamples, n)
    return counts.astype(np.float64)  # the float weights every statistic here takes


def as_weights(w, n: int) -> np.ndarray:
    """`w` as a float [rows, n] count matrix (None: every item once)."""
    if w is None:
        return np.ones((1, n))
    w = np.asarray(w, dtype=np.float64)
    return w[None, :] if w.ndim == 1 else w


class Ranking:
    """The sort structure of one variable, reused for every count vector."""

    def __init__(self, x):
        x = np.asarray(x, dtype=np.float64)
        self.n = len(x)
        self.order = np.argsort(x, kind="stable")
        xs = x[self.order]
        new = np.r_[True, xs[1:] != xs[:-1]] if self.n else np.zeros(0, bool)
        self.starts = np.flatnonzero(new)
        self.group = np.cumsum(new) - 1  # tie group of each sorted position
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def group_counts(self, w: np.ndarray) -> np.ndarray:
        """[rows, groups] total weight of each tie group."""
        return np.add.reduceat(w[:, self.order], self.starts, axis=1)

    def ranks(self, w: np.ndarray) -> np.ndarray:
        """[rows, n] average rank (1-based) of each item inside the weighted multiset.

        The last result is kept: the truth's ranks under one count matrix serve every proxy.
        """
        if self._last is not None and self._last[0] is w:
            return self._last[1]
        g = self.group_counts(w)
        rank_g = np.cumsum(g, axis=1) - g + (g + 1) / 2
        out = np.empty_like(w, dtype=np.float64)
        out[:, self.order] = rank_g[:, self.group]
        self._last = (w, out)
        return out

    def tie_mass(self, w: np.ndarray) -> np.ndarray:
        """[rows] sum over tie groups of (group weight)^2 (= n when nothing is tied)."""
        g = self.group_counts(w)
        return (g * g).sum(axis=1)


def spearman(x, y, w=None, rx: Ranking | None = None, ry: Ranking | None = None) -> np.ndarray:
    """[rows] Spearman of (x, y) in each weighted multiset; NaN when either is constant
    or fewer than 3 items are drawn (scipy.stats.spearmanr on the resampled data)."""
    x = np.asarray(x, dtype=np.float64)
    w = as_weights(w, len(x))
    rx = rx or Ranking(x)
    ry = ry or Ranking(y)
    a, b = rx.ranks(w), ry.ranks(w)
    n = w.sum(axis=1)
    mean = ((n + 1) / 2)[:, None]
    a, b = a - mean, b - mean
    cov = (w * a * b).sum(axis=1)
    va, vb = (w * a * a).sum(axis=1), (w * b * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cov / np.sqrt(va * vb)
    bad = (n < 3) | (va <= 1e-12 * n ** 3) | (vb <= 1e-12 * n ** 3)
    return np.where(bad, np.nan, np.clip(rho, -1.0, 1.0))


def sign_matrix(x, y, cols: slice = slice(None)) -> np.ndarray:
    """[n, cols] float32 sign(x_i - x_j) * sign(y_i - y_j): +1 concordant, -1 discordant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (np.sign(x[:, None] - x[None, cols]) * np.sign(y[:, None] - y[None, cols])).astype(
        np.float32)


def kendall(x, y, w=None, rx: Ranking | None = None, ry: Ranking | None = None) -> np.ndarray:
    """[rows] Kendall's tau-b of (x, y) in each weighted multiset (scipy's kendalltau on the
    resampled data): c^T S c / sqrt((n^2 - sum_x G^2)(n^2 - sum_y G^2))."""
    x = np.asarray(x, dtype=np.float64)
    w = as_weights(w, len(x))
    rx = rx or Ranking(x)
    ry = ry or Ranking(y)
    w32 = w.astype(np.float32)
    num = np.zeros(len(w))
    for lo in range(0, len(x), KENDALL_BLOCK):
        cols = slice(lo, lo + KENDALL_BLOCK)
        # integer-valued float32 products are exact below 2^24; the sum is taken in float64
        num += (w[:, cols] * (w32 @ sign_matrix(x, y, cols)).astype(np.float64)).sum(axis=1)
    n = w.sum(axis=1)
    dx, dy = n * n - rx.tie_mass(w), n * n - ry.tie_mass(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / np.sqrt(dx * dy)
    bad = (n < 3) | (dx <= 0) | (dy <= 0)
    return np.where(bad, np.nan, np.clip(tau, -1.0, 1.0))


def top_weights(order: np.ndarray, w, r: float, minimum: int = 0) -> np.ndarray:
    """[rows, n] the counts of each resample's first k = max(minimum, floor(n * r)) items
    along `order` (the item on the cut keeps only the copies that fit)."""
    w = as_weights(w, len(order))
    k = np.maximum(minimum, np.floor(w.sum(axis=1) * r))[:, None]
    wo = w[:, order]
    before = np.cumsum(wo, axis=1) - wo
    out = np.empty_like(w)
    out[:, order] = np.clip(k - before, 0.0, wo)
    return out


def predicted_order(scores, keys) -> np.ndarray:
    """Indices sorted by score descending, ties by key ascending (the metrics' tie-break)."""
    return np.lexsort((np.asarray(keys), -np.asarray(scores, dtype=np.float64)))


def spearman_top(scores, truth, keys, r: float, w=None, order=None) -> np.ndarray:
    """[rows] Spearman among each resample's top-r share by predicted score (EMQ); `order`
    overrides the predicted order (another tie-break)."""
    order = predicted_order(scores, keys) if order is None else order
    return spearman(scores, truth, top_weights(order, w, r))


def precision_top(scores, truth, keys, r: float, w=None) -> np.ndarray:
    """[rows] share of each resample's predicted top-k (k = max(1, floor(n r))) that is in
    its true top-k. Copies of one configuration are matched first to first, as positions
    are in the resampled array, so the overlap of an item is min(copies in each top-k)."""
    w = as_weights(w, len(scores))
    a = top_weights(predicted_order(scores, keys), w, r, minimum=1)
    b = top_weights(predicted_order(truth, keys), w, r, minimum=1)
    return np.minimum(a, b).sum(axis=1) / np.maximum(1, np.floor(w.sum(axis=1) * r))


# ---------------------------------------------------------------- inference
def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite draws (NaN, NaN when none)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))


def paired_pvalue(delta_draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: difference = 0, from the resampled differences.

    p = min(1, 2 * (1 + #{draws on the far side of 0}) / (B + 1)); a difference that is
    exactly 0 in every resample (two identical proxies) has p = 1. The test rejects at alpha
    exactly when the (1 - alpha) percentile interval excludes 0 (up to the +1 correction).
    """
    d = np.asarray(delta_draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return min(1.0, 2 * (1 + min(below, above)) / (len(d) + 1))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), NaN entries left out.

    Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)); reject H_i at
    alpha when its adjusted p < alpha. Equals statsmodels' multipletests(method="holm").
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def concordance(values: np.ndarray) -> tuple[float, float]:
    """Kendall's W of m raters (rows) over n items (columns), higher value = better item,
    with the tie correction; and the chi-square p-value of m(n-1)W on n-1 df.

    W = 12 S / (m^2 (n^3 - n) - m sum_t (t^3 - t)), S = sum_i (R_i - mean R)^2 over the
    items' rank sums R_i. Without ties, the mean pairwise Spearman is (m W - 1) / (m - 1).
    """
    v = np.asarray(values, dtype=np.float64)
    m, n = v.shape
    if m < 2 or n < 2:
        return math.nan, math.nan
    ranks = np.vstack([scistats.rankdata(row) for row in v])
    tot = ranks.sum(axis=0)
    s = float(((tot - tot.mean()) ** 2).sum())
    ties = sum(float((c ** 3 - c).sum()) for c in
               (np.unique(row, return_counts=True)[1] for row in v))
    denom = m * m * (n ** 3 - n) - m * ties
    if denom <= 0:
        return math.nan, math.nan
    w = 12 * s / denom
    return w, float(scistats.chi2.sf(m * (n - 1) * w, n - 1))


def unit_bootstrap(x, y, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of Spearman(x, y) with the units resampled (NaN draws dropped)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        return math.nan, math.nan
    return percentile_ci(spearman(x, y, bootstrap_counts(len(x), resamples, seed)))


EXACT_PERMUTATIONS = 9  # n! permutations enumerated up to this many units (9! = 362,880)


def permutation_pvalue(x, y, resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman(x, y): exact over all n! pairings up to
    EXACT_PERMUTATIONS units, else Monte Carlo with the observed pairing counted once."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 3:
        return math.nan
    rx, ry = scistats.rankdata(x), scistats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if norm == 0:
        return math.nan
    obs = abs(float(rx @ ry)) / norm
    if n <= EXACT_PERMUTATIONS:
        perms = np.array(list(itertools.permutations(range(n))))
        null = np.abs(ry[perms] @ rx) / norm
        return float((null >= obs - 1e-12).mean())
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((resamples, n)), axis=1)
    null = np.abs(ry[perms] @ rx) / norm
    return float((1 + (null >= obs - 1e-12).sum()) / (resamples + 1))
