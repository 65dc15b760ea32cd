"""A task made ready to run: data loaded, model trained or loaded, space and evaluator built.

`open_bench(task)` is the single entry point the table builder, the proxy harness and the
CLI share; `Evaluator.evaluate(cfg)` measures one bit configuration.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.quant.quantizer import QuantizedModel, prepare
from mqbench.quant.space import BitConfig, Space, build_space
from mqbench.task import datasets as D
from mqbench.task.models import build_model
from mqbench.task.spec import Task
from mqbench.task.text import corpus, tokenize
from mqbench.task.text.model import load_hf, tiny_llama
from mqbench.task.train import load_or_train


@dataclass(frozen=True)
class Metrics:
    """Ground truth of one configuration on the evaluation set."""

    acc: float  # top-1 accuracy in [0, 1] (LM tasks: next-token accuracy)
    loss: float  # mean cross-entropy (LM tasks: per token; perplexity = exp(loss))
    kl: float  # mean KL(full-precision || quantized) of the predictive distributions


def eval_device() -> torch.device:
    """Where configurations are evaluated: $MQBENCH_DEVICE (cpu, cuda, cuda:1, auto).

    Default cpu, so the bundled tables are reproducible anywhere; `auto` picks a GPU when
    one is visible. Only evaluation moves: training and proxy statistics stay on the CPU.
    """
    name = os.environ.get("MQBENCH_DEVICE", "cpu").strip() or "cpu"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MqbenchError(f"MQBENCH_DEVICE={name!r} is not a torch device; use cpu, cuda, "
                           f"cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MqbenchError(f"MQBENCH_DEVICE={name!r} but torch sees no CUDA GPU; unset it or "
                           f"use MQBENCH_DEVICE=cpu")
    return dev


@dataclass
class Bench:
    """Everything a task needs at run time."""

    task: Task
    model: nn.Module  # full-precision, eval mode; never mutated
    space: Space
    eval_split: D.Split
    mean: torch.Tensor
    std: torch.Tensor
    weights_manifest: dict
    _prepared: dict[int, QuantizedModel] = field(default_factory=dict)

    def calibration(self, seed: int, n: int | None = None) -> torch.Tensor:
        """Normalised calibration inputs drawn from the training split with `seed`."""
        split = D.load_split(self.task.data, "train", n or self.task.data.calibration_samples,
                             seed)
        return D.to_input(split.x, self.mean, self.std)

    def prepared(self, cal_seed: int) -> QuantizedModel:
        """The pre-quantized model calibrated with calibration seed `cal_seed` (memoised)."""
        if cal_seed not in self._prepared:
            q = self.task.quant
            self._prepared[cal_seed] = prepare(
                self.model, list(self.space.modules), self.calibration(cal_seed),
                q.weight_bits, q.act_bits, q.weight_clip, q.act_clip, q.fold_bn, cal_seed,
                device=eval_device(), group_size=q.group_size)
        return self._prepared[cal_seed]

    def evaluator(self, cal_seed: int, batch_size: int | None = None) -> "Evaluator":
        split = None
        if self.task.is_lm and cal_seed != self.task.seed:
            # Weight-only quantization has no calibration randomness: an LM table's noise
            # rows re-measure on another seeded draw of evaluation windows instead.
            spec = self.task.data
            split = D.load_split(spec, spec.eval_split, spec.eval_samples, cal_seed)
        return Evaluator(self, self.prepared(cal_seed), batch_size or self.task.table.batch_size,
                         split)


def seeded_model(task: Task, in_chans: int, classes: int, size: int) -> nn.Module:
    """The task's network with its initialisation drawn from the task seed (global RNG kept)."""
    if task.is_lm and task.model.source == "hf":

        return load_hf(task.model)
    with torch.random.fork_rng():
        torch.manual_seed(task.seed)
        if task.is_lm:

            return tiny_llama(task.model, classes, task.data.seq_len)
        return build_model(task.model, in_chans, classes, size)


def open_bench(task: Task, progress: bool = True) -> Bench:
    """Load data and the (trained or pretrained) model of `task` and build its space."""
    spec = task.data
    eval_split = D.load_split(spec, spec.eval_split, spec.eval_samples, task.seed)
    mean, std = D.normalization(spec)
    in_chans, size = eval_split.x.shape[1], eval_split.x.shape[-1]
    model = seeded_model(task, in_chans, D.num_classes(spec), size)
    manifest = {"source": task.model.source, "arch": task.model.arch}
    if task.model.source == "train":
        model, manifest = load_or_train(task, model, lambda: D.load_split(spec, "train"),
                                        mean, std, progress)
    if task.is_lm:

        manifest = {**manifest, **tokenize.load_tokenizer(spec)[1],
                    "corpus": corpus.corpus_manifest(spec)}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    example = D.to_input(eval_split.x[:1], mean, std)
    q = task.quant
    space = build_space(model, example, q.layers, q.exclude, q.tie, q.weight_bits, q.act_bits)
    return Bench(task, model, space, eval_split, mean, std, manifest)


def _dot(a: torch.Tensor, b: torch.Tensor, rows: int = 8) -> float:
    """sum(a * b) without a tokens x vocab temporary: float32 dots over 8 rows at a time,
    summed in float64 (one dot over everything loses ~4 digits; this is 3x faster than the
    elementwise product and as precise to ~1e-7 per token)."""
    parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a.split(rows), b.split(rows))]
    return float(torch.stack(parts).double().sum()) if parts else 0.0


class Evaluator:
    """Measures configurations on the evaluation set against the full-precision model."""

    def __init__(self, bench: Bench, qm: QuantizedModel, batch_size: int,
                 split: D.Split | None = None):
        self.bench, self.qm, self.batch_size = bench, qm, batch_size
        self.split = split or bench.eval_split
        self.device = next(qm.model.parameters()).device
        x = self.split.x
        # Normalised inputs are kept when small (the bundled tasks); big sets convert per batch.
        self._inputs = D.to_input(x, bench.mean, bench.std) if x.numel() < 5e7 else None
        if self._inputs is not None:
            self._inputs = self._inputs.to(self.device).contiguous(
                memory_format=qm.memory_format)
        fp_model = (bench.model if self.device.type == "cpu" else
                    copy.deepcopy(bench.model).to(self.device))
        self._fp_model = fp_model
        # LM tasks score every token and keep their float reference per batch (_fp_probs).
        self.tokens = bench.task.is_lm
        self._probs: dict[int, tuple[torch.Tensor, float]] = {}
        self._keep_probs: bool | None = None
        self.fp_logprobs = torch.cat([F.log_softmax(fp_model(b), -1).cpu()
                                      for b in self._batches()]) \
            if len(x) and not self.tokens else None

    def _batches(self):
        x = self.split.x
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                yield (self._inputs[i:i + self.batch_size] if self._inputs is not None else
                       D.to_input(x[i:i + self.batch_size], self.bench.mean, self.bench.std)
                       .to(self.device).contiguous(memory_format=self.qm.memory_format))

    @functools.cached_property
    def fp_metrics(self) -> Metrics:
        if self.tokens:
            return self.token_metrics(self._fp_model)
        return self._metrics(self.fp_logprobs)

    def token_metrics(self, model: nn.Module) -> Metrics:
        """LM metrics streamed per batch: next-token accuracy, CE per token, KL per token."""
        y = self.split.y
        correct = nll = kl = 0.0
        count = 0
        for i, b in enumerate(self._batches()):
            yb = y[i * self.batch_size:(i + 1) * self.batch_size].reshape(-1)
            lq = F.log_softmax(model(b).float(), -1).cpu()
            p, neg_entropy = self._fp_probs(i, b)
            correct += float((lq.argmax(-1) == yb).sum())
            nll -= float(lq.gather(1, yb[:, None]).double().sum())
            # KL(p || q) = sum p log p - sum p log q; the first term is the same every time.
            kl += neg_entropy - _dot(p, lq)
            count += len(yb)
        return Metrics(correct / count, nll / count, max(kl / count, 0.0))

    def _fp_probs(self, i: int, batch) -> tuple[torch.Tensor, float]:
        """Float next-token probabilities of batch i and their sum of p log p.

        Kept while all of them (tokens x vocab) fit in 1 GiB, as for the bundled LM;
        otherwise recomputed per batch, which costs a second forward per evaluation.
        """
        if i in self._probs:
            return self._probs[i]
        lp = F.log_softmax(self._fp_model(batch).float(), -1).cpu()
        p = lp.exp()
        out = (p, _dot(p, lp))
        if self._keep_probs is None:
            self._keep_probs = self.split.y.numel() * lp.shape[-1] * 4 <= 2**30
        if self._keep_probs:
            self._probs[i] = out
        return out

    def _metrics(self, logprobs: torch.Tensor) -> Metrics:
        y = self.split.y
        acc = (logprobs.argmax(-1) == y).double().mean().item()
        loss = F.nll_loss(logprobs.double(), y).item()
        p = self.fp_logprobs.double()
        kl = (p.exp() * (p - logprobs.double())).sum(-1).mean().item()
        return Metrics(acc, loss, max(kl, 0.0))

    def evaluate(self, cfg: BitConfig) -> Metrics:
        """Accuracy, cross-entropy and KL to full precision of one configuration."""
        model = self.qm.apply(self.bench.space.layer_bits(self.bench.space.validate(cfg)))
        if self.tokens:
            return self.token_metrics(model)
        return self._metrics(torch.cat([F.log_softmax(model(b), -1).cpu()
                                        for b in self._batches()]))
