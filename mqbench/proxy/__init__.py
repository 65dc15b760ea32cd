"""Proxies: the contract and registry (`@proxy`), the statistics context they read, shared
ops, the conformance suite and the sandbox that runs untrusted proxy code.

Imports task, quant and truth. Proxy files import the decorator from here:
`from mqbench.proxy import proxy`.
"""

from mqbench.proxy.contract import proxy

__all__ = ["proxy"]
