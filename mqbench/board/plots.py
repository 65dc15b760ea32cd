"""Leaderboard plots (PNG, matplotlib Agg), regenerated from records and ground-truth tables.

* `scatter_png`: per task, one small panel per proxy: the proxy's score rank (percentile
  among the table's configurations; raw scores span orders of magnitude) against the
  configuration's ground truth (top-1; LM tasks: perplexity, axis inverted so better is up),
  with ρs in the panel title and, where the report has floor rows, its Δ over the best floor.
* `pareto_png`: per task, ground truth vs model size: every table configuration in grey, the
  table's Pareto front as a line, and the ILP allocations under the size budgets: the top
  proxies named and coloured, the other proxies, baselines and floors one legend entry each.
* `sensitivity_png`: per task, a heatmap of units x bit-widths: the measured loss increase
  with each unit alone at each bit-width (the table's `layer` rows), beside the damage each
  top proxy predicts for the same cell (recovered from its stored configuration scores).

Roles (proxy, baseline, floor, ...) and the ranking come from the correlation report
(`mqbench.board.report`), so plots, tables and page agree on them.

Files are byte-reproducible: matplotlib's default style whatever the user's matplotlibrc,
the bundled DejaVu Sans font, fixed size and dpi, points drawn in configuration-key order
(not the table's storage order), no timestamp or software metadata. They are reduced to a
128-colour palette (Pillow, a matplotlib dependency) because they are committed: about 40%
of the RGBA size with no visible loss on flat-colour plots.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import rankdata

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
from PIL import Image

from mqbench.board import report as R
from mqbench.board.render import RANKED_ROLES
from mqbench.quant.space import BitConfig
from mqbench.scoring.metrics import METRICS
from mqbench.scoring.record import Record

_META = {"Software": None}  # PNG text chunks: no version string, so bytes depend on data only
_DPI = 80
_RC = {"font.family": "DejaVu Sans", "figure.dpi": _DPI, "savefig.dpi": _DPI,
       "axes.unicode_minus": True}  # bundled font: the same glyphs on every machine
TOP = 5  # proxies named in the Pareto legend
TOP_HEATMAP = 4  # proxy panels beside the measured one
GREY, DARK = "#bbbbbb", "#555555"


def _styled(fn):
    """Run a plotting function under matplotlib's defaults (no matplotlibrc, no style)."""

    @functools.wraps(fn)
    def wrap(*args, **kwargs):
        with plt.style.context("default"), matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)
    return wrap


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
    """Configuration rows by key, sorted (storage order differs between built and shipped)."""
    rows = table.rows
    rows = rows[(rows.cal_seed == table.task.seed) & rows.kind.isin(["uniform", "sample"])]
    return rows.drop_duplicates("key").set_index("key").sort_index()


def _quality(table, rows) -> tuple[np.ndarray, str]:
    """Ground truth as plotted: top-1, or for LM tasks perplexity (exp of the mean CE)."""
    if table.task.is_lm:
        return np.exp(rows.loss.to_numpy()), "perplexity"
    return rows.acc.to_numpy(), "top-1 accuracy"


@dataclass(frozen=True)
class _Ranking:
    """What the correlation report says about a task's records."""

    order: list[str]  # row names, in the report's (ranked) order
    roles: dict[str, str]  # name -> role (a ranked role wins over a reference row's)
    in_sample: set[str]  # searched or tuned on this task: never among the top
    floor: tuple  # (name, ρs) of the best floor row, or ()

    def top(self, k: int, ok=lambda name: True) -> list[str]:
        """The first k ranked, out-of-sample, non-baseline proxies passing `ok`."""
        return [n for n in self.order if self.roles[n] == "proxy" and n not in self.in_sample
                and ok(n)][:k]


def _ranking(task: str, records: list[Record]) -> _Ranking:
    rows = R.correlation_report(task, records).rows
    order, roles = [], {}
    for row in rows:
        name, r = row["proxy"], row.get("role") or "proxy"
        if name not in roles:
            order.append(name)
        if roles.get(name) not in RANKED_ROLES:  # a proxy's own row wins over a namesake
            roles[name] = r
    floors = [row for row in rows if row.get("role") == "floor"
              and math.isfinite(row.get(R.RANK_BY, math.nan))]
    best = next((row for row in floors if row.get("best_floor")), None) or \
        max(floors, key=lambda row: row[R.RANK_BY], default=None)
    return _Ranking(order, roles, {row["proxy"] for row in rows if row.get("in_sample")},
                    (best["proxy"], best[R.RANK_BY]) if best else ())


@_styled
def scatter_png(task: str, records: list[Record], table, path) -> None:
    """Score-rank vs ground-truth panels for every record with config scores, as PNG."""
    truth = _truth(table)
    y_all, ylabel = _quality(table, truth)
    y = pd.Series(y_all, index=truth.index)
    rank = _ranking(task, records)
    roles, floor = rank.roles, rank.floor
    by_name = {r.proxy: r for r in records}
    recs = [by_name[n] for n in rank.order if n in by_name and by_name[n].scores]
    cols = 5
    nrows = max(1, math.ceil(len(recs) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.0 * cols, 1.75 * nrows + 0.3),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(recs):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, recs):
        keys = sorted(k for k in r.scores if k in truth.index)
        score = np.array([r.scores[k] for k in keys])
        pct = 100 * (rankdata(score) - 1) / max(1, len(score) - 1)
        ref = roles[r.proxy] != "proxy"  # baselines and floors in grey
        ax.scatter(pct, y.loc[keys].to_numpy(), s=2, alpha=0.4, linewidths=0,
                   color=DARK if ref else "#1f77b4")
        rho = r.metrics.get(R.RANK_BY)
        title = r.proxy if rho is None else f"{r.proxy}  ρs={rho:.2f}"
        tags = [roles[r.proxy]] if roles[r.proxy] != "proxy" else []
        tags += ["in-sample"] if r.proxy in rank.in_sample else []
        title += f" ({', '.join(tags)})" if tags else ""
        if floor and rho is not None and roles[r.proxy] in RANKED_ROLES:
            title += f"\nΔ best floor {rho - floor[1]:+.2f}"
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
    if table.task.is_lm:
        axes[0, 0].invert_yaxis()  # lower perplexity is better: better is up, as for accuracy
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=7)
    for ax in axes[-1, :]:
        ax.set_xlabel("proxy score rank (%)", fontsize=7)
    sub = f"; best floor {floor[0]} ρs={floor[1]:.2f}" if floor else ""
    fig.suptitle(f"{task}: proxy score vs ground-truth {ylabel} ({len(truth)} "
                 f"configurations{sub})", fontsize=9)
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


@_styled
def pareto_png(task: str, records: list[Record], table, path) -> None:
    """Ground truth vs size: the table, its Pareto front, and the proxies' allocations."""
    truth = _truth(table)
    lm = table.task.is_lm
    kb = truth.size_bits.to_numpy() / 8 / 1024
    q, ylabel = _quality(table, truth)
    sign = -1 if lm else 1  # the front maximises; perplexity is minimised
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    ax.scatter(kb, q, s=4, color=GREY, linewidths=0, label="table configurations")
    fx, fy = pareto_front(kb, sign * q)
    ax.step(fx, sign * fy, where="post", color="black", linewidth=1.2,
            label="table Pareto front")
    rank = _ranking(task, records)
    by_name = {r.proxy: r for r in records}

    def points(name):
        pts = [(d.size_bits / 8 / 1024, math.exp(d.loss) if lm else d.acc)
               for d in by_name[name].downstream if d.metric == "size"]
        return tuple(zip(*pts)) if pts else None

    named = [n for n in rank.order if n in by_name]
    top = rank.top(TOP, lambda n: n in by_name and points(n) is not None)
    groups = {"other proxies": ("o", DARK, 10), "baselines": ("s", "none", 22),
              "floors": ("v", "none", 22)}
    seen = set()
    for name in named:
        pts = points(name)
        if pts is None or name in top:
            continue
        group = {"baseline": "baselines", "proxy": "other proxies"}.get(rank.roles[name],
                                                                        "floors")
        marker, face, size = groups[group]
        ax.scatter(*pts, s=size, marker=marker, facecolors=face, linewidths=0.8,
                   edgecolors=DARK, zorder=2, label=None if group in seen else group)
        seen.add(group)
    markers, cmap = "o^sDP", plt.get_cmap("tab10")
    for i, name in enumerate(top):
        ax.scatter(*points(name), s=42, marker=markers[i % len(markers)], color=cmap(i),
                   edgecolors="black", linewidths=0.5, zorder=3,
                   label=f"{name} (ρs {by_name[name].metrics.get(R.RANK_BY, math.nan):.2f})")
    if lm:
        ax.invert_yaxis()  # better (lower perplexity) is up
    ax.set_xlabel("model size (KiB of weights)")
    ax.set_ylabel(ylabel + (" (lower is better)" if lm else ""))
    ax.set_title(f"{task}: ILP allocations under size budgets vs the table's Pareto front\n"
                 f"named: the top {len(top)} proxies by ρs@100%", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              frameon=False)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------- per-layer sensitivity
def additive_damage(scores: dict[str, float], weight_bits) -> np.ndarray | None:
    """A proxy's per-(unit, bit-width) damage, recovered from its configuration scores.

    Layer and layer_bit proxies score a configuration as minus a sum of one damage term
    per unit, so the terms follow from the stored scores by least squares. A constant per
    unit never changes a ranking and is not identifiable, so each unit's damage is given
    relative to its highest bit-width (that column is 0). Returns [units, bits] (bits in
    ascending order), or None when the scores are not additive over units (config proxies).
    """
    bits = sorted(weight_bits)
    keys = sorted(scores)
    w = np.array([BitConfig.from_key(k).w for k in keys])
    if w.ndim != 2 or not np.isin(w, bits).all():
        return None
    n, units = w.shape
    low = bits[:-1]  # one indicator per (unit, non-top bit-width), plus an intercept
    x = np.concatenate([(w[:, :, None] == np.array(low)).reshape(n, -1),
                        np.ones((n, 1))], axis=1).astype(float)
    y = -np.array([scores[k] for k in keys], dtype=float)
    scale = float(np.abs(y - y.mean()).max()) or 1.0
    coef, _, rank, _ = np.linalg.lstsq(x, y / scale, rcond=None)
    if rank < x.shape[1] or np.abs(x @ coef - y / scale).max() > 1e-6:
        return None
    out = np.zeros((units, len(bits)))
    out[:, :-1] = coef[:-1].reshape(units, len(low)) * scale
    return out


def measured_damage(table) -> tuple[list[str], list[int], np.ndarray]:
    """(units, bits, [units, bits]) loss increase over float with one unit alone at each
    bit-width, from the table's `layer` rows (NaN where the table has no such row)."""
    bits = sorted(table.task.quant.weight_bits)
    layer = table.kind("layer").sort_values("key")
    units = table.meta.get("units", "").split(",") if table.meta.get("units") else \
        list(dict.fromkeys(layer.unit))
    fp = float(table.kind("fp").loss.iloc[0])
    out = np.full((len(units), len(bits)), np.nan)
    for r in layer.itertuples():
        u = units.index(r.unit)
        if r.w_bits[u] in bits:
            out[u, bits.index(r.w_bits[u])] = r.loss - fp
    return units, bits, out


def _short(units: list[str]) -> list[str]:
    """Unit names without their common dotted prefix (lm.model.layers.0.mlp -> 0.mlp)."""
    parts = [u.split(".") for u in units]
    k = 0
    while all(len(p) > k + 1 for p in parts) and len({p[k] for p in parts}) == 1:
        k += 1
    return [".".join(p[k:]) for p in parts]


@_styled
def sensitivity_png(task: str, records: list[Record], table, path) -> None:
    """Units x bit-widths: measured single-unit loss increase vs the top proxies' damage."""
    units, bits, measured = measured_damage(table)
    rank = _ranking(task, records)
    by_name = {r.proxy: r for r in records}
    damage = {}
    for name in rank.order:
        r = by_name.get(name)
        if r is not None and r.scores and r.proxy_kind in ("layer", "layer_bit"):
            d = additive_damage(r.scores, bits)
            if d is not None and d.shape[0] == len(units):
                damage[name] = d
    picks = rank.top(TOP_HEATMAP, lambda n: n in damage)
    label = METRICS["layer_spearman"].label
    panels = [("measured\nΔCE vs float", measured)]
    for name in picks:
        rho = by_name[name].metrics.get("layer_spearman")
        extra = f"\n{label}={rho:.2f}" if rho is not None else ""
        panels.append((f"{name}{extra}", damage[name]))
    fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                             figsize=(1.9 + 1.1 * len(panels), 1.7 + 0.16 * len(units)))
    lo = -4  # colour floor: 10^-4 of the panel's largest value
    for ax, (title, m) in zip(axes[0], panels):
        top = np.nanmax(m) if np.isfinite(m).any() and np.nanmax(m) > 0 else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.log10(np.clip(m / top, 10.0 ** lo, None))
        v[~np.isfinite(m)] = np.nan
        im = ax.imshow(v, vmin=lo, vmax=0, cmap="viridis", aspect="auto",
                       interpolation="nearest")
        ax.set_xticks(range(len(bits)), [str(b) for b in bits], fontsize=6)
        ax.set_yticks(range(len(units)), [] if ax is not axes[0, 0] else _short(units),
                      fontsize=6)
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("weight bits", fontsize=6)
        ax.tick_params(length=2)
    cbar = fig.colorbar(im, ax=list(axes[0]), fraction=0.05, pad=0.02)
    cbar.set_label("log10(value / panel max)", fontsize=6)
    cbar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{task}: per-unit damage, measured vs the top proxies\n(one unit "
                 f"quantized alone; proxies relative to their highest bit-width)", fontsize=8)
    _save(fig, path)


PLOTS = {"scatter": scatter_png, "pareto": pareto_png, "sensitivity": sensitivity_png}
