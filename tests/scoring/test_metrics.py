"""Scoring metrics against scipy and hand-computed cases; ILP against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from mqbench.errors import MqbenchError
from mqbench.quant.space import BitConfig, Space
from mqbench.scoring import allocate as A
from mqbench.scoring import metrics as S
from mqbench.scoring.harness import config_matrix, config_scores


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    y = x + rng.standard_normal(200)
    y[:20] = np.round(y[:20])  # some ties
    assert S.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert S.kendall(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic)
    assert S.spearman(x, -y) == pytest.approx(-S.spearman(x, y))  # signed, never abs()
    assert np.isnan(S.spearman(np.ones(5), np.arange(5)))


def test_spearman_at_topk_hand_computed():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    truth = np.array([1.0, 2.0, 3.0, 5.0, 4.0])
    keys = np.array(["a", "b", "c", "d", "e"])
    # top 60% by predicted score: items a, b, c -> perfectly anti-ordered
    assert S.spearman_at_topk(scores, truth, keys, 0.6) == pytest.approx(-1.0)
    assert S.spearman_at_topk(scores, truth, keys, 1.0) == pytest.approx(
        stats.spearmanr(scores, truth).statistic)
    # top-2 predicted {a, b}; top-2 true {d, e}
    assert S.precision_at_topk(scores, truth, keys, 0.4) == 0.0


def test_ties_are_broken_by_key():
    scores = np.array([1.0, 1.0, 1.0, 0.0])
    keys = np.array(["c", "a", "b", "d"])
    assert S.predicted_order(scores, keys).tolist() == [1, 2, 0, 3]


def test_bootstrap_ci_brackets_point():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(300)
    y = x + 0.5 * rng.standard_normal(300)
    m = S.config_metrics(x, y, np.arange(300).astype(str), bootstrap=200)
    for k in ("spearman", "kendall", "spearman_top20"):
        assert m[f"{k}_lo"] <= m[k] <= m[f"{k}_hi"]
    assert m["spearman_hi"] - m["spearman_lo"] < 0.2


def _space(n=5, bits=(2, 3, 4, 8)):
    params = tuple(int(p) for p in np.random.default_rng(2).integers(10, 500, n))
    return Space(tuple(f"l{i}" for i in range(n)), tuple(range(n)),
                 tuple(f"l{i}" for i in range(n)), bits, (8,), params, params)


def test_ilp_matches_brute_force():
    space = _space()
    rng = np.random.default_rng(3)
    damage = np.sort(rng.random((5, 4)) * 10, axis=1)[:, ::-1].copy()  # more bits, less harm
    cost = A.costs(space)
    for avg in (2.5, 3.0, 4.0, 6.0):
        budget = A.budget_for(space, avg)
        idx = A.allocate(damage, cost, budget)
        assert cost[np.arange(5), idx].sum() <= budget + 1e-6
        best = min((damage[np.arange(5), c].sum(), c)
                   for c in itertools.product(range(4), repeat=5)
                   if cost[np.arange(5), c].sum() <= budget + 1e-6)
        assert damage[np.arange(5), idx].sum() == pytest.approx(best[0])


def test_ilp_fixed_units_and_infeasible_budget():
    space = _space()
    damage = np.tile([4.0, 3.0, 2.0, 1.0], (5, 1))
    idx = A.allocate(damage, A.costs(space), A.budget_for(space, 8), {0: 0})
    assert idx[0] == 0 and all(idx[1:] == 3)
    with pytest.raises(MqbenchError, match="no bit allocation fits"):
        A.allocate(damage, A.costs(space), A.budget_for(space, 1.5))
    with pytest.raises(MqbenchError, match="not a unit"):
        A.fixed_indices(space, {"conv": 8})


def test_config_scores_are_minus_summed_damage():
    space = _space(n=3, bits=(2, 4))
    damage = np.array([[3.0, 1.0], [5.0, 0.5], [2.0, 2.0]])
    keys = [BitConfig((2, 4, 4), (8, 8, 8)).key, BitConfig((4, 2, 2), (8, 8, 8)).key]
    got = config_scores(damage, config_matrix(space, keys))
    assert got.tolist() == [-(3.0 + 0.5 + 2.0), -(1.0 + 5.0 + 2.0)]


def test_registry_drives_config_metrics():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(120)
    y = x + rng.standard_normal(120)
    kl = rng.random(120)
    keys = np.arange(120).astype(str)
    m = S.config_metrics(x, y, keys, bootstrap=50, seed=3, kl=kl)
    config = [k for k, v in S.METRICS.items() if v.level == "config"]
    boot = [k for k in config if S.METRICS[k].bootstrap]
    assert set(m) == set(config) | {f"{k}_{e}" for k in boot for e in ("lo", "hi")}
    assert "spearman_top100" not in m  # the duplicate of `spearman` is gone
    assert m["kl_spearman"] == pytest.approx(stats.spearmanr(x, -kl).statistic)
    assert m["precision_top50"] == S.precision_at_topk(x, y, keys, 0.5)
    # the CI is the percentile bootstrap, recomputed here with scipy on the same resamples
    rng = np.random.default_rng(3)
    draws = []
    for _ in range(50):
        idx = rng.integers(0, 120, 120)
        draws.append(stats.spearmanr(x[idx], y[idx]).statistic)
    assert (m["spearman_lo"], m["spearman_hi"]) == pytest.approx(
        (np.percentile(draws, 2.5), np.percentile(draws, 97.5)))


def test_layer_and_downstream_levels_by_hand():
    from mqbench.scoring.record import Allocation

    sens, truth = np.array([1.0, 3.0, 2.0, 5.0]), np.array([0.1, 0.2, 0.3, 0.4])
    assert S.layer_metrics(sens, truth)["layer_spearman"] == pytest.approx(0.8)  # d^2 = 2
    assert np.isnan(S.layer_metrics(None, truth)["layer_spearman"])
    alloc = [Allocation(3.0, "size", "k", 0.7, 1.0, 0.1, 1, 1, 0.8, 0.1),
             Allocation(4.0, "size", "k", 0.9, 1.0, 0.1, 1, 1, 0.9, 0.0),
             Allocation(3.0, "bops", "k", 0.1, 1.0, 0.1, 1, 1, 0.8, 0.7)]  # not in phi
    phi = S.downstream_metrics({"layer_spearman": 0.5}, alloc, alpha=0.25)["fitness"]
    assert phi == pytest.approx(0.25 * 0.5 + 0.75 * 0.8)
    assert np.isnan(S.downstream_metrics({"layer_spearman": None}, alloc, 0.25)["fitness"])
    assert np.isnan(S.downstream_metrics({"layer_spearman": 0.5}, [], 0.25)["fitness"])


def test_register_refuses_duplicates_and_bad_levels():
    with pytest.raises(MqbenchError, match="registered twice"):
        S.register("spearman", label="x", tex="x", text="x", description="x")(len)
    with pytest.raises(MqbenchError, match="level"):
        S.register("new", label="x", tex="x", text="x", description="x", level="model")
    with pytest.raises(MqbenchError, match="only config-level"):
        S.register("new", label="x", tex="x", text="x", description="x", level="layer",
                   bootstrap=True)
    assert "new" not in S.METRICS
