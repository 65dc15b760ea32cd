"""The conformance check every registered proxy is run through (tests, CI, `mqbench eval`).

`check_proxy(p, stats)` raises MqbenchError naming the first rule the proxy breaks: output
shape and finiteness (through mqbench.proxy.contract.damage_matrix for layer kinds), determinism,
no mutation of the statistics, and independence from the iteration order of `stats` dicts.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import Proxy, damage_matrix
from mqbench.quant.space import BitConfig

# Every statistic a proxy can read; absent ones (a partial fake context) are skipped.
TENSOR_GROUPS = ("weights", "inputs", "outputs", "grads", "virtual_grads", "synflow",
                 "logits", "labels")
ARRAY_GROUPS = ("perturbation", "hessian_trace", "hessian_trace_se", "hessian_eig", "params",
                "macs", "depth")


class ReorderedStats:
    """A view of `stats` whose per-module dicts iterate in reverse insertion order."""

    def __init__(self, stats):
        self._stats = stats

    def __getattr__(self, name):
        value = getattr(self._stats, name)
        if isinstance(value, dict):
            return dict(reversed(list(value.items())))
        return value


def _digest(value) -> str:
    h = hashlib.sha256()
    items = sorted(value.items()) if isinstance(value, dict) else [("", value)]
    for key, v in items:
        h.update(str(key).encode())
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().contiguous()
            h.update(str((v.dtype, tuple(v.shape))).encode())
            h.update(v.view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        else:
            a = np.ascontiguousarray(np.asarray(v))
            h.update(str((a.dtype, a.shape)).encode() + a.tobytes())
    return h.hexdigest()


def stats_fingerprint(stats) -> dict[str, str]:
    """A digest of every statistic `stats` holds (forces lazily computed groups)."""
    out = {}
    for group in (*TENSOR_GROUPS, *ARRAY_GROUPS):
        try:
            value = getattr(stats, group)
        except AttributeError:
            continue
        out[group] = _digest(value)
    return out


def default_configs(stats, n_random: int = 6, seed: int = 0) -> list[BitConfig]:
    """Uniform configurations at each weight bit-width plus a few seeded mixed ones."""
    n, bits = len(stats.units), list(stats.weight_bits)
    act = max(getattr(stats, "act_bits", (8,)))
    rng = np.random.default_rng(seed)
    w = [(b,) * n for b in bits] + [tuple(int(b) for b in rng.choice(bits, n))
                                    for _ in range(n_random)]
    return [BitConfig(ws, (act,) * n) for ws in w]


def _run(p: Proxy, stats, configs) -> np.ndarray:
    try:
        raw = p.fn(stats, configs) if p.kind == "config" else p.fn(stats)
    except MqbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised as a one-line error naming the proxy
        raise MqbenchError(f"proxy {p.name!r} raised {type(exc).__name__}: {exc}") from None
    if p.kind != "config":
        return damage_matrix(p, raw, stats)[0]
    try:
        scores = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise MqbenchError(f"proxy {p.name!r}: returned {type(raw).__name__}, not numbers") \
            from None
    if scores.shape != (len(configs),):
        raise MqbenchError(f"proxy {p.name!r}: a config proxy must return {len(configs)} "
                           f"scores, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise MqbenchError(f"proxy {p.name!r}: returned NaN or infinite values")
    return scores


def check_proxy(p: Proxy, stats, configs: list[BitConfig] | None = None) -> None:
    """Raise MqbenchError unless `p` honours the proxy contract on `stats`.

    Layer kinds are compared through their per-unit damage matrix, so a proxy returning a
    per-module list, a per-unit list or a dict is judged on what the harness would use.
    """
    configs = default_configs(stats) if configs is None else configs
    before = stats_fingerprint(stats)
    first = _run(p, stats, configs)
    changed = [g for g, d in stats_fingerprint(stats).items() if before.get(g) != d]
    if changed:
        raise MqbenchError(f"proxy {p.name!r}: mutated the statistics ({', '.join(changed)});"
                           f" use out-of-place operations")
    if not np.array_equal(first, _run(p, stats, configs)):
        raise MqbenchError(f"proxy {p.name!r}: is not deterministic (two calls on the same "
                           f"statistics differ)")
    reordered = _run(p, ReorderedStats(stats), configs)
    if not np.allclose(first, reordered, rtol=1e-9, atol=1e-12):
        raise MqbenchError(f"proxy {p.name!r}: depends on the iteration order of the stats "
                           f"dicts; index them by name in stats.modules order")
