"""QE-style activation entropy: s_l = Shannon entropy of the layer's output features.

Source: Sun et al., "Entropy-Driven Mixed-Precision Quantization for Deep Network Design",
NeurIPS 2022 (QE): a layer's expressiveness is the entropy of its output feature map.
QE derives it in closed form under a Gaussian assumption (a log-variance), which is negative
for small-variance layers and would invert the harness's weighting; we instead estimate the
entropy from data, as TAP does for inputs: a 256-bin histogram over [min, max] of the layer's
output on the calibration batch, entropy in nats (0 for a constant output).
Higher entropy = more sensitive; the harness multiplies by ||Q_b(W) - W||^2.
"""


from mqbench.proxy.ops import histogram_entropy
from mqbench.proxy import proxy



@proxy(name="qe", version=1, paper="Sun et al., NeurIPS 2022 (QE)", kind="layer")
def qe(stats):
    return {m: histogram_entropy(stats.outputs[m]) for m in stats.modules}
