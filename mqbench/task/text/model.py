"""Causal LMs as mqbench models: one row of next-token logits per input position.

`CausalLM` wraps a `transformers` causal LM so that `model(ids [B, L]) -> logits [B*L, V]`:
with labels `y [B, L]` flattened, every component written for classifiers (cross-entropy,
accuracy, KL, gradients, Hessians) works per token unchanged. Float inputs (the all-ones
probe of data-free proxies) are cast to token ids.

Bundled tasks build a small Llama (`model.arch = "llama"`, `source = "train"`) from the task's
dimensions; real tasks load a Hugging Face checkpoint (`source = "hf"`, `arch` = hub id or a
local folder). Quantizable units are the block linears (q/k/v/o, gate/up/down) named by
their module paths, e.g. `lm.model.layers.0.self_attn.q_proj`.
"""

from __future__ import annotations

import torch
from torch import nn

from mqbench.errors import MqbenchError, require
from mqbench.task.text import hub


class CausalLM(nn.Module):
    """Per-token logits of a Hugging Face causal LM, flattened to [tokens, vocab]."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():
            ids = ids.round().long()
        logits = self.lm(input_ids=ids, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1])


def tiny_llama(spec, vocab_size: int, seq_len: int) -> CausalLM:
    """A small Llama with the task's dimensions (random init from the current torch RNG)."""
    require("transformers", "lm", "a language-model task")
    # lazy: transformers takes seconds to import; only LM tasks need it
    from transformers import LlamaConfig, LlamaForCausalLM

    if spec.dim % spec.heads:
        raise MqbenchError(f"model.dim {spec.dim} must be a multiple of model.heads {spec.heads}")
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=spec.dim,
                      intermediate_size=spec.ffn or 3 * spec.dim, num_hidden_layers=spec.depth,
                      num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                      max_position_embeddings=seq_len, tie_word_embeddings=True,
                      rms_norm_eps=1e-5, attn_implementation="sdpa")
    return CausalLM(LlamaForCausalLM(cfg))


def load_hf(spec) -> CausalLM:
    """A pretrained Hugging Face causal LM from a local folder or the hub (eval mode)."""
    require("transformers", "lm", "a language-model task")
    try:
        # lazy: transformers takes seconds to import; only LM tasks need it
        from transformers import AutoModelForCausalLM

        lm = hub.load(AutoModelForCausalLM.from_pretrained, spec.arch,
                      dtype=getattr(torch, spec.dtype), attn_implementation="sdpa")
    except Exception as exc:
        raise MqbenchError(
            f"could not load causal LM {spec.arch!r} ({type(exc).__name__}); give a local "
            f"folder with config.json and weights, or a hub id you have downloaded "
            f"(`huggingface-cli download {spec.arch}`, cached under $HF_HOME)") from None
    return CausalLM(lm.eval())
