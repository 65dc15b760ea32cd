"""Cached statistics of a task's model: the read-only context every proxy receives.

Everything is measured on the BatchNorm-folded model in eval mode (the weights that are
actually quantized), on a calibration batch of `harness.calibration_batch` training samples
(16 by default, as TAP; never the held-out validation samples of a protocol-2 task) drawn
with the batch seed (the task seed unless given: the harness also scores every proxy on
further batches, to report its variance). Groups are computed lazily on first access and
cached on disk under `cache_dir()/stats/<task>-v<version>/<group>.pt` (another batch:
`.../batch-<seed>/`; groups that read no data are shared), so a proxy that only reads
weights never pays for a Hessian, and a second proxy pays for nothing.

Per-module dicts are keyed by module name (`Stats.modules`); `Stats.units` groups tied modules.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mqbench.errors import MqbenchError
from mqbench.paths import cache_dir
from mqbench.quant.quantizer import FP, fold_batchnorm
from mqbench.task import datasets as D

HUTCHINSON_PROBES = 128
POWER_ITERATIONS = 30
# Where Hessians are taken: "folded" (the BatchNorm-folded weights that are quantized; the
# default) or "unfolded" (the conv weights of the model with its BatchNorm layers, in eval
# mode, as HAWQ's and PyHessian's reference code does). The two differ per output channel by
# (gamma / sigma)^2, so the layer ranking can change.
HESSIAN_BN = ("folded", "unfolded")


def _hvp_setup(model: nn.Module, modules, x, y):
    params = [model.get_submodule(m).weight for m in modules]
    for p in params:
        p.requires_grad_(True)
    loss = F.cross_entropy(model(x), y.reshape(-1))  # LM tasks: per token
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return params, grads


def hessian_trace(model: nn.Module, modules, x, y, probes: int = HUTCHINSON_PROBES,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-module Hutchinson estimate of Tr(H_ll) and its standard error.

    Each module gets its own Rademacher probes v_l and Hessian-vector products H_ll v_l
    (probes x modules HVPs). One shared HVP per probe would also be unbiased, since the
    cross-block terms v_l^T H_lm v_m have zero mean, but they add sum_{m!=l} ||H_lm||_F^2 to
    the variance: on the tiny digits ResNet that made the SE 20-50x larger at equal probe
    count. A fixed probe count (no early stop) keeps the estimate's noise known: we report
    its SE.
    """
    params, grads = _hvp_setup(model, modules, x, y)
    gen = torch.Generator().manual_seed(seed)
    samples = np.zeros((probes, len(params)))
    for i, (p, g) in enumerate(zip(params, grads)):
        for k in range(probes):
            v = (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype)
            hv = torch.autograd.grad(g, p, grad_outputs=v, retain_graph=True)[0]
            samples[k, i] = float((hv * v).sum())
    for p in params:
        p.requires_grad_(False)
    return samples.mean(0), samples.std(0, ddof=1) / np.sqrt(probes)


def hessian_top_eig(model: nn.Module, modules, x, y, iters: int = POWER_ITERATIONS,
                    seed: int = 0) -> np.ndarray:
    """Per-module top eigenvalue of the diagonal Hessian block H_ll by power iteration."""
    params, grads = _hvp_setup(model, modules, x, y)
    gen = torch.Generator().manual_seed(seed)
    out = np.zeros(len(params))
    for i, p in enumerate(params):
        v = torch.randn(p.shape, generator=gen)
        v /= v.norm()
        eig = 0.0
        for _ in range(iters):
            hv = torch.autograd.grad(grads[i], p, grad_outputs=v, retain_graph=True)[0]
            eig = float((hv * v).sum())  # Rayleigh quotient, v has unit norm
            norm = hv.norm()
            if norm == 0:
                break
            v = hv / norm
        out[i] = eig
    for p in params:
        p.requires_grad_(False)
    return out


# the cached groups' file names (Stats._cached), so a caller can tell minutes from a load;
# "-v3"/"-v2" suffixes: the calibration batch left the held-out validation samples
HESSIAN_GROUP = "hessian-v3"  # v2: per-module probes; v3: the batch leaves validation
STAT_GROUPS = ("basic", "activations-v2", "gradients-v2", HESSIAN_GROUP, "data_free-v2")
# groups that read no calibration data: one file serves every batch seed
DATA_FREE_GROUPS = ("basic", "data_free-v2")


def all_cached(stats: Stats) -> bool:
    """Every statistics group of `stats` is on disk already (computing them is a load)."""
    return all(stats.path(g).exists() for g in STAT_GROUPS)


class Stats:
    """Read-only statistics of one task's model. Attributes are computed lazily and cached.

    Attributes (per-module dicts keyed by module name unless stated):
        units, modules, unit_of: the task's configuration space (see mqbench.quant.space).
        weight_bits, act_bits: the task's bit choices.
        params, macs: np.ndarray per module. depth: np.ndarray, the module's position
            (0 = first) in model order; num_layers: how many modules there are.
        weights: float (folded) weights.  perturbation: np.ndarray [module, weight bit]
            of ||Q_b(W) - W||^2 with the task's quantizer.
        inputs, outputs: the module's input and output on the calibration batch.
        logits, labels: the model's logits and the batch labels.
        grads: dL/dW of the mean cross-entropy on the calibration batch.
        hessian_trace, hessian_trace_se: np.ndarray per module (Hutchinson).
        hessian_eig: np.ndarray per module, top eigenvalue of the Hessian block.
        virtual_grads: dW of the summed logits for an all-ones input (EMQ's "virtual grad").
        synflow: |W * dR/dW| with R the summed output of the |W| network on an all-ones input.
    """

    def __init__(self, bench, folder: Path | None = None, batch_seed: int | None = None,
                 hessian_bn: str = "folded"):
        if hessian_bn not in HESSIAN_BN:
            raise MqbenchError(f"hessian_bn = {hessian_bn!r}: choose one of "
                               f"{', '.join(HESSIAN_BN)}")
        self._bench = bench
        self.task = bench.task
        self.batch_seed = self.task.seed if batch_seed is None else int(batch_seed)
        self.hessian_bn = hessian_bn
        space = bench.space
        self.units, self.modules, self.unit_of = space.units, space.modules, space.unit_of
        self.weight_bits, self.act_bits = space.weight_bits, space.act_bits
        self.params = np.asarray(space.params, dtype=np.int64)
        self.macs = np.asarray(space.macs, dtype=np.int64)
        self.depth = np.arange(len(self.modules))
        self.num_layers = len(self.modules)
        self.shared_folder = folder or cache_dir() / "stats" / self.task.key
        self.folder = (self.shared_folder if self.batch_seed == self.task.seed
                       else self.shared_folder / f"batch-{self.batch_seed}")

    # ------------------------------------------------------------------ plumbing
    def path(self, group: str) -> Path:
        """Where statistics group `group` of this batch is cached."""
        folder = self.shared_folder if group in DATA_FREE_GROUPS else self.folder
        if group == HESSIAN_GROUP and self.hessian_bn != "folded":
            group = f"{group}-bn-{self.hessian_bn}"
        return folder / f"{group}.pt"

    def _cached(self, group: str, compute):
        path = self.path(group)
        if path.exists():
            return torch.load(path, weights_only=False)
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(value, tmp)
        os.replace(tmp, path)  # atomic: concurrent builders never see half a file
        return value

    def _model(self) -> nn.Module:
        """A fresh folded float copy of the model: gradients never touch the task's model."""
        model = (fold_batchnorm(self._bench.model) if self.task.quant.fold_bn
                 else copy.deepcopy(self._bench.model))
        return model.eval()

    def _batch(self):
        split = self._bench.calibration_split(self.batch_seed, self.task.harness.calibration_batch)
        return D.to_input(split.x, self._bench.mean, self._bench.std), split.y

    # ------------------------------------------------------------------ groups
    @functools.cached_property
    def _basic(self) -> dict:
        def compute():
            qm = self._bench.prepared(self.task.seed)
            weights = {m: qm.weights[(m, FP)].detach().clone().contiguous() for m in self.modules}
            pert = np.array([[float((qm.weights[(m, b)].detach() - weights[m]).pow(2).sum())
                              for b in self.weight_bits] for m in self.modules])
            return {"weights": weights, "perturbation": pert}
        return self._cached("basic", compute)

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self._basic["weights"]

    @property
    def perturbation(self) -> np.ndarray:
        return self._basic["perturbation"]

    @functools.cached_property
    def _acts(self) -> dict:
        def compute():
            model, (x, y) = self._model(), self._batch()
            inputs, outputs = {}, {}

            def hook(name):
                def fn(_m, args, out):
                    inputs[name] = args[0].detach().clone()
                    outputs[name] = out.detach().clone()
                return fn
            hs = [model.get_submodule(m).register_forward_hook(hook(m)) for m in self.modules]
            with torch.no_grad():
                logits = model(x)
            for h in hs:
                h.remove()
            return {"inputs": inputs, "outputs": outputs, "logits": logits, "labels": y}
        return self._cached("activations-v2", compute)

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self._acts["inputs"]

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return self._acts["outputs"]

    @property
    def logits(self) -> torch.Tensor:
        return self._acts["logits"]

    @property
    def labels(self) -> torch.Tensor:
        return self._acts["labels"]

    @functools.cached_property
    def grads(self) -> dict[str, torch.Tensor]:
        def compute():
            model, (x, y) = self._model(), self._batch()
            params = [model.get_submodule(m).weight for m in self.modules]
            for p in params:
                p.requires_grad_(True)
            g = torch.autograd.grad(F.cross_entropy(model(x), y.reshape(-1)), params)
            return {m: t.detach() for m, t in zip(self.modules, g)}
        return self._cached("gradients-v2", compute)

    @functools.cached_property
    def _hessian(self) -> dict:
        def compute():
            model = (self._model() if self.hessian_bn == "folded"
                     else copy.deepcopy(self._bench.model).eval())
            x, y = self._batch()
            # Fused CPU attention kernels have no double backward; the math kernel does.
            with sdpa_kernel([SDPBackend.MATH]):
                tr, se = hessian_trace(model, self.modules, x, y, seed=self.batch_seed)
                eig = hessian_top_eig(model, self.modules, x, y, seed=self.batch_seed)
            return {"trace": tr, "trace_se": se, "eig": eig, "probes": HUTCHINSON_PROBES,
                    "bn": self.hessian_bn}
        return self._cached(HESSIAN_GROUP, compute)

    @property
    def hessian_trace(self) -> np.ndarray:
        return self._hessian["trace"]

    @property
    def hessian_trace_se(self) -> np.ndarray:
        return self._hessian["trace_se"]

    @property
    def hessian_eig(self) -> np.ndarray:
        return self._hessian["eig"]

    @functools.cached_property
    def _data_free(self) -> dict:
        def compute():
            x = torch.ones(1, *self._bench.eval_split.x.shape[1:])  # shape only: no data load
            model = self._model()
            params = [model.get_submodule(m).weight for m in self.modules]
            for p in params:
                p.requires_grad_(True)
            virtual = torch.autograd.grad(model(x).sum(), params)
            # SynFlow: linearise by taking |W| everywhere, R = sum of outputs on all-ones.
            # In float64 like the SynFlow reference code: R grows like the product of the
            # layers' |W| norms and can overflow float32 on deep networks.
            model = model.double()
            with torch.no_grad():
                for p in model.parameters():
                    p.abs_()
            syn = torch.autograd.grad(model(x.double()).sum(), params)
            return {"virtual": {m: g.detach() for m, g in zip(self.modules, virtual)},
                    "synflow": {m: (g * p).abs().detach()
                                for m, g, p in zip(self.modules, syn, params)}}
        return self._cached("data_free-v2", compute)  # v2: SynFlow in float64

    @property
    def virtual_grads(self) -> dict[str, torch.Tensor]:
        return self._data_free["virtual"]

    @property
    def synflow(self) -> dict[str, torch.Tensor]:
        return self._data_free["synflow"]

    def compute_all(self) -> None:
        """Force every group (what `mqbench stats` does once per task)."""
        _ = (self._basic, self._acts, self.grads, self._hessian, self._data_free)
