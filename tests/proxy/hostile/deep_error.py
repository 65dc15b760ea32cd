"""A clumsy proxy: the error happens inside mqbench's ops; the message must cite this file."""
from mqbench.proxy import proxy
from mqbench.proxy.ops import histogram_entropy


@proxy(name="deep_error", version=1, paper="hostile fixture", kind="layer")
def deep_error(stats):
    # a list, not a tensor: ops.py fails on it, but the mistake is on this line
    return [histogram_entropy([1.0, 2.0]) for m in stats.modules]
