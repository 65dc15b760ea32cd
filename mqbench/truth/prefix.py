"""Prefix-shared evaluation: configurations that agree on their first units share those units'
activations instead of recomputing them.

A model that is a chain of stages (the project's ResNets and torchvision's, cut inside each
basic block after its first conv; timm ViTs cut into embedding, attention halves, the MLP's
fc1 and fc2 parts and head) is run stage by stage. Configurations
are sorted by their bits stage by stage, so those sharing a prefix are consecutive; the output
of every stage boundary is cached for the current prefix (one tensor per batch, bounded by a
memory budget: the evaluator streams the images through in chunks), and each configuration
recomputes only the stages after the prefix it shares with the one before. Every batch goes
through exactly the operations a full forward would run, so outputs are bit-identical to
evaluating the configuration alone; `PrefixRunner.check` verifies that on one batch and
the evaluator falls back to plain forwards for models that are not a chain we know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mqbench.quant.space import BitConfig, Space
from mqbench.task.models import SmallResNet


@dataclass(frozen=True)
class Stage:
    """One link of the chain: the module-name prefixes it runs and the function it applies."""

    prefixes: tuple[str, ...]
    fn: Callable[[torch.Tensor], torch.Tensor]


def _block_in(b: nn.Module):
    return lambda x: (x, b.relu(b.bn1(b.conv1(x))))


def _block_out(b: nn.Module):
    def out(s):
        x, h = s
        identity = x if b.downsample is None else b.downsample(x)
        return b.relu(b.bn2(b.conv2(h)) + identity)
    return out


def _blocks(m: nn.Module, stages: tuple[str, ...]) -> list[Stage]:
    """Residual stages block by block; a basic block (ours or torchvision's) is cut after
    its first conv (the boundary carries the block input for the shortcut)."""
    out = []
    for name in stages:
        for i, b in enumerate(getattr(m, name)):
            p = f"{name}.{i}"
            if type(b).__name__ == "BasicBlock":
                out += [Stage((f"{p}.conv1", f"{p}.bn1"), _block_in(b)),
                        Stage((f"{p}.conv2", f"{p}.bn2", f"{p}.downsample"), _block_out(b))]
            else:
                out.append(Stage((p,), b))
    return out


def _small_resnet(m: SmallResNet) -> list[Stage]:
    stages = [Stage(("conv1", "bn1"), lambda x: m.relu(m.bn1(m.conv1(x))))]
    stages += _blocks(m, ("layer1", "layer2", "layer3"))
    return stages + [Stage(("fc",), lambda x: m.fc(torch.flatten(
        F.adaptive_avg_pool2d(x, 1), 1)))]


def _torchvision_resnet(m: nn.Module) -> list[Stage]:
    stages = [Stage(("conv1", "bn1"), lambda x: m.maxpool(m.relu(m.bn1(m.conv1(x)))))]
    stages += _blocks(m, ("layer1", "layer2", "layer3", "layer4"))
    return stages + [Stage(("fc",), lambda x: m.fc(torch.flatten(m.avgpool(x), 1)))]


def _attention_half(b: nn.Module):
    return lambda x: x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))


def _mlp_half(b: nn.Module):
    return lambda x: x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


def _mlp_in(b: nn.Module):
    m = b.mlp
    return lambda x: (x, m.drop1(m.act(m.fc1(b.norm2(x)))))


def _mlp_out(b: nn.Module):
    m = b.mlp
    return lambda s: s[0] + b.drop_path2(b.ls2(m.drop2(m.fc2(m.norm(s[1])))))


def _mlp_stages(i: int, b: nn.Module) -> list[Stage]:
    """timm's plain Mlp is cut between fc1 and fc2 (the boundary carries the residual
    stream and the hidden activations); other MLPs stay one stage."""
    if type(b.mlp).__name__ != "Mlp":
        return [Stage((f"blocks.{i}.norm2", f"blocks.{i}.mlp", f"blocks.{i}.ls2"),
                      _mlp_half(b))]
    return [Stage((f"blocks.{i}.norm2", f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.act"),
                  _mlp_in(b)),
            Stage((f"blocks.{i}.mlp.fc2", f"blocks.{i}.mlp.norm", f"blocks.{i}.ls2"),
                  _mlp_out(b))]


def _timm_vit(m: nn.Module) -> list[Stage] | None:
    if any(type(b).__name__ != "Block" for b in m.blocks):
        return None  # other block layouts (post-norm, parallel) are not two residual halves
    stages = [Stage(("patch_embed", "norm_pre"),
                    lambda x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))))]
    for i, b in enumerate(m.blocks):
        stages += [Stage((f"blocks.{i}.norm1", f"blocks.{i}.attn", f"blocks.{i}.ls1"),
                         _attention_half(b)), *_mlp_stages(i, b)]
    return stages + [Stage(("norm", "attn_pool", "fc_norm", "head"),
                           lambda x: m.forward_head(m.norm(x)))]


def chain(model: nn.Module) -> list[Stage] | None:
    """The model as a chain of stages, or None when it is not a chain this module knows."""
    kind = type(model)
    if isinstance(model, SmallResNet):
        return _small_resnet(model)
    if kind.__name__ == "ResNet" and kind.__module__.startswith("torchvision"):
        return _torchvision_resnet(model)
    if kind.__name__ == "VisionTransformer" and kind.__module__.startswith("timm"):
        return _timm_vit(model)
    return None


def _stage_of(name: str, stages: Sequence[Stage]) -> int | None:
    for s, stage in enumerate(stages):
        if any(name == p or name.startswith(p + ".") for p in stage.prefixes):
            return s
    return None


class PrefixRunner:
    """Runs sorted configurations through a chain, reusing cached stage outputs."""

    def __init__(self, stages: list[Stage], space: Space, apply: Callable[[BitConfig], object]):
        """`apply(cfg)` switches the (shared) quantized model to cfg's bit-widths."""
        self.stages, self.space, self.apply = stages, space, apply
        first = [len(stages)] * len(space.units)
        for module, u in zip(space.modules, space.unit_of):
            first[u] = min(first[u], _stage_of(module, stages))
        # a unit's bits enter the prefix at the first stage that runs any of its modules
        self.stage_units = [[u for u in range(len(space.units)) if first[u] == s]
                            for s in range(len(stages))]

    @staticmethod
    def build(model: nn.Module, space: Space,
              apply: Callable[[BitConfig], object]) -> PrefixRunner | None:
        """A runner for `model`, or None when it is not a chain covering every module."""
        stages = chain(model)
        if stages is None or len(stages) < 2:
            return None
        if any(_stage_of(m, stages) is None for m in space.modules):
            return None
        return PrefixRunner(stages, space, apply)

    def key(self, cfg: BitConfig) -> tuple:
        """Bits stage by stage: sorting by this makes shared prefixes consecutive."""
        return tuple(tuple((cfg.w[u], cfg.a[u]) for u in units) for units in self.stage_units)

    def check(self, model: nn.Module, batch: torch.Tensor) -> bool:
        """True when the chain reproduces `model(batch)` exactly (current bit-widths)."""
        with torch.inference_mode():
            x = batch
            for stage in self.stages:
                x = stage.fn(x)
            return bool(torch.equal(x, model(batch)))

    def boundary_bytes(self, batch: torch.Tensor) -> int:
        """Bytes per sample the cached stage outputs take (every boundary but the last)."""
        total, x = 0, batch
        with torch.inference_mode():
            for stage in self.stages[:-1]:
                x = stage.fn(x)
                total += sum(t.numel() * t.element_size()
                             for t in (x if isinstance(x, tuple) else (x,)))
        return max(1, total // max(1, len(batch)))

    def run(self, cfgs: Sequence[BitConfig],
            batches: list[torch.Tensor]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """Yield (index, model outputs per batch) for cfgs, which should come key-sorted.

        The run keeps one cached output per stage boundary for the prefix just evaluated and
        recomputes from the first stage whose bits differ from the previous configuration's.
        """
        n = len(self.stages)
        cache: list[list[torch.Tensor]] = [[] for _ in range(n - 1)]
        path: tuple = ()
        for j, cfg in enumerate(cfgs):
            key = self.key(cfg)
            d = 0
            while d < len(path) and path[d] == key[d]:
                d += 1
            self.apply(cfg)
            with torch.inference_mode():
                xs = batches if d == 0 else cache[d - 1]
                for s in range(d, n - 1):
                    xs = [self.stages[s].fn(x) for x in xs]
                    cache[s] = xs
                outs = [self.stages[-1].fn(x) for x in xs]
            path = key[:n - 1]
            yield j, outs
