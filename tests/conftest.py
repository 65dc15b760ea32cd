"""Shared fixtures: a tiny offline task on scikit-learn's digits, isolated cache folders."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_TASK = """
name = "{name}"
version = {version}
seed = 0
description = "tiny test task"
[model]
arch = "resnet8"
width = 8
[model.train]
epochs = 1
batch_size = 64
lr = 0.05
max_steps = {steps}
[data]
dataset = "digits"
calibration_samples = 64
eval_samples = 120
[quant]
weight_bits = [2, 4, 8]
tie = {{ "layer2.0.downsample.0" = "layer2.0.conv2", "layer3.0.downsample.0" = "layer3.0.conv2" }}
[table]
configs = {configs}
noise_configs = 6
batch_size = 64
"""


def write_task(folder: Path, name: str = "tiny", version: int = 1, configs: int = 24,
               steps: int = 15) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_TASK.format(name=name, version=version, configs=configs, steps=steps))
    return path


@pytest.fixture
def tiny_env(tmp_path, monkeypatch):
    """A task folder holding `tiny.toml` and a private cache; returns the task folder."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks)
    monkeypatch.setenv("MQBENCH_TASKS", str(tasks))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return tasks


@pytest.fixture(autouse=True)
def _never_touch_user_dirs(tmp_path_factory, monkeypatch):
    """Tests write caches and leaderboard records under pytest's temp dir, never ~ or the repo."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("MQBENCH_CACHE", str(base / "default-cache"))
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(base / "default-leaderboard"))
