"""Escape 4: encode an environment secret and /etc/passwd in the returned sensitivities."""
import os

from mqbench.proxy import proxy


@proxy(name="env_leak", version=1, paper="hostile fixture", kind="layer")
def env_leak(stats):
    with open("/proc/self/environ") as f:
        secret = os.environ.get("MQBENCH_TEST_SECRET", "") + f.read()
    return [float(ord(secret[i]) if i < len(secret) else i + 1) for i in range(len(stats.modules))]
