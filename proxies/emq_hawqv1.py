"""EMQ's bit-aware HAWQ baseline: predicted quality = sum_i lambda_max(H_i) * b_i.

Source: Dong et al., ICCV 2023 (EMQ), Table 1 baselines ("hawqv1" in `lliai/EMQ-series`
exps/rank/rank_mqbench/rank_zc_w_bit.py): a per-layer score times the layer's bit-width,
summed. Unlike HAWQ (proxies/hawq.py) there is no 1/n_i and no perturbation term.
Damage matrix D[i, b] = -lambda_max(H_i) * b (higher predicted quality = less damage).
"""

import numpy as np

from mqbench.proxy import proxy


@proxy(name="emq_hawqv1", version=1, paper="Dong et al., ICCV 2023 (EMQ), Table 1 (HAWQ)",
       kind="layer_bit")
def emq_hawqv1(stats):
    s = np.asarray(stats.hessian_eig, dtype=np.float64)
    return -np.outer(s, np.asarray(stats.weight_bits, dtype=np.float64))
