"""AutoMixQ (arXiv AutoMixQ paper, Algorithm 1): 2/4-bit mixed precision searched globally.

Two parts, as in the paper:

1. **Mixed-precision protection inside a weight.** A *mixed* weight keeps a fraction f of its
   input channels at 4 bits and quantizes the rest at 2 bits (both group-wise, the task's
   quantizer; protected and unprotected channels are grouped separately, which is what makes
   the split hardware-friendly). Which channels are protected is one of four strategies:
   1 top & low activation, 2 top activation, 3 top & low weight magnitude, 4 top weight
   magnitude. "Activation" is our reading of the paper's "output activations": the mean |x|
   of each *input* channel of the linear layer on the calibration windows, i.e. the
   activation produced by the layer before, the statistic AWQ uses for the same purpose.
   Weight magnitude of a channel is mean |W[:, j]|. "Top & low" takes ceil(k/2) channels
   with the largest and floor(k/2) with the smallest score, k = round(f * in_features).
   A weight's options are therefore: 4 bits, 2 bits, or (strategy, f) at 2 + 2f bits.

2. **Automatic global search (Algorithm 1).** Start from q = every weight at 4 bits. Each
   cycle builds a search space M of N samples: each sample takes a parent (the current q or
   one of the E elites of the previous cycle), and perturbs n weights to a random option with
   fewer bits. Every sample is applied to the whole model and scored by
   L = CE + alpha * T^2 * KL(softmax(fp / T) || softmax(quantized / T)) on the auxiliary
   windows (validation split), alpha = 1, T = 2. The best sample becomes q, the next E are the
   elites. Cycles repeat while q's average bits (parameter-weighted) exceed the budget. One
   descending run serves every budget: the first q at or below each budget is recorded
   (the paper runs one search per budget; ours costs one search for all four).

Evaluating a configuration only swaps precomputed weight tensors (every (layer, option)
weight is quantized once), so it costs one forward pass on the auxiliary set. The search
checkpoints after every cycle and resumes exactly.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.progress import bar as progress_bar
from mqbench.quant.quantizer import quantize_groups
from mqbench.task import datasets as D

STRATEGIES = {1: "top & low activation", 2: "top activation", 3: "top & low weight",
              4: "top weight"}


@dataclass(frozen=True)
class Option:
    """One weight's treatment: uniform `bits`, or `strategy` protecting `fraction` at 4 bits."""

    bits: int = 4
    strategy: int = 0  # 0 = uniform
    fraction: float = 0.0

    @property
    def avg_bits(self) -> float:
        return float(self.bits) if not self.strategy else 2.0 + 2.0 * self.fraction

    @property
    def key(self) -> str:
        return f"w{self.bits}" if not self.strategy else f"s{self.strategy}@{self.fraction:g}"


def options(fractions) -> list[Option]:
    """Every option a weight can take, most bits first."""
    mixed = [Option(2, s, f) for f in fractions for s in STRATEGIES]
    return [Option(4), *sorted(mixed, key=lambda o: -o.avg_bits), Option(2)]


def protected_channels(scores: torch.Tensor, fraction: float, both_ends: bool) -> torch.Tensor:
    """Boolean mask over input channels: the top (and low) `fraction` by score."""
    n = scores.numel()
    k = min(max(int(round(fraction * n)), 1), n)
    order = torch.argsort(scores, descending=True, stable=True)
    top = (k + 1) // 2 if both_ends else k
    pick = torch.cat([order[:top], order[n - (k - top):]]) if k - top else order[:top]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pick] = True
    return mask


def mixed_weight(w: torch.Tensor, mask: torch.Tensor, group_size: int, clip: str) -> torch.Tensor:
    """Protected input channels (mask) at 4 bits, the rest at 2, each grouped separately."""
    out = torch.empty_like(w)
    g = group_size or w.shape[1]
    if mask.any():
        out[:, mask] = quantize_groups(w[:, mask], 4, g, clip)
    if (~mask).any():
        out[:, ~mask] = quantize_groups(w[:, ~mask], 2, g, clip)
    return out


def channel_stats(model: nn.Module, modules, calibration: torch.Tensor,
                  batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Mean |x| per input channel of each module's input over the calibration windows."""
    sums = {m: 0.0 for m in modules}
    counts = dict.fromkeys(modules, 0)

    def hook(name):
        def fn(_mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums[name] + x.abs().sum(0)
            counts[name] += x.shape[0]
        return fn

    handles = [model.get_submodule(m).register_forward_pre_hook(hook(m)) for m in modules]
    with torch.inference_mode():
        for i in range(0, len(calibration), batch_size):
            model(calibration[i:i + batch_size])
    for h in handles:
        h.remove()
    return {m: sums[m] / max(counts[m], 1) for m in modules}


class MixedModel:
    """A copy of the LM whose linears switch between precomputed option weights in O(1)."""

    def __init__(self, model: nn.Module, modules, opts: list[Option], act: dict,
                 group_size: int, clip: str):

        self.model = copy.deepcopy(model).eval()
        self.modules, self.opts = tuple(modules), opts
        self.memory_format = torch.contiguous_format
        self.weights: dict[tuple[str, str], nn.Parameter] = {}
        for m in modules:
            w = self.model.get_submodule(m).weight.detach()
            for o in opts:
                if not o.strategy:
                    q = quantize_groups(w, o.bits, group_size or w.shape[1], clip)
                else:
                    score = act[m] if o.strategy in (1, 2) else w.abs().mean(0)
                    mask = protected_channels(score, o.fraction, o.strategy in (1, 3))
                    q = mixed_weight(w, mask, group_size, clip)
                self.weights[(m, o.key)] = nn.Parameter(q, requires_grad=False)

    def apply(self, assignment: list[Option]) -> nn.Module:
        for m, o in zip(self.modules, assignment):
            self.model.get_submodule(m)._parameters["weight"] = self.weights[(m, o.key)]
        return self.model


def distill_loss(logits: torch.Tensor, fp_logits: torch.Tensor, y: torch.Tensor,
                 alpha: float, temperature: float) -> float:
    """CE(y, logits) + alpha * T^2 * KL(softmax(fp/T) || softmax(logits/T)), mean per token."""
    ce = F.cross_entropy(logits.float(), y, reduction="sum")
    lp = F.log_softmax(fp_logits.float() / temperature, -1)
    lq = F.log_softmax(logits.float() / temperature, -1)
    kl = (lp.exp() * (lp - lq)).sum()
    return float(ce + alpha * temperature**2 * kl)


@dataclass
class SearchState:
    """Everything a resumed search needs (JSON-serialisable)."""

    task: str
    q: list[str]  # option key per unit
    elites: list[list[str]] = field(default_factory=list)
    cycle: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    rng: dict = field(default_factory=dict)
    found: dict = field(default_factory=dict)  # budget -> {config, avg_bits, loss, cycle}
    history: list[dict] = field(default_factory=list)


class Search:
    """AutoMixQ's global search on one LM task (see the module docstring)."""

    def __init__(self, bench, progress: bool = True):
        task = bench.task
        if not task.is_lm:
            raise MqbenchError(f"AutoMixQ searches language-model tasks; {task.name} is not one "
                               f"(`mqbench tasks` lists them)")
        if len(bench.space.units) != len(bench.space.modules):
            raise MqbenchError("AutoMixQ needs one unit per linear (no quant.tie)")
        self.bench, self.task, self.spec = bench, task, task.automixq
        self.progress = progress
        self.opts = options(self.spec.fractions)
        self.by_key = {o.key: o for o in self.opts}
        self.params = np.asarray(bench.space.params, dtype=float)
        act = channel_stats(bench.model, bench.space.modules, bench.calibration(task.seed))
        q = task.quant
        self.mixed = MixedModel(bench.model, bench.space.modules, self.opts, act,
                                q.group_size, q.weight_clip)

        aux = D.load_split(task.data, "validation", self.spec.aux_samples, task.seed)
        self.aux_x, self.aux_y = aux.x, aux.y.reshape(-1)
        self.aux_fp = self._logits(bench.model)

    def _logits(self, model) -> torch.Tensor:
        bs = self.task.table.batch_size
        with torch.inference_mode():
            return torch.cat([model(self.aux_x[i:i + bs]) for i in range(0, len(self.aux_x), bs)])

    def avg_bits(self, keys: list[str]) -> float:
        bits = np.array([self.by_key[k].avg_bits for k in keys])
        return float((bits * self.params).sum() / self.params.sum())

    def loss(self, keys: list[str]) -> float:
        model = self.mixed.apply([self.by_key[k] for k in keys])
        total = distill_loss(self._logits(model), self.aux_fp, self.aux_y, self.spec.alpha,
                             self.spec.temperature)
        return total / len(self.aux_y)

    def _perturb(self, parent: list[str], rng: np.random.Generator) -> list[str] | None:
        child = list(parent)
        lowerable = [u for u, k in enumerate(child) if self.by_key[k].avg_bits > 2.0]
        if not lowerable:
            return None
        for u in rng.choice(lowerable, size=min(self.spec.step, len(lowerable)), replace=False):
            cur = self.by_key[child[u]].avg_bits
            lower = [o.key for o in self.opts if o.avg_bits < cur]
            child[u] = lower[rng.integers(len(lower))]
        return child

    def run(self, checkpoint: Path | None = None, resume: bool = False) -> SearchState:
        """Descend from all-4-bit until the lowest budget; returns the final state."""
        budgets = sorted(self.spec.budgets, reverse=True)
        state = _load(checkpoint, self.task) if resume else None
        rng = np.random.default_rng(self.task.seed)
        if state is None:
            state = SearchState(self.task.key, ["w4"] * len(self.params))
        elif state.rng:
            rng.bit_generator.state = state.rng
        t0 = time.perf_counter() - state.seconds
        bar = progress_bar(len(budgets), "automixq", self.progress, initial=len(state.found),
                           unit="budget")
        while (self.avg_bits(state.q) > budgets[-1] + 1e-9 and state.cycle < self.spec.max_cycles):
            parents = [state.q, *state.elites]
            samples = {}
            for i in range(self.spec.samples):
                child = self._perturb(parents[i % len(parents)], rng)
                if child is not None:
                    samples.setdefault(",".join(child), child)
            if not samples:
                break
            scored = sorted(((self.loss(c), c) for c in samples.values()),
                            key=lambda t: t[0])
            state.evaluations += len(scored)
            state.cycle += 1
            best_loss, state.q = scored[0]
            state.elites = [c for _, c in scored[1:1 + self.spec.elites]]
            avg = self.avg_bits(state.q)
            state.history.append({"cycle": state.cycle, "avg_bits": round(avg, 5),
                                  "loss": best_loss})
            for b in budgets:
                if avg <= b + 1e-9 and f"{b:g}" not in state.found:
                    state.found[f"{b:g}"] = {"config": list(state.q), "avg_bits": avg,
                                             "loss": best_loss, "cycle": state.cycle}
                    bar.update()
            bar.set_postfix(avg_bits=f"{avg:.3f}", loss=f"{best_loss:.3f}")
            state.rng = rng.bit_generator.state
            state.seconds = time.perf_counter() - t0
            if checkpoint is not None:
                _save(checkpoint, state)
        bar.close()
        state.seconds = time.perf_counter() - t0
        if checkpoint is not None:
            _save(checkpoint, state)
        return state


def _save(path: Path, state: SearchState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), default=int))
    os.replace(tmp, path)  # atomic: a kill never leaves half a checkpoint


def _load(path: Path | None, task) -> SearchState | None:
    if path is None or not path.exists():
        return None
    try:
        state = SearchState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise MqbenchError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it "
                           f"to start over or pass another --checkpoint") from None
    if state.task != task.key:
        raise MqbenchError(f"checkpoint {path} belongs to task {state.task}, not {task.key}; "
                           f"pass another --checkpoint")
    return state
