"""Model-size baseline (EMQ's "BParams"): a bigger quantized model is predicted better.

Source: Dong et al., ICCV 2023 (EMQ), Table 1 "BParams": predicted quality = model size
sum_i params_i * b_i (bits). Damage matrix D[i, b] = -params_i * b.
"""

import numpy as np

from mqbench.proxy import proxy


@proxy(name="bparams", version=1, paper="Dong et al., ICCV 2023 (EMQ), Table 1 (BParams)",
       kind="layer_bit")
def bparams(stats):
    return -np.outer(np.asarray(stats.params, dtype=np.float64),
                     np.asarray(stats.weight_bits, dtype=np.float64))
