"""Bit configurations: keys, validation, costs against hand counts, stratified sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.quant.space import BitConfig, build_space, sample_configs


def _space(weight_bits=(2, 3, 4), act_bits=(8,)):
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(),
                      nn.Linear(4 * 4 * 4, 3))
    # module "2" is tied to "0": they share a bit-width
    return build_space(m, torch.zeros(1, 1, 6, 6), ("*",), (), {"2": "0"}, weight_bits, act_bits)


def test_costs_hand_counted():
    s = _space()
    assert s.units == ("0", "4") and s.unit_of == (0, 0, 1)
    assert s.params == (36, 16, 192)
    # conv 3x3 on 6x6 -> 4x4x4 outputs x 9 MACs; 1x1 conv 4x4x4 x 4; linear 3 x 64
    assert s.macs == (64 * 9, 64 * 4, 3 * 64)
    cfg = BitConfig((2, 4), (8, 8))
    assert s.size_bits(cfg) == 2 * 36 + 2 * 16 + 4 * 192
    assert s.bops(cfg) == 576 * 2 * 8 + 256 * 2 * 8 + 192 * 4 * 8
    assert s.unit_params().tolist() == [52, 192]


def test_key_round_trip_and_malformed():
    cfg = BitConfig((2, 32, 4), (8, 8, 32))
    assert cfg.key == "w:2.32.4|a:8.8.32"
    assert BitConfig.from_key(cfg.key) == cfg
    for bad in ("w:2.3", "a:8|w:2", "w:2.x|a:8", "__import__('os')"):
        with pytest.raises(MqbenchError, match="malformed"):
            BitConfig.from_key(bad)


def test_validation_errors():
    s = _space()
    assert s.from_mapping({"0": 2}) == BitConfig((2, 4), (8, 8))
    with pytest.raises(MqbenchError, match="tied to '0'"):
        s.from_mapping({"2": 3})
    with pytest.raises(MqbenchError, match="not a unit"):
        s.from_mapping({"fc": 3})
    with pytest.raises(MqbenchError, match="not in the task's choices"):
        s.validate(BitConfig((5, 4), (8, 8)))
    with pytest.raises(MqbenchError, match="this task has 2 units"):
        s.validate(BitConfig((4,), (8,)))


def test_tie_errors():
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1))
    with pytest.raises(MqbenchError, match="did you mean"):
        build_space(m, torch.zeros(1, 1, 2, 2), ("*",), (), {"1": "00"}, (2,), (8,))


def test_sampling_distinct_deterministic_and_covering():
    m = nn.Sequential(*[nn.Linear(8 * 2**(i % 3), 8 * 2**((i + 1) % 3)) for i in range(9)])
    s = build_space(m, torch.zeros(1, 8), ("*",), (), {}, (2, 3, 4, 8), (8,))
    a = sample_configs(s, 200, 10, seed=0)
    assert a == sample_configs(s, 200, 10, seed=0)
    assert a != sample_configs(s, 200, 10, seed=1)
    assert len({c.key for c in a}) == 200
    uniform = {s.uniform(b).key for b in s.weight_bits}
    assert not uniform & {c.key for c in a}
    lo, hi = s.size_bits(s.uniform(2)), s.size_bits(s.uniform(8))
    bins = {min(int((s.size_bits(c) - lo) / (hi - lo) * 10), 9) for c in a}
    assert bins == set(range(10))  # every size stratum is populated


def test_sampling_small_space_is_exhaustive():
    s = _space(weight_bits=(2, 4))
    got = sample_configs(s, 100, 4, seed=0)
    assert len(got) == 2 * 2 - 2  # all non-uniform configurations
