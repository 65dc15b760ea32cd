"""SNIP connection sensitivity summed per layer: s_l = sum |g_l * w_l|.

Source: Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
ICLR 2019, Sec. 4 (connection sensitivity |dL/dc_j| = |dL/dw_j * w_j| at c = 1), summed per layer as in zero-cost NAS
(Abdelfattah et al., ICLR 2021). g = dL/dW of the mean cross-entropy on the calibration
batch (stats.grads). The harness multiplies by ||Q_b(W) - W||^2.
"""

from mqbench.proxy import proxy


@proxy(name="snip", version=1, paper="Lee et al., ICLR 2019 (SNIP)", kind="layer")
def snip(stats):
    return {m: float((stats.grads[m].double() * stats.weights[m].double()).abs().sum())
            for m in stats.modules}
