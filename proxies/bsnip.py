"""Bit-aware SNIP (EMQ baseline): predicted quality = sum_i sum |g_i * w_i| * b_i.

Source: Dong et al., ICCV 2023 (EMQ), Table 1 ("bsnip" in `lliai/EMQ-series`
exps/rank/rank_mqbench/rank_zc_w_bit.py), built on SNIP (Lee et al., ICLR 2019).
g is dL/dW of the mean cross-entropy on the calibration batch (stats.grads).
Damage matrix D[i, b] = -sum|g_i * w_i| * b.
"""

import numpy as np

from mqbench.proxy import proxy


@proxy(name="bsnip", version=1, paper="Dong et al., ICCV 2023 (EMQ), Table 1 (bSNIP)",
       kind="layer_bit")
def bsnip(stats):
    s = np.array([float((stats.grads[m].double() * stats.weights[m].double()).abs().sum())
                  for m in stats.modules])
    return -np.outer(s, np.asarray(stats.weight_bits, dtype=np.float64))
