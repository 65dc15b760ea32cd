"""Model builders: the project's own small CNN/ViT for bundled tasks, torchvision and timm.

Module names follow torchvision/timm conventions (`layer1.0.conv1`, `blocks.0.attn.qkv`), so
task files address layers the same way for bundled and real models.
"""

from __future__ import annotations

import torch
from torch import nn

from mqbench.errors import MqbenchError, did_you_mean
from mqbench.task.spec import ModelSpec


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs with an identity or 1x1 conv-BN shortcut (torchvision layout)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, three stages (width w, 2w, 4w), global pool, fc."""

    def __init__(self, blocks_per_stage: int, width: int, in_chans: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = width, []
        for i in range(3):
            cout = width * 2**i
            layers = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1)
                      for j in range(blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _small_resnet(n_blocks: int):
    def build(spec: ModelSpec, in_chans: int, num_classes: int, image_size: int) -> nn.Module:
        return SmallResNet(n_blocks, spec.width, in_chans, num_classes)
    return build


def _small_vit(spec: ModelSpec, in_chans: int, num_classes: int, image_size: int) -> nn.Module:
    # lazy: timm only for the ViT/Swin tasks (slow to import)
    from timm.models.vision_transformer import VisionTransformer

    if image_size % spec.patch:
        raise MqbenchError(f"model.patch {spec.patch} must divide the image size {image_size}")
    return VisionTransformer(img_size=image_size, patch_size=spec.patch, in_chans=in_chans,
                             num_classes=num_classes, embed_dim=spec.dim, depth=spec.depth,
                             num_heads=spec.heads, mlp_ratio=2.0, class_token=True,
                             global_pool="token")


_OWN = {"resnet8": _small_resnet(1), "resnet14": _small_resnet(2), "resnet20": _small_resnet(3),
        "vit": _small_vit}


def build_model(spec: ModelSpec, in_chans: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the task's network; pretrained sources load their published weights."""
    if spec.source == "train":
        if spec.arch not in _OWN:
            raise MqbenchError(f"unknown model.arch {spec.arch!r} for source 'train'"
                               f"{did_you_mean(spec.arch, _OWN)}; choose one of {', '.join(_OWN)}")
        return _OWN[spec.arch](spec, in_chans, num_classes, image_size)
    try:
        if spec.source == "torchvision":
            import torchvision.models as tvm  # lazy: torchvision only for CIFAR/ImageNet tasks

            if spec.arch not in tvm.list_models():
                raise MqbenchError(f"unknown torchvision model {spec.arch!r}"
                                   f"{did_you_mean(spec.arch, tvm.list_models())}")
            return tvm.get_model(spec.arch, weights="DEFAULT" if spec.pretrained else None)
        import timm  # lazy: timm only for the ViT/Swin tasks (slow to import)

        if spec.arch not in timm.list_models():
            raise MqbenchError(f"unknown timm model {spec.arch!r}"
                               f"{did_you_mean(spec.arch, timm.list_models())}")
        return timm.create_model(spec.arch, pretrained=spec.pretrained)
    except MqbenchError:
        raise
    except Exception as exc:  # network, hub or checkpoint failures: one actionable line
        where = "$TORCH_HOME/hub/checkpoints" if spec.source == "torchvision" else "$HF_HOME"
        raise MqbenchError(
            f"could not load pretrained {spec.source} weights for {spec.arch!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
            f"download them once with internet access (they are cached under {where}) "
            f"or copy the checkpoint there") from None
