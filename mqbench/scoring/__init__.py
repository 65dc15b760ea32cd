"""Scoring a proxy against ground truth: metrics (one registry), ILP bit allocation, the
harness and the result record.

Imports task, quant, truth and proxy.
"""
