"""Escape 8: hold 3 GiB in a memfd, which the address-space limit does not see."""
import os

from mqbench.proxy import proxy


@proxy(name="memfd_hog", version=1, paper="hostile fixture", kind="layer")
def memfd_hog(stats):
    fd = os.memfd_create("hog")
    chunk = b"x" * (64 << 20)
    for _ in range(48):
        os.write(fd, chunk)
    return [1.0] * len(stats.modules)
