"""EMQ's searched proxy, decoded from its published genotype (faithful, quirks included).

Source: Dong et al., "EMQ: Evolving Training-free Proxies for Automated Mixed Precision
Quantization", ICCV 2023, Sec. 3; genotype `{'input_geno': ['virtual_grad', 'weight'],
'op_geno': [[1, 11], [6, 14], 2]}` in `lliai/EMQ-series` exps/rank/rank_mqbench/rank_emq_zc.py,
decoded with the operator tables of `pprp/LPZero` commit 4da0310 (which imports `emq.*`):
  branch 1: A = virtual_grad * b -> abslog (zeros -> 1, then log|.|) -> softmax over dim 0
            -> mean;   branch 2: A = weight * b -> ReLU -> sqrt -> mean;
  per layer: branch1 * branch2 (op 2 = product);  score = mean over the zipped layers.
Quirks kept here (see "emq_aligned" for the fixed version):
  * Only Conv2d layers enter (4-D weights among the quantized modules); Linear is skipped.
  * The gradient list is reversed against the weight list: conv k pairs with the virtual
    gradient of conv K-1-k. Branch 1 is shift-invariant in log|.| and softmax-then-mean gives
    exactly 1/C_out of the *gradient's* layer, so the proxy is
    mean_k sqrt(b_k) * mean(sqrt(ReLU(W_k))) / C_out(K-1-k): only the mirror layer's shape
    of the gradient matters, and EMQ's never-zeroed gradients (they accumulate over calls)
    change nothing.
  * The conv list is zipped positionally with the per-unit bit list, so conv k takes the
    bit of unit k (misaligned after the first tied shortcut conv; surplus convs dropped).
Caveat: an older table (`pprp/PicoNAS` 3598e81) maps the same indices to l1_norm and slogdet;
which table the search used is unproven. The score is additive over units, so this is a
"layer_bit" proxy: D[k, b] = -branch1_k(b) * branch2_k(b) / K for unit k.
"""

import numpy as np

from mqbench.errors import MqbenchError
from mqbench.proxy.ops import emq_branch1, emq_branch2
from mqbench.proxy import proxy


@proxy(name="emq", version=1, paper="Dong et al., ICCV 2023 (EMQ), Sec. 3, searched proxy",
       kind="layer_bit")
def emq(stats):
    convs = [m for m in stats.modules if stats.weights[m].dim() == 4]
    if not convs:
        raise MqbenchError("emq: the model has no Conv2d layers; EMQ's proxy skips Linear")
    grads = [stats.virtual_grads[m].double() for m in convs][::-1]
    k_max = min(len(convs), len(stats.units))
    damage = np.zeros((len(stats.units), len(stats.weight_bits)))
    for k in range(k_max):
        w = stats.weights[convs[k]].double()
        for j, b in enumerate(stats.weight_bits):
            damage[k, j] = -emq_branch1(grads[k] * b) * emq_branch2(w * b) / k_max
    return damage
