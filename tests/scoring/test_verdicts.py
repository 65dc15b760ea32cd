"""Verdict statistics: the vectorised bootstrap, Holm, Kendall's W, floors, oracles, in-sample
marks and the paired comparisons, each against an independent reference (scipy, statsmodels,
hand-computed cases, or a recomputation from the shipped table)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mqbench.errors import MqbenchError
from mqbench.proxy.context import Stats
from mqbench.proxy.contract import Proxy, damage_matrix
from mqbench.quant.space import BitConfig
from mqbench.scoring import floors as F
from mqbench.scoring import metrics as S
from mqbench.scoring import resample as RS
from mqbench.scoring import verdicts as V
from mqbench.scoring.harness import config_matrix, config_scores
from mqbench.scoring.record import Record
from mqbench.task.spec import load_task
from mqbench.truth.bench import open_bench

REPO = Path(__file__).resolve().parents[2]
# The audit's figures (uniform floor 0.774, count_low_bits 0.866, ...) are of fmnist-resnet8's
# retired protocol-1 table: its task file, shipped table and records stay in the repository
# (tasks/v1/, tasks/artifacts/fmnist-resnet8-v1/, leaderboard/archive/), loaded by path.
TASK = str(REPO / "tasks" / "v1" / "fmnist-resnet8.toml")
RECORDS_V1 = REPO / "leaderboard" / "archive" / "fmnist-resnet8-v1"


def _tied_data(n=60, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 12, n).astype(float), rng.integers(0, 15, n).astype(float),
            np.array([f"k{i:03d}" for i in rng.permutation(n)]))


# ---------------------------------------------------------------- the vectorised bootstrap
def test_counts_are_the_loops_draws():
    counts = RS.bootstrap_counts(37, 25, seed=4)
    rng = np.random.default_rng(4)
    for row in counts:
        assert np.array_equal(row, np.bincount(rng.integers(0, 37, 37), minlength=37))


def test_weighted_statistics_equal_scipy_on_the_resampled_data():
    x, y, keys = _tied_data()
    counts = RS.bootstrap_counts(len(x), 40, seed=2)
    rho, tau = RS.spearman(x, y, counts), RS.kendall(x, y, counts)
    top = RS.spearman_top(x, y, keys, 0.3, counts)
    prec = RS.precision_top(x, y, keys, 0.2, counts)
    for b, c in enumerate(counts):
        idx = np.repeat(np.arange(len(x)), c.astype(int))
        assert rho[b] == pytest.approx(stats.spearmanr(x[idx], y[idx]).statistic, abs=1e-12)
        assert tau[b] == pytest.approx(stats.kendalltau(x[idx], y[idx]).statistic, abs=1e-12)
        assert top[b] == pytest.approx(S.spearman_at_topk(x[idx], y[idx], keys[idx], 0.3),
                                       abs=1e-12)
        assert prec[b] == pytest.approx(S.precision_at_topk(x[idx], y[idx], keys[idx], 0.2))
    assert np.isnan(RS.spearman(np.ones(5), np.arange(5.0)))[0]


def test_config_metrics_equals_the_per_resample_loop():
    x, y, keys = _tied_data(80, seed=3)
    got = S.config_metrics(x, y, keys, bootstrap=200, seed=9)
    rng = np.random.default_rng(9)
    draws: dict[str, list[float]] = {}
    for _ in range(200):  # the implementation before vectorisation
        idx = rng.integers(0, len(x), len(x))
        for m in S.at_level("config"):
            if m.bootstrap:
                draws.setdefault(m.name, []).append(m.fn(S.ConfigData(x[idx], y[idx], keys[idx])))
    for name, vals in draws.items():
        vals = np.asarray(vals)
        vals = vals[np.isfinite(vals)]
        assert got[name + "_lo"] == pytest.approx(np.percentile(vals, 2.5), abs=1e-12)
        assert got[name + "_hi"] == pytest.approx(np.percentile(vals, 97.5), abs=1e-12)


# ---------------------------------------------------------------- inference, by hand
def test_holm_by_hand_and_against_statsmodels():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.06, 0.04*1) = 0.06
    assert RS.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert RS.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = RS.holm([0.01, np.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.random(int(rng.integers(2, 25))) ** 3
        want = multitest.multipletests(q, alpha=0.05, method="holm")[1]
        assert RS.holm(q) == pytest.approx(want, abs=1e-12)


def test_paired_pvalue_by_hand():
    assert RS.paired_pvalue(np.array([-1.0, 1, 2, 3])) == pytest.approx(2 * 2 / 5)
    assert RS.paired_pvalue(np.arange(1.0, 10)) == pytest.approx(2 / 10)
    assert RS.paired_pvalue(np.zeros(50)) == 1.0  # identical proxies never differ


def test_paired_bootstrap_by_hand():
    """truth 1..4, proxy A = truth, proxy B = reversed: on every resample with at least two
    distinct values A has ρ = 1 and B has ρ = −1, so Δ = 2 exactly; a proxy compared with
    itself differs by exactly 0 because both are scored on the same resamples."""
    truth = np.array([1.0, 2, 3, 4])
    counts = RS.bootstrap_counts(4, 300, seed=0)
    a, b = RS.spearman(truth, truth, counts), RS.spearman(-truth, truth, counts)
    ok = np.isfinite(a)
    distinct = (counts > 0).sum(axis=1)
    assert np.array_equal(ok, distinct >= 2)  # a constant resample has no correlation
    assert np.all(a[ok] == 1) and np.all(b[ok] == -1)
    assert RS.percentile_ci(a - b) == (2.0, 2.0)
    assert RS.paired_pvalue(a - b) == pytest.approx(2 / (ok.sum() + 1))
    assert RS.paired_pvalue(a - a) == 1.0


def test_concordance_against_hand_and_mean_spearman():
    same = np.array([[4.0, 3, 2, 1]] * 3)
    assert RS.concordance(same)[0] == pytest.approx(1.0)
    # two raters in exactly opposite order: rank sums are all equal, W = 0
    assert RS.concordance(np.array([[1.0, 2, 3], [3, 2, 1]]))[0] == pytest.approx(0.0)
    rng = np.random.default_rng(5)
    v = rng.random((4, 9))
    w, p = RS.concordance(v)
    rho = np.mean([stats.spearmanr(v[i], v[j]).statistic
                   for i, j in itertools.combinations(range(4), 2)])
    assert rho == pytest.approx((4 * w - 1) / 3)
    assert p == pytest.approx(stats.chi2.sf(4 * 8 * w, 8))


def test_permutation_pvalue_exact_by_hand_and_vs_scipy():
    x = np.arange(4.0)
    assert RS.permutation_pvalue(x, x) == pytest.approx(2 / 24)  # identity and reversal
    rng = np.random.default_rng(2)
    a, b = rng.random(7), rng.random(7)
    ref = stats.permutation_test((a,), lambda s: stats.spearmanr(s, b).statistic,
                                 permutation_type="pairings", n_resamples=np.inf)
    assert RS.permutation_pvalue(a, b) == pytest.approx(ref.pvalue)
    assert RS.unit_bootstrap(x, x, 200) == (1.0, 1.0)


# ---------------------------------------------------------------- floors and oracles
@pytest.fixture(scope="module")
def data():
    return F.load_task_data(load_task(TASK))


@pytest.fixture(scope="module")
def records():
    return [Record.from_json(p.read_text()) for p in sorted(RECORDS_V1.glob("*.json"))]


@pytest.fixture(scope="module")
def verdict(data, records):
    return V.task_verdict(TASK, records)


def test_floors_recomputed_from_the_table(data):
    task = load_task(TASK)
    bench = open_bench(task, progress=False)
    space = bench.space
    rows = data.table.configs().set_index("key").loc[data.keys]
    bits = np.array([BitConfig.from_key(k).w for k in data.keys])
    params = np.bincount(space.unit_of, weights=space.params, minlength=len(space.units))
    floors = F.floor_scores(data)
    assert np.array_equal(floors["count_low_bits"], -(bits == 2).sum(axis=1))
    assert np.allclose(floors["size"], bits @ params)
    assert np.array_equal(floors["size"], rows.size_bits.to_numpy())
    # uniform = what the harness gives a layer proxy returning 1 for every module
    ones = Proxy("const", 1, "", "layer", lambda s: None)
    damage, _ = damage_matrix(ones, [1.0] * len(space.modules), Stats(bench))
    assert np.allclose(floors["uniform"], config_scores(damage, config_matrix(space, data.keys)),
                       rtol=1e-12)
    assert S.spearman(floors["uniform"], rows.acc.to_numpy()) == pytest.approx(0.774, abs=5e-4)
    assert S.spearman(floors["count_low_bits"], rows.acc) == pytest.approx(0.866, abs=5e-4)


def test_oracle_is_the_sum_of_single_layer_damages(data):
    table, space_units = data.table, list(data.units)
    fp = table.kind("fp").loss.iloc[0]
    alone = {(r.unit, r.w_bits[space_units.index(r.unit)]): r.loss - fp
             for r in table.kind("layer").itertuples()}
    want = np.array([-sum(alone[(u, b)] for u, b in zip(space_units, BitConfig.from_key(k).w))
                     for k in data.keys])
    oracles = F.oracle_scores(data)
    assert np.allclose(oracles["oracle_additive"], want, rtol=0, atol=1e-12)
    measured = np.array([alone[(u, 2)] for u in space_units])
    assert np.allclose(oracles["oracle_layer"], F.perturbation_scores(data, measured))
    # the curvature oracle's term at the lowest bits is the measurement itself
    s = measured / data.pert[:, 0]
    assert np.allclose(s * data.pert[:, 0], measured)


def test_random_floor_draws_match_a_module_loop(data):
    scores = F.random_scores(data, 3, seed=7)
    s_mod = np.random.default_rng(7).random((3, len(data.unit_of)))
    for d in range(3):
        want = [-sum(s_mod[d, m] * data.pert_modules[m, data.idx[c, u]]
                     for m, u in enumerate(data.unit_of)) for c in range(5)]
        assert np.allclose(scores[d, :5], want)


def test_rules_and_ties(data):
    s = np.arange(1.0, len(data.units) + 1)
    assert np.allclose(F.bit_scores(data, s), (data.bits * s).sum(axis=1))
    assert F.tie_share([1.0, 2.0, 2.0, 3.0]) == 0.5
    low = (data.bits == 2).sum(axis=1)
    alone = sum(int((low == k).sum() == 1) for k in np.unique(low))  # only W2 has 8
    assert F.tie_share(-low.astype(float)) == pytest.approx(1 - alone / len(low))


def test_usable_mask_by_hand(data):
    fp = data.table.kind("fp").acc.iloc[0]
    assert np.array_equal(data.usable, data.table.configs().set_index("key").loc[
        data.keys].acc.to_numpy() >= fp - 0.05)


# ---------------------------------------------------------------- in-sample marks
def test_in_sample_file(tmp_path, monkeypatch):
    assert F.in_sample("discovered_symbolic", "fmnist-resnet8")
    assert not F.in_sample("discovered_symbolic", "fmnist-vit")
    assert not F.in_sample("fisher", "fmnist-resnet8")
    (tmp_path / F.IN_SAMPLE_FILE).write_text('fisher = ["fmnist-vit"]\n')
    monkeypatch.setenv("MQBENCH_PROXIES", str(tmp_path))
    assert F.in_sample("fisher", "fmnist-vit")
    assert F.in_sample("discovered_symbolic", "fmnist-resnet8")
    (tmp_path / F.IN_SAMPLE_FILE).write_text('fisher = "fmnist-vit"\n')
    with pytest.raises(MqbenchError, match="must be a list of task names"):
        F.in_sample("fisher", "fmnist-vit")


# ---------------------------------------------------------------- the verdicts
def test_verdict_matches_records_and_recomputation(verdict, records, data):
    c = verdict.comparisons[("all", "spearman")]
    by = {r.proxy: r for r in records}
    for name, rec in by.items():
        assert c.stats[name].value == pytest.approx(rec.metrics["spearman"], abs=1e-6)
        if rec.metrics.get("layer_spearman") is not None:
            assert verdict.sens[name].value == pytest.approx(rec.metrics["layer_spearman"],
                                                             abs=1e-6)
    assert c.best_floor == "count_low_bits"  # 0.866, level with hawqv2 (the audit's number)
    # Δ, Holm and "tied with the best" recomputed from the shared draws
    proxies = [e.name for e in verdict.entries if e.role == "proxy"]
    p = RS.holm([RS.paired_pvalue(c.draws[n] - c.draws[c.best_floor]) for n in proxies])
    for n, q in zip(proxies, p):
        assert c.stats[n].p_floor == pytest.approx(q)
        assert (c.stats[n].verdict == "above") == (q < V.ALPHA and c.stats[n].delta > 0)
    assert c.best == "fisher" and not c.stats["discovered_symbolic"].tied_best  # in-sample
    assert c.stats["discovered_symbolic"].value > c.stats["fisher"].value
    assert all(not c.stats[e.name].tied_best for e in verdict.entries if e.role != "proxy")
    # the noise ceiling recomputed from the noise rows equals the table's own noise floor
    assert c.ceiling == pytest.approx(float(data.table.meta["noise_spearman_acc"]), abs=1e-12)
    assert verdict.random_draws >= 100 and 0 <= verdict.random_percentile <= 1
    mean, lo, hi = c.random
    assert lo < mean < hi
    # the same resamples for every row: a floor against itself differs by exactly zero
    assert c.stats[c.best_floor].delta_lo == c.stats[c.best_floor].delta_hi == 0


def test_a_protocol2_ceiling_is_the_split_half_repeat():
    """fmnist-resnet8 v2 measured every configuration on two disjoint test halves: its
    ceiling is their agreement (scipy on the raw columns), and it equals the table's own."""
    data = F.load_task_data(load_task("fmnist-resnet8"))
    assert F.noise_source(data) == "half"
    keys, a, b, usable = F.noise_pairs(data)
    rows = data.table.configs().drop_duplicates("key").set_index("key").loc[keys]
    assert len(keys) == data.n
    want = stats.spearmanr(rows.acc_h0, rows.acc_h1).statistic
    assert S.spearman(b, a) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(float(data.table.meta["ceiling_half_configs_all"]), abs=1e-12)
    assert usable.sum() == (rows.acc >= data.table.kind("fp").acc.iloc[0] - 0.05).sum()


def test_rho_sens_at_every_measured_bit_width(data):
    """ρ_sens is reported at each low bit-width whose single-layer rows are all measured
    (checked against scipy), and skipped at one that is not."""
    s = np.arange(1.0, data.pert.shape[0] + 1)
    e = V.Entry("p", "proxy", "layer", np.zeros(data.n), s)
    lowest = data.layer_damage.copy()
    lowest[:, 1:-1] = np.nan
    only = V._by_bits(dataclasses.replace(data, layer_damage=lowest), e)
    assert [b for b, _, _ in only] == [data.weight_bits[0]]
    rng = np.random.default_rng(0)
    full = data.layer_damage.copy()
    full[:, 1:-1] = rng.random((full.shape[0], full.shape[1] - 2))
    more = V._by_bits(dataclasses.replace(data, layer_damage=full), e)
    assert [b for b, _, _ in more] == list(data.weight_bits[:-1])
    cis = V._by_bits_ci(dataclasses.replace(data, layer_damage=full), e)
    for j, ((b, rho, term), ci) in enumerate(zip(more, cis)):
        assert rho == pytest.approx(stats.spearmanr(s, full[:, j]).statistic)
        want = s * (data.pert[:, j] - data.pert[:, -1])
        assert term == pytest.approx(stats.spearmanr(want, full[:, j]).statistic)
        # the interval: a bootstrap over units, recomputed with scipy on each resample
        counts = RS.bootstrap_counts(len(s), V.UNIT_RESAMPLES, data.task.seed)
        draws = []
        for c in counts:
            idx = np.repeat(np.arange(len(s)), c.astype(int))
            if np.ptp(want[idx]) > 0 and np.ptp(full[idx, j]) > 0:
                draws.append(stats.spearmanr(want[idx], full[idx, j]).statistic)
        assert ci == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), abs=1e-9)
    bit = V._by_bits(data, V.Entry("q", "proxy", "layer_bit", np.zeros(data.n), s))
    assert bit[0][2] == pytest.approx(stats.spearmanr(s, full[:, 0]).statistic)


def test_a_bit_width_only_proxy_lands_at_the_floor(records, data):
    """A layer_bit proxy that counts 2-bit units (damage 1 at the lowest bits, else 0) reads
    nothing but bit-widths: its scores are the count_low_bits floor, Δ = 0 on every
    resample, so it is "at floor"; bparams (params x bits) is the size floor exactly."""
    base = next(r for r in records if r.proxy == "bops")
    counts = -(data.bits == 2).sum(axis=1).astype(float)
    fake = dataclasses.replace(base, proxy="counts_2bit", proxy_sha256="x" * 64,
                               scores=dict(zip(data.keys.tolist(), counts.tolist())),
                               sensitivity={u: 1.0 for u in data.units})
    v = V.task_verdict(TASK, [*records, fake])
    c = v.comparisons[("all", "spearman")]
    s = c.stats["counts_2bit"]
    assert c.best_floor == "count_low_bits"
    assert s.delta == 0 and (s.delta_lo, s.delta_hi) == (0, 0) and s.verdict == "at floor"
    assert np.array_equal(c.draws["bparams"], c.draws["size"])
    assert c.stats["bparams"].value == pytest.approx(c.stats["size"].value)


def test_cross_task_of_two_identical_tasks(verdict):
    ct = V.cross_task([verdict, verdict])
    assert ct.kendall_w == pytest.approx(1.0)
    c = verdict.comparisons[("all", "spearman")]
    ranked = [e.name for e in verdict.entries if e.ranked]
    vals = [c.stats[n].value for n in ranked] + [c.stats[c.best_floor].value]
    want = stats.rankdata(-np.array(vals))
    for name, r in zip([*ranked, V.BEST_FLOOR], want):
        assert ct.mean_rank[name][0] == pytest.approx(r)
        assert ct.ranks[name] == (r, r)
    assert ct.beats["fisher"] == (2, 2) and "discovered_symbolic" in ct.left_out
    for n in ct.names:  # the point mean rank lies in its bootstrap interval
        mean, lo, hi = ct.mean_rank[n]
        assert lo - 1e-9 <= mean <= hi + 1e-9 or math.isclose(lo, hi)


def test_calibration_batches_widen_the_interval_and_stay_paired(records, data):
    """A record holding several calibration batches: resample b scores batch b mod n (checked
    against scipy on the resampled data), the per-batch spread is the scipy Spearman of each
    batch, and a proxy whose batches disagree gets a wider interval than with one batch."""
    base = next(r for r in records if r.proxy == "fisher")
    sens = np.array([base.sensitivity[u] for u in data.units])
    rng = np.random.default_rng(5)
    mats = [(sens * rng.lognormal(0, 1.0, len(sens)) ** (i > 0))[:, None] * data.pert
            for i in range(4)]
    batches = {str(i): m.tolist() for i, m in enumerate(mats)}
    scores = [F.damage_scores(data, m) for m in mats]
    first = dict(zip(data.keys.tolist(), scores[0].tolist()))  # the first batch's: `scores`
    one = dataclasses.replace(base, proxy="noisy1", proxy_sha256="a" * 64, scores=first)
    many = dataclasses.replace(one, proxy="noisy4", proxy_sha256="b" * 64,
                               batch_damage=batches)
    v = V.task_verdict(TASK, [*records, one, many])
    c = v.comparisons[("all", "spearman")]
    counts = RS.bootstrap_counts(data.n, v.resamples, data.task.seed)
    for b in (0, 1, 2, 3, 7):
        idx = np.repeat(np.arange(data.n), counts[b].astype(int))
        want = stats.spearmanr(scores[b % 4][idx], data.quality[idx]).statistic
        assert c.draws["noisy4"][b] == pytest.approx(want, abs=1e-10)
        floor = stats.spearmanr(
            F.floor_scores(data)[c.best_floor][idx], data.quality[idx]).statistic
        assert c.draws[c.best_floor][b] == pytest.approx(floor, abs=1e-10)
    mean, std, n = c.stats["noisy4"].batch
    each = [stats.spearmanr(s, data.quality).statistic for s in scores]
    assert n == 4 and mean == pytest.approx(np.mean(each)) and std == pytest.approx(
        np.std(each, ddof=1))
    assert c.stats["noisy4"].value == c.stats["noisy1"].value  # the point: the first batch
    assert c.stats["noisy1"].batch is None
    width = {k: c.stats[k].hi - c.stats[k].lo for k in ("noisy1", "noisy4")}
    assert width["noisy4"] > width["noisy1"]
    # matrices that do not reproduce the record's scores are not trusted
    wrong = dataclasses.replace(many, proxy="wrong", proxy_sha256="c" * 64,
                                batch_damage={k: batches[k] for k in ("1", "2")})
    assert V._batch_scores(data, wrong, scores[0]) is None
