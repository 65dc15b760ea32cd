"""Generator fine-tuning (issue 5, DPO level 2): trl's DPO on a LoRA adapter of the hf generator.

The preference pairs are the LLM generator's (generator_llm.build_pairs: siblings of one
prompt, the chosen one valid and at least a fitness margin better, near-duplicates
dropped). One update
loads the base model with the current adapter (a fresh LoRA adapter the first time), runs
`trl.DPOTrainer` (CPU-friendly: small LoRA rank, no activation checkpointing; a GPU when
there is one), and saves the adapter with `save_pretrained`; the generator then
continues from it. `GeneratorDPO` is the loop hook that does this every K generations and
keeps the adapter and the update statistics in the loop's checkpoint.
"""

from __future__ import annotations

import contextlib
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
from mqbench.search.evolution.chat_hf import (
    INSTALL_HINT,
    HFChat,
    answer_ids,
    load_model,
    render,
)
from mqbench.search.evolution.generator_llm import Pair


@dataclass(frozen=True)
class DPOSettings:
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
        # lazy: optional packages (pip install -e '.[discover-hf]')
        import peft  # noqa: F401
        import trl
    except ImportError:
        raise MqbenchError(f"generator fine-tuning (--generator hf with DPO) needs trl and peft: "
                           f"{INSTALL_HINT}") from None
    return trl


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

    import datasets  # lazy: optional, installed with trl

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
    # lazy: optional and heavy, needed only for an update
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
    """Loop hook: every `every` generations, one DPO update on that generation's pairs.

    The adapter path (relative to the run folder) and each update's statistics live in the
    LLM generator's checkpointed state (`saved`), so a resumed run continues with the adapter.
    """

    chat: HFChat
    workdir: Path
    every: int = 1
    settings: DPOSettings = DPOSettings()

    def start(self, saved: dict) -> None:
        if not saved.get("adapter") and self.chat.adapter:
            # A user-given starting adapter: recorded, so --resume finds it without the flag.
            saved["adapter"] = str(Path(self.chat.adapter).resolve())
        rel = saved.get("adapter")
        if rel and str(Path(self.workdir) / rel) != self.chat.adapter:
            path = Path(self.workdir) / rel
            if not path.is_dir():
                raise MqbenchError(f"cannot resume: the checkpoint's generator adapter {path} "
                                   f"is missing; restore it or start without --resume")
            self.chat.use_adapter(path)

    def after_generation(self, generation: int, pairs: list[Pair], saved: dict) -> None:
        if self.every < 1 or generation % self.every:
            return
        log = saved.setdefault("dpo", [])
        if not pairs:
            log.append(asdict(DPOStats(generation, 0, "")))
            return
        rel = Path("adapters") / f"gen{generation:04d}"
        stats = dpo_update(self.chat.model_path, self.chat.adapter, pairs,
                           Path(self.workdir) / rel, self.settings, generation)
        self.chat.use_adapter(Path(self.workdir) / rel)
        saved["adapter"] = str(rel)
        log.append({**asdict(stats), "adapter": str(rel)})
