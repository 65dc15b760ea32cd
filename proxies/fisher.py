"""Fisher-trace sensitivity per parameter: s_l = sum(g_l^2) / n_l (FIT-style).

Source: Zandonati et al., "FIT: A Metric for Model Sensitivity", arXiv 2210.08502, 2022: HAWQ-V2's
Tr(H_l)/n_l * ||Q(W_l) - W_l||^2 with the Hessian trace replaced by the empirical Fisher
trace. Our choice: sum(g^2) of the batch-mean gradient (stats.grads, mean cross-entropy on
the calibration batch), because per-sample gradients are not cached; this is the trace of
the batch gradient's outer product, a lower bound on the empirical Fisher trace
(1/N sum_n ||g_n||^2 >= ||mean g||^2). Not the zero-cost-NAS "fisher" (activation-based).
The harness multiplies by ||Q_b(W) - W||^2.
"""

from mqbench.proxy import proxy


@proxy(name="fisher", version=1, paper="Zandonati et al., arXiv 2210.08502 (FIT)", kind="layer")
def fisher(stats):
    return {m: float(stats.grads[m].double().pow(2).sum()) / float(stats.params[i])
            for i, m in enumerate(stats.modules)}
