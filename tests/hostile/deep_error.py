"""A clumsy proxy: the error happens inside mqbench's ops; the message must cite this file."""
import torch

from mqbench.proxy import proxy
from mqbench.proxy.ops import linear_cka_matrix


@proxy(name="deep_error", version=1, paper="hostile fixture", kind="layer")
def deep_error(stats):
    feats = [torch.ones(2, 3), torch.ones(5, 3)]
    return linear_cka_matrix(feats).sum(axis=0).tolist()  # mismatched sample counts
