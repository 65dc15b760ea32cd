"""OMPQ: layer orthogonality (linear CKA between layer features) -> bit importance.

Source: Ma et al., "OMPQ: Orthogonal Mixed Precision Quantization", AAAI 2023, Sec. 3
(ORM = linear CKA, importance theta_i = exp(-beta * gamma_i)) and its code
(`MAC-AutoML/OMPQ`, mixed_bit/feature_extract.py, ORM.py), which maximises
sum_i c_i * b_i under a size budget with c_i = mean_{j>=i} theta_j (the suffix mean).
Our reading, per unit i (a bit decision; OMPQ also gives tied 1x1 shortcut convs no feature):
  feature X_i = the unit leader's output on the calibration batch, flattened per sample;
  ORM(i, j) = biased linear CKA = <H K_i H, H K_j H> / (||H K_i H|| ||H K_j H||), K = X X^T
  (a feature constant over the batch has CKA 0 with everything);
  gamma_i = sum_{j != i} ORM(i, j);  theta_i = exp(-beta * gamma_i), beta = 1 (argparse
  default; their run scripts also use 100, 3.3, 1e-9);  c_i = mean_{j >= i} theta_j.
OMPQ's objective is linear in the bit-width, so this is a "layer_bit" proxy with damage
D[i, b] = -c_i * b: a configuration scores sum_i c_i * b_i, exactly OMPQ's objective (their
relaxed bits are b/8; the scale does not change rankings), and a unit's sensitivity is
proportional to c_i. Differences from OMPQ: features are the outputs of the BN-folded layers
in eval mode, before the ReLU/residual add (OMPQ: train-mode conv-BN-ReLU and block outputs,
logits for fc); allocation in mqbench is an exact ILP, theirs SLSQP plus rounding.
"""

import numpy as np

from mqbench.proxy.ops import linear_cka_matrix
from mqbench.proxy import proxy

BETA = 1.0




@proxy(name="ompq", version=1, paper="Ma et al., AAAI 2023 (OMPQ), Sec. 3", kind="layer_bit")
def ompq(stats):
    orm = linear_cka_matrix([stats.outputs[u] for u in stats.units])
    n = len(orm)
    gamma = orm.sum(axis=1) - np.diag(orm)
    theta = np.exp(-BETA * gamma)
    c = np.array([theta[i:].mean() for i in range(n)])
    return -np.outer(c, np.asarray(stats.weight_bits, dtype=np.float64))
