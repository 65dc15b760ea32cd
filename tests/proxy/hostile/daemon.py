"""Escape 6: a detached grandchild outliving the call (setsid + double fork), via libc."""
import ctypes
import platform
import threading
import time

from mqbench.proxy import proxy


def _linger():
    time.sleep(3)
    print("still alive after the call", flush=True)


@proxy(name="daemon", version=1, paper="hostile fixture", kind="layer")
def daemon(stats):
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.fork()
    if pid == 0:
        libc.setsid()
        if libc.fork() == 0:
            time.sleep(20)
            with open("__MARK__", "w") as f:
                f.write("daemon survived")
        libc._exit(0)
    nr = {"x86_64": 56, "aarch64": 220}[platform.machine()]
    clone = libc.syscall(nr, 17, 0, 0, 0, 0)  # clone(SIGCHLD): a plain fork
    threading.Thread(target=_linger, daemon=False).start()
    return [float(pid), float(clone), float(ctypes.get_errno())] + \
        [1.0] * (len(stats.modules) - 3)
