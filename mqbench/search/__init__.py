"""Searches that use the benchmark: proxy discovery (`evolution/`) and AutoMixQ
(`automixq/`). Imports everything below it except cli.
"""
