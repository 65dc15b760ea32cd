"""Protocol 2's plan: which rows a table measures, and how each row is stored.

The plan comes in two phases. The fixed phase is known from the task alone: the float
reference, the uniform configurations, every unit alone at every bit-width below the top
(per-layer ground truth), and, when `table.noise_configs` > 0, the uniform and per-layer
rows again under the second calibration seed. The sample phase draws the configurations:
`sampling = "size"` is protocol 1's size-stratified sampler; `sampling = "damage"` predicts
each configuration's damage additively from the fixed phase's per-layer rows (accuracy drop,
LM: cross-entropy increase, each unit alone, all measured on the *validation* split: the
draw selects, so it never reads test numbers) and keeps most configurations among those
predicted usable (damage within 5 accuracy points, LM: 5% perplexity), with
`table.broken_share` of them drawn among the predicted-broken ones. Because that draw reads
measured rows, the sample plan is a function of the fixed rows stored in the same table; a
table's plan is always recomputed from its own rows, except that a table of another
quantization method than rtn draws the rtn table's plan (the same configurations under every
method). `noise_configs` of the samples are re-measured under the second seed too.

`measure_items` is the build's inner loop: rows grouped by seed and sorted so that shared
prefixes are consecutive, each group evaluated prefix-shared on the test and validation sets.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mqbench.errors import MqbenchError
from mqbench.quant.quantizer import FP
from mqbench.quant.space import BitConfig, Space, sample_by_damage, sample_configs
from mqbench.task.spec import with_method
from mqbench.truth.bench import Bench, Measured
from mqbench.truth.noise import USABLE_ACC_DROP, USABLE_PPL_RATIO
from mqbench.truth.store import open_table


@dataclass(frozen=True)
class Item:
    """One planned measurement."""

    kind: str
    cal_seed: int
    cfg: BitConfig
    unit: str | None = None


def layer_items(space: Space, seed: int) -> list[Item]:
    """Each unit alone (the rest float) at each weight bit-width below the top (activations
    at the top choice), and at each activation bit-width below the top (weights at the top)."""
    items, n = [], len(space.units)
    top_w, top_a = space.weight_bits[-1], space.act_bits[-1]
    pairs = [(w, top_a) for w in space.weight_bits[:-1]]
    pairs += [(top_w, a) for a in space.act_bits[:-1]]
    for u, unit in enumerate(space.units):
        for w, a in pairs:
            wb, ab = [FP] * n, [FP] * n
            wb[u], ab[u] = w, a
            items.append(Item("layer", seed, BitConfig(tuple(wb), tuple(ab)), unit))
    return items


def fixed_items(bench: Bench) -> list[Item]:
    """The rows known before anything is measured (see the module docstring)."""
    task, space = bench.task, bench.space
    seed, noise = task.seed, task.table.noise_seed
    uniform = [Item("uniform", seed, space.uniform(w, a))
               for w in space.weight_bits for a in space.act_bits]
    layers = layer_items(space, seed)
    items = [Item("fp", seed, space.uniform(FP, FP)), *uniform, *layers]
    if task.table.noise_configs:
        items += [Item(it.kind, noise, it.cfg, it.unit) for it in uniform + layers]
    return items


def damage_model(rows: pd.DataFrame, bench: Bench) -> tuple[Callable[[BitConfig], float], float]:
    """Additive predicted damage from the task seed's per-layer rows on the validation split
    (`val_acc`, LM: `val_loss`), and the usable limit."""
    task, space = bench.task, bench.space
    main = rows[rows.cal_seed == task.seed]
    fp = main[main.kind == "fp"]
    layers = main[main.kind == "layer"].set_index("key")
    if fp.empty:
        raise MqbenchError(f"table of {task.key}: damage sampling needs the float row first; "
                           f"resume the build")
    lm = task.is_lm
    col = "val_loss" if lm else "val_acc"
    if col not in main or main[col].isna().any():
        raise MqbenchError(f"table of {task.key}: damage sampling ranks on the validation "
                           f"split, which this task lacks; set data.val_split or use "
                           f"table.sampling = \"size\"")
    sign = -1.0 if lm else 1.0  # quality: accuracy, LM: minus the cross-entropy
    fp_q = sign * float(fp[col].iloc[0])
    dw = np.zeros((len(space.units), 33))  # [unit, weight bits] (index 32 = float)
    da = np.zeros((len(space.units), 33))
    top_w = space.weight_bits[-1]
    for it in layer_items(space, task.seed):
        if it.cfg.key not in layers.index:
            raise MqbenchError(f"table of {task.key}: damage sampling needs every per-layer "
                               f"row first (missing {it.unit}); resume the build")
        r = layers.loc[it.cfg.key]
        drop = max(0.0, fp_q - sign * float(r[col]))
        u = space.units.index(it.unit)
        w, a = it.cfg.w[u], it.cfg.a[u]
        if w != top_w:
            dw[u, w] = drop
        else:
            da[u, a] = drop
    units = np.arange(len(space.units))

    def damage(cfg: BitConfig) -> float:
        return float(dw[units, list(cfg.w)].sum() + da[units, list(cfg.a)].sum())

    return damage, (math.log(USABLE_PPL_RATIO) if lm else USABLE_ACC_DROP)


def sample_items(bench: Bench, rows: pd.DataFrame | None) -> list[Item]:
    """The sampled configurations and their noise repeats (damage sampling reads `rows`)."""
    task, space = bench.task, bench.space
    t = task.table
    if t.sampling == "damage":
        if task.quant.method != "rtn":
            rows = _rtn_rows(task)
        if rows is None:
            raise MqbenchError(f"the sample plan of {task.key} depends on its per-layer rows; "
                               f"build the fixed rows first")
        damage, limit = damage_model(rows, bench)
        cfgs = sample_by_damage(space, t.configs, t.strata, task.seed, damage, limit,
                                t.broken_share)
    else:
        cfgs = sample_configs(space, t.configs, t.strata, task.seed)
    samples = [Item("sample", task.seed, c) for c in cfgs]
    if t.noise_configs and samples:
        pick = np.linspace(0, len(samples) - 1, min(t.noise_configs, len(samples)))
        samples += [Item("sample", t.noise_seed, samples[int(round(i))].cfg) for i in pick]
    return samples


def _rtn_rows(task) -> pd.DataFrame:
    """The rtn table's rows: another method's table draws the rtn table's configurations
    (its damage plan), so one task's tables hold the same configurations under every method
    and compare configuration by configuration."""
    rtn = with_method(task, "rtn")
    try:
        return open_table(rtn).rows
    except MqbenchError as exc:
        raise MqbenchError(f"the {task.quant.method} table of {task.name} measures the rtn "
                           f"table's configurations; build that first (`mqbench build --task "
                           f"{task.name}`): {exc}") from None


def plan_checksum(items: list[Item]) -> str:
    """sha256 of a plan's measurements in order (shards of one table must agree on it)."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.kind}|{it.cal_seed}|{it.cfg.key}\n".encode())
    return h.hexdigest()


def planned_rows(bench: Bench) -> int:
    """How many rows the full table will hold (known before any measurement)."""
    space, t = bench.space, bench.task.table
    nw, na, nu = len(space.weight_bits), len(space.act_bits), len(space.units)
    n = min(t.configs, nw ** nu * na ** nu - nw * na)
    return len(fixed_items(bench)) + n + (min(t.noise_configs, n) if t.noise_configs else 0)


def row(bench: Bench, item: Item, test: Measured, val: Measured | None) -> tuple:
    """One schema-2 row: protocol 1's columns, then the test halves and the validation set."""
    space, cfg = bench.space, item.cfg
    size = space.size_bits(cfg)
    nan = (math.nan,) * 3
    halves = test.halves or (None, None)
    extra = [nan if m is None else (m.acc, m.loss, m.kl) for m in (*halves, val and val.full)]
    return (item.kind, item.cal_seed, cfg.key, item.unit, list(cfg.w), list(cfg.a),
            size / sum(space.params), size, space.bops(cfg), test.full.acc, test.full.loss,
            test.full.kl, *(v for triple in extra for v in triple))


def evaluators_for(bench: Bench, seed: int, evaluators: dict) -> tuple:
    """Seed `seed`'s (test, validation) evaluators, kept in `evaluators` between calls."""
    if seed not in evaluators:
        evaluators[seed] = (bench.evaluator(seed), bench.evaluator(seed, split="val"))
    return evaluators[seed]


def measure_rows(bench: Bench, items: list[Item], evaluators: dict) -> list[tuple]:
    """The rows of `items` (one calibration seed), measured prefix-shared in the order given:
    pure computation, nothing stored. The rows do not depend on which other items share the
    call (prefix sharing reproduces each configuration's own forward exactly)."""
    if not items:
        return []
    seeds = {it.cal_seed for it in items}
    if len(seeds) > 1:
        raise MqbenchError(f"measure_rows takes one calibration seed, got {sorted(seeds)}")
    ev, vev = evaluators_for(bench, items[0].cal_seed, evaluators)
    cfgs = [it.cfg for it in items]
    return [row(bench, it, t, v) for it, t, v in zip(items, ev.measure(cfgs), vev.measure(cfgs))]


def prefix_order(bench: Bench, items: list[Item], evaluators: dict) -> list[Item]:
    """`items` grouped by calibration seed, each group sorted so shared prefixes are
    consecutive (by the seed's prefix runner where the model has one)."""
    out = []
    for seed in dict.fromkeys(it.cal_seed for it in items):
        group = [it for it in items if it.cal_seed == seed]
        runner = evaluators_for(bench, seed, evaluators)[0].runner
        if runner is not None:
            group.sort(key=lambda it: runner.key(it.cfg))
        out += group
    return out


def measure_items(con, bench: Bench, items: list[Item], chunk: int, evaluators: dict,
                  stored: Callable[[int], object], limit: int | None) -> int:
    """Measure the items not yet stored in table `con`, grouped by calibration seed and
    sorted by prefix, `chunk` rows per prefix-shared group and commit, each on the test and
    the validation split; returns how many were measured (at most `limit`). `evaluators`
    keeps each seed's (test, validation) evaluators between calls; `stored(n)` is called
    after each commit."""
    done = set(con.execute("SELECT kind, cal_seed, key FROM results").fetchall())
    todo = [it for it in items if (it.kind, it.cal_seed, it.cfg.key) not in done]
    todo = todo if limit is None else todo[:max(limit, 0)]
    todo = prefix_order(bench, todo, evaluators)
    j = 0
    while j < len(todo):  # chunks never straddle two seeds
        seed = todo[j].cal_seed
        part = [it for it in todo[j:j + chunk] if it.cal_seed == seed]
        rows = measure_rows(bench, part, evaluators)
        con.begin()
        con.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(rows[0]))})", rows)
        con.commit()
        stored(len(part))
        j += len(part)
    return len(todo)
