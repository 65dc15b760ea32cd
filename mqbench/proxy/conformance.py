"""The conformance check every registered proxy is run through (tests, CI, `mqbench eval`).

`check_proxy(p, stats)` raises MqbenchError naming the first rule the proxy breaks: output
shape and finiteness (mqbench.proxy.contract.validate_output), no mutation of the statistics,
determinism, and independence from the iteration order of `stats` dicts.

The proxy runs in `probe` (in this process, or through `run=` in sandbox children); only
plain data comes back, and every comparison — outputs, and the statistics fingerprint against
one taken here before any call — is made by the caller, where the proxy cannot patch
`np.array_equal` or the fingerprint. Sandboxed, the suite uses separate children (each reseeds
the global random generators): one calls the proxy twice and fingerprints the statistics in
between, one calls it once (a second process must agree), one on reordered dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import Proxy, validate_output
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


MODES = {"twice": 2, "once": 1, "reordered": 1}  # probe mode -> proxy calls it makes


def probe(fn, kind: str, stats, configs, mode: str) -> dict:
    """(Where the proxy runs) its raw outputs for one conformance mode, as returned.

    "twice": call, fingerprint the statistics, call again; "once": one call; "reordered": one
    call on ReorderedStats(stats).
    """
    def call(s):
        return fn(s, configs) if kind == "config" else fn(s)
    if mode == "reordered":
        return {"first": call(ReorderedStats(stats))}
    first = call(stats)
    if mode == "once":
        return {"first": first}
    fingerprint = stats_fingerprint(stats)
    return {"first": first, "fingerprint": fingerprint, "second": call(stats)}


def _in_process(p: Proxy) -> Callable:
    def run(fn, args, calls):
        try:
            return fn(*args)
        except MqbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised as a one-line error naming the proxy
            raise MqbenchError(f"proxy {p.name!r} raised {type(exc).__name__}: {exc}") from None
    return run


def check_proxy(p: Proxy, stats, configs: list[BitConfig] | None = None, *,
                run: Callable | None = None) -> None:
    """Raise MqbenchError unless `p` honours the proxy contract on `stats`.

    Layer kinds are compared through their per-unit damage matrix, so a proxy returning a
    per-module list, a per-unit list or a dict is judged on what the harness would use.
    `run(fn, args, calls)` executes `fn(*args)` (which calls the proxy `calls` times) and
    returns its plain-data result, e.g. through mqbench.proxy.sandbox.run_limited; None runs
    it in this process (trusted code only: the proxy could patch the checks).
    """
    configs = default_configs(stats) if configs is None else configs
    isolated = run is not None
    run = run or _in_process(p)
    before = stats_fingerprint(stats)

    def outputs(mode: str) -> dict:
        got = run(probe, (p.fn, p.kind, stats, configs, mode), MODES[mode])
        if not isinstance(got, dict) or "first" not in got:
            raise MqbenchError(f"proxy {p.name!r}: the conformance probe returned malformed "
                               f"data")
        return got

    def checked(raw) -> np.ndarray:
        return validate_output(p, raw, stats, len(configs))

    twice = outputs("twice")
    first = checked(twice["first"])
    after = twice.get("fingerprint")
    changed = sorted(g for g, d in before.items()
                     if not isinstance(after, dict) or after.get(g) != d)
    if changed:
        raise MqbenchError(f"proxy {p.name!r}: mutated the statistics ({', '.join(changed)});"
                           f" use out-of-place operations")
    if not np.array_equal(first, checked(twice.get("second"))):
        raise MqbenchError(f"proxy {p.name!r}: is not deterministic (two calls on the same "
                           f"statistics differ)")
    if isolated and not np.array_equal(first, checked(outputs("once")["first"])):
        raise MqbenchError(f"proxy {p.name!r}: is not deterministic (two processes differ: "
                           f"seed every random generator you use)")
    reordered = checked(outputs("reordered")["first"])
    if not np.allclose(first, reordered, rtol=1e-9, atol=1e-12):
        raise MqbenchError(f"proxy {p.name!r}: depends on the iteration order of the stats "
                           f"dicts; index them by name in stats.modules order")
