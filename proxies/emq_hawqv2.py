"""EMQ's bit-aware HAWQ-V2 baseline: predicted quality = sum_i Tr(H_i) * b_i.

Source: Dong et al., ICCV 2023 (EMQ), Table 1 baselines ("hawqv2" in `lliai/EMQ-series`
exps/rank/rank_mqbench/rank_zc_w_bit.py). Unlike HAWQ-V2 (proxies/hawqv2.py) there is no
1/n_i and no ||Q(W) - W||^2 term: the trace is simply weighted by the bit-width.
Damage matrix D[i, b] = -Tr(H_i) * b, with Tr(H_i) the Hutchinson estimate in stats.
"""

import numpy as np

from mqbench.proxy import proxy


@proxy(name="emq_hawqv2", version=1, paper="Dong et al., ICCV 2023 (EMQ), Table 1 (HAWQ-V2)",
       kind="layer_bit")
def emq_hawqv2(stats):
    s = np.asarray(stats.hessian_trace, dtype=np.float64)
    return -np.outer(s, np.asarray(stats.weight_bits, dtype=np.float64))
