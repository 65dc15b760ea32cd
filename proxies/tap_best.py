"""TAP's best reported proxy: s_l = ||W_l||_2 * H(A_l) * exp(-d_l / L).

Source: TAP (arXiv 2512.07419), Table 2, row "TAP". No code is public; the table is all there is.
Ambiguities and our choices:
  * Table 2 indexes W_ij and A_ij by layer i and channel j. We score whole layers, because
    bits are allocated per layer and an input-activation channel does not correspond to an
    output-weight channel: ||W_l||_2 is the Frobenius norm of the whole (BN-folded) weight,
    i.e. the L2 norm of the flattened tensor (= sqrt of the sum of squared per-channel norms).
  * H(A_l) is the Shannon entropy (nats) of a 256-bin histogram, over [min, max], of the
    layer's *input* activations on the 16-sample calibration batch (TAP's sample count).
    A constant input has entropy 0.
  * d_l is the module's position in model order (0 = first) and L the number of quantized
    modules (stats.depth, stats.num_layers).
Higher s_l = more sensitive (TAP's prior: more bits); the harness multiplies by ||Q_b(W)-W||^2.
"""

import numpy as np

from mqbench.proxy.ops import histogram_entropy
from mqbench.proxy import proxy



@proxy(name="tap", version=1, paper="TAP, arXiv 2512.07419, Table 2", kind="layer")
def tap(stats):
    out = {}
    for i, m in enumerate(stats.modules):
        norm = float(stats.weights[m].double().norm())
        decay = float(np.exp(-stats.depth[i] / stats.num_layers))
        out[m] = norm * histogram_entropy(stats.inputs[m]) * decay
    return out
