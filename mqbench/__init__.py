"""mqbench: ground-truth tables and a scoring harness for mixed-precision quantization proxies."""

__version__ = "0.1.0"
