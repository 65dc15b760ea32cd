"""Escape 11: finite but huge values (~1.7e308) that used to crash the ILP."""
from mqbench.proxy import proxy


@proxy(name="huge_values", version=1, paper="hostile fixture", kind="layer")
def huge_values(stats):
    n = len(stats.modules)
    return [1.7e308 / n * (i + 1) for i in range(n)]
