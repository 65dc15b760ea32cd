"""Bit configurations: the task's configuration space, canonical keys, costs and sampling.

A *unit* is a group of modules that share one bit-width (a layer, plus any layers tied to it,
like a residual block's 1x1 downsample conv tied to the block's second conv). A BitConfig
holds one weight and one activation bit-width per unit, in the task's unit order; 32 = float.
Its canonical key, e.g. ``w:4.2.3|a:8.8.8``, is parsed, never eval()'d.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mqbench.errors import MqbenchError, did_you_mean
from mqbench.quant.quantizer import FP, LayerBits, quantizable_layers


@dataclass(frozen=True)
class BitConfig:
    """Per-unit weight and activation bit-widths."""

    w: tuple[int, ...]
    a: tuple[int, ...]

    @property
    def key(self) -> str:
        return "w:" + ".".join(map(str, self.w)) + "|a:" + ".".join(map(str, self.a))

    @staticmethod
    def from_key(key: str) -> "BitConfig":
        try:
            wpart, apart = key.split("|")
            if not (wpart.startswith("w:") and apart.startswith("a:")):
                raise ValueError
            return BitConfig(tuple(int(b) for b in wpart[2:].split(".")),
                             tuple(int(b) for b in apart[2:].split(".")))
        except ValueError:
            raise MqbenchError(f"malformed configuration key {key!r}; expected "
                               f"'w:<b>.<b>...|a:<b>.<b>...'") from None


@dataclass(frozen=True)
class Space:
    """The quantizable units of a model and the bit choices a task allows."""

    modules: tuple[str, ...]  # every quantized module, in model order
    unit_of: tuple[int, ...]  # module index -> unit index
    units: tuple[str, ...]  # unit names (the leader module of each tie group)
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    params: tuple[int, ...]  # weight elements per module
    macs: tuple[int, ...]  # multiply-accumulates per sample per module

    def validate(self, cfg: BitConfig) -> BitConfig:
        """Raise a one-line error unless cfg fits this space (32 = float is always allowed)."""
        n = len(self.units)
        if len(cfg.w) != n or len(cfg.a) != n:
            raise MqbenchError(f"configuration has {len(cfg.w)} weight / {len(cfg.a)} "
                               f"activation bit-widths; this task has {n} units")
        for label, bits, choices in (("weight", cfg.w, self.weight_bits),
                                     ("activation", cfg.a, self.act_bits)):
            for unit, b in zip(self.units, bits):
                if b != FP and b not in choices:
                    raise MqbenchError(f"{label} bit-width {b} for {unit!r} is not in the "
                                       f"task's choices {list(choices)} (or 32 for float)")
        return cfg

    def from_mapping(self, weights: Mapping[str, int],
                     acts: Mapping[str, int] | None = None) -> BitConfig:
        """Build a config from {unit name: bits}; unnamed units get the highest choice."""
        for name in [*weights, *(acts or {})]:
            if name not in self.units:
                tied = [self.units[self.unit_of[i]] for i, m in enumerate(self.modules)
                        if m == name]
                hint = (f"; it is tied to {tied[0]!r}, set that instead" if tied
                        else did_you_mean(name, self.units))
                raise MqbenchError(f"configuration names layer {name!r}, which is not a unit "
                                   f"of this task{hint}")
        cfg = BitConfig(tuple(weights.get(u, self.weight_bits[-1]) for u in self.units),
                        tuple((acts or {}).get(u, self.act_bits[-1]) for u in self.units))
        return self.validate(cfg)

    def layer_bits(self, cfg: BitConfig) -> dict[str, LayerBits]:
        """Per-module bit-widths (tied modules follow their unit) for the quantizer."""
        return {m: LayerBits(cfg.w[u], cfg.a[u]) for m, u in zip(self.modules, self.unit_of)}

    def uniform(self, wb: int, ab: int | None = None) -> BitConfig:
        n = len(self.units)
        return BitConfig((wb,) * n, ((ab or self.act_bits[-1]),) * n)

    def unit_params(self) -> np.ndarray:
        out = np.zeros(len(self.units), dtype=np.int64)
        np.add.at(out, np.asarray(self.unit_of), np.asarray(self.params))
        return out

    def size_bits(self, cfg: BitConfig) -> int:
        """Model size: sum over quantized modules of weight bits x weight elements."""
        return int(sum(cfg.w[u] * p for u, p in zip(self.unit_of, self.params)))

    def bops(self, cfg: BitConfig) -> int:
        """Bit operations per sample: sum of MACs x weight bits x activation bits."""
        return int(sum(m * cfg.w[u] * cfg.a[u] for u, m in zip(self.unit_of, self.macs)))


def build_space(model: nn.Module, example: torch.Tensor, patterns, exclude, tie: Mapping[str, str],
                weight_bits, act_bits) -> Space:
    """Find the quantizable modules, group tied ones and measure params and MACs."""
    modules = quantizable_layers(model, patterns, exclude)
    for follower, leader in tie.items():
        for name in (follower, leader):
            if name not in modules:
                raise MqbenchError(f"quant.tie names {name!r}, which is not a quantizable layer"
                                   f"{did_you_mean(name, modules)}")
        if leader in tie:
            raise MqbenchError(f"quant.tie: {leader!r} is itself tied; tie to its leader")
    units = [m for m in modules if m not in tie]
    unit_of = tuple(units.index(tie.get(m, m)) for m in modules)
    macs: dict[str, int] = {}

    def count(name):
        def hook(mod, _args, out):
            per_out = mod.weight[0].numel()  # MACs per output element (in/groups * kernel)
            macs[name] = int(out[0].numel() * per_out) if isinstance(mod, nn.Conv2d) else \
                int(out[0].numel() * mod.in_features)
        return hook

    handles = [model.get_submodule(m).register_forward_hook(count(m)) for m in modules]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        model(example[:1])
    model.train(was_training)
    for h in handles:
        h.remove()
    return Space(tuple(modules), unit_of, tuple(units), tuple(weight_bits), tuple(act_bits),
                 tuple(model.get_submodule(m).weight.numel() for m in modules),
                 tuple(macs.get(m, 0) for m in modules))


def sample_configs(space: Space, n: int, strata: int, seed: int) -> list[BitConfig]:
    """n distinct configurations stratified by model size (uniform configs excluded).

    Each draw picks per-bit probabilities from a Dirichlet(0.5) and then every unit's bits
    from them, so draws range from nearly-uniform-low to nearly-uniform-high; draws are
    accepted only while their size stratum (equal-width bins between the smallest and the
    largest model) is below its quota. Strata that cannot be filled are topped up from the
    others; a space smaller than n is returned whole.
    """
    return _stratified(space, [n], strata, seed, lambda cfg: 0)


def sample_by_damage(space: Space, n: int, strata: int, seed: int,
                     damage: Callable[[BitConfig], float], limit: float,
                     broken_share: float) -> list[BitConfig]:
    """n configurations, most of them predicted usable: `damage(cfg) <= limit`.

    Same draws and size stratification as `sample_configs`, sorted into two pools by the
    predicted damage: round(n * broken_share) configurations come from the predicted-broken
    pool (a documented minority, so the table still holds broken ones), the rest from the
    predicted-usable pool. A pool that cannot be filled is topped up from the other.
    """
    broken = int(round(n * broken_share))
    return _stratified(space, [n - broken, broken], strata, seed,
                       lambda cfg: int(damage(cfg) > limit))


def _stratified(space: Space, wanted: list[int], strata: int, seed: int,
                pool_of: Callable[[BitConfig], int]) -> list[BitConfig]:
    """Dirichlet draws, each accepted into its pool's size stratum while under quota."""
    rng = np.random.default_rng(seed)
    wb, ab = np.array(space.weight_bits), np.array(space.act_bits)
    n_units = len(space.units)
    total = len(wb) ** n_units * len(ab) ** n_units
    uniform = {space.uniform(b, a).key for b in space.weight_bits for a in space.act_bits}
    n = min(sum(wanted), total - len(uniform))
    if n < sum(wanted):  # the space is smaller than asked for: take it whole, pools aside
        wanted = [n] + [0] * (len(wanted) - 1)
        pool_of = (lambda cfg: 0)
    lo, hi = space.size_bits(space.uniform(wb[0])), space.size_bits(space.uniform(wb[-1]))
    quota = [[k // strata + (1 if i < k % strata else 0) for i in range(strata)]
             for k in wanted]
    have = [0] * len(wanted)
    chosen: dict[str, BitConfig] = {}
    overflow: list[list[BitConfig]] = [[] for _ in wanted]
    for _ in range(400 * n + 1000):
        if len(chosen) >= n:
            break
        w = rng.choice(wb, size=n_units, p=rng.dirichlet(np.full(len(wb), 0.5)))
        a = rng.choice(ab, size=n_units, p=rng.dirichlet(np.full(len(ab), 0.5)))
        cfg = BitConfig(tuple(int(b) for b in w), tuple(int(b) for b in a))
        if cfg.key in chosen or cfg.key in uniform:
            continue
        k = pool_of(cfg)
        s = int((space.size_bits(cfg) - lo) / max(hi - lo, 1) * strata)
        s = min(max(s, 0), strata - 1)
        if quota[k][s] > 0:
            quota[k][s] -= 1
            have[k] += 1
            chosen[cfg.key] = cfg
        elif len(overflow[k]) < n:  # spares: they may top up another pool too
            overflow[k].append(cfg)
    for k in range(len(wanted)):  # unfilled strata: the pool's own spare draws first
        for cfg in overflow[k]:
            if have[k] >= wanted[k]:
                break
            if cfg.key not in chosen:
                chosen[cfg.key] = cfg
                have[k] += 1
    for cfg in (c for spare in overflow for c in spare):  # then any pool's
        if len(chosen) >= n:
            break
        chosen.setdefault(cfg.key, cfg)
    return list(chosen.values())
