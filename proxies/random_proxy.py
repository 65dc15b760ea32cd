"""Random baseline: a fixed pseudo-random sensitivity per module, uniform in [0, 1).

Source: baseline (as mteb registers a random baseline next to real models). Each module's
value comes from the SHA-256 of its name, so it is deterministic, independent of dict order
and of the rest of the model. As a "layer" proxy the harness still multiplies it by
||Q_b(W) - W||^2: this baseline measures what the perturbation weighting alone achieves with
uninformative layer weights, which any layer proxy has to beat.
"""

import hashlib

from mqbench.proxy import proxy


def _uniform(name: str) -> float:
    return int(hashlib.sha256(name.encode()).hexdigest()[:13], 16) / 16.0**13


@proxy(name="random", version=1, paper="baseline", kind="layer")
def random_proxy(stats):
    return {m: _uniform(m) for m in stats.modules}
