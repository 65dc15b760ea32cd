"""The offline `symbolic` generator: EMQ's expression trees over per-module statistics, and
`random`, random search over the same trees (its baseline).

Generation 0 draws random trees; later children come from a tournament-picked parent by
crossover with a second parent (probability `p_cross`) or by mutation (symbolic.py). A
tree is scored in-process from the task's cached features (a few vector operations, well
under a millisecond): its per-module values are a `layer` proxy's output, read by
fitness.from_sensitivity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mqbench.search.evolution import symbolic as T
from mqbench.search.evolution.features import module_features
from mqbench.search.evolution.fitness import INVALID, Context, from_sensitivity
from mqbench.search.evolution.loop import Scored, Settings, State, signature


def score_tree(ctx: Context, feats: dict[str, np.ndarray], tree,
               spearman: bool = False) -> Scored:
    """Fitness and behaviour of one tree on precomputed features."""
    with np.errstate(all="ignore"):
        values = T.evaluate(tree, feats)
    if not np.all(np.isfinite(values)):
        return Scored(INVALID, (), "non-finite values")
    fit = from_sensitivity(ctx, values, spearman)
    if not math.isfinite(fit.phi):
        return Scored(fit, (), "constant or mis-shaped values")
    return Scored(fit, signature(values), "")


@dataclass
class SymbolicGenerator:
    settings: Settings
    name: str = "symbolic"
    label: str = "symbolic, EMQ-style search space"

    def start(self, state: State) -> None:
        pass

    def propose(self, state: State, n: int, pick, rng: np.random.Generator) -> list:
        s = self.settings
        if state.generation == 0 or not state.members or self.name == "random":
            return [T.random_tree(rng, s.max_depth - 1) for _ in range(n)]
        out = []
        for _ in range(n):
            a = pick()
            if rng.random() < s.p_cross:
                out.append(T.crossover(a.genome, pick().genome, rng, s.max_depth))
            else:
                out.append(T.mutate(a.genome, rng, s.max_depth))
        return out

    def score(self, ctx: Context, genomes: list, tags: list[str],
              spearman: bool = False) -> list[Scored]:
        feats = module_features(ctx.stats)
        return [score_tree(ctx, feats, tree, spearman) for tree in genomes]

    def observe(self, state: State, children: list) -> dict:
        return {}

    def render(self, genome, name: str) -> tuple[str, str]:
        if self.name == "random":
            return (f"Expression: {T.to_text(genome)}\n\nReasoning: the best of random "
                    f"expressions over per-layer statistics (random search, the baseline of "
                    f"the symbolic generator: the same space, no selection), by TAP's fitness "
                    f"on {self.settings.task}."), T.source(genome, name=name)
        why = (f"Expression: {T.to_text(genome)}\n\n"
               "Reasoning: an evolved combination of per-layer statistics (see\n"
               "mqbench/search/evolution/features.py); it was kept because it maximised "
               "TAP's fitness\nphi = alpha*rho_sens + (1-alpha)*Acc on the training task "
               f"{self.settings.task}.")
        return why, T.source(genome, name=name)


@dataclass
class RandomGenerator(SymbolicGenerator):
    """Random search over the symbolic generator's expressions: every proposal a fresh random
    tree, never bred from the population. The baseline an evolutionary search must beat
    under the same evaluation budget (`--budget`)."""

    name: str = "random"
    label: str = "random search, EMQ-style search space"
