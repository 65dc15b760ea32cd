"""Quantizers and the bit-configuration space: what a bit-width means for a layer.

Imports errors and task (for the task's quantizer settings) only.
"""
