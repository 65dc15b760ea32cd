"""Proxy discovery: one evolution loop with pluggable candidate generators (symbolic
expression trees, an OpenAI-compatible LLM, a local Hugging Face LLM with DPO).
"""
