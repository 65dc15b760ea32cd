"""TAP's evolution scheduler: a policy over prompt templates trained with the DPO loss.

The policy is a softmax over one logit per template (initialization, mutation, crossover
and their context choices). Each generation, children are ranked by fitness; every pair
of children from different templates whose fitness differs by at least `margin` is a
preference (template of the fitter child ≻ template of the other). The DPO loss for a
one-step policy is
    L = −log σ(β·[(log π(w) − log π_ref(w)) − (log π(l) − log π_ref(l))]),
minimised by a few gradient steps on the logits, with π_ref the fixed initial (uniform)
policy. Sampling mixes in a floor ε per template, so the policy cannot collapse onto one
template and every template keeps being tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scheduler:
    templates: tuple[str, ...]
    beta: float = 0.5
    lr: float = 0.5
    steps: int = 5
    floor: float = 0.05
    margin: float = 1e-3
    logits: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.floor * len(self.templates) >= 1:
            raise ValueError("floor x templates must be < 1")
        if self.logits is None:
            self.logits = np.zeros(len(self.templates))
        self.logits = np.asarray(self.logits, dtype=np.float64)
        self._ref = np.full(len(self.templates), -math.log(len(self.templates)))

    def _logp(self) -> np.ndarray:
        z = self.logits - self.logits.max()
        return z - math.log(np.exp(z).sum())

    def probs(self) -> np.ndarray:
        """Sampling distribution: the policy mixed with the floor."""
        k = len(self.templates)
        return (1 - k * self.floor) * np.exp(self._logp()) + self.floor

    def sample(self, rng: np.random.Generator) -> str:
        return self.templates[rng.choice(len(self.templates), p=self.probs())]

    def pairs(self, children: list[tuple[str, float]]) -> list[tuple[int, int]]:
        """(winner, loser) template indices from [(template, fitness)] of one generation."""
        idx = {t: i for i, t in enumerate(self.templates)}
        ok = [(idx[t], f) for t, f in children if math.isfinite(f)]
        ok += [(idx[t], -1.0) for t, f in children if not math.isfinite(f)]  # invalid: worst
        out = []
        for a, fa in ok:
            for b, fb in ok:
                if a != b and fa - fb >= self.margin:
                    out.append((a, b))
        return out

    def update(self, children: list[tuple[str, float]]) -> float:
        """DPO steps on this generation's preference pairs; returns the final mean loss."""
        pairs = self.pairs(children)
        if not pairs:
            return 0.0
        w = np.array([p[0] for p in pairs])
        l_ = np.array([p[1] for p in pairs])
        loss = 0.0
        for _ in range(self.steps):
            logp = self._logp()
            h = self.beta * ((logp[w] - self._ref[w]) - (logp[l_] - self._ref[l_]))
            sig = 1 / (1 + np.exp(-h))
            loss = float(np.mean(-np.log(sig + 1e-12)))
            # d(-log σ(h))/dh = −(1−σ); dh/dθ_j = β(1[j=w] − 1[j=l]) (softmax terms cancel)
            coef = -(1 - sig) * self.beta
            grad = np.zeros_like(self.logits)
            np.add.at(grad, w, coef)
            np.add.at(grad, l_, -coef)
            self.logits -= self.lr * grad / len(pairs)
        return loss

    def state(self) -> dict:
        return {"templates": list(self.templates), "logits": self.logits.tolist()}
