"""Escape 2: code at module level, run by whoever merely lists or name-checks proxies."""
from mqbench.proxy import proxy

with open("__MARK__", "w") as f:
    f.write("listing ran me")


@proxy(name="runs_at_import", version=1, paper="hostile fixture", kind="layer")
def runs_at_import(stats):
    return [1.0] * len(stats.modules)
