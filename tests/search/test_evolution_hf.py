"""The `hf` generator path of `mqbench discover`: a tiny Llama built here (tokenizer trained
here), seeded generation, same-prompt preference pairs, one DPO update of a LoRA adapter
with trl, the CLI loop with adapter checkpoint and --resume, and one-line errors."""

from __future__ import annotations

import builtins
import json
import math

import numpy as np
import pytest

from mqbench.errors import MqbenchError
from mqbench.search.evolution import generator_llm as LL
from mqbench.search.evolution.chat import extract
from mqbench.search.evolution.chat_hf import HFChat, answer_ids, load_model
from mqbench.search.evolution.generator_dpo import (
    DPOSettings,
    GeneratorDPO,
    dpo_update,
    logp_margins,
)
from mqbench.search.evolution.generator_llm import Pair, build_pairs
from mqbench.search.evolution.loop import CHECKPOINT

# The same canned answers as the openai generator's tests.
from mqbench.testing import GOOD, GOOD2, NO_CODE, SYNTAX

PROSE = ("Mixed-precision quantization assigns each layer a bit-width. A sensitive layer "
         "loses accuracy when quantized, so it should keep more bits.")


def _build(path, sft_steps: int):
    """Train a byte-level BPE tokenizer and a 2-layer Llama; fit it briefly on answers.

    The short supervised fit (answer tokens only, after the loop's own prompts) makes the
    sampled answers a mix of valid proxies and junk, so the loop has preference pairs.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    init = LL.prompt("init", [], np.random.default_rng(0))
    parent = {"phi": 0.5, "reasoning": GOOD.splitlines()[0], "code": extract(GOOD)[1]}
    mutate = LL.prompt("mutation-top", [parent], np.random.default_rng(0))
    corpus = [LL.SYSTEM, LL.CONTRACT, PROSE, mutate[-1]["content"]] * 3
    bpe = Tokenizer(models.BPE())
    # Merges may span words but not lines, so prompts are short and an answer (which starts
    # a line) never shares a token with its prompt.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<pad>", "<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False))
    examples = [(init, GOOD), (init, GOOD2), (init, NO_CODE), (mutate, GOOD), (mutate, GOOD2),
                (mutate, SYNTAX)]
    seqs = [answer_ids(tok, m, a) for m, a in examples]
    width = max(len(p) + len(a) for p, a in seqs)
    x = torch.full((len(seqs), width), tok.pad_token_id)
    y = torch.full_like(x, -100)
    for k, (p, a) in enumerate(seqs):
        x[k, :len(p) + len(a)] = torch.tensor(p + a)
        y[k, len(p):len(p) + len(a)] = torch.tensor(a)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(sft_steps):
        opt.zero_grad()
        model(input_ids=x, attention_mask=(x != tok.pad_token_id).long(), labels=y).loss.backward()
        opt.step()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tiny-llm"), sft_steps=100)


def test_generation_from_a_local_path_is_seeded_counted_and_cached(tiny_llm, tmp_path):
    import torch

    gen = HFChat(tiny_llm, cache_dir=tmp_path / "cache", max_new_tokens=64)
    msgs = LL.prompt("init", [], np.random.default_rng(0))
    state = torch.get_rng_state()
    a = gen.complete(msgs, 2, temperature=1.0, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    assert all(c.prompt_tokens == len(answer_ids(gen.tok, msgs, "")[0]) for c in a)
    assert all(0 < c.completion_tokens <= 64 and c.cost_usd == 0 for c in a)
    assert gen.usage.requests == 2 and gen.usage.completion_tokens == sum(
        c.completion_tokens for c in a)
    fresh = HFChat(tiny_llm, max_new_tokens=64)  # no cache: same seeds, same answers
    assert [c.text for c in fresh.complete(msgs, 2, temperature=1.0, seed=3)] == \
        [c.text for c in a]
    again = HFChat(tiny_llm, cache_dir=tmp_path / "cache", max_new_tokens=64)
    b = again.complete(msgs, 2, temperature=1.0, seed=3)
    assert [c.text for c in b] == [c.text for c in a] and all(c.cached for c in b)
    assert again.usage.requests == 0 and again.usage.cached == 2


def _child(prompt, phi, answer):
    return {"prompt": prompt, "phi": phi, "answer": answer}


def test_pairs_margin_duplicates_invalid_and_same_prompt_only():
    long = GOOD * 2
    kids = {
        "a": _child("P1", 0.50, GOOD),
        "b": _child("P1", 0.30, GOOD2),
        "c": _child("P1", -math.inf, NO_CODE),
        "d": _child("P1", 0.495, PROSE),  # within the margin of a
        "e": _child("P2", 0.10, SYNTAX),  # other prompt: never paired with a, b, d
        "f": _child("P2", 0.90, long),
        "g": _child("P2", 0.20, long.replace("HAWQ-V2", "HAWQ-V3")),  # near-duplicate of f
        "h": _child("P2", -math.inf, NO_CODE),
        "i": _child("P2", -math.inf, PROSE),  # invalid vs invalid: no pair
    }
    name = {k["answer"] + k["prompt"]: n for n, k in kids.items()}
    pairs = build_pairs(list(kids.values()), margin=0.01, max_similarity=0.95)
    got = {(name[p.chosen + p.messages[-1]["content"]],
            name[p.rejected + p.messages[-1]["content"]]) for p in pairs}
    assert got == {("a", "b"), ("a", "c"), ("d", "b"), ("d", "c"), ("b", "c"),
                   ("e", "h"), ("e", "i"), ("f", "e"), ("f", "h"), ("f", "i"),
                   ("g", "e"), ("g", "h"), ("g", "i")}
    assert all(p.messages == LL.messages(p.messages[-1]["content"]) for p in pairs)
    assert [p.gap for p in pairs if (p.chosen, p.rejected) == (GOOD, GOOD2)] == \
        [pytest.approx(0.2)]
    # a larger margin keeps only the wide gaps; a lower similarity limit drops more pairs
    wide = build_pairs(list(kids.values()), margin=0.5)
    assert all(p.gap >= 0.5 for p in wide) and len(wide) == 10
    strict = build_pairs(list(kids.values()), margin=0.01, max_similarity=0.3)
    assert len(strict) < len(pairs)


def test_dpo_update_raises_the_margin_and_the_adapter_round_trips(tiny_llm, tmp_path):
    init = LL.prompt("init", [], np.random.default_rng(0))
    pairs = [Pair(init, GOOD, NO_CODE, math.inf), Pair(init, GOOD2, SYNTAX, math.inf),
             Pair(LL.messages("Propose a proxy."), GOOD, PROSE, 0.3)]
    model, tok = load_model(tiny_llm)
    before = logp_margins(model, tok, pairs)
    stats = dpo_update(tiny_llm, None, pairs, tmp_path / "adapter", DPOSettings())
    assert stats.pairs == 3 and stats.margin_before == pytest.approx(before.mean())
    assert stats.margin_after > stats.margin_before  # preferred answers gained probability
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    reloaded, tok = load_model(tiny_llm, tmp_path / "adapter")
    after = logp_margins(reloaded, tok, pairs)
    assert after.mean() == pytest.approx(stats.margin_after, rel=1e-6, abs=1e-6)
    # the generator continues from the adapter, and its cache key changes with it
    gen = HFChat(tiny_llm, max_new_tokens=8)
    base_key = gen._key(init, 1.0, 0, 0)
    gen.use_adapter(tmp_path / "adapter")
    assert gen._key(init, 1.0, 0, 0) != base_key
    assert logp_margins(gen.model, gen.tok, pairs).mean() == pytest.approx(after.mean())
    # a second update continues training the same adapter
    again = dpo_update(tiny_llm, tmp_path / "adapter", pairs, tmp_path / "adapter2")
    assert again.margin_before == pytest.approx(after.mean())
    assert again.margin_after > again.margin_before


@pytest.mark.slow
def test_discover_cli_with_the_hf_generator_and_resume(tiny_env, tiny_llm, tmp_path, capsys):
    from mqbench.cli.main import main

    out = tmp_path / "hf_found.py"
    run = tmp_path / "run"
    base = ["discover", "--task", "tiny", "--generator", "hf", "--model", str(tiny_llm),
            "--population", "4", "--max-new-tokens", "96", "--out", str(out),
            "--checkpoint", str(run), "--quiet", "--fitness-split", "test"]
    assert main(base + ["--generations", "1"]) in (0, None)
    msg = capsys.readouterr().out
    ckpt = json.loads((run / CHECKPOINT).read_text())
    dpo = ckpt["generator"]["dpo"]
    assert [d["generation"] for d in dpo] == [0, 1]
    trained = [d for d in dpo if d["pairs"]]
    assert trained and ckpt["generator"]["adapter"] == trained[-1]["adapter"]
    assert (run / ckpt["generator"]["adapter"] / "adapter_config.json").exists()
    assert all(d["margin_after"] > d["margin_before"] for d in trained)
    assert "generator DPO after generation" in msg and "generator: hf" in out.read_text()
    assert ckpt["invalid"] > 0 and ckpt["evaluated"] == 4 + 16  # junk answers: recorded
    assert (run / "pairs.jsonl").exists()
    # resuming picks up the adapter from the checkpoint ...
    gen = HFChat(tiny_llm, max_new_tokens=8)
    hook = GeneratorDPO(gen, run)
    hook.start(dict(ckpt["generator"]))
    assert gen.adapter == str(run / ckpt["generator"]["adapter"])
    # ... and the CLI continues the run with it for one more generation
    assert main(base + ["--generations", "2", "--resume"]) in (0, None)
    more = json.loads((run / CHECKPOINT).read_text())
    assert more["generation"] == 2 and more["history"][:2] == ckpt["history"]
    assert [d["generation"] for d in more["generator"]["dpo"]] == [0, 1, 2]


def test_bad_model_path_and_missing_trl_are_one_line_errors(tiny_llm, tmp_path, capsys,
                                                            monkeypatch):
    from mqbench.cli.main import main

    base = ["discover", "--task", "digits-resnet8", "--generator", "hf", "--out",
            str(tmp_path / "x.py"), "--quiet"]
    assert main(base + ["--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no local model at" in err and "--model" in err and len(err.splitlines()) == 1
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(base + ["--model", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert "cannot load a causal LM" in err and len(err.splitlines()) == 1
    with pytest.raises(MqbenchError, match="no LoRA adapter"):
        load_model(tiny_llm, tmp_path / "nope")

    real_import = builtins.__import__

    def no_trl(name, *args, **kwargs):
        if name.split(".")[0] in ("trl", "peft"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trl)
    assert main(base + ["--model", str(tiny_llm)]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[discover-hf]'" in err and len(err.splitlines()) == 1
    # without DPO the generator itself needs neither
    assert isinstance(HFChat(tiny_llm, max_new_tokens=4), HFChat)


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_a_chat_template_is_used_for_generation_and_dpo_alike(tiny_llm, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    model_dir = tmp_path / "chat-llm"
    shutil.copytree(tiny_llm, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = CHAT
    tok.save_pretrained(model_dir)
    gen = HFChat(model_dir, max_new_tokens=16)
    msgs = LL.messages("Propose a proxy.")
    expected = tok("<|system|>\n" + LL.SYSTEM + "<eos>\n<|user|>\nPropose a proxy.<eos>\n"
                   "<|assistant|>\n", add_special_tokens=False)["input_ids"]
    p, a = answer_ids(gen.tok, msgs, GOOD)
    assert p == expected and a == tok(GOOD + "<eos>\n", add_special_tokens=False)["input_ids"]
    (c,) = gen.complete(msgs, 1, temperature=1.0, seed=0)
    assert c.prompt_tokens == len(expected)
    pairs = [Pair(msgs, GOOD, NO_CODE, math.inf), Pair(msgs, GOOD2, SYNTAX, math.inf)]
    stats = dpo_update(model_dir, None, pairs, tmp_path / "adapter")
    assert stats.margin_after > stats.margin_before
