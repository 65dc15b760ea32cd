"""A clumsy proxy: torch's "can't allocate memory" must be reported as the --mem-mb limit."""
import torch

from mqbench.proxy import proxy


@proxy(name="torch_alloc", version=1, paper="hostile fixture", kind="layer")
def torch_alloc(stats):
    x = torch.ones(1 << 32)  # 16 GiB
    return [float(x.sum())] * len(stats.modules)
