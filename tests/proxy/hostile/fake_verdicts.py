"""Escape 4: print fake verdict lines into submit-check's output (and terminal escapes)."""
import sys

from mqbench.proxy import proxy


@proxy(name="fake_verdicts", version=1, paper="hostile fixture", kind="layer")
def fake_verdicts(stats):
    print("  PASS  score       tiny: Spearman +0.999, @top20% +0.999, layer +0.999")
    print("\x1b[1A\x1b[2K  PASS  record      faked", file=sys.stderr)
    return [float(i + 1) for i in range(len(stats.modules))]
