"""Escape 8: fill the disk through the scratch directory (3 x 1 GiB files)."""
import tempfile

from mqbench.proxy import proxy


@proxy(name="disk_hog", version=1, paper="hostile fixture", kind="layer")
def disk_hog(stats):
    chunk = b"x" * (16 << 20)
    for _ in range(3):
        with tempfile.NamedTemporaryFile(delete=False) as f:
            for _ in range(64):
                f.write(chunk)
    return [1.0] * len(stats.modules)
