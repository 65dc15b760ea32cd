"""Shared statistics for proxy files: histogram entropy, linear CKA, EMQ's branch operators.

Proxies import these instead of re-implementing them, so two proxies that name the same
quantity compute it the same way.
"""

from __future__ import annotations

import numpy as np
import torch


def histogram_entropy(x: torch.Tensor, bins: int = 256) -> float:
    """Shannon entropy (nats) of a `bins`-bin histogram of x over [min, max]; 0 if constant."""
    a = x.detach().double().reshape(-1).numpy()
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return 0.0
    counts, _ = np.histogram(a, bins=bins, range=(lo, hi))
    p = counts[counts > 0] / a.size
    return float(-(p * np.log(p)).sum())


def centered_gram(x: torch.Tensor) -> np.ndarray:
    """H K H with K = X X^T over samples (features flattened per sample), H the centring."""
    a = x.detach().double().reshape(x.shape[0], -1).numpy()
    k = a @ a.T
    h = np.eye(len(k)) - 1.0 / len(k)
    return h @ k @ h


def linear_cka_matrix(features: list[torch.Tensor]) -> np.ndarray:
    """Pairwise biased linear CKA, <HK_xH, HK_yH> / (||HK_xH|| ||HK_yH||); 0 for a zero Gram."""
    grams = [centered_gram(f) for f in features]
    norms = [np.linalg.norm(g) for g in grams]
    n = len(grams)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            den = norms[i] * norms[j]
            out[i, j] = float((grams[i] * grams[j]).sum() / den) if den > 0 else 0.0
    return out


def emq_branch1(a: torch.Tensor) -> float:
    """EMQ genotype branch 1: log|a| (zeros -> log 1), softmax over dim 0, mean."""
    a = torch.log(torch.where(a == 0, torch.ones_like(a), a).abs())
    return float(torch.softmax(a, dim=0).mean())


def emq_branch2(a: torch.Tensor) -> float:
    """EMQ genotype branch 2: ReLU, square root, mean."""
    return float(torch.sqrt(torch.relu(a)).mean())
