"""A local Hugging Face causal LM as a chat backend (`mqbench discover --generator hf`).

The model and tokenizer are read from a directory on disk only (never the hub), optionally
with a LoRA adapter (peft) that generator_dpo.py trains. Sampling is seeded per completion
inside `torch.random.fork_rng`, so the global RNG is untouched; tokens are counted (cost 0).
A GPU is used when present, else the CPU.
Answers are cached on disk like OpenAIChat's, keyed also by the adapter's content hash,
so a fine-tuned generator never replays the answers of the one before it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mqbench.errors import MqbenchError, require
from mqbench.search.evolution.chat import Completion, Usage, cached

INSTALL_HINT = "pip install -e '.[discover-hf]'"


def render(tok, messages: list[dict]) -> str | None:
    """The prompt text for a tokenizer without a chat template; None when it has one."""
    if getattr(tok, "chat_template", None):
        return None
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:\n"


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    """Token ids the model is conditioned on; generation and DPO training share them."""
    text = render(tok, messages)
    if text is None:
        return list(tok.apply_chat_template(messages, add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"])
    return list(tok(text)["input_ids"])


def answer_ids(tok, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of `answer` after `messages`, tokenized as trl's DPO does.

    The answer starts where prompt and prompt+answer tokenizations diverge (a token may merge
    across the boundary); the plain rendering ends the answer with EOS, as trl does.
    """
    text = render(tok, messages)
    if text is None:
        p = prompt_ids(tok, messages)
        full = list(tok.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=True,
            return_dict=True)["input_ids"])
    else:
        p = list(tok(text)["input_ids"])
        full = list(tok(text + answer + tok.eos_token)["input_ids"])
    k = 0
    while k < min(len(p), len(full)) and p[k] == full[k]:
        k += 1
    return full[:k], full[k:]


def adapter_version(adapter: str | os.PathLike | None) -> str:
    """Content hash of an adapter's weights ('base' without one): part of every cache key."""
    if adapter is None:
        return "base"
    h = hashlib.sha256()
    for f in sorted(Path(adapter).glob("adapter_model.*")) + [Path(adapter) /
                                                               "adapter_config.json"]:
        if f.exists():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def require_peft():
    try:
        import peft  # lazy: optional (pip install -e '.[discover-hf]')
    except ImportError:
        raise MqbenchError(f"LoRA adapters need peft (and DPO fine-tuning needs trl): "
                           f"{INSTALL_HINT}") from None
    return peft


def load_model(model_path: str | os.PathLike, adapter: str | os.PathLike | None = None,
               trainable: bool = False):
    """(model, tokenizer) from local files only; the adapter, if any, is loaded with peft.

    The model goes to the GPU when there is one (in its stored dtype), else stays on the CPU
    in float32 (half-precision matmuls are slow or missing there).
    """
    path = Path(model_path).expanduser()
    how = ("pass --model a local directory holding config.json, the weights and the tokenizer "
           "(e.g. from `huggingface-cli download NAME --local-dir DIR`)")
    if not str(model_path) or not (path / "config.json").is_file():
        raise MqbenchError(f"no local model at {str(model_path)!r}: {how}")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise MqbenchError(f"no LoRA adapter at {adapter} (adapter_config.json missing)")
    require("transformers", "lm", "the hf generator")
    # lazy: transformers is heavy and optional (the hf generator only)
    import transformers
    from transformers.utils import logging as hf_logging

    gpu = torch.cuda.is_available()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per adapter reload would drown the loop's own
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype="auto" if gpu else torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MqbenchError(f"cannot load a causal LM from {path}: {first}; {how}") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if tok.eos_token is None:
        raise MqbenchError(f"the tokenizer in {path} has no EOS token; set eos_token in its "
                           f"tokenizer_config.json")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # generation pads nothing, but needs the id
    if gpu:
        model.to("cuda")
    if adapter is not None:
        peft = require_peft()
        model = peft.PeftModel.from_pretrained(model, Path(adapter), is_trainable=trainable)
    model.train(trainable)
    return model, tok


@dataclass
class HFChat:
    """Seeded sampling from a local causal LM (+ optional LoRA adapter), with a disk cache.

    Completion i of a request uses seed `seed + i`, so answers do not depend on `n` or on
    which of them were already cached.
    """

    model_path: str | os.PathLike = ""
    adapter: str | os.PathLike | None = None
    cache_dir: Path | None = None
    max_new_tokens: int = 512
    usage: Usage = field(default_factory=Usage)
    name: str = "hf"

    @property
    def label(self) -> str:
        return f"hf, model {self.model_path}"

    def __post_init__(self):
        self.use_adapter(self.adapter)

    def use_adapter(self, adapter: str | os.PathLike | None) -> None:
        """Continue with `adapter` (a directory written by `save_pretrained`; None: the base)."""
        self.model, self.tok = load_model(self.model_path, adapter)
        self.adapter = None if adapter is None else str(adapter)
        self.version = adapter_version(adapter)

    def _key(self, messages, temperature, seed, i) -> str:
        blob = json.dumps([str(Path(self.model_path).resolve()), self.version, messages,
                           temperature, seed, i, self.max_new_tokens], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, messages: list[dict], n: int, *, temperature: float,
                 seed: int) -> list[Completion]:
        return [self._one(messages, temperature, seed, i) for i in range(n)]

    def _one(self, messages, temperature, seed, i) -> Completion:
        return cached(self.cache_dir, "hf-" + self._key(messages, temperature, seed, i),
                      self.usage, lambda: self.sample(messages, temperature, seed + i))

    def sample(self, messages: list[dict], temperature: float, seed: int) -> Completion:
        """One completion, uncached."""

        ids = prompt_ids(self.tok, messages)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(ids) + self.max_new_tokens > limit:
            # Absolute-position models crash past their table: keep the prompt's end, which
            # holds the task and the parents closest to it.
            ids = ids[-max(1, limit - self.max_new_tokens):]
        x = torch.tensor([ids], device=self.model.device)
        sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                    if temperature > 0 else {"do_sample": False})
        gpus = [self.model.device.index or 0] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus), torch.inference_mode():
            torch.manual_seed(seed)
            out = self.model.generate(x, attention_mask=torch.ones_like(x),
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tok.pad_token_id,
                                      eos_token_id=self.tok.eos_token_id, **sampling)
        new = out[0, len(ids):].tolist()
        if self.tok.eos_token_id in new:
            new = new[:new.index(self.tok.eos_token_id) + 1]
        self.usage.requests += 1
        self.usage.prompt_tokens += len(ids)
        self.usage.completion_tokens += len(new)
        return Completion(self.tok.decode(new, skip_special_tokens=True), len(ids), len(new))
