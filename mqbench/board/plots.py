"""Leaderboard plots (PNG, matplotlib Agg), regenerated from records and ground-truth tables.

* `scatter_png`: per task, one small panel per proxy: the proxy's score rank (percentile
  among the table's configurations; raw scores span orders of magnitude) against the
  configuration's ground-truth top-1 accuracy, with ρs in the panel title.
* `pareto_png`: per task, accuracy vs. model size: every table configuration in grey, the
  table's Pareto front (best accuracy at or below each size) as a line, and each proxy's
  ILP allocations under the size budgets as markers.

Files are byte-reproducible: fixed size and dpi, no timestamp or software metadata. They
are reduced to a 128-colour palette (Pillow, a matplotlib dependency) because they are
committed: about 40% of the RGBA size with no visible loss on flat-colour plots.
"""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import rankdata

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
from PIL import Image

_META = {"Software": None}  # PNG text chunks: no version string, so bytes depend on data only
_DPI = 80


def _save(fig, path) -> None:
    """PNG to `path` (a file name or binary stream), palette-reduced, deterministic."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=_DPI, metadata=_META)
    plt.close(fig)
    img = Image.open(buf).convert("RGB")
    # median cut without dithering is deterministic and keeps flat colours exact
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(path, format="PNG", optimize=True)


def _truth(table) -> pd.DataFrame:
    rows = table.rows
    rows = rows[(rows.cal_seed == table.task.seed) & rows.kind.isin(["uniform", "sample"])]
    return rows.drop_duplicates("key").set_index("key")


def scatter_png(task: str, records: list[dict], table, path) -> None:
    """Score-rank vs accuracy panels for every proxy with config scores, as PNG to `path`."""
    truth = _truth(table)
    lm = table.task.is_lm  # LM tasks are ranked by perplexity
    y = np.exp(truth.loss) if lm else truth.acc
    recs = [r for r in records if r.get("scores")]
    cols = 5
    nrows = max(1, math.ceil(len(recs) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 1.9 * nrows), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(recs):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, recs):
        keys = [k for k in r["scores"] if k in truth.index]
        score = np.array([r["scores"][k] for k in keys])
        pct = 100 * (rankdata(score) - 1) / max(1, len(score) - 1)
        ax.scatter(pct, y.loc[keys].to_numpy(), s=2, alpha=0.4, color="#1f77b4",
                   linewidths=0, rasterized=False)
        rho = r["metrics"].get("spearman")
        ax.set_title(f"{r['proxy']}  ρs={rho:.2f}" if rho is not None else r["proxy"],
                     fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("perplexity" if lm else "top-1", fontsize=7)
    for ax in axes[-1, :]:
        ax.set_xlabel("proxy score rank (%)", fontsize=7)
    fig.suptitle(f"{task}: proxy score vs ground-truth {'perplexity' if lm else 'accuracy'}",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def pareto_front(size: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (size, acc) of the configurations no smaller-or-equal one beats, by size."""
    order = np.lexsort((-acc, size))
    xs, ys, best = [], [], -np.inf
    for i in order:
        if acc[i] > best:
            xs.append(size[i])
            ys.append(acc[i])
            best = acc[i]
    return np.array(xs), np.array(ys)


def pareto_png(task: str, records: list[dict], table, path) -> None:
    """Accuracy vs size: the table, its Pareto front, and each proxy's allocations."""
    truth = _truth(table)
    kb = truth.size_bits.to_numpy() / 8 / 1024
    acc = truth.acc.to_numpy()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.scatter(kb, acc, s=4, color="#bbbbbb", linewidths=0, label="table configurations")
    fx, fy = pareto_front(kb, acc)
    ax.step(fx, fy, where="post", color="black", linewidth=1.2, label="table Pareto front")
    markers = "o^sDvP*Xh<>p"
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(sorted(records, key=lambda r: r["proxy"])):
        pts = [(d["size_bits"] / 8 / 1024, d["acc"]) for d in r.get("downstream") or []
               if d["metric"] == "size"]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, s=30, marker=markers[i % len(markers)], color=cmap(i % 20),
                       edgecolors="black", linewidths=0.4, label=r["proxy"], zorder=3)
    ax.set_xlabel("model size (KB of weights)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{task}: ILP allocations under size budgets vs the table's Pareto front",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower right", frameon=False)
    fig.tight_layout()
    _save(fig, path)
