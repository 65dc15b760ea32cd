"""Escape 7: deterministic within one process, different in the next (seeded at import)."""
import os

import numpy as np

from mqbench.proxy import proxy

SEED = int.from_bytes(os.urandom(4), "little")


@proxy(name="seeded_per_process", version=1, paper="hostile fixture", kind="layer")
def seeded_per_process(stats):
    return np.random.default_rng(SEED).random(len(stats.modules)).tolist()
