"""HAWQ-V2: average Hessian trace of each layer's weight block.

Source: Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization", NeurIPS 2020,
Sec. 3, the criterion Omega = sum_l Tr(H_l)/n_l * ||Q(W_l) - W_l||^2. We return Tr(H_l)/n_l;
the harness multiplies it by ||Q_b(W_l) - W_l||^2, so the configuration score is exactly
-Omega. Tr(H_l) is a fixed-probe-count Hutchinson estimate (stats.hessian_trace, its standard
error in stats.hessian_trace_se) on the calibration batch, not HAWQ-V2's early-stopped one.
"""

from mqbench.proxy import proxy


@proxy(name="hawqv2", version=1, paper="Dong et al., NeurIPS 2020 (HAWQ-V2), Sec. 3",
       kind="layer")
def hawqv2(stats):
    return {m: float(stats.hessian_trace[i]) / float(stats.params[i])
            for i, m in enumerate(stats.modules)}
