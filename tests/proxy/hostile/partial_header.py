"""Escape 10: write 4 bytes of a result header, then sleep: a blocking read would hang."""
import os
import time

from mqbench.proxy import proxy


@proxy(name="partial_header", version=1, paper="hostile fixture", kind="layer")
def partial_header(stats):
    for fd in range(3, 16):
        try:
            os.write(fd, b"MQR1")
        except OSError:
            pass
    time.sleep(60)
