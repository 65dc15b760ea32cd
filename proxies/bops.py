"""Bit-operations baseline: a configuration with more BOPs is predicted better.

Source: baseline; BOPs = sum_i MACs_i * b_i * a_i as in EMQ's MQ-Bench-101 (ICCV 2023)
and mqbench.quant.space.Space.bops. The damage matrix indexes weight bits only, so activations
enter at the task's highest activation bit-width a_max (a constant factor when they are
fixed, as in every MQ-Bench-style task): D[i, b] = -MACs_i * b * a_max.
"""

import numpy as np

from mqbench.proxy import proxy


@proxy(name="bops", version=1, paper="baseline (BOPs as in EMQ, ICCV 2023)", kind="layer_bit")
def bops(stats):
    a_max = float(max(stats.act_bits))
    return -np.outer(np.asarray(stats.macs, dtype=np.float64) * a_max,
                     np.asarray(stats.weight_bits, dtype=np.float64))
