"""The proxy contract: one decorated function per file in `proxies/`, its registry, its output.

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

Listing and loading never execute a proxy file. `load_proxy_file` parses it with `ast` and
takes the name, version, paper and kind from the decorator's *literal* arguments (a record's
metadata is what the file says, not what running it produced). The returned Proxy's `fn` is
a ProxyCode holding the source: calling it executes the file, so untrusted code calls it only
inside mqbench.proxy.sandbox; in this process only for trusted use (tests, `isolate=False`).
A proxy's registered name equals its file stem, except the LEGACY_NAMES kept so existing
records keep theirs.

`damage_matrix` / `check_scores` (one entry point: `validate_output`) are the one validator
of proxy output, used by the harness, the conformance suite and discovery.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import os
import re
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mqbench.errors import MqbenchError, did_you_mean
from mqbench.paths import proxy_dirs

KINDS = ("layer", "layer_bit", "config")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")  # also the record's file name: no paths
LEGACY_NAMES = {"tap_best": "tap", "random_proxy": "random"}  # file stem -> registered name
MAX_PAPER_CHARS = 300
# Outputs are rescaled by a power of two (exact: ratios and rankings are unchanged) so that
# no damage entry exceeds this; HiGHS treats costs near 1e20 as infinite.
MAX_MAGNITUDE = 2.0 ** 60


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


def _check_meta(where: str, name, version, paper, kind) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise MqbenchError(f"{where}: name {name!r} must be 1-64 letters, digits or "
                           f"underscores (it names the record file)")
    if kind not in KINDS:
        raise MqbenchError(f"proxy {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MqbenchError(f"proxy {name!r}: version must be a positive int")
    if not isinstance(paper, str) or len(paper) > MAX_PAPER_CHARS or \
            not all(c.isprintable() for c in paper):
        raise MqbenchError(f"proxy {name!r}: paper must be one line of at most "
                           f"{MAX_PAPER_CHARS} printable characters")


def proxy(name: str, version: int = 1, paper: str = "", kind: str = "layer"):
    """Decorator marking a function as an mqbench proxy."""
    _check_meta("@proxy", name, version, paper, kind)

    def wrap(fn):
        fn.__mqbench_proxy__ = Proxy(name, version, paper, kind, fn,
                                     doc=inspect.getdoc(fn) or "")
        return fn
    return wrap


# --------------------------------------------------------------------------- running a file
_LOADED: dict[tuple[str, str], Callable] = {}  # (path, sha256) -> function, per process


@dataclass(frozen=True)
class ProxyCode:
    """A proxy file's source, callable as its function. Calling it executes the source."""

    path: str
    source: str
    sha256: str
    name: str
    kind: str

    def function(self) -> Callable:
        """Execute the source once per process and return its @proxy function."""
        key = (self.path, self.sha256)
        if key not in _LOADED:
            _LOADED[key] = _execute(self)
        return _LOADED[key]

    def __call__(self, *args):
        return self.function()(*args)


def _execute(code: ProxyCode) -> Callable:
    modname = f"mqbench_proxy_{Path(code.path).stem}_{code.sha256[:8]}"
    module = types.ModuleType(modname)
    module.__file__ = code.path
    sys.modules[modname] = module  # dataclasses and pickling look a module up by name
    # tracebacks and warnings read lines from here, not from a file the sandbox may not read
    linecache.cache[code.path] = (len(code.source), None, code.source.splitlines(True),
                                  code.path)
    try:
        exec(compile(code.source, code.path, "exec"), module.__dict__)  # noqa: S102
    except MqbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the file raises becomes one line
        line = next((f.lineno for f in reversed(_frames(exc)) if f.filename == code.path), None)
        where = f" (line {line})" if line else ""
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise MqbenchError(f"proxy file {code.path} failed to import: {type(exc).__name__}: "
                           f"{first}{where}") from None
    finally:
        sys.modules.pop(modname, None)
    found = [v for v in vars(module).values()
             if callable(v) and hasattr(v, "__mqbench_proxy__")
             and getattr(v, "__module__", None) == modname]
    if len(found) != 1:
        raise MqbenchError(f"proxy file {code.path} must define exactly one @proxy function, "
                           f"found {len(found)} when run; see CONTRIBUTING.md")
    meta = found[0].__mqbench_proxy__
    if (meta.name, meta.kind) != (code.name, code.kind):
        raise MqbenchError(f"proxy file {code.path}: running it registered name {meta.name!r}, "
                           f"kind {meta.kind!r}, not the literal {code.name!r}, {code.kind!r} "
                           f"its @proxy(...) line says")
    return found[0]


def _frames(exc: BaseException):
    return traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__),
                                          lookup_lines=False)


def import_check(code: ProxyCode) -> bool:
    """(In the sandbox) execute the file and check what it registers; True when it loads."""
    code.function()
    return True


# --------------------------------------------------------------------------- parsing a file
def _is_proxy(node) -> bool:
    return (isinstance(node, ast.Name) and node.id == "proxy") or \
        (isinstance(node, ast.Attribute) and node.attr == "proxy")


def _literal_args(path, call: ast.Call) -> dict:
    fields = ("name", "version", "paper", "kind")
    out = {"version": 1, "paper": "", "kind": "layer"}
    if len(call.args) > len(fields) or any(isinstance(a, ast.Starred) for a in call.args):
        raise MqbenchError(f"proxy file {path}: @proxy(...) takes name, version, paper, kind")
    pairs = list(zip(fields, call.args)) + [(k.arg, k.value) for k in call.keywords]
    for key, node in pairs:
        if key not in fields:
            raise MqbenchError(f"proxy file {path}: @proxy(...) has no argument {key!r}; it "
                               f"takes name, version, paper, kind")
        try:
            out[key] = ast.literal_eval(node)
        except ValueError:
            raise MqbenchError(f"proxy file {path}: @proxy({key}=...) must be a literal (a "
                               f"plain string or number), not an expression") from None
    if "name" not in out:
        raise MqbenchError(f"proxy file {path}: @proxy(...) needs name=")
    return out


def parse_proxy_source(path: str | os.PathLike, data: bytes) -> Proxy:
    """The Proxy a file's bytes declare, read by parsing (nothing is executed)."""
    try:
        text = data.decode("utf-8")
        tree = ast.parse(text, filename=str(path))
    except UnicodeDecodeError:
        raise MqbenchError(f"proxy file {path} is not UTF-8 text") from None
    except SyntaxError as exc:
        raise MqbenchError(f"proxy file {path} failed to import: SyntaxError: {exc.msg} "
                           f"(line {exc.lineno})") from None
    found = [(node, dec) for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             for dec in node.decorator_list
             if _is_proxy(dec.func if isinstance(dec, ast.Call) else dec)]
    if len(found) != 1:
        raise MqbenchError(f"proxy file {path} must define exactly one @proxy function, found "
                           f"{len(found)}; see CONTRIBUTING.md")
    node, dec = found[0]
    if not isinstance(dec, ast.Call):
        raise MqbenchError(f"proxy file {path}: write @proxy(name=..., version=..., paper=..., "
                           f"kind=...), not a bare @proxy")
    meta = _literal_args(path, dec)
    _check_meta(f"proxy file {path}", meta["name"], meta["version"], meta["paper"],
                meta["kind"])
    sha = hashlib.sha256(data).hexdigest()
    code = ProxyCode(str(path), text, sha, meta["name"], meta["kind"])
    return Proxy(meta["name"], meta["version"], meta["paper"], meta["kind"], code, str(path),
                 sha, ast.get_docstring(node) or "")


def load_proxy_file(path: str | os.PathLike) -> Proxy:
    """Parse one proxy file (never executes it); `fn` runs it when called."""
    path = Path(path)
    if not path.is_file():
        raise MqbenchError(f"proxy file {path} does not exist")
    return parse_proxy_source(path, path.read_bytes())


def expected_name(path: str | os.PathLike) -> str:
    """The name a proxy file must register: its stem (or its LEGACY_NAMES entry)."""
    stem = Path(path).stem
    return LEGACY_NAMES.get(stem, stem)


def list_proxies() -> dict[str, Proxy]:
    """Every proxy found in proxies/ (and $MQBENCH_PROXIES), parsed; duplicate names raise."""
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


# --------------------------------------------------------------------------- output validation
def _numbers(p: Proxy, raw) -> np.ndarray:
    """`raw` as a float64 array if it is numbers (nested lists, arrays, tensors), else raise."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().double().numpy()
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind not in "iuf":
            raise MqbenchError(f"proxy {p.name!r}: returned an array of {raw.dtype}, not numbers")
        return raw.astype(np.float64)
    stack = [raw]
    while stack:  # plain lists only: a string, bool or None inside is a contract error
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, (bool, np.bool_)) or not isinstance(
                v, (int, float, np.integer, np.floating, torch.Tensor, np.ndarray)):
            raise MqbenchError(f"proxy {p.name!r}: returned {type(raw).__name__} holding a "
                               f"{type(v).__name__}, not numbers")
    try:
        return np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise MqbenchError(f"proxy {p.name!r}: returned {type(raw).__name__}, not numbers "
                           f"(ragged lists?)") from None


def _finite(p: Proxy, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise MqbenchError(f"proxy {p.name!r}: returned NaN or infinite values")


def _rescaled(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays times one power of two bringing their largest |entry| below MAX_MAGNITUDE."""
    top = max((float(np.abs(a).max()) if a.size else 0.0) for a in arrays)
    if top <= MAX_MAGNITUDE:
        return arrays
    scale = 2.0 ** -int(np.frexp(top)[1])  # exact: only the exponents change
    return tuple(a * scale for a in arrays)


def check_scores(p: Proxy, raw, n_configs: int) -> np.ndarray:
    """A config proxy's output checked: `n_configs` finite scores (rescaled if huge)."""
    scores = _numbers(p, raw)
    if scores.shape != (n_configs,):
        raise MqbenchError(f"proxy {p.name!r}: a config proxy must return {n_configs} scores, "
                           f"got shape {scores.shape}")
    _finite(p, scores)
    return _rescaled(scores)[0]


def damage_matrix(p: Proxy, raw, stats) -> tuple[np.ndarray, np.ndarray]:
    """Check a layer/layer_bit proxy's output and turn it into per-unit terms.

    Returns (damage [units, weight bits], sensitivity [units]), both finite and rescaled by
    a power of two when huge. Raises MqbenchError naming the proxy and the rule it broke.
    """
    if p.kind not in ("layer", "layer_bit"):
        raise MqbenchError(f"proxy {p.name!r}: kind {p.kind!r} has no damage matrix; expected "
                           f"'layer' or 'layer_bit'")
    units, modules, unit_of = stats.units, stats.modules, np.asarray(stats.unit_of)
    if isinstance(raw, dict):
        names = modules if set(raw) <= set(modules) else units
        missing = [n for n in names if n not in raw]
        if missing or set(raw) - set(names):
            raise MqbenchError(f"proxy {p.name!r}: returned a dict whose keys are not exactly "
                               f"the modules or units (e.g. missing {missing[:1]})")
        raw = [raw[n] for n in names]
    arr = _numbers(p, raw)
    nb = len(stats.weight_bits)
    want = (1,) if p.kind == "layer" else (2,)
    if arr.ndim not in want or arr.shape[0] not in (len(modules), len(units)) or \
            (p.kind == "layer_bit" and arr.shape[1] != nb):
        shape = "[modules] or [units]" if p.kind == "layer" else f"[modules or units, {nb}]"
        raise MqbenchError(f"proxy {p.name!r}: returned shape {arr.shape}, expected {shape} "
                           f"({len(modules)} modules, {len(units)} units)")
    _finite(p, arr)
    (arr,) = _rescaled(arr)
    pert_m = np.asarray(stats.perturbation, dtype=np.float64)
    per_module = arr.shape[0] == len(modules) and len(modules) != len(units)
    if p.kind == "layer":
        if per_module:
            terms = arr[:, None] * pert_m
            sens = np.bincount(unit_of, weights=arr, minlength=len(units))
        else:
            pert = np.zeros((len(units), nb))
            np.add.at(pert, unit_of, pert_m)
            terms, sens = arr[:, None] * pert, arr
        damage = np.zeros((len(units), nb))
        np.add.at(damage, unit_of if per_module else np.arange(len(units)), terms)
    else:
        damage = np.zeros((len(units), nb))
        np.add.at(damage, unit_of if per_module else np.arange(len(units)), arr)
        # A row offset never changes a ranking (every configuration picks one entry per row),
        # so a unit's sensitivity is its damage at the lowest bit-width relative to the highest.
        sens = damage[:, 0] - damage[:, -1]
    damage, sens = _rescaled(damage, sens)
    if not (np.all(np.isfinite(damage)) and np.all(np.isfinite(sens))):
        raise MqbenchError(f"proxy {p.name!r}: its values overflow when weighted by the "
                           f"quantization error; return smaller numbers (only ratios matter)")
    return damage, sens


def validate_output(p: Proxy, raw, stats, n_configs: int | None = None) -> np.ndarray:
    """The one check of a proxy's output: its damage matrix (layer kinds) or its scores."""
    if p.kind == "config":
        return check_scores(p, raw, n_configs if n_configs is not None else -1)
    return damage_matrix(p, raw, stats)[0]
