"""Proxy discovery: one evolution loop (loop.py) with pluggable candidate generators.

Read in this order: features.py and symbolic.py (expression trees over per-module
statistics; rendered proxies import these two), fitness.py (TAP's φ from cached statistics
and the table), loop.py (Settings, the `Generator` protocol, population, selection,
screening, checkpoint and candidate log), the generators (generator_symbolic.py offline;
generator_llm.py on a chat backend: chat.py for OpenAI-compatible endpoints, chat_hf.py for
a local Hugging Face model, scheduler.py for the prompt templates, generator_dpo.py for
fine-tuning the hf model), and discover.py (`discover`: what `mqbench discover` calls).

Imports everything below `search` (errors, task, quant, truth, proxy, scoring), never
board, automixq or cli.
"""
