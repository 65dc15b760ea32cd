"""SynFlow saliency summed per layer: s_l = sum |w_l * dR/dw_l|.

Source: Tanaka et al., "Pruning neural networks without any data by iteratively conserving
synaptic flow", NeurIPS 2020 (R = 1^T (prod_l |W_l|) 1), summed per layer as in
zero-cost NAS (Abdelfattah et al., ICLR 2021). Data-free: stats.synflow is computed on the
|W| network with an all-ones input. The harness multiplies by ||Q_b(W) - W||^2.
"""

from mqbench.proxy import proxy


@proxy(name="synflow", version=1, paper="Tanaka et al., NeurIPS 2020 (SynFlow)",
       kind="layer")
def synflow(stats):
    return {m: float(stats.synflow[m].double().sum()) for m in stats.modules}
