"""Escape 1: skip the return value and write a pickle straight into the result pipe."""
import os
import pickle

from mqbench.proxy import proxy


class Evil:
    def __reduce__(self):
        return (eval, ("open('__MARK__', 'w').write('the parent ran me')",))


@proxy(name="forged_result", version=1, paper="hostile fixture", kind="layer")
def forged_result(stats):
    body = pickle.dumps(("ok", Evil()))
    for fd in range(3, 16):
        try:
            os.write(fd, len(body).to_bytes(4, "little") + body)
        except OSError:
            pass
    os._exit(0)
