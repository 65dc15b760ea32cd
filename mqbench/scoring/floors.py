"""Floors, oracles and aggregation rules: configuration scores that need no proxy.

A layer proxy's configuration score is -sum_l s_l * ||Q_b(W_l) - W_l||^2 (the harness's
perturbation-weighted rule); a large part of its correlation comes from the perturbation
term alone. These scores say how much, from the table and the task's quantization error:

* floors (labelled, never ranked as proxies): `uniform` (s_l = 1: the aggregation formula
  alone), `count_low_bits` (minus the number of units at the lowest bit-width), `size`
  (sum params * bits, EMQ's BParams) and `random` (s_l ~ U[0, 1) per module, many seeds);
* oracles (labelled, not ranked), from the table's own single-layer rows (one unit alone at
  a bit-width, the rest float; cross-entropy increase ΔCE): `oracle_layer` uses ΔCE at the
  lowest bits as s_l under the same rule (the proxy with ρ_sens = 1); `oracle_curvature`
  uses s_l = ΔCE_l / ||Q_low(W_l) - W_l||^2, so that its term at the lowest bits *is* the
  measurement (a perfect per-layer curvature); `oracle_additive` sums the measured ΔCE at
  each unit's own bit-width (the best any additive proxy can do). Oracle -> best proxy is
  the room left to layer proxies; oracle_additive -> 1 is interaction between layers;
* rules: `perturbation_scores` (the headline rule) and `bit_scores` (EMQ's bit-weighted
  rule sum_l s_l * b_l), so layer and layer_bit proxies can be scored the same way.

`TaskData` holds everything these need, configurations in key order (so nothing depends on
the order rows were stored in). `in_sample` reads proxies/IN_SAMPLE.toml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tomllib

from mqbench.errors import MqbenchError
from mqbench.paths import proxy_dirs
from mqbench.proxy.context import Stats
from mqbench.quant.space import BitConfig
from mqbench.scoring.harness import layer_truth
from mqbench.task.spec import Task
from mqbench.truth.bench import open_bench
from mqbench.truth.noise import USABLE_ACC_DROP, USABLE_PPL_RATIO
from mqbench.truth.store import Table, open_table

RANDOM_DRAWS = 200  # seeds of the random floor
FLOORS = ("uniform", "count_low_bits", "size")  # deterministic floors ("best floor" is one)
ORACLES = ("oracle_layer", "oracle_curvature", "oracle_additive")
IN_SAMPLE_FILE = "IN_SAMPLE.toml"


@dataclass(frozen=True)
class TaskData:
    """A task's table and quantization error, configurations sorted by key."""

    task: Task
    table: Table
    units: tuple[str, ...]
    weight_bits: tuple[int, ...]
    keys: np.ndarray  # [configs] configuration keys, ascending
    bits: np.ndarray  # [configs, units] weight bits
    idx: np.ndarray  # [configs, units] index into weight_bits
    quality: np.ndarray  # [configs] ground truth (accuracy; LM: minus log perplexity)
    size_bits: np.ndarray  # [configs] weight storage
    pert: np.ndarray  # [units, weight bits] sum over the unit's modules of ||Q_b(W) - W||^2
    pert_modules: np.ndarray  # [modules, weight bits]
    unit_of: np.ndarray  # [modules] unit index
    layer_truth: np.ndarray  # [units] CE increase, unit alone at the lowest bits
    layer_damage: np.ndarray  # [units, weight bits] CE increase, unit alone at each bit-width
    usable: np.ndarray  # [configs] bool: within the usable tolerance of full precision
    usable_rule: str  # the tolerance in words

    @property
    def n(self) -> int:
        return len(self.keys)


def usable_mask(table: Table, rows) -> tuple[np.ndarray, str]:
    """Configurations within 5 accuracy points (LM: 5% perplexity) of full precision."""
    fp = table.kind("fp").iloc[0]
    if table.task.is_lm:
        limit = float(fp.loss) + math.log(USABLE_PPL_RATIO)
        return (rows.loss.to_numpy() <= limit), (
            f"perplexity within {100 * (USABLE_PPL_RATIO - 1):.0f}% of full precision's "
            f"{math.exp(fp.loss):.2f}")
    return (rows.acc.to_numpy() >= float(fp.acc) - USABLE_ACC_DROP), (
        f"accuracy within {100 * USABLE_ACC_DROP:.0f} points of full precision's "
        f"{float(fp.acc):.3f}")


def load_task_data(task: Task) -> TaskData:
    """The task's verified table (cached or shipped; never built) and quantization error."""
    table = open_table(task)
    bench = open_bench(task, progress=False)
    space = bench.space
    rows = table.configs().sort_values("key").reset_index(drop=True)
    keys = rows.key.to_numpy()
    bits = np.array([BitConfig.from_key(k).w for k in keys])
    lookup = {b: j for j, b in enumerate(space.weight_bits)}
    if not np.isin(bits, space.weight_bits).all():
        raise MqbenchError(f"table of {task.key} holds configurations with weight bits outside "
                           f"{space.weight_bits}; rebuild it with `mqbench build --force`")
    idx = np.vectorize(lookup.__getitem__)(bits)
    pert_m = np.asarray(Stats(bench).perturbation, dtype=np.float64)
    unit_of = np.asarray(space.unit_of)
    pert = np.zeros((len(space.units), len(space.weight_bits)))
    np.add.at(pert, unit_of, pert_m)
    usable, rule = usable_mask(table, rows)
    return TaskData(task, table, tuple(space.units), tuple(space.weight_bits), keys, bits, idx,
                    table.quality(rows), rows.size_bits.to_numpy().astype(np.float64), pert,
                    pert_m, unit_of, layer_truth(table, space), layer_damage(table, space),
                    usable, rule)


def layer_damage(table: Table, space) -> np.ndarray:
    """[units, weight bits] CE increase with one unit alone at each bit-width (NaN: not
    measured)."""
    fp_loss = float(table.kind("fp").loss.iloc[0])
    out = np.full((len(space.units), len(space.weight_bits)), np.nan)
    for r in table.kind("layer").itertuples():
        u = space.units.index(r.unit)
        if r.w_bits[u] in space.weight_bits:
            out[u, space.weight_bits.index(r.w_bits[u])] = r.loss - fp_loss
    if np.all(np.isnan(out[:, -1])) and np.all(np.isfinite(out[:, :-1])):
        # protocol 2 measures each unit alone below the top bit-width only; at the top
        # (8 bits) a unit is taken as undamaged (fmnist-resnet8 v2: the uniform 8-bit model
        # is within 0.0001 accuracy of full precision)
        out[:, -1] = 0.0
    return out


# ---------------------------------------------------------------- aggregation rules
def perturbation_scores(data: TaskData, sens: np.ndarray) -> np.ndarray:
    """-sum_u s_u * ||Q_{b_u}(W_u) - W_u||^2 per configuration (s per unit, or [draws, units]
    for many at once: returns [draws, configs])."""
    s = np.asarray(sens, dtype=np.float64)
    units = np.arange(len(data.units))
    terms = data.pert[units[None, :], data.idx]  # [configs, units]
    return -(terms @ s.T).T if s.ndim == 2 else -(terms @ s)


def damage_scores(data: TaskData, damage: np.ndarray) -> np.ndarray:
    """-sum_u damage[u, b_u] per configuration (a [units, weight bits] damage matrix: what
    the harness scores a layer or layer_bit proxy's output with)."""
    units = np.arange(len(data.units))
    return -np.asarray(damage, dtype=np.float64)[units[None, :], data.idx].sum(axis=1)


def bit_scores(data: TaskData, sens: np.ndarray) -> np.ndarray:
    """EMQ's bit-weighted rule: sum_u s_u * b_u per configuration (higher = better)."""
    return data.bits.astype(np.float64) @ np.asarray(sens, dtype=np.float64)


def sensitivity_of(data: TaskData, sensitivity: dict[str, float] | None) -> np.ndarray | None:
    """A record's per-unit sensitivity as an array in unit order (None stays None)."""
    if sensitivity is None:
        return None
    missing = [u for u in data.units if u not in sensitivity]
    if missing:
        raise MqbenchError(f"a record of {data.task.name} has no sensitivity for unit "
                           f"{missing[0]!r}; re-run `mqbench eval` on the current task")
    return np.array([float(sensitivity[u]) for u in data.units])


# ---------------------------------------------------------------- floors and oracles
def floor_scores(data: TaskData) -> dict[str, np.ndarray]:
    """The deterministic floors' configuration scores (higher = predicted better)."""
    low = min(data.weight_bits)
    return {"uniform": perturbation_scores(data, np.ones(len(data.units))),
            "count_low_bits": -(data.bits == low).sum(axis=1).astype(np.float64),
            "size": data.size_bits.copy()}


def random_scores(data: TaskData, draws: int = RANDOM_DRAWS, seed: int = 0) -> np.ndarray:
    """[draws, configs] the random floor's scores: per-module s ~ U[0, 1), each module's own
    quantization error, summed per configuration (the harness's rule for module proxies)."""
    rng = np.random.default_rng(seed)
    s_mod = rng.random((draws, len(data.unit_of)))
    # damage[d, u, b] = sum over the unit's modules of s_m * pert_m[b]
    damage = np.zeros((draws, len(data.units), len(data.weight_bits)))
    for m, u in enumerate(data.unit_of):
        damage[:, u, :] += s_mod[:, m, None] * data.pert_modules[m][None, :]
    units = np.arange(len(data.units))
    return -damage[:, units[None, :], data.idx].sum(axis=2)


def oracle_scores(data: TaskData) -> dict[str, np.ndarray]:
    """The additive oracles' scores (absent when the table lacks the single-layer rows)."""
    out = {}
    if np.all(np.isfinite(data.layer_truth)):
        out["oracle_layer"] = perturbation_scores(data, data.layer_truth)
        low = data.pert[:, 0]
        if np.all(low > 0):
            out["oracle_curvature"] = perturbation_scores(data, data.layer_truth / low)
    if np.all(np.isfinite(data.layer_damage)):
        out["oracle_additive"] = damage_scores(data, data.layer_damage)
    return out


def tie_share(scores) -> float:
    """Share of configurations whose score equals another configuration's."""
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True,
                                   return_counts=True)
    return float((counts[inverse] > 1).mean()) if len(counts) else math.nan


# ---------------------------------------------------------------- noise ceiling
NOISE_WORDS = {  # where a table's noise ceiling comes from, in the leaderboard's words
    "half": "two disjoint halves of the test set, {n} configurations: test-sample noise",
    "seed": "calibration-seed repeat of {n} configurations; test-sample noise not included",
}


def noise_source(data: TaskData) -> str:
    """"half" when every configuration was also measured on two disjoint halves of the test
    set (protocol 2's split-half rows: test-sample noise, the larger source; ~3x the seed's
    on the audited tables), else "seed" (a subset re-measured under a second seed)."""
    return "half" if "acc_h0" in data.table.rows.columns else "seed"


def noise_pairs(data: TaskData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keys, primary quality, repeated quality, usable) of the configurations measured
    twice, in key order: test half 0 vs half 1 (`noise_source` "half"), else the task seed
    vs the noise seed. Usable is judged on the full measurement."""
    table, t = data.table, data.task
    rows = table.rows[table.rows.kind.isin(["uniform", "sample"])]
    if noise_source(data) == "half":
        a = rows[rows.cal_seed == t.seed].drop_duplicates("key").set_index("key").sort_index()
        usable, _ = usable_mask(table, a)
        return (a.index.to_numpy(), table.quality(table.on(a, "h0")),
                table.quality(table.on(a, "h1")), usable)
    a = rows[rows.cal_seed == t.seed].drop_duplicates("key").set_index("key")
    b = rows[rows.cal_seed == t.table.noise_seed].drop_duplicates("key").set_index("key")
    common = sorted(set(a.index) & set(b.index))
    a, b = a.loc[common], b.loc[common]
    usable, _ = usable_mask(table, a)
    return (np.array(common), table.quality(a), table.quality(b), usable)


# ---------------------------------------------------------------- in-sample marks
def in_sample_map() -> dict[str, tuple[str, ...]]:
    """proxy name -> tasks it was searched or tuned on, from every proxies folder's
    IN_SAMPLE.toml (later folders add to earlier ones)."""
    out: dict[str, tuple[str, ...]] = {}
    for folder in proxy_dirs():
        path = folder / IN_SAMPLE_FILE
        if not path.exists():
            continue
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise MqbenchError(f"{path} is not valid TOML ({exc}); fix the line it names") \
                from None
        for name, tasks in data.items():
            if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                raise MqbenchError(f"{path}: {name} must be a list of task names, e.g. "
                                   f"{name} = [\"fmnist-resnet8\"]")
            out[name] = tuple(sorted(set(out.get(name, ())) | set(tasks)))
    return out


def in_sample(proxy_name: str, task: str) -> bool:
    """True when `proxy_name` was searched or tuned on `task` (its row there is in-sample).
    A variant (`name@option`) and a task label (`task@method`) count as the base proxy on
    the base task: the search saw the same model and data."""
    base_task = task.partition("@")[0]
    return base_task in in_sample_map().get(proxy_name.partition("@")[0], ())
