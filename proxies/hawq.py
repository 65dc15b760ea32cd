"""HAWQ (V1): top Hessian eigenvalue of each layer's weight block, per parameter.

Source: Dong et al., "HAWQ: Hessian AWare Quantization", ICCV 2019, Sec. 3: layers are
ordered by lambda_max(H_l) / n_l (the eigenvalue from power iteration on the layer's block).
The harness weights this sensitivity by ||Q_b(W_l) - W_l||^2 to score a configuration, which
is HAWQ-V2's weighting (HAWQ-V1 itself only ranks layers and picks bits by hand). Note that
power iteration (here and in HAWQ) converges to the eigenvalue of largest magnitude.
"""

from mqbench.proxy import proxy


@proxy(name="hawq", version=1, paper="Dong et al., ICCV 2019 (HAWQ), Sec. 3", kind="layer")
def hawq(stats):
    return {m: float(stats.hessian_eig[i]) / float(stats.params[i])
            for i, m in enumerate(stats.modules)}
