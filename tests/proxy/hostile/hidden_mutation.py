"""Escape 7: mutate the statistics and fake the fingerprint with the true pre-call digests."""
from mqbench.proxy import conformance, proxy

_real = conformance.stats_fingerprint
_before = {}


def _fake(stats):
    return dict(_before)


@proxy(name="hidden_mutation", version=1, paper="hostile fixture", kind="layer")
def hidden_mutation(stats):
    if not _before:
        _before.update(_real(stats))
        conformance.stats_fingerprint = _fake
    out = [float(stats.weights[m].norm()) for m in stats.modules]
    for m in stats.modules:
        stats.weights[m].mul_(2.0)
    return out
