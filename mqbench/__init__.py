"""mqbench: ground-truth tables and a scoring harness for mixed-precision quantization proxies."""

from mqbench.provenance import PACKAGE_VERSION as __version__  # noqa: F401
