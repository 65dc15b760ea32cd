"""A task made ready to run: data loaded, model trained or loaded, space and evaluator built.

`open_bench(task)` is the single entry point the table builder, the proxy harness and the
CLI share; `Evaluator.evaluate(cfg)` measures one bit configuration.

Protocol-2 tasks also get a validation (search) split beside the test split, with the index
sets recorded in `Bench.splits`; `bench.evaluator(seed, split="val")` measures on it.
Their evaluators reduce per-sample statistics (so the two halves of the test set come for
free with every measurement) and run prefix-shared (`mqbench.truth.prefix`) where they can.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.paths import atomic_path, cache_dir
from mqbench.provenance import PACKAGE_VERSION
from mqbench.quant.quantizer import FP, QuantizedModel, prepare, prepared_state, restore
from mqbench.quant.space import BitConfig, Space, build_space
from mqbench.task import datasets as D
from mqbench.task.models import build_model
from mqbench.task.spec import Task
from mqbench.task.text import corpus, tokenize
from mqbench.task.text.model import load_hf, tiny_llama
from mqbench.task.train import load_or_train
from mqbench.truth.prefix import PrefixRunner
from mqbench.truth.splits import Splits, protocol2_splits

PREFIX_CACHE_BYTES = 512 << 20  # activations a prefix-shared evaluation may keep cached


@dataclass(frozen=True)
class Metrics:
    """Ground truth of one configuration on the evaluation set."""

    acc: float  # top-1 accuracy in [0, 1] (LM tasks: next-token accuracy)
    loss: float  # mean cross-entropy (LM tasks: per token; perplexity = exp(loss))
    kl: float  # mean KL(full-precision || quantized) of the predictive distributions


@dataclass(frozen=True)
class Measured:
    """Protocol 2: one configuration on the whole evaluation set and on its two halves."""

    full: Metrics
    halves: tuple[Metrics, Metrics] | None = None


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


# the quantizer's code, hashed into the preparation cache key: an edited quantizer never
# loads tensors an older one prepared
_QUANT_SOURCE = hashlib.sha256(b"".join(
    f.read_bytes() for f in sorted((Path(__file__).parents[1] / "quant").glob("*.py"))
)).hexdigest()[:16]


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
    val_split: D.Split | None = None  # protocol 2: the validation (search) samples
    splits: Splits | None = None  # protocol 2: which samples each set holds
    _prepared: dict[int, QuantizedModel] = field(default_factory=dict)

    def calibration_split(self, seed: int, n: int | None = None) -> D.Split:
        """Calibration samples (inputs and labels) drawn from the training split with `seed`."""
        n = n or self.task.data.calibration_samples
        if self.splits is None:
            return D.load_split(self.task.data, "train", n, seed)
        # protocol 2: never from the held-out validation samples
        return D.load_indexed(self.task.data, "train",
                              lambda total: self.splits.calibration(n, seed, total))

    def calibration(self, seed: int, n: int | None = None) -> torch.Tensor:
        """Normalised calibration inputs drawn from the training split with `seed`."""
        split = self.calibration_split(seed, n)
        return D.to_input(split.x, self.mean, self.std)

    def prepared(self, cal_seed: int) -> QuantizedModel:
        """The pre-quantized model calibrated with calibration seed `cal_seed`: memoised,
        and cached on disk (`prepared_path`), so the workers of a build and later runs
        load it instead of calibrating (and, for GPTQ, reconstructing) again."""
        if cal_seed not in self._prepared:
            q, dev = self.task.quant, eval_device()
            path = self.prepared_path(cal_seed)
            if path.exists():
                state = torch.load(path, weights_only=True)
                self._prepared[cal_seed] = restore(self.model, state, q.fold_bn, dev)
            else:
                qm = prepare(self.model, list(self.space.modules), self.calibration(cal_seed),
                             q.weight_bits, q.act_bits, q.weight_clip, q.act_clip, q.fold_bn,
                             cal_seed, device=dev, group_size=q.group_size, method=q.method)
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:  # concurrent workers: one complete file wins
                    torch.save(prepared_state(qm), tmp)
                self._prepared[cal_seed] = qm
        return self._prepared[cal_seed]

    def prepared_path(self, cal_seed: int) -> Path:
        """Where `prepared(cal_seed)` is cached: keyed by the task version and method, the
        quantizer settings, the weights' checksum, the seed, the device type, the mqbench
        and torch versions and the quantizer's source (any of them changes the tensors)."""
        key = json.dumps([self.task.key, repr(self.task.quant), self.weights_manifest.get(
            "checksum", self.weights_manifest), cal_seed, eval_device().type, PACKAGE_VERSION,
            _QUANT_SOURCE, torch.__version__], sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cache_dir() / "prepared" / self.task.key / f"seed-{cal_seed}-{digest}.pt"

    def evaluator(self, cal_seed: int, batch_size: int | None = None,
                  split: str = "test") -> Evaluator:
        """Measures configurations calibrated with `cal_seed` on the test split, or (protocol
        2) on the validation split with split="val": what searches and tuning must use."""
        batch_size = batch_size or self.task.table.batch_size
        if split not in ("test", "val"):
            raise MqbenchError(f"evaluator split {split!r}: choose 'test' or 'val'")
        if self.splits is not None:
            if split == "val":
                return Evaluator(self, self.prepared(cal_seed), batch_size, self.val_split)
            return Evaluator(self, self.prepared(cal_seed), batch_size,
                             halves=self.splits.halves)
        if split == "val":
            raise MqbenchError(f"task {self.task.name} has no validation split (protocol 1); "
                               f"set table.protocol = 2 with data.val_split in its task file")
        split = None
        if self.task.is_lm and cal_seed != self.task.seed:
            # Weight-only quantization has no calibration randomness: an LM table's noise
            # rows re-measure on another seeded draw of evaluation windows instead.
            spec = self.task.data
            split = D.load_split(spec, spec.eval_split, spec.eval_samples, cal_seed)
        return Evaluator(self, self.prepared(cal_seed), batch_size, split)


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
    val_split = splits = None
    if task.table.protocol == 2:
        eval_split, val_split, splits = protocol2_splits(task)
    else:
        eval_split = D.load_split(spec, spec.eval_split, spec.eval_samples, task.seed)
    mean, std = D.normalization(spec)
    in_chans, size = eval_split.x.shape[1], eval_split.x.shape[-1]
    model = seeded_model(task, in_chans, D.num_classes(spec), size)
    manifest = {"source": task.model.source, "arch": task.model.arch}
    if task.model.source == "train":
        train = None if splits is None else splits.train
        model, manifest = load_or_train(
            task, model, lambda: D.load_indexed(spec, "train", lambda total: train),
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
    return Bench(task, model, space, eval_split, mean, std, manifest, val_split, splits)


def _dot(a: torch.Tensor, b: torch.Tensor, rows: int = 8) -> float:
    """sum(a * b) without a tokens x vocab temporary: float32 dots over 8 rows at a time,
    summed in float64 (one dot over everything loses ~4 digits; this is 3x faster than the
    elementwise product and as precise to ~1e-7 per token)."""
    parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a.split(rows), b.split(rows))]
    return float(torch.stack(parts).double().sum()) if parts else 0.0


class Evaluator:
    """Measures configurations on the evaluation set against the full-precision model."""

    def __init__(self, bench: Bench, qm: QuantizedModel, batch_size: int,
                 split: D.Split | None = None,
                 halves: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.bench, self.qm, self.batch_size = bench, qm, batch_size
        self.split = split or bench.eval_split
        self.halves = halves  # protocol 2: positions of the two halves of the test set
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
        self.protocol = bench.task.table.protocol
        self.cache_bytes = PREFIX_CACHE_BYTES  # budget of prefix-shared evaluation
        self._lp: dict[int, torch.Tensor] = {}  # protocol 2, LM: float log-probs per batch
        self.runner = self._prefix_runner() if self.protocol == 2 else None

    def _batch(self, i: int) -> torch.Tensor:
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        if self._inputs is not None:
            return self._inputs[lo:hi]
        return (D.to_input(self.split.x[lo:hi], self.bench.mean, self.bench.std)
                .to(self.device).contiguous(memory_format=self.qm.memory_format))

    @property
    def _n_batches(self) -> int:
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def _batches(self):
        with torch.inference_mode():
            for i in range(self._n_batches):
                yield self._batch(i)
    @functools.cached_property
    def fp_metrics(self) -> Metrics:
        if self.protocol == 2:
            return self.measure([self.bench.space.uniform(FP, FP)])[0].full
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
        if self.protocol == 2:  # the same numbers as the table's rows
            return self.measure([cfg])[0].full
        model = self.qm.apply(self.bench.space.layer_bits(self.bench.space.validate(cfg)))
        if self.tokens:
            return self.token_metrics(model)
        return self._metrics(torch.cat([F.log_softmax(model(b), -1).cpu()
                                        for b in self._batches()]))

    # ------------------------------------------------------------ protocol 2
    def _prefix_runner(self) -> PrefixRunner | None:
        """Prefix sharing where the model is a chain that reproduces its own forward."""
        space = self.bench.space
        if self.tokens or not len(self.split):
            return None
        runner = PrefixRunner.build(self.qm.model, space,
                                    lambda cfg: self.qm.apply(space.layer_bits(cfg)))
        if runner is None:
            return None
        batch = self._batch(0)
        # checked with every layer quantized, so the activation quantizers are exercised too
        self.qm.apply(space.layer_bits(space.uniform(space.weight_bits[0])))
        if not runner.check(self.qm.model, batch):
            return None
        self._sample_bytes = runner.boundary_bytes(batch)
        return runner

    def measure(self, cfgs: Sequence[BitConfig], prefix: bool = True) -> list[Measured]:
        """Metrics of each configuration on the whole set and (test split) on its halves.

        Configurations are evaluated prefix-shared when the model allows it (in key order,
        the images streamed in chunks that keep the cached activations within
        `cache_bytes`); `prefix=False` evaluates each alone. Both give the same per-sample
        statistics, reduced the same way, so the same numbers.
        """
        space = self.bench.space
        cfgs = [space.validate(c) for c in cfgs]
        stats = np.zeros((len(cfgs), 3, len(self.split)))
        nb = self._n_batches
        if self.runner is None or not prefix:
            for j, cfg in enumerate(cfgs):
                model = self.qm.apply(space.layer_bits(cfg))
                for i in range(nb):
                    with torch.inference_mode():
                        self._fill(stats[j], i, model(self._batch(i)))
        else:
            order = sorted(range(len(cfgs)), key=lambda j: self.runner.key(cfgs[j]))
            per_chunk = max(1, self.cache_bytes // (self._sample_bytes * self.batch_size))
            for c0 in range(0, nb, per_chunk):
                ids = range(c0, min(nb, c0 + per_chunk))
                batches = [self._batch(i) for i in ids]
                for k, outs in self.runner.run([cfgs[j] for j in order], batches):
                    for i, out in zip(ids, outs):
                        self._fill(stats[order[k]], i, out)
        return [Measured(self._reduce(st), None if self.halves is None else
                         (self._reduce(st, self.halves[0]), self._reduce(st, self.halves[1])))
                for st in stats]

    def _fill(self, st: np.ndarray, i: int, out: torch.Tensor) -> None:
        """Per-sample correct / cross-entropy / KL of batch i (LM: summed per window)."""
        lo = i * self.batch_size
        y = self.split.y[lo:lo + self.batch_size]
        if self.tokens:
            lq = F.log_softmax(out.float(), -1).cpu()
            lp = self._fp_lp(i)
            windows, yb = y.shape[0], y.reshape(-1)
            st[0, lo:lo + windows] = (lq.argmax(-1) == yb).view(windows, -1).sum(-1).numpy()
            st[1, lo:lo + windows] = -lq.gather(1, yb[:, None])[:, 0].double() \
                .view(windows, -1).sum(-1).numpy()
            st[2, lo:lo + windows] = (lp.exp() * (lp - lq)).sum(-1).double() \
                .view(windows, -1).sum(-1).numpy()
            return
        lq = F.log_softmax(out, -1).cpu()
        p = self.fp_logprobs[lo:lo + len(lq)].double()
        st[0, lo:lo + len(lq)] = (lq.argmax(-1) == y).numpy()
        st[1, lo:lo + len(lq)] = -lq.gather(1, y[:, None])[:, 0].double().numpy()
        st[2, lo:lo + len(lq)] = (p.exp() * (p - lq.double())).sum(-1).numpy()

    def _fp_lp(self, i: int) -> torch.Tensor:
        """Float next-token log-probabilities of batch i (kept while they fit in 1 GiB)."""
        if i in self._lp:
            return self._lp[i]
        with torch.inference_mode():
            lp = F.log_softmax(self._fp_model(self._batch(i)).float(), -1).cpu()
        if self.split.y.numel() * lp.shape[-1] * 4 <= 2**30:
            self._lp[i] = lp
        return lp

    def _reduce(self, st: np.ndarray, idx: torch.Tensor | None = None) -> Metrics:
        v = st if idx is None else st[:, idx.numpy()]
        count = v.shape[1] * (self.split.y[0].numel() if self.tokens else 1)
        acc, loss, kl = (float(np.sum(v[k])) / count for k in range(3))
        return Metrics(acc, loss, max(kl, 0.0))
