"""Discovered by `mqbench discover` (generator: symbolic, EMQ-style search space).

Expression: S._div(S._rank(S._neg(f["pert_low"])), (S._log(f["vgrad_sq"]) + (f["w_absmean"] + f["depth"])))

Reasoning: an evolved combination of per-layer statistics (see
mqbench/search/evolution/features.py); it was kept because it maximised TAP's fitness
phi = alpha*rho_sens + (1-alpha)*Acc on the training task fmnist-resnet8.

Training task fmnist-resnet8: fitness 0.8704 (rho_sens 1.0000, table-lookup Acc 0.8560, config Spearman 0.9410).
Held-out task fmnist-vit (no tuning on it): fitness 0.6791 (rho_sens -0.6429, Acc 0.8260, config Spearman 0.7981).

Found in generation 38 of 40; population 64, seed 0, 2662 candidates evaluated (3 invalid, 961 duplicates).
"""

from mqbench.search.evolution import symbolic as S
from mqbench.search.evolution.features import module_features
from mqbench.proxy import proxy


@proxy(name="discovered_symbolic", version=1, paper="mqbench symbolic discovery (EMQ-style search space)",
       kind="layer")
def discovered_symbolic(stats):
    f = module_features(stats)
    return S._div(S._rank(S._neg(f["pert_low"])), (S._log(f["vgrad_sq"]) + (f["w_absmean"] + f["depth"])))
