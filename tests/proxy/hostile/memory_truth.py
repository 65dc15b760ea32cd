"""Escape 3: find the ground truth in memory (a forked child holds the caller's objects)."""
import gc
import sys

from mqbench.proxy import proxy


@proxy(name="memory_truth", version=1, paper="hostile fixture", kind="layer")
def memory_truth(stats):
    found = 0
    for obj in gc.get_objects():
        kind = type(obj)
        if (str(getattr(kind, "__module__", "")).split(".")[0], kind.__name__) in (
                ("pandas", "DataFrame"), ("mqbench", "Table"), ("mqbench", "Context"),
                ("mqbench", "Bench"), ("mqbench", "Stats")):
            found += 1
    frame = sys._getframe()
    while frame is not None:  # the caller's frames (evaluate_proxy holds `table`)
        found += sum(k in frame.f_locals for k in ("table", "ctx", "bench"))
        frame = frame.f_back
    for name in ("_bench", "folder", "task", "_stats"):
        found += hasattr(stats, name)
    return [float(found + i + 1) for i in range(len(stats.modules))]
