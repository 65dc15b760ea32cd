"""EMQ's searched proxy with its pairing quirks fixed (see proxies/emq.py for the decoding).

Source: Dong et al., ICCV 2023 (EMQ), Sec. 3; genotype and operator tables as in emq.py.
Same operators (branch 1: virtual_grad * b -> abslog -> softmax over dim 0 -> mean; branch 2:
weight * b -> ReLU -> sqrt -> mean; product; mean over Conv2d layers, Linear skipped), but
every conv layer is paired with its *own* virtual gradient and its *own* unit's bit-width.
Branch 1 is then exactly 1/C_out of the layer, so the score is
mean_l sqrt(b_l) * mean(sqrt(ReLU(W_l))) / C_out(l). Additive over layers: a "layer_bit"
proxy with D[l, b] = -branch1_l(b) * branch2_l(b) / K (zero rows for non-conv modules).
"""

import numpy as np

from mqbench.errors import MqbenchError
from mqbench.proxy.ops import emq_branch1, emq_branch2
from mqbench.proxy import proxy


@proxy(name="emq_aligned", version=1, paper="Dong et al., ICCV 2023 (EMQ), Sec. 3, aligned",
       kind="layer_bit")
def emq_aligned(stats):
    convs = [i for i, m in enumerate(stats.modules) if stats.weights[m].dim() == 4]
    if not convs:
        raise MqbenchError("emq_aligned: the model has no Conv2d layers; EMQ skips Linear")
    damage = np.zeros((len(stats.modules), len(stats.weight_bits)))
    for i in convs:
        m = stats.modules[i]
        g, w = stats.virtual_grads[m].double(), stats.weights[m].double()
        for j, b in enumerate(stats.weight_bits):
            damage[i, j] = -emq_branch1(g * b) * emq_branch2(w * b) / len(convs)
    return damage
