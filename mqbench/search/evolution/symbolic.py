"""Symbolic proxies: expression trees over per-module statistics (EMQ's search space).

A tree is nested tuples, JSON-friendly as lists: `("f", name)` a feature leaf (see
features.py), `(op, child)` a unary and `(op, left, right)` a binary primitive. Evaluation
gives one number per module; the harness treats it as a `layer` proxy (per-layer
sensitivity, weighted by ||Q_b(W) − W||² into a configuration score).

Variation follows EMQ: random trees of bounded depth; mutation replaces a random subtree
with a fresh one, or swaps an operator for another of the same arity; crossover swaps
random subtrees of two parents. `render` turns a tree into proxy source whose primitives
are these same functions, so the written proxy computes bit-for-bit what was scored.
"""

from __future__ import annotations

import numpy as np

from mqbench.search.evolution.features import FEATURES

_EPS = 1e-12


def _abs(x): return np.abs(x)
def _sqrt(x): return np.sqrt(np.abs(x))
def _log(x): return np.log1p(np.abs(x))
def _square(x): return x * x
def _inv(x): return 1.0 / (np.abs(x) + _EPS)
def _neg(x): return -x
def _norm(x): return x / (np.abs(x).max() + _EPS)  # scale-free: max |x| = 1
def _rank(x): return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
def _add(a, b): return a + b
def _sub(a, b): return a - b
def _mul(a, b): return a * b
def _div(a, b): return a / (np.abs(b) + _EPS)
def _max(a, b): return np.maximum(a, b)
def _min(a, b): return np.minimum(a, b)


UNARY = {"abs": _abs, "sqrt": _sqrt, "log": _log, "square": _square, "inv": _inv,
         "neg": _neg, "norm": _norm, "rank": _rank}
BINARY = {"add": _add, "sub": _sub, "mul": _mul, "div": _div, "max": _max, "min": _min}
_INFIX = {"add": "+", "sub": "-", "mul": "*"}


def as_tree(obj):
    """A tree from its JSON form (lists) back to tuples."""
    return tuple(as_tree(x) if isinstance(x, list) else x for x in obj)


def evaluate(tree, f: dict[str, np.ndarray]) -> np.ndarray:
    """The tree's value per module (float64); may contain inf/NaN (screened by fitness)."""
    op = tree[0]
    if op == "f":
        return f[tree[1]]
    if op in UNARY:
        return UNARY[op](evaluate(tree[1], f))
    return BINARY[op](evaluate(tree[1], f), evaluate(tree[2], f))


def to_text(tree) -> str:
    """Readable Python expression over `f[...]` using this module's primitives as `S._op`."""
    op = tree[0]
    if op == "f":
        return f'f["{tree[1]}"]'
    if op in UNARY:
        return f"S._{op}({to_text(tree[1])})"
    if op in _INFIX:
        return f"({to_text(tree[1])} {_INFIX[op]} {to_text(tree[2])})"
    return f"S._{op}({to_text(tree[1])}, {to_text(tree[2])})"


def size(tree) -> int:
    return 1 if tree[0] == "f" else 1 + sum(size(c) for c in tree[1:])


def depth(tree) -> int:
    return 1 if tree[0] == "f" else 1 + max(depth(c) for c in tree[1:])


def random_tree(rng: np.random.Generator, max_depth: int = 3):
    """A random tree; leaves get likelier as depth runs out (grow method)."""
    if max_depth <= 1 or rng.random() < 0.3:
        return ("f", FEATURES[rng.integers(len(FEATURES))])
    if rng.random() < 0.4:
        return (list(UNARY)[rng.integers(len(UNARY))], random_tree(rng, max_depth - 1))
    return (list(BINARY)[rng.integers(len(BINARY))], random_tree(rng, max_depth - 1),
            random_tree(rng, max_depth - 1))


def _paths(tree, prefix=()):
    yield prefix
    if tree[0] != "f":
        for i, child in enumerate(tree[1:], start=1):
            yield from _paths(child, prefix + (i,))


def _get(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _put(tree, path, new):
    if not path:
        return new
    i = path[0]
    return tree[:i] + (_put(tree[i], path[1:], new),) + tree[i + 1:]


def mutate(tree, rng: np.random.Generator, max_depth: int = 4):
    """Replace a random subtree, or swap one operator/leaf for another of the same arity."""
    paths = list(_paths(tree))
    path = paths[rng.integers(len(paths))]
    node = _get(tree, path)
    if rng.random() < 0.5:
        room = max(1, max_depth - len(path))
        return _put(tree, path, random_tree(rng, min(3, room)))
    if node[0] == "f":
        return _put(tree, path, ("f", FEATURES[rng.integers(len(FEATURES))]))
    pool = list(UNARY) if node[0] in UNARY else list(BINARY)
    return _put(tree, path, (pool[rng.integers(len(pool))],) + node[1:])


def crossover(a, b, rng: np.random.Generator, max_depth: int = 4):
    """`a` with a random subtree replaced by a random subtree of `b` (depth-capped)."""
    pa, pb = list(_paths(a)), list(_paths(b))
    for _ in range(8):
        child = _put(a, pa[rng.integers(len(pa))], _get(b, pb[rng.integers(len(pb))]))
        if depth(child) <= max_depth:
            return child
    return a


def source(tree, *, name: str) -> str:
    """Code of a registered-format proxy file computing `tree` (a `layer` proxy), no docstring."""
    return f'''from mqbench.search.evolution import symbolic as S
from mqbench.search.evolution.features import module_features
from mqbench.proxy import proxy


@proxy(name="{name}", version=1, paper="mqbench symbolic discovery (EMQ-style search space)",
       kind="layer")
def {name}(stats):
    f = module_features(stats)
    return {to_text(tree)}
'''


def render(tree, *, name: str, doc: str) -> str:
    """Source of a whole proxy file computing `tree`, with `doc` as its docstring."""
    return f'"""{doc.strip()}\n"""\n\n' + source(tree, name=name)
