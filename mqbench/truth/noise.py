"""Protocol 2's noise ceilings and table statistics, computed from a table's rows.

A *ceiling* is the Spearman correlation between two measurements of the same rows: no proxy
can be expected to rank the table better than the table ranks itself. Two sources:

* ``seed``: the rows re-measured under the second calibration seed (`table.noise_seed`)
  against the same rows under the task seed, both on the whole test set;
* ``half``: every row measured on one half of the test set against the other half (split
  half). Each half holds half the images, so this ceiling is a conservative (lower) estimate
  of the whole test set's reliability.

For configurations (uniform + sampled) the ceiling is given over all of them and within the
true top 50% / 20%, "true" being the mean of the two measurements (for split-half that is,
up to rounding, the whole-test-set value); ties at the cut keep the rows' key order. The
quality compared is what proxies are ranked against: accuracy, or minus the cross-entropy
for LM tasks. For single-layer rows (each unit alone at one low bit-width) it is the
cross-entropy, which is what per-layer sensitivity (rho_sens) ranks: over all layer rows and
per bit-width across units (``w2``, ``w3``, ... and ``a<b>`` for low activation bits).
Subsets with fewer than 3 pairs give NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scistats  # not `stats`: that is the proxy context

from mqbench.task.spec import Task

USABLE_ACC_DROP = 0.05  # usable: within 5 accuracy points of full precision
USABLE_PPL_RATIO = 1.05  # LM tasks: perplexity within 5% of full precision
TOPS = (("all", 1.0), ("top50", 0.5), ("top20", 0.2))
CONFIG_KINDS = ("uniform", "sample")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(scistats.spearmanr(x, y).statistic)


def top_subsets(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Positions of the true top 100% / 50% / 20% of paired values (true = their mean)."""
    order = np.argsort(-(x + y) / 2.0, kind="stable")
    return {name: order[:max(1, math.ceil(frac * len(x)))] for name, frac in TOPS}


def _config_quality(rows: pd.DataFrame, lm: bool, suffix: str = "") -> np.ndarray:
    return (-rows[f"loss{suffix}"] if lm else rows[f"acc{suffix}"]).to_numpy(dtype=float)


def _bit_label(row, top_w: int) -> str:
    w, a = min(row.w_bits), min(row.a_bits)
    return f"w{w}" if w < top_w else f"a{a}"


def _pairs(rows: pd.DataFrame, task: Task, kinds) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of `kinds` under the task seed and the same rows under the noise seed."""
    sel = rows[rows.kind.isin(kinds)]
    a = sel[sel.cal_seed == task.seed].set_index(["kind", "key"])
    b = sel[sel.cal_seed == task.table.noise_seed].set_index(["kind", "key"])
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common], b.loc[common]


def _ceilings(prefix: str, x: np.ndarray, y: np.ndarray, out: dict) -> None:
    out[f"{prefix}_n"] = len(x)
    for name, idx in top_subsets(x, y).items():
        out[f"{prefix}_{name}"] = _spearman(x[idx], y[idx])


def _layer_ceilings(prefix: str, a: pd.DataFrame, xa: np.ndarray, xb: np.ndarray,
                    top_w: int, out: dict) -> None:
    out[f"{prefix}_n"] = len(xa)
    out[f"{prefix}_all"] = _spearman(xa, xb)
    labels = np.array([_bit_label(r, top_w) for r in a.itertuples()])
    for label in sorted(set(labels), key=lambda s: (s[0], int(s[1:]))):
        m = labels == label
        out[f"{prefix}_{label}"] = _spearman(xa[m], xb[m])


def noise_ceilings(rows: pd.DataFrame, task: Task) -> dict[str, float]:
    """Every ceiling the rows support, keyed `ceiling_<seed|half>_<configs|layers>_<subset>`
    (plus `..._n`, the number of pairs). See the module docstring for the definitions."""
    lm, top_w, out = task.is_lm, max(task.quant.weight_bits), {}
    if task.table.noise_configs:
        a, b = _pairs(rows, task, CONFIG_KINDS)
        _ceilings("ceiling_seed_configs", _config_quality(a, lm), _config_quality(b, lm), out)
        a, b = _pairs(rows, task, ("layer",))
        _layer_ceilings("ceiling_seed_layers", a, -a.loss.to_numpy(), -b.loss.to_numpy(),
                        top_w, out)
    if task.table.split_half and "acc_h0" in rows.columns:
        main = rows[rows.cal_seed == task.seed].sort_values(["kind", "key"])
        cfg = main[main.kind.isin(CONFIG_KINDS)]
        _ceilings("ceiling_half_configs", _config_quality(cfg, lm, "_h0"),
                  _config_quality(cfg, lm, "_h1"), out)
        lay = main[main.kind == "layer"]
        _layer_ceilings("ceiling_half_layers", lay, -lay.loss_h0.to_numpy(),
                        -lay.loss_h1.to_numpy(), top_w, out)
    return out


def table_stats(rows: pd.DataFrame, task: Task, classes: int) -> dict[str, float]:
    """How much of the table is broken, and how tied: shares of the configurations (task
    seed, whole test set) below chance x 2 and below full precision - 5 accuracy points
    (LM tasks also: perplexity above full precision + 5%), and the tie share (configurations
    whose quality equals another's) with the number of distinct quality values."""
    main = rows[rows.cal_seed == task.seed]
    cfg = main[main.kind.isin(CONFIG_KINDS)]
    fp = main[main.kind == "fp"].iloc[0]
    acc = cfg.acc.to_numpy(dtype=float)
    out = {"configs": len(cfg), "share_below_chance_x2": float(np.mean(acc < 2.0 / classes)),
           "share_below_fp_minus_5pts": float(np.mean(acc < fp.acc - USABLE_ACC_DROP))}
    if task.is_lm:
        out["share_ppl_above_fp_plus_5pct"] = float(np.mean(
            cfg.loss.to_numpy(dtype=float) > fp.loss + math.log(USABLE_PPL_RATIO)))
    q = _config_quality(cfg, task.is_lm)
    _, inverse, counts = np.unique(q, return_inverse=True, return_counts=True)
    out["tie_share"] = float(np.mean(counts[inverse] > 1)) if len(q) else math.nan
    out["distinct_values"] = len(counts)
    return out


def ceiling_lines(meta: dict[str, str]) -> list[str]:
    """Human-readable lines for `mqbench show`: ceilings and table statistics (protocol 2;
    empty for a protocol-1 table's meta)."""
    if "ceiling_half_configs_all" not in meta and "ceiling_seed_configs_all" not in meta:
        return []

    def f(key: str) -> str:
        return f"{float(meta[key]):.3f}" if key in meta else "-"

    lines = []
    for source, what in (("seed", "2nd calibration seed"), ("half", "split-half test set")):
        if f"ceiling_{source}_configs_all" not in meta:
            continue
        c, L = f"ceiling_{source}_configs", f"ceiling_{source}_layers"
        bits = sorted((k[len(L) + 1:] for k in meta if k.startswith(L + "_")
                       and k[len(L) + 1:] not in ("n", "all")), key=lambda s: (s[0], int(s[1:])))
        lines.append(f"  noise ceiling ({what}, {meta[c + '_n']} configs): Spearman all "
                     f"{f(c + '_all')}, top 50% {f(c + '_top50')}, top 20% {f(c + '_top20')}")
        lines.append(f"    single layers ({meta.get(L + '_n', 0)} rows): all {f(L + '_all')}"
                     + "".join(f", {b} {f(L + '_' + b)}" for b in bits))
    if "share_below_chance_x2" in meta:
        lines.append(f"  configurations: {100 * float(meta['share_below_chance_x2']):.1f}% below "
                     f"chance x 2, {100 * float(meta['share_below_fp_minus_5pts']):.1f}% below "
                     f"FP - 5 points, ties {100 * float(meta['tie_share']):.1f}% "
                     f"({meta['distinct_values']} distinct values)")
    return lines
