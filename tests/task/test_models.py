"""Model builders: the project's own networks, and one-line errors for pretrained ones."""

from __future__ import annotations

import pytest
import torch

from mqbench.errors import MqbenchError
from mqbench.task.models import build_model
from mqbench.task.spec import ModelSpec


def _no_download(*args, **kwargs):
    raise ConnectionError("network is unreachable\nsecond line of a long traceback message")


@pytest.mark.parametrize("arch, kwargs, in_chans, size", [
    ("resnet8", {"width": 8}, 1, 8),
    ("resnet20", {"width": 8}, 3, 32),
    ("vit", {"depth": 1, "dim": 16, "heads": 2, "patch": 2}, 1, 8),
])
def test_own_models_build(arch, kwargs, in_chans, size):
    model = build_model(ModelSpec(arch=arch, **kwargs), in_chans, 10, size)
    assert model(torch.zeros(2, in_chans, size, size)).shape == (2, 10)


def test_unknown_arch_did_you_mean():
    with pytest.raises(MqbenchError, match="did you mean 'resnet8'"):
        build_model(ModelSpec(arch="resnet9"), 1, 10, 8)
    with pytest.raises(MqbenchError, match="did you mean 'resnet18'"):
        build_model(ModelSpec(arch="resnet181", source="torchvision"), 3, 1000, 224)


def test_vit_patch_must_divide_image():
    with pytest.raises(MqbenchError, match="model.patch 3"):
        build_model(ModelSpec(arch="vit", patch=3), 1, 10, 8)


def test_torchvision_weights_missing(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty checkpoint cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(MqbenchError) as exc:
        build_model(ModelSpec(arch="resnet18", source="torchvision"), 3, 1000, 224)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "resnet18" in msg and "ConnectionError" in msg and "$TORCH_HOME" in msg


def test_timm_weights_missing(tmp_path, monkeypatch):
    import timm.models._hub as timm_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm_hub, "hf_hub_download", _no_download)
    with pytest.raises(MqbenchError) as exc:
        build_model(ModelSpec(arch="deit_tiny_patch16_224", source="timm"), 3, 1000, 224)
    msg = str(exc.value)
    assert "\n" not in msg and "deit_tiny_patch16_224" in msg and "$HF_HOME" in msg
    assert "ConnectionError" in msg
