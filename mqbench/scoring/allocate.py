"""Bit allocation under a budget by exact integer linear programming (scipy's HiGHS).

minimise   sum_u sum_j D[u, j] x[u, j]
subject to sum_j x[u, j] = 1 for every unit u      (one bit-width per unit; tied layers are
           sum_u sum_j C[u, j] x[u, j] <= budget     one unit, so they share a variable)
           x[u, j] = 1 for units pinned by the task (harness.fixed), x binary.
D is the proxy's damage matrix, C the cost (model size in bits, or BOPs). OMPQ's code solves a
relaxed problem with SLSQP and rounds; HAWQ-V3 solves this ILP: we use the exact ILP for all.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from mqbench.errors import MqbenchError
from mqbench.quant.space import BitConfig, Space


def costs(space: Space, metric: str = "size") -> np.ndarray:
    """Cost matrix [units, weight bits]: size in bits, or BOPs at the top activation bits."""
    wb = np.asarray(space.weight_bits, dtype=float)
    unit_of = np.asarray(space.unit_of)
    if metric == "size":
        per_unit = np.bincount(unit_of, weights=np.asarray(space.params, float),
                               minlength=len(space.units))
        return per_unit[:, None] * wb[None, :]
    if metric == "bops":
        per_unit = np.bincount(unit_of, weights=np.asarray(space.macs, float),
                               minlength=len(space.units))
        return per_unit[:, None] * wb[None, :] * space.act_bits[-1]
    raise MqbenchError(f"unknown budget metric {metric!r}; use 'size' or 'bops'")


def budget_for(space: Space, avg_bits: float, metric: str = "size") -> float:
    """The budget of a model whose every layer had `avg_bits` weight bits."""
    c = costs(space, metric)
    return float(c[:, 0].sum() / space.weight_bits[0] * avg_bits)


def allocate(damage: np.ndarray, cost: np.ndarray, budget: float,
             fixed: Mapping[int, int] | None = None) -> np.ndarray:
    """Indices into the bit choices, one per unit, minimising total damage within budget."""
    n_units, n_bits = damage.shape
    nvar = n_units * n_bits
    lb, ub = np.zeros(nvar), np.ones(nvar)
    for u, j in (fixed or {}).items():
        ub[u * n_bits:(u + 1) * n_bits] = 0
        lb[u * n_bits + j] = ub[u * n_bits + j] = 1
    one_each = np.kron(np.eye(n_units), np.ones(n_bits))
    # Scale the cost row so HiGHS' feasibility tolerance is relative, not in raw bits.
    scale = max(float(np.abs(cost).max()), 1.0)
    cons = [LinearConstraint(one_each, 1, 1),
            LinearConstraint(cost.reshape(1, -1) / scale, -np.inf, budget / scale * (1 + 1e-9))]
    res = milp(damage.ravel(), constraints=cons, integrality=np.ones(nvar), bounds=Bounds(lb, ub))
    if res.status != 0 or res.x is None:
        cheapest = cost.min(axis=1).sum()
        raise MqbenchError(f"no bit allocation fits the budget {budget:.4g} (the cheapest "
                           f"configuration costs {cheapest:.4g}); raise the budget")
    return np.round(res.x).reshape(n_units, n_bits).argmax(axis=1)


def allocation_config(space: Space, idx: np.ndarray) -> BitConfig:
    """The configuration for chosen bit indices (activations at the top choice)."""
    return BitConfig(tuple(int(space.weight_bits[j]) for j in idx),
                     (space.act_bits[-1],) * len(space.units))


def fixed_indices(space: Space, fixed: Mapping[str, int]) -> dict[int, int]:
    """Map the task's {unit: bits} pins to {unit index: bit index}, validated."""
    out = {}
    for name, bits in fixed.items():
        if name not in space.units:
            raise MqbenchError(f"harness.fixed names {name!r}, which is not a unit of the task")
        if bits not in space.weight_bits:
            raise MqbenchError(f"harness.fixed: {bits} bits for {name!r} is not a weight choice")
        out[space.units.index(name)] = space.weight_bits.index(bits)
    return out
