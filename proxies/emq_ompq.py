"""EMQ's bit-aware OMPQ baseline ("orm"): sum over layers of exp(-gamma_i) * b_i, averaged.

Source: Dong et al., "EMQ: Evolving Training-free Proxies for Automated Mixed Precision
Quantization", ICCV 2023, Table 1 baselines (MQ-Bench-101 scripts, `lliai/EMQ-series`):
predicted quality = mean_i exp(-gamma_i) * b_i with gamma_i = sum_{j != i} CKA(i, j).
As a damage matrix D[i, b] = -exp(-gamma_i) * b / N (N quantized modules). Differences from
"ompq": no suffix mean, beta = 1, one feature per module (stats.outputs: the BN-folded
layer's output in eval mode; EMQ-series used raw conv outputs before BN, also in eval mode).
EMQ-series' code shifts theta by one layer against the bit configuration; we pair each
module with its own unit's bit-width.
"""

import numpy as np

from mqbench.proxy.ops import linear_cka_matrix
from mqbench.proxy import proxy




@proxy(name="emq_ompq", version=1, paper="Dong et al., ICCV 2023 (EMQ), Table 1 (OMPQ)",
       kind="layer_bit")
def emq_ompq(stats):
    orm = linear_cka_matrix([stats.outputs[m] for m in stats.modules])
    n = len(orm)
    theta = np.exp(-(orm.sum(axis=1) - np.diag(orm)))
    return -np.outer(theta, np.asarray(stats.weight_bits, dtype=np.float64)) / n
