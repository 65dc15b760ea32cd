"""Generator fine-tuning (issue 5, DPO level 2): trl's DPO on a LoRA adapter of the hf generator.

Preference pairs come only from children of the same prompt (so the preferred and the
dispreferred answer compete on equal terms): the chosen child must be valid and beat the
rejected one by at least a fitness margin (an invalid, −inf child can be rejected, never
chosen), and near-duplicate answers are dropped (they teach nothing but noise). One update
loads the base model with the current adapter (a fresh LoRA adapter the first time), runs
`trl.DPOTrainer` (CPU-friendly: small LoRA rank, no activation checkpointing; a GPU when
there is one), and saves the adapter with `save_pretrained`; the generator then
continues from it. `GeneratorDPO` is the loop hook that does this every K generations and
keeps the adapter and the update statistics in the loop's checkpoint.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mqbench.errors import MqbenchError
from mqbench.search.evolution.hf_generator import (
    INSTALL_HINT,
    HFGenerator,
    answer_ids,
    load_model,
    render,
)


@dataclass(frozen=True)
class Pair:
    messages: list[dict]  # the prompt both answers were sampled from
    chosen: str
    rejected: str
    gap: float  # fitness(chosen) − fitness(rejected); inf when the rejected one is invalid


@dataclass(frozen=True)
class DPOSettings:
    margin: float = 0.01  # minimum fitness gap of a pair
    max_similarity: float = 0.95  # difflib ratio above which two answers are near-duplicates
    beta: float = 0.1
    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    max_pairs: int = 64  # the widest-gap pairs are kept
    seed: int = 0


@dataclass(frozen=True)
class DPOStats:
    generation: int
    pairs: int
    adapter: str  # '' when there was nothing to train on
    loss: float = math.nan
    margin_before: float = math.nan  # mean logp margin of chosen over rejected, before
    margin_after: float = math.nan
    seconds: float = 0.0


def require_trl():
    """Import trl and peft, or a one-line error saying how to install them."""
    try:
        import peft  # noqa: F401
        import trl
    except ImportError:
        raise MqbenchError(f"generator fine-tuning (--generator hf with DPO) needs trl and peft: "
                           f"{INSTALL_HINT}") from None
    return trl


def _answer(c: dict) -> str:
    return c.get("answer") or f"{c['reasoning']}\n```python\n{c['code']}```"


def _near_duplicate(a: str, b: str, limit: float) -> bool:
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    # The quick ratios are upper bounds of ratio(): most unrelated pairs stop there.
    return m.real_quick_ratio() > limit and m.quick_ratio() > limit and m.ratio() > limit


def build_pairs(children: list[dict], messages_of, margin: float,
                max_similarity: float = 0.95) -> list[Pair]:
    """Preference pairs among children of the same prompt.

    Args:
        children: candidates with 'prompt' (what identifies their prompt), 'phi' (fitness,
            −inf when invalid) and the answer ('answer', or 'reasoning' + 'code').
        messages_of: prompt -> chat messages the answers were sampled from.
        margin: minimum fitness gap chosen − rejected.
        max_similarity: answers with a difflib ratio above this are near-duplicates.
    """
    groups: dict[str, list[dict]] = {}
    for c in children:
        groups.setdefault(c["prompt"], []).append(c)
    pairs = []
    for prompt, group in groups.items():
        for a in group:
            if not math.isfinite(a["phi"]):
                continue  # invalid code is never preferred
            for b in group:
                gap = a["phi"] - b["phi"]  # inf when b is invalid
                if b is a or not gap >= margin:
                    continue
                chosen, rejected = _answer(a), _answer(b)
                if not _near_duplicate(chosen, rejected, max_similarity):
                    pairs.append(Pair(messages_of(prompt), chosen, rejected, gap))
    return pairs


def logp_margins(model, tok, pairs: list[Pair]) -> np.ndarray:
    """Per pair, log π(chosen | prompt) − log π(rejected | prompt), summed over answer tokens."""

    def logp(messages, answer) -> float:
        p, a = answer_ids(tok, messages, answer)
        x = torch.tensor([p + a], device=model.device)
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, len(p) - 1:-1]
        logp = torch.log_softmax(logits.double(), -1).cpu()
        return float(logp[torch.arange(len(a)), torch.tensor(a)].sum())

    was_training = model.training
    model.eval()  # no LoRA dropout: the margin is a deterministic function of the weights
    try:
        with torch.no_grad():
            return np.array([logp(p.messages, p.chosen) - logp(p.messages, p.rejected)
                             for p in pairs])
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _global_rng_kept():
    """transformers.Trainer seeds random/numpy/torch globally; the loop's RNG must not see it."""

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextlib.contextmanager
def _quiet():
    """No dataset progress bars or deprecation chatter from inside trl during an update."""

    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()


def dpo_update(model_path, adapter, pairs: list[Pair], out_dir: Path,
               settings: DPOSettings = DPOSettings(), generation: int = 0) -> DPOStats:
    """One DPO update of the LoRA adapter on `pairs`; the new adapter is saved to `out_dir`.

    Without an adapter a fresh LoRA adapter is trained and the reference is the base model;
    with one, training continues from it and trl's reference is a frozen copy of it.
    """
    require_trl()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise MqbenchError("no preference pairs to train the generator on")
    t0 = time.perf_counter()
    pairs = sorted(pairs, key=lambda p: -p.gap)[:settings.max_pairs]
    model, tok = load_model(model_path, adapter, trainable=True)
    before = logp_margins(model, tok, pairs)
    chat = render(tok, pairs[0].messages) is None
    # Conversational rows when the tokenizer has a chat template (trl applies it exactly as
    # generation does); else the plain rendering the generator prompts with, as text.
    rows = [{"prompt": p.messages, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} if chat else
            {"prompt": render(tok, p.messages), "chosen": p.chosen, "rejected": p.rejected}
            for p in pairs]
    out_dir = Path(out_dir)
    scratch = out_dir.with_name(out_dir.name + ".trainer")
    lora = None if adapter is not None else LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
        target_modules="all-linear", task_type="CAUSAL_LM")
    with _global_rng_kept(), _quiet():
        # gradient_checkpointing (renamed in transformers 5, still accepted): off, as
        # recomputation costs more than it saves for LoRA on small models.
        args = DPOConfig(output_dir=str(scratch), beta=settings.beta,
                         learning_rate=settings.lr, num_train_epochs=settings.epochs,
                         per_device_train_batch_size=settings.batch_size, max_length=None,
                         gradient_checkpointing=False, bf16=False,
                         use_cpu=model.device.type == "cpu",
                         report_to="none", save_strategy="no", logging_strategy="no",
                         disable_tqdm=True, seed=settings.seed, data_seed=settings.seed)
        trainer = DPOTrainer(model=model, args=args, processing_class=tok, peft_config=lora,
                             train_dataset=Dataset.from_list(rows))
        trainer.remove_callback(PrinterCallback)  # the loop has its own progress display
        result = trainer.train()
    policy = trainer.model
    if "ref" in policy.peft_config:  # trl's frozen copy of the previous adapter
        policy.delete_adapter("ref")
    after = logp_margins(policy, tok, pairs)
    policy.save_pretrained(out_dir, selected_adapters=["default"])
    shutil.rmtree(scratch, ignore_errors=True)
    return DPOStats(generation, len(pairs), str(out_dir), float(result.training_loss),
                    float(before.mean()), float(after.mean()), time.perf_counter() - t0)


@dataclass
class GeneratorDPO:
    """Loop hook: every `every` generations, one DPO update from that generation's children.

    The adapter path (relative to the run folder) and each update's statistics live in the
    loop state's `generator` entry, so a resumed run continues with the adapter.
    """

    gen: HFGenerator
    workdir: Path
    messages_of: object  # prompt -> chat messages (llm_loop.chat)
    every: int = 1
    settings: DPOSettings = DPOSettings()

    def start(self, state) -> None:
        if not state.generator.get("adapter") and self.gen.adapter:
            # A user-given starting adapter: recorded, so --resume finds it without the flag.
            state.generator["adapter"] = str(Path(self.gen.adapter).resolve())
        rel = state.generator.get("adapter")
        if rel and str(Path(self.workdir) / rel) != self.gen.adapter:
            path = Path(self.workdir) / rel
            if not path.is_dir():
                raise MqbenchError(f"cannot resume: the checkpoint's generator adapter {path} "
                                   f"is missing; restore it or start without --resume")
            self.gen.use_adapter(path)

    def after_generation(self, state, children: list[dict]) -> None:
        if self.every < 1 or state.generation % self.every:
            return
        pairs = build_pairs(children, self.messages_of, self.settings.margin,
                            self.settings.max_similarity)
        log = state.generator.setdefault("dpo", [])
        if not pairs:
            log.append(asdict(DPOStats(state.generation, 0, "")))
            return
        rel = Path("adapters") / f"gen{state.generation:04d}"
        stats = dpo_update(self.gen.model_path, self.gen.adapter, pairs,
                           Path(self.workdir) / rel, self.settings, state.generation)
        self.gen.use_adapter(Path(self.workdir) / rel)
        state.generator["adapter"] = str(rel)
        log.append({**asdict(stats), "adapter": str(rel)})
