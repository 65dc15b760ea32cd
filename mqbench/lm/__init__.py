"""Language-model tasks: text corpora, tokenizers, causal LMs and the AutoMixQ search.

A causal-LM task plugs into the same machinery as the vision tasks: its data are token
windows (`Split.x` = inputs [N, L], `Split.y` = next tokens [N, L]), its model returns one row
of next-token logits per position ([N*L, vocab]), so tables, proxies, harness and leaderboard
treat every token as one prediction. Quantization is weight-only and group-wise.
"""
