"""Benchmark tasks: the TOML spec and its registry, datasets, models, deterministic training.

Imports only errors/paths/provenance. `text/` holds the language-model plumbing (corpus,
tokenizer, causal-LM model, hub loading).
"""
