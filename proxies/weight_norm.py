"""Weight-norm baseline: the Frobenius norm of each layer's (BN-folded) weight.

Source: baseline (the example in mqbench/proxy/contract.py). Higher norm = more sensitive; the
harness multiplies by ||Q_b(W) - W||^2.
"""

from mqbench.proxy import proxy


@proxy(name="weight_norm", version=1, paper="baseline", kind="layer")
def weight_norm(stats):
    return {m: float(stats.weights[m].double().norm()) for m in stats.modules}
