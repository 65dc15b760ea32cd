"""The proxy contract: one decorated function per file in `proxies/`, and its registry.

    from mqbench.proxy import proxy

    @proxy(name="weight_norm", version=1, paper="baseline", kind="layer")
    def weight_norm(stats):
        return [float(stats.weights[m].norm()) for m in stats.modules]

Kinds (what the function returns; `stats` is a read-only mqbench.proxy.context.Stats):
  * "layer": a sensitivity per module (len(stats.modules)) or per unit (len(stats.units)),
    or a {name: value} dict. Higher = more sensitive. The harness scores a configuration by
    -sum_l s_l * ||Q_{b_l}(W_l) - W_l||^2 (HAWQ-V2's weighting).
  * "layer_bit": a damage matrix [modules or units, len(stats.weight_bits)]: predicted harm
    of putting each layer at each bit-width. A configuration scores -sum of its entries.
  * "config": the function takes (stats, configs) and returns one predicted quality per
    configuration (higher = better). Only config-level metrics apply.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mqbench.errors import MqbenchError, did_you_mean
from mqbench.paths import proxy_dirs

KINDS = ("layer", "layer_bit", "config")


@dataclass(frozen=True)
class Proxy:
    """A registered proxy: metadata plus the function."""

    name: str
    version: int
    paper: str
    kind: str
    fn: Callable
    path: str = ""
    source_sha256: str = ""
    doc: str = ""


def proxy(name: str, version: int = 1, paper: str = "", kind: str = "layer"):
    """Decorator marking a function as an mqbench proxy."""
    if kind not in KINDS:
        raise MqbenchError(f"proxy {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(version, int) or version < 1:
        raise MqbenchError(f"proxy {name!r}: version must be a positive int")

    def wrap(fn):
        fn.__mqbench_proxy__ = Proxy(name, version, paper, kind, fn,
                                     doc=inspect.getdoc(fn) or "")
        return fn
    return wrap


def load_proxy_file(path: str | os.PathLike) -> Proxy:
    """Import one proxy file and return its single decorated function."""
    path = Path(path)
    if not path.is_file():
        raise MqbenchError(f"proxy file {path} does not exist")
    text = path.read_bytes()
    modname = f"mqbench_proxy_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise MqbenchError(f"proxy file {path} failed to import: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    found = [v.__mqbench_proxy__ for v in vars(module).values()
             if callable(v) and hasattr(v, "__mqbench_proxy__")
             and getattr(v, "__module__", None) == modname]
    if len(found) != 1:
        raise MqbenchError(f"proxy file {path} must define exactly one @proxy function, found "
                           f"{len(found)}; see CONTRIBUTING.md")
    p = found[0]
    sys.modules.pop(modname, None)
    return Proxy(p.name, p.version, p.paper, p.kind, p.fn, str(path),
                 hashlib.sha256(text).hexdigest(), p.doc)


def list_proxies() -> dict[str, Proxy]:
    """Every proxy found in proxies/ (and $MQBENCH_PROXIES); duplicate names raise."""
    found: dict[str, Proxy] = {}
    for folder in proxy_dirs():
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            p = load_proxy_file(path)
            if p.name in found:
                raise MqbenchError(f"proxy name {p.name!r} is defined twice: {found[p.name].path}"
                                   f" and {path}; rename one")
            found[p.name] = p
    return found


def get_proxy(name_or_path: str) -> Proxy:
    """A proxy by file path or registered name (with did-you-mean)."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        return load_proxy_file(name_or_path)
    known = list_proxies()
    if name_or_path not in known:
        raise MqbenchError(f"unknown proxy {name_or_path!r}{did_you_mean(name_or_path, known)}; "
                           f"`mqbench proxies` lists them")
    return known[name_or_path]


def damage_matrix(p: Proxy, raw, stats) -> tuple[np.ndarray, np.ndarray]:
    """Check a layer/layer_bit proxy's output and turn it into per-unit terms.

    Returns (damage [units, weight bits], sensitivity [units]). Raises MqbenchError naming the
    proxy and the rule it broke.
    """
    units, modules, unit_of = stats.units, stats.modules, np.asarray(stats.unit_of)
    if isinstance(raw, dict):
        names = modules if set(raw) <= set(modules) else units
        missing = [n for n in names if n not in raw]
        if missing or set(raw) - set(names):
            raise MqbenchError(f"proxy {p.name!r}: returned a dict whose keys are not exactly "
                               f"the modules or units (e.g. missing {missing[:1]})")
        raw = [raw[n] for n in names]
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise MqbenchError(f"proxy {p.name!r}: returned {type(raw).__name__}, not numbers") \
            from None
    nb = len(stats.weight_bits)
    want = (1,) if p.kind == "layer" else (2,)
    if arr.ndim not in want or arr.shape[0] not in (len(modules), len(units)) or \
            (p.kind == "layer_bit" and arr.shape[1] != nb):
        shape = "[modules] or [units]" if p.kind == "layer" else f"[modules or units, {nb}]"
        raise MqbenchError(f"proxy {p.name!r}: returned shape {arr.shape}, expected {shape} "
                           f"({len(modules)} modules, {len(units)} units)")
    if not np.all(np.isfinite(arr)):
        raise MqbenchError(f"proxy {p.name!r}: returned NaN or infinite values")
    per_module = arr.shape[0] == len(modules) and not (len(modules) == len(units))
    if p.kind == "layer":
        if per_module:
            terms = arr[:, None] * stats.perturbation
            sens = np.bincount(unit_of, weights=arr, minlength=len(units))
        else:
            pert = np.zeros((len(units), nb))
            np.add.at(pert, unit_of, stats.perturbation)
            terms, sens = arr[:, None] * pert, arr
        damage = np.zeros((len(units), nb))
        np.add.at(damage, unit_of if per_module else np.arange(len(units)), terms)
        return damage, sens
    damage = np.zeros((len(units), nb))
    np.add.at(damage, unit_of if per_module else np.arange(len(units)), arr)
    # A row offset never changes a ranking (every configuration picks one entry per row), so
    # a unit's sensitivity is its damage at the lowest bit-width relative to the highest.
    return damage, damage[:, 0] - damage[:, -1]
