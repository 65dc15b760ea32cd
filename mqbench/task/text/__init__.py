"""Language-model plumbing for text tasks: corpus files, the project-trained BPE tokenizer,
the causal-LM model wrapper and offline-first hub loading. Imports errors/paths only.
"""
