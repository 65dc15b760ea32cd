"""mqbench: ground-truth tables and a scoring harness for mixed-precision quantization proxies.

The public API (see mqbench/api.py): `evaluate`, `load_task`, `load_table`, `quantize`,
`list_proxies`, `list_tasks`. Subpackages, lowest first (each imports only those before it):
task -> quant -> truth -> proxy -> scoring -> board -> search -> cli.
"""

from mqbench.api import (
                         LayerBits,
                         evaluate,
                         list_proxies,
                         list_tasks,
                         load_table,
                         load_task,
                         quantize,
)
from mqbench.provenance import PACKAGE_VERSION as __version__

__all__ = ["__version__", "evaluate", "load_task", "load_table", "quantize", "list_proxies",
           "list_tasks", "LayerBits"]
