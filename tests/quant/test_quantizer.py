"""Quantizer against hand-computed cases and independent references (torch's fake quant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.quant.quantizer import (
    FP,
    WEIGHT_ALPHAS,
    LayerBits,
    calibrate_act,
    fold_batchnorm,
    prepare,
    quantize,
    quantize_weight,
    weight_scale,
)


def test_weight_2bit_hand_computed():
    # c = max|w| = 1, s = c / 2^(b-1) = 0.5, levels {-2,-1,0,1}*s; 0.5/0.5 rounds half to even.
    w = torch.tensor([[1.0, -0.5, 0.25, -1.0]])
    assert quantize_weight(w, 2, "max").tolist() == [[0.5, -0.5, 0.0, -1.0]]


def test_weight_values_on_grid_are_unchanged():
    s = 1 / 128
    w = torch.tensor([[-1.0, -0.5, 0.25, 127 * s, 3 * s]])
    assert torch.equal(quantize_weight(w, 8, "max"), w)


def test_weight_levels_and_bits():
    w = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    for bits in (2, 3, 4, 8):
        q = quantize_weight(w, bits)
        scale = weight_scale(w, bits)
        ints = q / scale[:, None]
        assert torch.allclose(ints, ints.round(), atol=1e-4)
        assert ints.min() >= -(2 ** (bits - 1)) - 1e-4 and ints.max() <= 2 ** (bits - 1) - 1 + 1e-4
        for row in q:
            assert len(torch.unique(row)) <= 2**bits
    assert torch.equal(quantize_weight(w, FP), w)


def test_mse_clipping_matches_brute_force_numpy():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 200)).astype(np.float32)
    w[0, 0] = 12.0  # an outlier: MSE clipping must cut it
    for bits in (2, 3, 4):
        half = 2 ** (bits - 1)
        expected = []
        for row in w:
            best = None
            for alpha in WEIGHT_ALPHAS.numpy():
                s = np.float32(alpha) * np.abs(row).max() / half
                err = ((np.clip(np.round(row / s), -half, half - 1) * s - row) ** 2).sum()
                if best is None or err < best[0] - 1e-9 * max(1.0, best[0]):
                    best = (err, s)
            expected.append(best[1])
        got = weight_scale(torch.from_numpy(w), bits, "mse").numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        mse_err = ((quantize_weight(torch.from_numpy(w), bits) - torch.from_numpy(w)) ** 2).sum()
        max_err = ((quantize_weight(torch.from_numpy(w), bits, "max") - torch.from_numpy(w)) ** 2).sum()
        assert mse_err <= max_err
    assert weight_scale(torch.from_numpy(w), 2)[0] < 12.0 / 2  # outlier channel was clipped


def test_channels_are_independent():
    a = torch.randn(1, 30, generator=torch.Generator().manual_seed(3))
    both = torch.cat([a, 4 * a])  # power-of-two scaling is exact in float
    q = quantize_weight(both, 3)
    assert torch.equal(q[1], 4 * q[0])


def test_activation_hand_computed_and_matches_torch():
    # lo=-1, hi=3, 2 bits: s = 4/3, z = round(0.75) = 1.
    q = calibrate_act(-1.0, 3.0, torch.empty(0), 2, "minmax")
    assert q.scale == pytest.approx(4 / 3) and q.zero_point == 1
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, 10.0, -5.0])
    expected = torch.tensor([-1, 0, 1, 2, 2, -1]) * (4 / 3)
    assert torch.allclose(q(x), expected)
    ref = torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, 0, 3)
    assert torch.allclose(q(x), ref)


def test_activation_mse_not_worse_than_minmax():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0)).relu()
    x[0] = 40.0
    mm = calibrate_act(0.0, 40.0, x, 4, "minmax")
    mse = calibrate_act(0.0, 40.0, x, 4, "mse")
    assert ((mse(x) - x) ** 2).sum() <= ((mm(x) - x) ** 2).sum()
    assert mse.zero_point == 0  # non-negative input -> unsigned grid


def _conv_bn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                      nn.Flatten(), nn.Linear(5 * 6 * 6, 4))
    bn = m[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


def test_fold_batchnorm_preserves_function_and_model():
    m = _conv_bn()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    folded = fold_batchnorm(m)
    x = torch.randn(4, 3, 6, 6)
    assert isinstance(folded[1], nn.Identity)
    assert torch.allclose(folded(x), m(x), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_quantize_verb():
    m = _conv_bn()
    x = torch.randn(8, 3, 6, 6)
    fp = quantize(m, {"0": LayerBits(FP, FP), "4": LayerBits(FP, FP)}, x)
    assert torch.allclose(fp(x), m(x), atol=1e-5)
    q = quantize(m, {"0": LayerBits(2, 8)}, x)
    folded = fold_batchnorm(m)
    assert torch.allclose(q[0].weight, quantize_weight(folded[0].weight, 2), atol=1e-7)
    assert not torch.allclose(q(x), m(x), atol=1e-3)
    with pytest.raises(MqbenchError, match="not a Conv2d/Linear"):
        quantize(m, {"1": LayerBits(4, 8)}, x)


def test_prepared_switching_is_exact():
    m = _conv_bn()
    x = torch.randn(8, 3, 6, 6)
    qm = prepare(m, ["0", "4"], x, (2, 4), (8,))
    out4 = qm.apply({"0": LayerBits(4, 8)})(x).clone()
    qm.apply({"0": LayerBits(2, 8), "4": LayerBits(2, 8)})(x)
    assert torch.equal(qm.apply({"0": LayerBits(4, 8)})(x), out4)
    with pytest.raises(MqbenchError, match="not prepared"):
        qm.apply({"0": LayerBits(3, 8)})
    with pytest.raises(MqbenchError, match="not a quantizable layer"):
        qm.apply({"nope": LayerBits(4, 8)})
