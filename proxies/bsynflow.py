"""Bit-aware SynFlow (EMQ baseline): predicted quality = sum_i sum |w_i * dR/dw_i| * b_i.

Source: Dong et al., ICCV 2023 (EMQ), Table 1 ("bsynflow" in `lliai/EMQ-series`
exps/rank/rank_mqbench/rank_zc_w_bit.py), built on SynFlow (Tanaka et al., NeurIPS 2020):
R is the summed output of the |W| network on an all-ones input (stats.synflow holds
|W * dR/dW| per module). Damage matrix D[i, b] = -sum|w_i * dR/dw_i| * b.
"""

import numpy as np

from mqbench.proxy import proxy


@proxy(name="bsynflow", version=1, paper="Dong et al., ICCV 2023 (EMQ), Table 1 (bSynFlow)",
       kind="layer_bit")
def bsynflow(stats):
    s = np.array([float(stats.synflow[m].double().sum()) for m in stats.modules])
    return -np.outer(s, np.asarray(stats.weight_bits, dtype=np.float64))
