"""Tokenizers for text tasks and the cached token windows every LM component reads.

Bundled tasks (`data.tokenizer = ""`) train their own byte-level BPE tokenizer with Hugging
Face `tokenizers` on the training split only (vocabulary `data.vocab_size`, one `<eos>`
special token); real tasks use the model's own tokenizer (`data.tokenizer` = hub id or
local path). Tokenizers and token streams are cached under `cache_dir()/text/<key>/`, keyed
by a hash of everything that determines them, with a sha256 of the tokenizer file recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mqbench.errors import MqbenchError, require
from mqbench.paths import cache_dir
from mqbench.task.text import corpus, hub

EOS = "<eos>"


def _key(spec) -> str:
    what = {"dataset": spec.dataset, "tokenizer": spec.tokenizer, "vocab": spec.vocab_size,
            "hf": [spec.hf_name, spec.hf_config, spec.root]}
    if spec.dataset == "python-docs":
        what["corpus"] = corpus.corpus_sha256(spec)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def text_dir(spec) -> Path:
    return cache_dir() / "text" / f"{spec.dataset}-{_key(spec)}"


def train_bpe(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained on `text` (deterministic for equal input)."""
    require("tokenizers", "lm", "a language-model task")
    # lazy: only LM tasks need a tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # One "document" per paragraph keeps the trainer's word counts independent of batching.
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return tok


class _Encoder:
    """encode(text) -> list of ids, for both `tokenizers` and `transformers` tokenizers."""

    def __init__(self, tok, hf: bool):
        self.tok, self.hf = tok, hf

    def encode(self, text: str) -> list[int]:
        if self.hf:
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok.encode(text).ids

    @property
    def vocab_size(self) -> int:
        return len(self.tok) if self.hf else self.tok.get_vocab_size()


def load_tokenizer(spec) -> tuple[_Encoder, dict]:
    """The task's tokenizer (trained and cached on first use) and its provenance."""
    if spec.tokenizer:
        require("transformers", "lm", "a hub tokenizer")
        try:
            # lazy: transformers takes seconds to import; only LM tasks need it
            from transformers import AutoTokenizer

            tok = hub.load(AutoTokenizer.from_pretrained, spec.tokenizer)
        except Exception as exc:
            raise MqbenchError(f"could not load tokenizer {spec.tokenizer!r} "
                               f"({type(exc).__name__}); give a local model folder or a hub id "
                               f"you have downloaded (cached under $HF_HOME)") from None
        return _Encoder(tok, True), {"tokenizer": spec.tokenizer}
    require("tokenizers", "lm", "a language-model task")
    from tokenizers import Tokenizer  # lazy: only LM tasks need a tokenizer

    path = text_dir(spec) / "tokenizer.json"
    if not path.exists():
        if spec.vocab_size < 260:
            raise MqbenchError(f"data.vocab_size = {spec.vocab_size}: a byte-level BPE needs "
                               f"at least 260 entries (256 bytes + specials)")
        tok = train_bpe(corpus.split_text(spec, "train"), spec.vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return _Encoder(Tokenizer.from_file(str(path)), False), {"tokenizer": "bpe",
                                                             "tokenizer_sha256": sha}


def token_stream(spec, split: str) -> np.ndarray:
    """All token ids of `split` (cached as .npy next to the tokenizer)."""
    if split not in corpus.SPLITS:
        raise MqbenchError(f"text split {split!r} is not one of {', '.join(corpus.SPLITS)}")
    path = text_dir(spec) / f"tokens-{split}.npy"
    if path.exists():
        return np.load(path)
    enc, _ = load_tokenizer(spec)
    ids = np.asarray(enc.encode(corpus.split_text(spec, split)), dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, ids)
    os.replace(tmp, path)
    return ids


def vocab_size(spec) -> int:
    enc, _ = load_tokenizer(spec)
    return enc.vocab_size
