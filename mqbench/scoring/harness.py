"""Score one proxy on one task: correlations, layer-level sensitivity, downstream allocation.

Pipeline: load (or build, on first use) the task's table -> cached statistics -> run the proxy
isolated (mqbench.proxy.sandbox) -> damage matrix -> a score for every configuration of the table
(milliseconds) -> metrics -> ILP allocations under the task's budgets, quantized and
evaluated with the task's quantizer -> TAP's fitness phi = alpha*rho_sens + (1-alpha)*Acc.

Ground truth for the layer level: a unit's measured sensitivity is the cross-entropy increase
when it alone is quantized to the lowest weight bit-width (the table's `layer` rows).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from mqbench.errors import MqbenchError
from mqbench.paths import atomic_path, cache_dir
from mqbench.progress import bar as progress_bar
from mqbench.progress import stage
from mqbench.provenance import software
from mqbench.proxy.context import HESSIAN_BN, Stats, all_cached
from mqbench.proxy.contract import Proxy, check_scores, damage_matrix
from mqbench.proxy.sandbox import check_limits, marked, run_limited
from mqbench.quant.space import BitConfig
from mqbench.scoring import allocate as A
from mqbench.scoring import metrics as S
from mqbench.scoring.record import TABLE_PROVENANCE_KEYS, Allocation, Record, Timing, variant_name
from mqbench.task.spec import Task
from mqbench.truth.bench import Metrics, open_bench
from mqbench.truth.build import ensure_table

BATCHES = 5  # as EMQ's five runs per proxy


def batch_seeds(task: Task, n: int) -> list[int]:
    """The calibration-batch seeds of `n` batches: the task seed first."""
    return [task.seed + i for i in range(n)]


@dataclass(frozen=True)
class EvalOptions:
    """How to run the harness."""

    bootstrap: int = 1000
    timeout: float = 120.0  # seconds for one proxy call
    mem_mb: int = 4096
    isolate: bool = True
    progress: bool = True
    downstream: bool = True
    # calibration batches the proxy is run on (the task seed's, then seeds + 1, + 2, ...): its
    # estimator variance, recorded per batch and folded into the verdicts' intervals
    batches: int = BATCHES
    hessian_bn: str = "folded"  # or "unfolded", as HAWQ's reference code (proxy.context)

    def __post_init__(self):
        check_limits(self.timeout, self.mem_mb)  # one line for 0, -1, nan
        if self.hessian_bn not in HESSIAN_BN:
            raise MqbenchError(f"hessian_bn = {self.hessian_bn!r}: choose one of "
                               f"{', '.join(HESSIAN_BN)}")
        if not isinstance(self.batches, int) or self.batches < 1:
            raise MqbenchError(f"batches = {self.batches!r}: give a whole number >= 1 of "
                               f"calibration batches (1 = the task seed's only)")


def config_matrix(space, keys) -> np.ndarray:
    """[configs, units] indices into the weight-bit choices (32 = float maps to -1)."""
    lookup = {b: j for j, b in enumerate(space.weight_bits)}
    return np.array([[lookup.get(b, -1) for b in BitConfig.from_key(k).w] for k in keys])


def config_scores(damage: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Predicted quality of each configuration: minus its summed damage."""
    units = np.arange(damage.shape[0])
    return -damage[units[None, :], idx].sum(axis=1)


class Measured:
    """Configurations measured on the task's evaluation set, cached on disk.

    Two proxies that pick the same allocation share one measurement, and a re-run of a proxy
    measures nothing: the quantizer is only prepared (seconds) when a configuration is new.
    Keyed by task version, trained weights, calibration seed and configuration key; the
    evaluator is deterministic, so a cached value is the value a fresh evaluation gives.
    """

    def __init__(self, bench, cal_seed: int):
        self.bench, self.cal_seed, self._ev = bench, cal_seed, None
        weights = str(bench.weights_manifest.get("checksum", "pretrained"))[:16]
        self.folder = cache_dir() / "measured" / bench.task.key / f"{weights}-seed{cal_seed}"

    def __call__(self, cfg: BitConfig) -> Metrics:
        path = self.folder / (hashlib.sha256(cfg.key.encode()).hexdigest()[:32] + ".json")
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == cfg.key:
                return Metrics(cached["acc"], cached["loss"], cached["kl"])
        except (OSError, ValueError, KeyError):
            pass  # not measured yet, or a damaged entry: measure again
        if self._ev is None:
            self._ev = self.bench.evaluator(self.cal_seed)
        m = self._ev.evaluate(cfg)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"key": cfg.key, "acc": m.acc, "loss": m.loss, "kl": m.kl}))
        return m


def layer_truth(table, space, split: str = "test") -> np.ndarray:
    """Per-unit measured sensitivity: CE increase with the unit alone at the lowest bits
    (on `split`: "test" for reported numbers, "val" for anything that selects)."""
    fp_loss = table.kind("fp", split=split).loss.iloc[0]
    layer = table.kind("layer", split=split)
    low = space.weight_bits[0]
    out = np.full(len(space.units), np.nan)
    for r in layer.itertuples():
        u = space.units.index(r.unit)
        if r.w_bits[u] == low:
            out[u] = r.loss - fp_loss
    return out


def _call(p: Proxy, stats, configs, opts: EvalOptions):
    args = (stats,) if p.kind != "config" else (stats, configs)
    if not opts.isolate:
        try:
            return p.fn(*args)
        except Exception as exc:
            raise MqbenchError(f"proxy {p.name!r} raised {type(exc).__name__}: {exc}") from None
    captured: list = []
    try:
        return run_limited(p.fn, args, name=p.name, timeout=opts.timeout, mem_mb=opts.mem_mb,
                           capture=captured)
    finally:  # shown even when the call failed: a proxy's own print is how its author debugs it
        if opts.progress and marked(captured):
            print(marked(captured, indent="  "), file=sys.stderr, flush=True)


def evaluate_proxy(p: Proxy, task: Task, opts: EvalOptions = EvalOptions()) -> Record:
    """Evaluate `p` on `task`; returns its result record (nothing is written)."""
    table = ensure_table(task, opts.progress)
    bench = open_bench(task, opts.progress)
    if table.meta.get("weights_checksum") != bench.weights_manifest.get("checksum", "pretrained"):
        raise MqbenchError(f"the table of {task.key} was built from other model weights than the "
                           f"cached ones; rebuild it with `mqbench build --task {task.name} "
                           f"--force`")
    space = bench.space
    stats = Stats(bench, hessian_bn=opts.hessian_bn)
    options = {"hessian_bn": opts.hessian_bn} if opts.hessian_bn != "folded" else None
    with stage(f"proxy statistics of {task.key} (computed once, then cached)",
               opts.progress and not all_cached(stats)):
        stats.compute_all()  # the sandbox gets a read-only view of them, shipped once
    configs = table.configs().sort_values("key", kind="stable").reset_index(drop=True)
    # (key order: bootstrap resamples, hence CIs, do not depend on how the table was built)
    keys = configs.key.to_numpy()
    cfg_list = [BitConfig.from_key(k) for k in keys]

    t0 = time.perf_counter()
    raw = _call(p, stats, cfg_list, opts)
    proxy_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    if p.kind == "config":
        scores = check_scores(p, raw, len(keys))  # the contract's one output validator
        damage = sens = None
    else:
        damage, sens = damage_matrix(p, raw, stats)
        scores = config_scores(damage, config_matrix(space, keys))
    score_seconds = time.perf_counter() - t1

    quality = table.quality(configs)
    metrics = S.config_metrics(scores, quality, keys, opts.bootstrap, task.seed,
                               kl=configs.kl.to_numpy())
    metrics.update(S.layer_metrics(sens, layer_truth(table, space)))
    batch_damage = None
    if damage is not None and opts.batches > 1:
        batch_damage = {str(task.seed): damage}
        for seed in batch_seeds(task, opts.batches)[1:]:
            other = Stats(bench, batch_seed=seed, hessian_bn=opts.hessian_bn)
            with stage(f"proxy statistics of {task.key}, calibration batch {seed}",
                       opts.progress and not all_cached(other)):
                other.compute_all()
            batch_damage[str(seed)] = damage_matrix(p, _call(p, other, cfg_list, opts), other)[0]

    downstream = []
    if opts.downstream and damage is not None:
        measure = Measured(bench, task.seed)
        n_budgets = 2 * len(task.harness.budgets)
        bar = progress_bar(n_budgets, "ILP allocations (measured once, then cached)",
                           opts.progress, unit="alloc")
        fixed = A.fixed_indices(space, task.harness.fixed)
        all_rows = table.rows[(table.rows.cal_seed == task.seed)
                              & table.rows.kind.isin(["uniform", "sample"])]
        for metric in ("size", "bops"):
            cost = A.costs(space, metric)
            column = "size_bits" if metric == "size" else "bops"
            for avg in task.harness.budgets:
                budget = A.budget_for(space, avg, metric)
                cfg = A.allocation_config(space, A.allocate(damage, cost, budget, fixed))
                m = measure(cfg)
                within = all_rows[all_rows[column] <= budget * (1 + 1e-9)]
                best = float(within.acc.max()) if len(within) else float("nan")
                downstream.append(Allocation(
                    budget_avg_bits=avg, metric=metric, config=cfg.key, acc=m.acc, loss=m.loss,
                    kl=m.kl, size_bits=space.size_bits(cfg), bops=space.bops(cfg),
                    best_table_acc=best, gap_to_best=best - m.acc,
                    best_table_loss=float(within.loss.min()) if len(within) else None))
                bar.update()
        bar.close()
    metrics.update(S.downstream_metrics(metrics, downstream, task.harness.alpha))

    return Record(
        proxy=variant_name(p.name, options), proxy_version=p.version,
        proxy_sha256=p.source_sha256, proxy_kind=p.kind,
        paper=p.paper, task=task.label, task_version=task.version, task_checksum=task.checksum,
        table_checksum=table.meta["rows_checksum"], seed=task.seed, **software(),
        # provenance of the ground-truth table the proxy was scored against
        table_provenance={k: table.meta.get(k) for k in TABLE_PROVENANCE_KEYS},
        n_configs=len(keys), bootstrap=opts.bootstrap,
        metrics={k: (None if not np.isfinite(v) else round(float(v), 6))
                 for k, v in metrics.items()},
        downstream=tuple(downstream),
        timing=Timing(proxy_seconds=round(proxy_seconds, 4),
                      score_seconds=round(score_seconds, 6),
                      per_config_ms=round(1000 * (proxy_seconds + score_seconds) / len(keys), 5)),
        sensitivity=(None if sens is None else {u: float(s) for u, s in zip(space.units, sens)}),
        scores={k: float(s) for k, s in zip(keys, scores)},
        batch_damage=(None if batch_damage is None else
                      {k: [[float(x) for x in row] for row in d] for k, d in batch_damage.items()}),
        options=options)
