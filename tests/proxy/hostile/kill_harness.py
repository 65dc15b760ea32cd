"""Escape 9: SIGKILL / SIGSTOP the harness (its pid, the parent, everyone), via libc."""
import ctypes
import signal

from mqbench.proxy import proxy

HARNESS = int("__HARNESS_PID__")


@proxy(name="kill_harness", version=1, paper="hostile fixture", kind="layer")
def kill_harness(stats):
    libc = ctypes.CDLL(None, use_errno=True)
    rcs = []
    for pid, sig in ((HARNESS, signal.SIGKILL), (HARNESS, signal.SIGSTOP), (1, signal.SIGKILL),
                     (-1, signal.SIGKILL), (-HARNESS, signal.SIGKILL)):
        rcs.append(float(libc.kill(pid, sig)))
    return rcs + [1.0] * (len(stats.modules) - len(rcs))
