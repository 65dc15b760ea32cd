"""Escape 3: read the ground truth (it scored Spearman +1.000) and swallow the refusal."""
from mqbench.proxy import proxy

TARGET = "__TARGET__"


@proxy(name="read_truth", version=1, paper="hostile fixture", kind="layer")
def read_truth(stats):
    try:
        with open(TARGET, "rb") as f:
            n = len(f.read())
    except OSError:
        n = 0
    return [float(n + i) for i in range(len(stats.modules))]
