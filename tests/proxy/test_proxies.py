"""Proxies against hand computations, the Hessian estimators against exact Hessians and
PyHessian, and the conformance check run over every registered proxy."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.proxy.conformance import check_proxy, default_configs
from mqbench.proxy.context import Stats, hessian_top_eig, hessian_trace
from mqbench.proxy.contract import Proxy, damage_matrix, list_proxies
from mqbench.task.spec import load_task
from mqbench.testing import write_task
from mqbench.truth.bench import open_bench

PROXIES = list_proxies()
BITS = (2, 4, 8)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_stats(tmp_path_factory):
    """Statistics of the tiny digits task, computed once in a private cache."""
    root = tmp_path_factory.mktemp("proxy_stats")
    (root / "tasks").mkdir()
    write_task(root / "tasks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MQBENCH_TASKS", str(root / "tasks"))
        mp.setenv("MQBENCH_CACHE", str(root / "cache"))
        stats = Stats(open_bench(load_task("tiny"), progress=False))
        stats.compute_all()
    return stats


def fake_stats(seed: int = 0) -> SimpleNamespace:
    """Hand-made statistics: three convs (a 1x1 shortcut tied to c2) and a linear layer."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"c1": (4, 1, 3, 3), "c2": (6, 4, 3, 3), "ds": (6, 1, 1, 1), "fc": (3, 6)}
    outs = {"c1": (8, 4, 5, 5), "c2": (8, 6, 3, 3), "ds": (8, 6, 3, 3), "fc": (8, 3)}
    modules = tuple(shapes)

    def rand(shape):
        return torch.randn(shape, generator=g)
    vg = {m: rand(s) for m, s in shapes.items()}
    vg["c2"] = torch.where(vg["c2"].abs() < 0.3, torch.zeros(()), vg["c2"])  # abslog's zeros
    params = np.array([int(np.prod(s)) for s in shapes.values()])
    return SimpleNamespace(
        modules=modules, units=("c1", "c2", "fc"), unit_of=(0, 1, 1, 2),
        weight_bits=BITS, act_bits=(8,), params=params,
        macs=np.array([900, 1944, 54, 18]), depth=np.arange(4), num_layers=4,
        weights={m: rand(s) for m, s in shapes.items()},
        inputs={m: rand((8, 3)) for m in modules},
        outputs={m: rand(s) for m, s in outs.items()},
        grads={m: rand(s) for m, s in shapes.items()},
        virtual_grads=vg,
        synflow={m: rand(s).abs() for m, s in shapes.items()},
        hessian_trace=np.array([0.5, 2.0, 0.25, 3.0]),
        hessian_trace_se=np.array([0.1, 0.1, 0.1, 0.1]),
        hessian_eig=np.array([0.2, 0.7, 0.1, 0.9]),
        perturbation=np.outer(params, [1.0, 0.1, 0.001]),
    )


def run(name: str, stats, *args):
    return PROXIES[name].fn(stats, *args)


def as_vector(raw, names) -> np.ndarray:
    return np.array([raw[n] for n in names]) if isinstance(raw, dict) else np.asarray(raw)


# --------------------------------------------------------------------------- layer proxies
def test_tap_hand_computed():
    s = fake_stats()
    s.weights = {m: torch.full(w.shape, 0.5) for m, w in s.weights.items()}
    s.inputs = {
        "c1": torch.tensor([0.0, 1.0] * 8),  # two equally filled bins: log 2
        "c2": torch.full((16,), 3.0),  # constant: entropy 0
        "ds": torch.tensor([0.0, 1.0, 2.0, 3.0] * 4),  # bins 0, 85, 170, 255: log 4
        "fc": torch.tensor([0.0] * 12 + [1.0] * 4),  # p = (3/4, 1/4)
    }
    norm = {m: 0.5 * np.sqrt(w.numel()) for m, w in s.weights.items()}
    ent = {"c1": np.log(2), "c2": 0.0, "ds": np.log(4),
           "fc": -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))}
    want = [norm[m] * ent[m] * np.exp(-i / 4) for i, m in enumerate(s.modules)]
    got = as_vector(run("tap", s), s.modules)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_hessian_proxies_are_per_parameter():
    s = fake_stats()
    np.testing.assert_allclose(as_vector(run("hawqv2", s), s.modules),
                               s.hessian_trace / s.params, rtol=1e-12)
    np.testing.assert_allclose(as_vector(run("hawq", s), s.modules),
                               s.hessian_eig / s.params, rtol=1e-12)


def test_weight_snip_synflow_fisher_qe_hand_computed():
    s = fake_stats()
    w, gr = s.weights, s.grads
    cases = {
        "weight_norm": [float((w[m].double() ** 2).sum()) ** 0.5 for m in s.modules],
        "snip": [float((gr[m].double() * w[m].double()).abs().sum()) for m in s.modules],
        "synflow": [float(s.synflow[m].double().sum()) for m in s.modules],
        "fisher": [float((gr[m].double() ** 2).sum()) / n for m, n in zip(s.modules, s.params)],
    }
    for name, want in cases.items():
        np.testing.assert_allclose(as_vector(run(name, s), s.modules), want, rtol=1e-12,
                                   err_msg=name)
    s.outputs = {m: torch.tensor([0.0, 1.0, 2.0, 3.0] * 2) for m in s.modules}
    np.testing.assert_allclose(as_vector(run("qe", s), s.modules), np.log(4), rtol=1e-12)


def test_random_is_fixed_per_name():
    s = fake_stats()
    a = run("random", s)
    s2 = fake_stats(seed=1)
    s2.modules = tuple(reversed(s2.modules))
    assert run("random", s2) == a  # depends on the names only
    assert all(0 <= v < 1 for v in a.values()) and len(set(a.values())) == len(a)


# --------------------------------------------------------------------------- bit-aware proxies
def _score(p, stats, w_bits) -> float:
    """Predicted quality of a configuration (one weight bit-width per unit)."""
    damage, _ = damage_matrix(p, p.fn(stats), stats)
    idx = [stats.weight_bits.index(b) for b in w_bits]
    return -float(damage[np.arange(len(idx)), idx].sum())


@pytest.mark.parametrize("name, per_module", [
    ("bparams", lambda s: s.params.astype(float)),
    ("bops", lambda s: s.macs * 8.0),
    ("emq_hawqv1", lambda s: s.hessian_eig),
    ("emq_hawqv2", lambda s: s.hessian_trace),
    ("bsnip", lambda s: np.array([float((s.grads[m] * s.weights[m]).abs().sum())
                                  for m in s.modules])),
    ("bsynflow", lambda s: np.array([float(s.synflow[m].sum()) for m in s.modules])),
])
def test_bit_weighted_baselines(name, per_module):
    """Predicted quality = sum_i s_i * b_i (more bits on a layer = better), sensitivity > 0."""
    s = fake_stats()
    p = PROXIES[name]
    cfg = (2, 8, 4)
    want = sum(v * cfg[u] for v, u in zip(per_module(s), s.unit_of))
    assert _score(p, s, cfg) == pytest.approx(want, rel=1e-6)
    assert _score(p, s, (8, 8, 8)) > _score(p, s, (2, 2, 2))
    _, sens = damage_matrix(p, p.fn(s), s)
    assert np.all(sens > 0)


def _cka_feature_space(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in feature space (Kornblith et al. 2019, Eq. 5): an independent route."""
    x, y = x - x.mean(0), y - y.mean(0)
    return (np.linalg.norm(y.T @ x) ** 2
            / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_ompq_matches_independent_cka():
    s = fake_stats()
    feats = [s.outputs[u].double().reshape(8, -1).numpy() for u in s.units]
    n = len(feats)
    orm = np.array([[_cka_feature_space(feats[i], feats[j]) for j in range(n)]
                    for i in range(n)])
    assert np.allclose(np.diag(orm), 1.0)
    theta = np.exp(-(orm.sum(1) - 1.0))
    c = np.array([theta[i:].mean() for i in range(n)])
    np.testing.assert_allclose(run("ompq", s), -np.outer(c, BITS), rtol=1e-9)

    feats = [s.outputs[m].double().reshape(8, -1).numpy() for m in s.modules]
    orm = np.array([[_cka_feature_space(a, b) for b in feats] for a in feats])
    theta = np.exp(-(orm.sum(1) - 1.0))
    np.testing.assert_allclose(run("emq_ompq", s), -np.outer(theta, BITS) / 4, rtol=1e-9)


# --------------------------------------------------------------------------- EMQ
def _emq_literal(stats, w_bits, reverse: bool) -> float:
    """EMQ's tree evaluation written out as their code runs it (LPZero 4da0310 operators)."""
    convs = [m for m in stats.modules if stats.weights[m].dim() == 4]
    grads = [stats.virtual_grads[m].clone() for m in convs]
    grads = grads[::-1] if reverse else grads
    weights = [stats.weights[m].clone() for m in convs]
    bits = list(w_bits) if reverse else [w_bits[stats.unit_of[stats.modules.index(m)]]
                                         for m in convs]
    scores = []
    for g, w, b in zip(grads, weights, bits):
        a1 = g * b
        a1[a1 == 0] = 1
        a1 = torch.softmax(torch.log(a1.abs()), dim=0)
        a2 = torch.relu(w * b)
        a2[a2 <= 0] = 0
        scores.append(float(a1.mean()) * float(torch.sqrt(a2).mean()))
    return sum(scores) / len(scores)


def _emq_closed_form(stats, w_bits, reverse: bool) -> float:
    """ANCHORS' reduction: mean_k sqrt(b_k) * mean(sqrt(ReLU(W_k))) / C_out(gradient's layer)."""
    convs = [m for m in stats.modules if stats.weights[m].dim() == 4]
    k_max = min(len(convs), len(stats.units)) if reverse else len(convs)
    out = 0.0
    for k in range(k_max):
        m, g = convs[k], convs[len(convs) - 1 - k] if reverse else convs[k]
        b = w_bits[k] if reverse else w_bits[stats.unit_of[stats.modules.index(m)]]
        c_out = stats.weights[g].shape[0]
        out += np.sqrt(b) * float(torch.sqrt(torch.relu(stats.weights[m].double())).mean()) \
            / c_out
    return out / k_max


@pytest.mark.parametrize("name, reverse", [("emq", True), ("emq_aligned", False)])
def test_emq_decoding(name, reverse):
    s = fake_stats()
    p = PROXIES[name]
    assert p.kind == "layer_bit"
    for cfg in [(2, 4, 8), (8, 2, 2), (4, 4, 4), (2, 8, 4)]:
        got = _score(p, s, cfg)
        assert got == pytest.approx(_emq_closed_form(s, cfg, reverse), rel=1e-9)
        assert got == pytest.approx(_emq_literal(s, cfg, reverse), rel=1e-5)
    assert _score(PROXIES["emq"], s, (2, 4, 8)) != pytest.approx(
        _score(PROXIES["emq_aligned"], s, (2, 4, 8)))


def test_emq_needs_conv_layers():
    s = fake_stats()
    s.weights = {m: w.reshape(w.shape[0], -1) for m, w in s.weights.items()}
    with pytest.raises(MqbenchError, match="no Conv2d"):
        run("emq", s)


# --------------------------------------------------------------------------- Hessian
def _mlp(dims, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(dims[0], dims[1], bias=False), nn.Tanh(),
                          nn.Linear(dims[1], dims[2], bias=False)).double()
    for p in model.parameters():
        p.requires_grad_(False)
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / np.sqrt(p.shape[1]))
    x = torch.randn(n, dims[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, dims[2], (n,), generator=g)
    return model, x, y


def _exact_hessian(model, x, y) -> tuple[np.ndarray, list[slice]]:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v):
        ps = {n: t.reshape(s) for n, t, s in zip(names, v.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)
    h = torch.autograd.functional.hessian(loss, flat).numpy()
    ends = np.cumsum([0, *sizes])
    return h, [slice(a, b) for a, b in itertools.pairwise(ends)]


def test_hutchinson_trace_matches_exact_hessian():
    model, x, y = _mlp((5, 4, 3), 16)
    h, blocks = _exact_hessian(model, x, y)
    probes = 2048
    tr, se = hessian_trace(model, ["0", "2"], x, y, probes=probes, seed=0)
    for l, b in enumerate(blocks):
        block = h[b, b]
        exact = np.trace(block)
        # Rademacher probes on the block alone: Var(v^T H_ll v) = 2 sum_{i != j} H_ij^2.
        var = 2 * ((block ** 2).sum() - (np.diag(block) ** 2).sum())
        assert se[l] == pytest.approx(np.sqrt(var / probes), rel=0.2)
        assert abs(tr[l] - exact) <= 3 * se[l], (l, tr[l], exact, se[l])
        assert tr[l] == pytest.approx(exact, rel=0.05)


def test_power_iteration_matches_exact_top_eigenvalue():
    model, x, y = _mlp((5, 4, 3), 16)
    h, blocks = _exact_hessian(model, x, y)
    eig = hessian_top_eig(model, ["0", "2"], x, y)
    for l, b in enumerate(blocks):
        ev = np.linalg.eigvalsh(h[b, b])
        top = ev[np.argmax(np.abs(ev))]  # power iteration finds the largest magnitude
        assert eig[l] == pytest.approx(top, rel=0.05), (l, eig[l], ev)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")  # PyHessian's
def test_trace_agrees_with_pyhessian(capsys):
    pyhessian = pytest.importorskip("pyhessian", reason="pyhessian is not installed")
    model, x, y = _mlp((32, 24, 10), 64)
    for p in model.parameters():  # bias-free model: every parameter is a layer weight
        p.requires_grad_(True)
    h, _ = _exact_hessian(model, x, y)
    exact = float(np.trace(h))
    probes = 512  # SE ~1% of the trace; 5% tolerance is > 5 SE

    t0 = time.perf_counter()
    tr, se = hessian_trace(model, ["0", "2"], x, y, probes=probes, seed=1)
    ours_s = time.perf_counter() - t0
    ours = float(tr.sum())

    for p in model.parameters():  # hessian_trace switched them off again
        p.requires_grad_(True)
    with torch.random.fork_rng():  # PyHessian draws its probes from the global generator
        torch.manual_seed(0)
        t0 = time.perf_counter()
        comp = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        samples = comp.trace(maxIter=probes, tol=float("-inf"))  # fixed count, no early stop
        theirs_s = time.perf_counter() - t0
    theirs, theirs_se = float(np.mean(samples)), float(np.std(samples, ddof=1) / np.sqrt(probes))
    model.zero_grad(set_to_none=True)

    with capsys.disabled():
        print(f"\n  Hessian trace, {sum(p.numel() for p in model.parameters())} params, "
              f"{probes} probes: exact {exact:.4f}; mqbench {ours:.4f} "
              f"(SE {np.sqrt((se ** 2).sum()):.4f}, {ours_s:.2f} s); "
              f"PyHessian {theirs:.4f} (SE {theirs_se:.4f}, {theirs_s:.2f} s)")
    assert len(samples) == probes
    assert ours == pytest.approx(theirs, rel=0.05)
    assert ours == pytest.approx(exact, rel=0.05)
    assert theirs == pytest.approx(exact, rel=0.05)


# --------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("name", sorted(PROXIES))
def test_registered_proxy_conforms(name, tiny_stats):
    check_proxy(PROXIES[name], tiny_stats)


def test_config_proxies_get_configurations(tiny_stats):
    calls = []

    def fn(stats, configs):
        calls.append(len(configs))
        return [float(sum(c.w)) for c in configs]
    check_proxy(Proxy("sum_bits", 1, "", "config", fn), tiny_stats)
    assert calls == [len(default_configs(tiny_stats))] * 3


def _mutates(stats):
    stats.weights["c2"].add_(1.0)
    return [1.0] * len(stats.modules)


_calls = iter(range(1_000_000))


@pytest.mark.parametrize("fn, kind, rule", [
    (lambda s: [1.0] * (len(s.modules) + 1), "layer", "shape"),
    (lambda s: np.ones((len(s.modules), 2)), "layer_bit", "shape"),
    (lambda s: [float("nan")] * len(s.modules), "layer", "NaN"),
    (lambda s: [1.0], "config", "must return"),
    (_mutates, "layer", "mutated"),
    (lambda s: [float(next(_calls))] * len(s.modules), "layer", "not deterministic"),
    (lambda s: [float(w.numel()) for w in s.weights.values()], "layer", "iteration order"),
    (lambda s: 1 / 0, "layer", "ZeroDivisionError"),
])
def test_check_proxy_catches(fn, kind, rule):
    bad = Proxy("bad", 1, "", kind, fn if kind != "config" else (lambda s, c: fn(s)))
    with pytest.raises(MqbenchError, match=rule):
        check_proxy(bad, fake_stats())


def test_hessian_with_batchnorm_unfolded(tiny_stats):
    """hessian_bn="unfolded" takes Tr(H) on the conv weights of the model with its BatchNorm
    (HAWQ's reference parametrisation). Folding is W' = f W per output channel (f = gamma /
    sigma), so the unfolded Hessian's diagonal is f^2 times the folded one's: the unfolded
    Hutchinson trace lies within 4 standard errors of sum f^2 diag(H_folded), with the
    folded diagonal computed exactly (one HVP per weight of the stem conv)."""
    from mqbench.quant.quantizer import fold_batchnorm

    bench = tiny_stats._bench
    un = Stats(bench, folder=tiny_stats.shared_folder, hessian_bn="unfolded")
    assert un.path("hessian-v3") != tiny_stats.path("hessian-v3")
    assert un.path("gradients-v2") == tiny_stats.path("gradients-v2")
    x, y = tiny_stats._batch()
    folded = fold_batchnorm(bench.model)
    w = folded.get_submodule("conv1").weight
    w.requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(folded(x), y.reshape(-1)), w, create_graph=True)[0]
    diag = torch.zeros(w.numel())
    for i in range(w.numel()):
        e = torch.zeros(w.numel())
        e[i] = 1.0
        hv = torch.autograd.grad(g, w, grad_outputs=e.view_as(w), retain_graph=True)[0]
        diag[i] = hv.reshape(-1)[i]
    bn = bench.model.bn1 if hasattr(bench.model, "bn1") else None
    assert bn is not None, "the tiny ResNet-8's stem conv is followed by bn1"
    f = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    want = float((diag.view(w.shape[0], -1) * (f ** 2)[:, None]).sum())
    i = un.modules.index("conv1")
    got, se = float(un.hessian_trace[i]), float(un.hessian_trace_se[i])
    assert abs(got - want) <= 4 * se, (got, want, se)
    assert float(diag.sum()) == pytest.approx(float(tiny_stats.hessian_trace[i]),
                                              abs=4 * float(tiny_stats.hessian_trace_se[i]))
    with pytest.raises(MqbenchError, match="hessian_bn"):
        Stats(bench, hessian_bn="sideways")
