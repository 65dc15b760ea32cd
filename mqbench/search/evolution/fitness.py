"""The fast fitness evaluator: TAP's φ = α·ρ_sens + (1−α)·Acc without new quantized runs.

* ρ_sens: Spearman between the candidate's per-unit sensitivity and the table's measured
  single-layer sensitivity (cross-entropy increase with the unit alone at the lowest
  bit-width), exactly the harness's `layer_spearman`.
* Acc: for each of the task's size budgets (average weight bits), the ground-truth top-1
  of the table configuration the candidate ranks best among those within the budget, then
  averaged. This is a table lookup, where the harness quantizes and evaluates an exact ILP
  allocation (seconds per candidate); both reward ranking the good configurations first,
  but the numbers differ, so `mqbench discover` reports the harness's own φ for the winner.
* α is the task's `harness.alpha` (default 0.1, TAP's value).
* Data: a search ranks candidates on the table's validation split (`split="val"`, protocol-2
  tables), never on the test images its numbers are reported on. A protocol-1 table holds
  test rows only: searching on it needs `split="test"` said out loud, and the result is
  marked in-sample on test data. Held-out tasks are reported on "test".

All hand-designed proxies are scored by the same function (`proxy_fitness`), so "the
discovered proxy beats every registered one" compares like with like. Invalid candidates
(non-finite values, or a constant vector that ranks nothing) get −inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mqbench.errors import MqbenchError
from mqbench.proxy.context import Stats
from mqbench.proxy.contract import Proxy, damage_matrix
from mqbench.proxy.sandbox import run_limited
from mqbench.scoring import allocate as A
from mqbench.scoring import metrics as S
from mqbench.scoring.harness import config_matrix, layer_truth
from mqbench.task.spec import Task
from mqbench.truth.bench import open_bench
from mqbench.truth.build import ensure_table


@dataclass(frozen=True)
class Fitness:
    phi: float
    rho_sens: float
    acc: float  # mean table accuracy of the best-ranked configuration per budget
    spearman: float  # config-level Spearman with accuracy (reported, not optimised)


INVALID = Fitness(-math.inf, math.nan, math.nan, math.nan)


@dataclass
class Context:
    """Everything a candidate is scored against, prepared once per task."""

    task: Task
    stats: Stats
    unit_of: np.ndarray
    pert_units: np.ndarray  # [units, bits] summed ||Q_b(W)-W||^2
    pert_modules: np.ndarray  # [modules, bits]
    idx: np.ndarray  # [configs, units] bit indices
    acc: np.ndarray  # [configs]
    within: list[np.ndarray]  # per budget: indices of configurations within it
    truth: np.ndarray  # [units] measured sensitivity
    alpha: float
    quality: np.ndarray  # [configs] what proxies are ranked against (Table.quality)
    split: str = "val"  # the table split every number above comes from


SPLIT_CHOICES = ("val", "test")


def context(task: Task, progress: bool = False, split: str = "val") -> Context:
    """Prepare `task`'s fitness on `split`: "val" to search, "test" to report (see above)."""
    if split not in SPLIT_CHOICES:
        raise MqbenchError(f"fitness split {split!r}: choose val (to search) or test (to report)")
    table = ensure_table(task, progress)
    if split == "val" and table.protocol != 2:
        raise MqbenchError(
            f"the table of {task.key} is protocol 1: it has no validation split, and a search "
            f"must not select on test data; search a protocol-2 task (e.g. --task "
            f"tasks/protocol2/{task.name}.toml) or pass --fitness-split test (the result is "
            f"then marked in-sample on test data)")
    bench = open_bench(task, progress)
    stats = Stats(bench)
    stats.compute_all()
    space = bench.space
    rows = table.configs(split).drop_duplicates("key")
    unit_of = np.asarray(space.unit_of)
    pert_units = np.zeros((len(space.units), len(space.weight_bits)))
    np.add.at(pert_units, unit_of, stats.perturbation)
    size = rows.size_bits.to_numpy()
    within = [np.flatnonzero(size <= A.budget_for(space, b, "size") * (1 + 1e-9))
              for b in task.harness.budgets]
    return Context(task, stats, unit_of, pert_units, np.asarray(stats.perturbation),
                   config_matrix(space, rows.key.to_numpy()), rows.acc.to_numpy(),
                   [w for w in within if len(w)], layer_truth(table, space, split),
                   task.harness.alpha, table.quality(rows), split)


def from_damage(ctx: Context, damage: np.ndarray, sens_units: np.ndarray,
                spearman: bool = True) -> Fitness:
    """φ of a candidate given its damage matrix [units, bits] and per-unit sensitivity."""
    if not (np.all(np.isfinite(damage)) and np.all(np.isfinite(sens_units))) \
            or np.ptp(sens_units) == 0:
        return INVALID
    units = np.arange(damage.shape[0])
    scores = -damage[units[None, :], ctx.idx].sum(axis=1)
    if not np.all(np.isfinite(scores)):
        return INVALID
    accs = [ctx.acc[w[np.argmax(scores[w])]] for w in ctx.within]
    acc = float(np.mean(accs))
    rho = S.spearman(sens_units, ctx.truth)
    if not math.isfinite(rho):
        return INVALID
    return Fitness(ctx.alpha * rho + (1 - ctx.alpha) * acc, rho, acc,
                   S.spearman(scores, ctx.quality) if spearman else math.nan)


def from_sensitivity(ctx: Context, s_modules: np.ndarray, spearman: bool = False) -> Fitness:
    """φ of a per-module sensitivity vector (a `layer` proxy's output), as the harness reads it."""
    s = np.asarray(s_modules, dtype=np.float64)
    if s.shape != (len(ctx.unit_of),) or not np.all(np.isfinite(s)) or np.ptp(s) == 0:
        return INVALID  # a constant vector says nothing about which layer is sensitive
    with np.errstate(all="ignore"):
        damage = np.zeros_like(ctx.pert_units)
        np.add.at(damage, ctx.unit_of, s[:, None] * ctx.pert_modules)
        sens = np.bincount(ctx.unit_of, weights=s, minlength=len(ctx.pert_units))
    return from_damage(ctx, damage, sens, spearman)


def proxy_fitness(ctx: Context, p: Proxy) -> Fitness:
    """φ of a registered (trusted, shipped) layer or layer_bit proxy; config proxies: INVALID."""
    if p.kind == "config":
        return INVALID
    # a proxy file runs in the sandbox (listing it never ran it); your own function runs here
    raw = run_limited(p.fn, (ctx.stats,), name=p.name) if p.path else p.fn(ctx.stats)
    damage, sens = damage_matrix(p, raw, ctx.stats)
    return from_damage(ctx, damage, sens)
