"""Language-model tasks: corpus splits, tokenizer, group-wise quantizer, perplexity, tables.

A tiny Llama task runs on text Python itself ships (`pydoc_data.topics`, written out as
.txt files), so these tests need neither Debian's python3.11-doc nor a network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mqbench.errors import MqbenchError
from mqbench.testing import TINY_LM

# ------------------------------------------------------------------ quantizer
def test_group_quantizer_hand_computed():
    from mqbench.quant.quantizer import quantize_groups

    # One group [0, 1, 2, 3] at 2 bits: s = (3-0)/3 = 1, z = 0 -> exact.
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.equal(quantize_groups(w, 2, 4), w)
    # [-1, 0, 0.4, 2] at 2 bits: s = 3/3 = 1, z = round(1/1) = 1:
    # q = clamp(round(w) + 1, 0, 3) = [0, 1, 1, 3] -> (q - 1) * 1 = [-1, 0, 0, 2].
    w = torch.tensor([[-1.0, 0.0, 0.4, 2.0]])
    assert torch.allclose(quantize_groups(w, 2, 4), torch.tensor([[-1.0, 0.0, 0.0, 2.0]]))
    # Two groups of 2 with their own ranges; third column group is the ragged tail.
    w = torch.tensor([[0.0, 0.3, 10.0, 13.0, 5.0]])
    out = quantize_groups(w, 1, 2)  # 1 bit: each group keeps {min, max}-ish levels
    # group [0, .3]: s = .3, z = 0, q = [0, 1] -> [0, .3]; group [10, 13]: s = 3,
    # z = clamp(round(-10/3), 0, 1) = 0, q = clamp(round([3.33, 4.33]), 0, 1) = [1, 1] -> [3, 3];
    # tail [5]: s = max(0, 1e-8) -> z = 0, q = clamp(round(5/1e-8), 0, 1) = 1 -> 1e-8.
    assert torch.allclose(out[0, :4], torch.tensor([0.0, 0.3, 3.0, 3.0]))
    assert out[0, 4] < 1e-6
    # More bits never hurt on a random weight; 16 groups of 8 rows.
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    errs = [float((quantize_groups(w, b, 32) - w).pow(2).sum()) for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-3 * errs[0]
    # MSE clipping is never worse than min-max per group.
    assert (quantize_groups(w, 2, 32, "mse") - w).pow(2).sum() <= \
        (quantize_groups(w, 2, 32, "max") - w).pow(2).sum()


def test_group_quantizer_matches_reference_formula():
    """Independent re-statement of the per-group formula (AutoMixQ Eq. 1-2, AWQ's RTN)."""
    from mqbench.quant.quantizer import quantize_groups

    w = torch.randn(4, 48, generator=torch.Generator().manual_seed(3))
    got = quantize_groups(w, 3, 16)
    for r in range(4):
        for g0 in range(0, 48, 16):
            g = w[r, g0:g0 + 16].double()
            s = (g.max() - g.min()) / 7
            z = min(max(round(float(-g.min() / s)), 0), 7)
            ref = (torch.clamp(torch.round(g / s) + z, 0, 7) - z) * s
            assert torch.allclose(got[r, g0:g0 + 16].double(), ref, atol=1e-5)


# ------------------------------------------------------------------ data
def test_corpus_split_by_file_and_windows(lm_env, tmp_path):
    from mqbench.task.spec import load_task
    from mqbench.task.text import corpus

    spec = load_task("tinylm").data
    files = {s: {p.name for p in corpus.docs_files(spec, s)} for s in corpus.SPLITS}
    assert not (files["train"] & files["test"]) and not (files["train"] & files["validation"])
    assert sum(len(f) for f in files.values()) == 79
    m1 = corpus.corpus_manifest(spec)
    assert m1["train"]["files"] == len(files["train"])
    x, y = corpus.windows(np.arange(100), 16, "demo")
    assert x.shape == (6, 16) and torch.equal(x[:, 1:], y[:, :-1]) and y[-1, -1] == 96
    with pytest.raises(MqbenchError, match="too short for one window"):
        corpus.windows(np.arange(10), 16, "demo")


def test_text_too_short_for_context_is_one_line(lm_env):
    from mqbench.task import datasets as D
    from mqbench.task.spec import load_task

    root = load_task("tinylm").data.root
    (lm_env / "longctx.toml").write_text(TINY_LM.format(name="longctx", root=root,
                                                        seq_len=100000))
    with pytest.raises(MqbenchError, match="too short for one window of data.seq_len"):
        D.load_split(load_task("longctx").data, "test")


def test_missing_corpus_and_bad_fields_are_one_line(lm_env, tmp_path):
    from mqbench.task import datasets as D
    from mqbench.task.spec import parse_task

    text = TINY_LM.format(name="x", root=tmp_path / "nowhere", seq_len=32)
    with pytest.raises(MqbenchError, match="apt-get install python3.11-doc"):
        D.load_split(parse_task(text).data, "train")
    with pytest.raises(MqbenchError, match="outside the task's weight bit choices"):
        parse_task(text.replace("budgets = [3.5, 3.0]", "budgets = [4.5]"))
    with pytest.raises(MqbenchError, match="seq_len"):
        parse_task(text.replace("seq_len = 32", "seq_len = 0"))
    pinned = text.replace('seq_len = 32', 'seq_len = 32\ncorpus_sha256 = "00ff"').replace(
        "nowhere", "corpus")
    with pytest.raises(MqbenchError, match="not the one this task was built on"):
        D.load_split(parse_task(pinned).data, "train")


def test_tokenizer_is_deterministic_and_cached(lm_env):
    from mqbench.task.spec import load_task
    from mqbench.task.text import tokenize

    spec = load_task("tinylm").data
    enc, info = tokenize.load_tokenizer(spec)
    a = tokenize.token_stream(spec, "test")
    assert enc.vocab_size == 300 and a.max() < 300
    sha = info["tokenizer_sha256"]
    import shutil

    shutil.rmtree(tokenize.text_dir(spec))
    _, info2 = tokenize.load_tokenizer(spec)
    assert info2["tokenizer_sha256"] == sha
    assert np.array_equal(tokenize.token_stream(spec, "test"), a)


# ------------------------------------------------------------------ model and evaluation
def test_perplexity_matches_transformers(lm_env):
    """Our per-token evaluator against transformers' own shifted-label loss."""
    from mqbench.task.spec import load_task
    from mqbench.truth.bench import open_bench

    bench = open_bench(load_task("tinylm"), progress=False)
    ev = bench.evaluator(0)
    split = bench.eval_split
    lm = bench.model.lm
    losses = []
    with torch.no_grad():
        for x, y in zip(split.x, split.y):
            ids = torch.cat([x, y[-1:]])[None]  # the window plus its last next token
            losses.append(float(lm(input_ids=ids, labels=ids).loss))
    assert math.isclose(ev.fp_metrics.loss, float(np.mean(losses)), rel_tol=1e-5)
    # Quantized: 4 bits is closer to float than 2 bits, in loss and KL.
    m2, m4 = (ev.evaluate(bench.space.uniform(b)) for b in (2, 4))
    assert m4.kl < m2.kl and abs(m4.loss - ev.fp_metrics.loss) < abs(m2.loss - ev.fp_metrics.loss)
    assert len(bench.space.units) == 14  # 2 blocks x (q, k, v, o, gate, up, down)


def test_weights_are_deterministic(lm_env, tmp_path, monkeypatch):
    from mqbench.task.spec import load_task
    from mqbench.truth.bench import open_bench

    a = open_bench(load_task("tinylm"), progress=False).weights_manifest["checksum"]
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache2"))
    b = open_bench(load_task("tinylm"), progress=False).weights_manifest["checksum"]
    assert a == b


def test_lm_table_and_proxies(lm_env):
    """The LM task goes through the same table, proxy and harness machinery as vision."""
    from mqbench.proxy.contract import get_proxy
    from mqbench.scoring.harness import EvalOptions, evaluate_proxy
    from mqbench.task.spec import load_task
    from mqbench.truth.build import build_table

    task = load_task("tinylm")
    build_table(task, progress=False)
    from mqbench.truth.store import load_table

    table = load_table(task)
    kinds = table.rows.kind.value_counts().to_dict()
    assert kinds["layer"] == 2 * 14 * 0 + 14 * 3 and kinds["uniform"] == 3 + 3
    noise = table.rows[table.rows.cal_seed == task.table.noise_seed]
    assert len(noise) == 3 + 3  # uniform + noise configs, on other evaluation windows
    for name in ("hawqv2", "weight_norm", "tap"):
        rec = evaluate_proxy(get_proxy(name), task,
                             EvalOptions(progress=False, bootstrap=50))
        assert rec.n_configs == len(table.configs())
        assert {d.budget_avg_bits for d in rec.downstream} == {3.0, 3.5}


# ------------------------------------------------------------------ AutoMixQ


# ------------------------------------------------------------------ real (Hugging Face) tasks
HF_TASK = """
name = "{name}"
version = 1
[model]
arch = "{model}"
source = "hf"
[data]
dataset = "wikitext2"
root = "{data}"
tokenizer = "{model}"
seq_len = 16
calibration_samples = 4
eval_split = "test"
eval_samples = 0
[quant]
weight_bits = [2, 3, 4]
act_bits = [32]
layers = ["lm.model.layers.*"]
weight_clip = "max"
fold_bn = false
group_size = 8
[table]
configs = 4
noise_configs = 0
batch_size = 4
"""


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A tiny Llama checkpoint + tokenizer and a WikiText-shaped dataset, all made locally."""
    from pydoc_data.topics import topics

    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mqbench.task.text.tokenize import EOS, train_bpe

    texts = [t for _, t in sorted(topics.items())]
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe("\n\n".join(texts[:40]), 300),
                                  eos_token=EOS)
    model_dir = tmp_path / "tiny-llama"
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2)).save_pretrained(model_dir)
    lines = [line for t in texts for line in t.splitlines()]
    data_dir = tmp_path / "wikitext"
    datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": lines[i::3][:300]})
                          for i, split in enumerate(("train", "validation", "test"))}
                         ).save_to_disk(str(data_dir))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hflm.toml").write_text(HF_TASK.format(name="hflm", model=model_dir, data=data_dir))
    monkeypatch.setenv("MQBENCH_TASKS", str(tasks))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_hf_task_loads_and_matches_transformers(hf_env):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mqbench.task.spec import load_task
    from mqbench.truth.bench import open_bench

    bench = open_bench(load_task("hflm"), progress=False)
    assert len(bench.space.units) == 7
    # Independent path: the same text through transformers' tokenizer and model directly.
    import datasets

    text = "\n\n".join(datasets.load_from_disk(str(hf_env / "wikitext"))["test"]["text"])
    ids = AutoTokenizer.from_pretrained(hf_env / "tiny-llama")(
        text, add_special_tokens=False)["input_ids"]
    lm = AutoModelForCausalLM.from_pretrained(hf_env / "tiny-llama")
    n = (len(ids) - 1) // 16
    with torch.no_grad():
        losses = [float(lm(input_ids=torch.tensor([ids[i * 16:i * 16 + 17]]),
                           labels=torch.tensor([ids[i * 16:i * 16 + 17]])).loss)
                  for i in range(n)]
    ev = bench.evaluator(0)
    assert len(bench.eval_split) == n
    assert math.isclose(ev.fp_metrics.loss, float(np.mean(losses)), rel_tol=1e-5)
    assert ev.evaluate(bench.space.uniform(2)).kl > ev.evaluate(bench.space.uniform(4)).kl


def test_hf_task_missing_model_or_data_is_one_line(hf_env, capsys):
    from mqbench.cli.main import main

    tasks = hf_env / "tasks"
    (tasks / "nomodel.toml").write_text(HF_TASK.format(
        name="nomodel", model=hf_env / "absent-model", data=hf_env / "wikitext"))
    (tasks / "nodata.toml").write_text(HF_TASK.format(
        name="nodata", model=hf_env / "tiny-llama", data=hf_env / "absent-data"))
    assert main(["measure", "--task", "nomodel", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "absent-model" in err
    assert main(["measure", "--task", "nodata", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "save_to_disk" in err


def test_hub_ids_fail_fast_offline(monkeypatch):
    """Uncached hub ids on a machine without the hub: one quick error, no retry storm."""
    import time

    from transformers import AutoTokenizer

    from mqbench.task.spec import load_task
    from mqbench.task.text import corpus, hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.reachable()
    t = time.perf_counter()
    with pytest.raises(OSError, match="neither a local folder nor in the cache"):
        hub.load(AutoTokenizer.from_pretrained, "mqbench-test/no-such-model")
    spec = load_task("wikitext2-qwen2.5-7b").data
    with pytest.raises(MqbenchError, match="save_to_disk"):
        corpus.split_text(spec, "test")
    assert time.perf_counter() - t < 20
