"""Escape 4: the literal decorator says one name, running the file registers another."""
from mqbench.proxy import proxy


@proxy(name="renamed_at_run", version=1, paper="hostile fixture", kind="layer")
def renamed_at_run(stats):
    return [1.0] * len(stats.modules)


renamed_at_run.__mqbench_proxy__ = proxy(name="weight_norm", kind="layer")(
    lambda stats: 0).__mqbench_proxy__
