"""The quantizer that defines mqbench's ground truth: uniform fake quantization, PTQ.

Exact scheme (any change here is a change of every table: bump the tasks' versions).

* BatchNorm is folded into the conv that feeds it before anything is quantized
  (w' = w·γ/√(σ²+ε) per output channel, b' = (b−μ)·γ/√(σ²+ε) + β); the folded weight is
  what gets quantized, the bias stays in float. A conv whose output has other users than
  its BatchNorm is left unfolded (none in the shipped models).
* Weights: per output channel, symmetric, zero-point 0, all 2^b integer levels:
  q = clamp(round(w/s), −2^(b−1), 2^(b−1)−1), ŵ = q·s with s = c/2^(b−1), so −c is a level
  and +c clips to c−s. The clip c = α·max|w_channel| takes the α ∈ {0.01, 0.02, …, 1.00}
  minimising Σ(ŵ−w)² per channel ("mse"; the smallest such α on ties), or α = 1 ("max").
  round() is round-half-to-even (torch.round).
* Activations: the input of every quantized layer, per tensor, asymmetric affine with
  2^b levels: s = (hi−lo)/(2^b−1), z = clamp(round(−lo/s), 0, 2^b−1),
  x̂ = (clamp(round(x/s)+z, 0, 2^b−1) − z)·s (torch.fake_quantize_per_tensor_affine).
  [lo, hi] is [min(0, min x), max(0, max x)] over the calibration set ("minmax"), or that
  range scaled by the α ∈ {0.30, 0.32, …, 1.00} minimising the squared error on up to 2^18
  calibration values sampled per layer ("mse"). Calibration runs the full-precision (folded)
  model, so activation ranges do not depend on the other layers' bit-widths.
* Group-wise weights (LM tasks, `quant.group_size = g > 0`, as GPTQ/AWQ's defaults and
  AutoMixQ's Eq. 1): each output row is cut into groups of g consecutive input channels (a
  shorter last group if g does not divide the row); per group, asymmetric with 2^b levels:
  s = (hi−lo)/(2^b−1), z = clamp(round(−lo/s), 0, 2^b−1),
  ŵ = (clamp(round(w/s) + z, 0, 2^b−1) − z)·s, with [lo, hi] = α·[min w, max w] over the
  group; α = 1 ("max") or the α ∈ {0.01, …, 1.00} minimising the group's squared error
  ("mse"). Activations stay float in weight-only tasks (act_bits = [32]).
* Method (`quant.method`): "rtn" (the default) rounds every weight to its nearest grid
  value as above; "gptq" keeps the same grid (scales, clips, groups) and chooses grid values
  with GPTQ's column-wise error feedback against the float model's inputs to each layer
  (mqbench/quant/gptq.py says exactly what it reconstructs and how that differs from the
  paper's sequential variant).
* Bit-width 32 means "leave in float". Weights of each (layer, bit-width) are quantized once
  and swapped in per configuration, which is what makes evaluating a configuration cost
  about one forward pass.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.quant import gptq as G
from mqbench.task.spec import QUANT_METHODS

FP = 32  # bit-width meaning full precision
WEIGHT_ALPHAS = torch.linspace(0.01, 1.0, 100)
ACT_ALPHAS = torch.linspace(0.30, 1.0, 36)
ACT_SAMPLE = 1 << 18
# weight quantization methods, the tasks' own list: `rtn` rounds each weight to the nearest
# grid value; `gptq` places it on the same grid with GPTQ's error feedback (quant/gptq.py)
METHODS = QUANT_METHODS


# ---------------------------------------------------------------- weights
def weight_scale(w: torch.Tensor, bits: int, clip: str = "mse") -> torch.Tensor:
    """Per-output-channel scale s (shape [C_out]) for symmetric b-bit weights."""
    flat = w.detach().reshape(w.shape[0], -1).float()
    absmax = flat.abs().amax(dim=1).clamp_min(1e-12)
    half = 2 ** (bits - 1)
    if clip == "max":
        return absmax / half
    best_err = torch.full_like(absmax, float("inf"))
    best = absmax / half
    for alpha in WEIGHT_ALPHAS:
        s = alpha * absmax / half
        q = torch.clamp(torch.round(flat / s[:, None]), -half, half - 1) * s[:, None]
        err = (q - flat).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def group_params(g: torch.Tensor, bits: int, clip: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point of the asymmetric b-bit grid of g [groups, size]: the
    range alpha·[min, max] with alpha = 1 ("max") or the alpha minimising the row's squared
    error ("mse"; the smallest such alpha on ties)."""
    levels = 2**bits - 1
    lo, hi = g.amin(dim=1), g.amax(dim=1)

    def params(alpha):
        a_lo, a_hi = alpha * lo, alpha * hi
        s = ((a_hi - a_lo) / levels).clamp_min(1e-8)
        return s, torch.clamp(torch.round(-a_lo / s), 0, levels)

    if clip == "max":
        return params(1.0)
    best = best_err = None
    for alpha in WEIGHT_ALPHAS.tolist():
        s, z = params(alpha)
        err = (group_apply(g, bits, s, z) - g).pow(2).sum(dim=1)
        if best is None:
            best, best_err = (s, z), err
        else:
            better = err < best_err
            best = (torch.where(better, s, best[0]), torch.where(better, z, best[1]))
            best_err = torch.where(better, err, best_err)
    return best


def group_apply(g: torch.Tensor, bits: int, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Fake-quantize each row of g [groups, size] on the grid (s, z) of that row."""
    q = torch.clamp(torch.round(g / s[:, None]) + z[:, None], 0, 2**bits - 1)
    return (q - z[:, None]) * s[:, None]


def _group_fq(g: torch.Tensor, bits: int, clip: str) -> torch.Tensor:
    """Asymmetric fake quantization of each row of g [groups, size] (see the module doc)."""
    return group_apply(g, bits, *group_params(g, bits, clip))


def quantize_groups(w: torch.Tensor, bits: int, group_size: int,
                    clip: str = "max") -> torch.Tensor:
    """Group-wise asymmetric fake quantization of a 2-D weight along its input dimension."""
    if w.dim() != 2:
        raise MqbenchError(f"group-wise quantization needs a 2-D (Linear) weight, got shape "
                           f"{tuple(w.shape)}")
    flat = w.detach().float()
    out = torch.empty_like(flat)
    cols = flat.shape[1]
    full = cols // group_size * group_size
    if full:
        rows = flat[:, :full].reshape(-1, group_size)
        out[:, :full] = _group_fq(rows, bits, clip).view(flat.shape[0], full)
    if full < cols:  # ragged last group
        out[:, full:] = _group_fq(flat[:, full:], bits, clip)
    return out.to(w.dtype)


def quantize_weight(w: torch.Tensor, bits: int, clip: str = "mse",
                    group_size: int = 0) -> torch.Tensor:
    """Fake-quantized copy of a weight tensor (same shape and dtype); bits=32 returns w."""
    if bits >= FP:
        return w.detach().clone()
    if group_size > 0:
        return quantize_groups(w, bits, group_size, clip)
    half = 2 ** (bits - 1)
    s = weight_scale(w, bits, clip).view(-1, *([1] * (w.dim() - 1)))
    return (torch.clamp(torch.round(w.detach().float() / s), -half, half - 1) * s).to(w.dtype)


def gptq_weight(w: torch.Tensor, h: torch.Tensor, bits: int, clip: str = "mse",
                group_size: int = 0) -> torch.Tensor:
    """GPTQ-quantized copy of a weight (mqbench.quant.gptq) on the same grid as
    `quantize_weight`: per-channel scales from the original weight, or group ranges fixed at
    each group's first column; `h` is the layer's input Hessian over its weight columns."""
    if bits >= FP:
        return w.detach().clone()
    w2 = w.detach().reshape(w.shape[0], -1)
    if group_size > 0:
        if w.dim() != 2:
            raise MqbenchError(f"group-wise quantization needs a 2-D (Linear) weight, got "
                               f"shape {tuple(w.shape)}")
        params: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def grid(ahead, j):
            g0 = j // group_size * group_size
            if g0 == j:
                params[g0] = group_params(ahead[:, :group_size].float(), bits, clip)
            s, z = params[g0]
            return group_apply(ahead[:, :1].float(), bits, s, z)[:, 0].double()
    else:
        half = 2 ** (bits - 1)
        scale = weight_scale(w, bits, clip)

        def grid(ahead, j):  # in float32, as `quantize_weight`: the same grid, bit for bit
            q = torch.clamp(torch.round(ahead[:, 0].float() / scale), -half, half - 1) * scale
            return q.double()

    return G.quantize(w2, h, grid, group_size).reshape(w.shape).to(w.dtype)


# ---------------------------------------------------------------- activations
@dataclass(frozen=True)
class ActQuant:
    """Per-tensor affine activation quantizer parameters."""

    scale: float
    zero_point: int
    bits: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as torch.fake_quantize_per_tensor_affine (up to x/s vs x*(1/s)
        # rounding), written as one allocation plus in-place ops: 2x faster on CPU.
        return (x.div(self.scale).round_().add_(self.zero_point)
                .clamp_(0, 2**self.bits - 1).sub_(self.zero_point).mul_(self.scale))


def _act_params(lo: float, hi: float, bits: int) -> ActQuant:
    levels = 2**bits - 1
    scale = max((hi - lo) / levels, 1e-8)
    zp = int(min(max(round(-lo / scale), 0), levels))
    return ActQuant(scale, zp, bits)


def calibrate_act(lo: float, hi: float, sample: torch.Tensor, bits: int,
                  clip: str = "mse") -> ActQuant:
    """Choose the activation range for `bits` from the observed [lo, hi] and a value sample."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if clip == "minmax" or sample.numel() == 0:
        return _act_params(lo, hi, bits)
    best, best_err = None, float("inf")
    for alpha in ACT_ALPHAS.tolist():
        q = _act_params(alpha * lo, alpha * hi, bits)
        err = (q(sample) - sample).pow(2).sum().item()
        if err < best_err:
            best, best_err = q, err
    return best


# ---------------------------------------------------------------- model preparation
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Deep copy of `model` (eval mode) with every conv->BatchNorm pair folded into the conv."""
    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:
        raise MqbenchError(f"cannot fold BatchNorm: torch.fx could not trace the model "
                           f"({type(exc).__name__}); set quant.fold_bn = false") from None
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (not isinstance(src, torch.fx.Node) or src.op != "call_module"
                or not isinstance(modules.get(src.target), nn.Conv2d) or len(src.users) != 1):
            continue
        conv, bn = modules[src.target], modules[node.target]
        factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight.detach() * factor.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * factor + bn.bias.detach())
        parent, _, leaf = node.target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return model


def quantizable_layers(model: nn.Module, patterns=("*",), exclude=()) -> list[str]:
    """Names of Conv2d/Linear modules matching the patterns, in registration order."""
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
            and any(fnmatch.fnmatchcase(name, p) for p in patterns)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude)]


@dataclass(frozen=True)
class LayerBits:
    """Bit-widths for one module: weights and input activations (32 = float)."""

    w: int = FP
    a: int = FP


@dataclass
class QuantizedModel:
    """A folded model whose layers switch bit-widths in O(1): the fast evaluation path.

    Quantized weights for every (layer, bit-width) and activation quantizers for every
    (layer, activation bit-width) are computed once at preparation; `apply` only swaps
    tensors and quantizer references.
    """

    model: nn.Module
    layers: tuple[str, ...]
    weights: dict[tuple[str, int], nn.Parameter] = field(default_factory=dict)
    acts: dict[tuple[str, int], ActQuant] = field(default_factory=dict)
    active: dict[str, ActQuant | None] = field(default_factory=dict)
    last: dict = field(default_factory=dict)  # memo of the last quantized input tensor
    memory_format: torch.memory_format = torch.contiguous_format

    def apply(self, bits: Mapping[str, LayerBits]) -> nn.Module:
        """Set every layer's bit-widths (layers not named stay float); returns the model."""
        for name in bits:
            if name not in self.active:
                raise MqbenchError(f"configuration names layer {name!r}, which is not a "
                                   f"quantizable layer of this model")
        for name in self.layers:
            lb = bits.get(name, LayerBits())
            module = self.model.get_submodule(name)
            if (name, lb.w) not in self.weights or (lb.a < FP and (name, lb.a) not in self.acts):
                raise MqbenchError(f"layer {name!r}: bit-widths w={lb.w}, a={lb.a} were not "
                                   f"prepared; use the task's bit choices")
            module._parameters["weight"] = self.weights[(name, lb.w)]
            self.active[name] = self.acts[(name, lb.a)] if lb.a < FP else None
        return self.model


def prepare(model: nn.Module, layers: list[str], calibration: torch.Tensor,
            weight_bits, act_bits, weight_clip: str = "mse", act_clip: str = "mse",
            fold_bn: bool = True, seed: int = 0, batch_size: int = 256,
            device: torch.device | str = "cpu", group_size: int = 0,
            method: str = "rtn") -> QuantizedModel:
    """Fold, calibrate and pre-quantize `model` for the given bit choices (model untouched).

    `calibration` is a normalised float input batch; activation value samples are drawn
    with `seed` so the calibration is reproducible. `method = "gptq"` also accumulates each
    layer's input Hessian over the calibration set (the float model's inputs) for GPTQ.
    """
    if method not in METHODS:
        raise MqbenchError(f"quantization method {method!r}: choose one of "
                           f"{', '.join(METHODS)}")
    folded = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if method == "gptq":
        G.check_supported(folded, layers)
    for p in folded.parameters():
        p.requires_grad_(False)
    # channels_last makes oneDNN convolutions ~25% faster on CPU; results are unchanged
    # up to float summation order.
    fmt = torch.channels_last if any(isinstance(m, nn.Conv2d) for m in folded.modules()) \
        else torch.contiguous_format
    folded = folded.to(device, memory_format=fmt)
    qm = QuantizedModel(folded, tuple(layers), memory_format=fmt)
    stats: dict[str, list] = {name: [float("inf"), float("-inf"), []] for name in layers}
    gen = torch.Generator().manual_seed(seed)
    quant_acts = any(b < FP for b in act_bits)
    hessians = {n: G.HessianAccumulator(folded.get_submodule(n)) for n in layers} \
        if method == "gptq" else {}

    def observe(name):
        def hook(_module, args):
            if hessians:
                hessians[name].add(args[0])
            if not quant_acts:
                return
            x = args[0].detach().float().flatten()
            st = stats[name]
            st[0], st[1] = min(st[0], x.min().item()), max(st[1], x.max().item())
            k = min(x.numel(), ACT_SAMPLE // max(1, len(calibration) // batch_size + 1))
            # Indices from a CPU generator: the same sample on every device.
            st[2].append(x[torch.randint(x.numel(), (k,), generator=gen).to(x.device)].cpu())
        return hook

    if quant_acts or hessians:  # weight-only RTN needs no calibration pass
        handles = [folded.get_submodule(n).register_forward_pre_hook(observe(n))
                   for n in layers]
        with torch.inference_mode():
            for i in range(0, len(calibration), batch_size):
                folded(calibration[i:i + batch_size].to(device).contiguous(memory_format=fmt))
        for h in handles:
            h.remove()

    for name in layers:
        module = folded.get_submodule(name)
        fp = module.weight
        qm.weights[(name, FP)] = fp
        h = hessians[name].hessian() if hessians else None
        for b in weight_bits:
            if b < FP:
                w = (quantize_weight(fp, b, weight_clip, group_size) if h is None
                     else gptq_weight(fp, h, b, weight_clip, group_size))
                qm.weights[(name, b)] = nn.Parameter(
                    w.contiguous(memory_format=fmt) if w.dim() == 4 else w, requires_grad=False)
        lo, hi, samples = stats[name]
        sample = torch.cat(samples) if samples else torch.empty(0)
        for b in act_bits:
            if b < FP:
                qm.acts[(name, b)] = calibrate_act(lo, hi, sample, b, act_clip)
        qm.active[name] = None
        module.register_forward_pre_hook(_act_hook(qm.active, name, qm.last))
    return qm


def prepared_state(qm: QuantizedModel) -> dict:
    """What `prepare` computed, as plain tensors and numbers (for `torch.save`): the
    quantized weights of every (layer, bit-width) and the activation quantizers' parameters.
    The float weights are not included: `restore` takes them from the model."""
    return {"layers": list(qm.layers),
            "weights": {f"{n}|{b}": w.detach().cpu().contiguous()
                        for (n, b), w in qm.weights.items() if b < FP},
            "acts": {f"{n}|{b}": [q.scale, q.zero_point, q.bits] for (n, b), q in qm.acts.items()}}


def restore(model: nn.Module, state: dict, fold_bn: bool = True,
            device: torch.device | str = "cpu") -> QuantizedModel:
    """The `QuantizedModel` that `prepare` returned when it produced `state`, without
    recomputing anything: the same folding, memory format and hooks, the stored tensors."""
    folded = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    fmt = torch.channels_last if any(isinstance(m, nn.Conv2d) for m in folded.modules()) \
        else torch.contiguous_format
    folded = folded.to(device, memory_format=fmt)
    qm = QuantizedModel(folded, tuple(state["layers"]), memory_format=fmt)
    for name in qm.layers:
        module = folded.get_submodule(name)
        qm.weights[(name, FP)] = module.weight
        qm.active[name] = None
        module.register_forward_pre_hook(_act_hook(qm.active, name, qm.last))
    for key, w in state["weights"].items():
        name, b = key.rsplit("|", 1)
        w = w.to(device)
        qm.weights[(name, int(b))] = nn.Parameter(
            w.contiguous(memory_format=fmt) if w.dim() == 4 else w, requires_grad=False)
    for key, (scale, zp, bits) in state["acts"].items():
        name, b = key.rsplit("|", 1)
        qm.acts[(name, int(b))] = ActQuant(float(scale), int(zp), int(bits))
    return qm


def _act_hook(active: dict, name: str, last: dict):
    def hook(_module, args):
        q = active[name]
        if q is None:
            return None
        # A block input feeding both conv1 and the downsample conv is quantized once.
        if last.get("input") is not args[0] or last.get("q") is not q:
            last.update(input=args[0], q=q, out=q(args[0]))
        return (last["out"], *args[1:])
    return hook


def quantize(model: nn.Module, config: Mapping[str, LayerBits], calibration: torch.Tensor,
             weight_clip: str = "mse", act_clip: str = "mse", fold_bn: bool = True,
             seed: int = 0) -> nn.Module:
    """The one verb: a fake-quantized copy of `model` with per-module bit-widths by name."""
    names = quantizable_layers(model)
    unknown = [n for n in config if n not in names]
    if unknown:
        raise MqbenchError(f"configuration names {unknown[0]!r}, which is not a Conv2d/Linear "
                           f"module of the model")
    layers = list(config)
    qm = prepare(model, layers, calibration, sorted({c.w for c in config.values()}),
                 sorted({c.a for c in config.values()}), weight_clip, act_clip, fold_bn, seed)
    return qm.apply(config)
