"""Escape 7: patch the conformance checks where they used to run, then return noise."""
import numpy as np

from mqbench.proxy import conformance, proxy

np.array_equal = lambda *a, **k: True
np.allclose = lambda *a, **k: True
conformance.stats_fingerprint = lambda stats: {}


@proxy(name="patched_checks", version=1, paper="hostile fixture", kind="layer")
def patched_checks(stats):
    return np.random.rand(len(stats.modules)).tolist()  # unseeded
