"""Per-module scalar statistics: the leaves of symbolic proxies.

Each feature is one float64 number per quantizable module, derived from the task's cached
`Stats` (weights, activations, gradients, Hessian, data-free probes). They are computed once
per task and reused by every candidate, so a candidate costs a few vector operations.
Discovered proxy files call `module_features(stats)` themselves, so a rendered proxy is an
ordinary registered proxy that recomputes exactly what the search evaluated.
"""

from __future__ import annotations

import numpy as np
import torch

FEATURES = (
    "w_sq",         # ||W||^2
    "w_absmean",    # mean |W|
    "w_std",        # std of W
    "w_kurt",       # kurtosis of W (outlier-heavy weights quantize badly)
    "params",       # number of weights
    "macs",         # multiply-accumulates per sample
    "depth",        # position in the model, 0..1
    "pert_low",     # ||Q_b(W) - W||^2 at the lowest weight bit-width
    "pert_high",    # ... at the highest
    "g_sq",         # ||dL/dW||^2 on the calibration batch
    "g_absmean",    # mean |dL/dW|
    "hess_trace",   # Hutchinson trace of the layer's Hessian block
    "hess_eig",     # its top eigenvalue
    "x_sq",         # mean squared input activation
    "x_range",      # max |input activation|
    "y_std",        # std of the output activation
    "vgrad_sq",     # ||virtual grad||^2 (EMQ's data-free gradient)
    "synflow",      # sum of SynFlow saliency
)


def _kurtosis(w: torch.Tensor) -> float:
    w = w.double().flatten()
    c = w - w.mean()
    var = c.pow(2).mean()
    return float(c.pow(4).mean() / var.pow(2)) if var > 0 else 0.0


def module_features(stats) -> dict[str, np.ndarray]:
    """{feature: float64 array [modules]} for a task's statistics (memoised on `stats`)."""
    cached = getattr(stats, "_symbolic_features", None)
    if cached is not None:
        return cached
    mods = stats.modules
    n = max(1, len(mods) - 1)

    def per(fn, source):
        return np.array([float(fn(source[m])) for m in mods], dtype=np.float64)

    out = {
        "w_sq": per(lambda w: w.double().pow(2).sum(), stats.weights),
        "w_absmean": per(lambda w: w.double().abs().mean(), stats.weights),
        "w_std": per(lambda w: w.double().std(), stats.weights),
        "w_kurt": per(_kurtosis, stats.weights),
        "params": stats.params.astype(np.float64),
        "macs": stats.macs.astype(np.float64),
        "depth": np.arange(len(mods), dtype=np.float64) / n,
        "pert_low": np.asarray(stats.perturbation[:, 0], dtype=np.float64),
        "pert_high": np.asarray(stats.perturbation[:, -1], dtype=np.float64),
        "g_sq": per(lambda g: g.double().pow(2).sum(), stats.grads),
        "g_absmean": per(lambda g: g.double().abs().mean(), stats.grads),
        "hess_trace": np.asarray(stats.hessian_trace, dtype=np.float64),
        "hess_eig": np.asarray(stats.hessian_eig, dtype=np.float64),
        "x_sq": per(lambda x: x.double().pow(2).mean(), stats.inputs),
        "x_range": per(lambda x: x.double().abs().max(), stats.inputs),
        "y_std": per(lambda y: y.double().std(), stats.outputs),
        "vgrad_sq": per(lambda g: g.double().pow(2).sum(), stats.virtual_grads),
        "synflow": per(lambda s: s.double().sum(), stats.synflow),
    }
    assert tuple(out) == FEATURES
    try:
        stats._symbolic_features = out
    except AttributeError:  # a read-only stats view: recompute next time
        pass
    return out
