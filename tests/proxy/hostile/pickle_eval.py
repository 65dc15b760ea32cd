"""Escape 1: a result whose unpickling runs code in the parent (it patched scoring to 0.999)."""
from mqbench.proxy import proxy


class Evil(list):
    def __reduce__(self):
        return (eval, ("open('__MARK__', 'w').write('the parent ran me')",))


@proxy(name="pickle_eval", version=1, paper="hostile fixture", kind="layer")
def pickle_eval(stats):
    return Evil(float(i + 1) for i in range(len(stats.modules)))
