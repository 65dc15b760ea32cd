"""Task files: every shipped file is valid and builds its space; bad files fail by field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mqbench.errors import MqbenchError
from mqbench.quant.space import build_space
from mqbench.task import datasets as D
from mqbench.task.models import build_model
from mqbench.task.spec import list_tasks, load_task, parse_task

TASK_FILES = sorted((Path(__file__).resolve().parents[2] / "tasks").glob("*.toml"))
# Units per shipped task, counted by hand from the architectures (tied convs join a unit):
# resnet18 = stem + 16 block convs + fc; resnet50 = stem + 48 bottleneck convs + fc;
# mobilenet_v2 = 52 convs + classifier; ViT-S/DeiT-S = patch embed + 12 x 4 linears + head;
# Swin-T = patch embed + 12 x 4 linears + 3 patch-merging reductions + head.
EXPECTED_UNITS = {
    "cifar10-resnet20": 20, "digits-quick": 8, "digits-resnet8": 8, "digits-vit": 10,
    "fmnist-resnet8": 8, "fmnist-vit": 18, "imagenet-deit": 50, "imagenet-hf-resnet18": 18,
    "imagenet-mobilenetv2": 53, "imagenet-resnet18": 18, "imagenet-resnet50": 50,
    "imagenet-swin": 53, "imagenet-vit": 50, "pydocs-llama": 28,
    "wikitext2-llama3-8b": 224, "wikitext2-qwen2.5-7b": 196,
}
# Real LM tasks: the architecture family and depth of the published checkpoints, built offline
# at toy width (the unit count depends only on the depth and the layer patterns).
HF_ARCH = {"wikitext2-llama3-8b": ("llama", 32), "wikitext2-qwen2.5-7b": ("qwen2", 28)}
NATIVE = {"digits": (1, 8), "fashion-mnist": (1, 28), "cifar10": (3, 32)}

VALID = """
name = "{name}"
version = 1
[model]
arch = "resnet8"
[data]
dataset = "digits"
[quant]
weight_bits = [2, 4]
"""


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MQBENCH_TASKS", str(tmp_path))
    return tmp_path


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def _error(folder: Path, text: str, name: str = "bad") -> str:
    _write(folder, name, text)
    with pytest.raises(MqbenchError) as exc:
        load_task(name)
    msg = str(exc.value)
    assert "\n" not in msg and f"{name}.toml" in msg  # one line, naming the file
    return msg


def test_shipped_tasks_found():
    assert {p.stem for p in TASK_FILES} == set(EXPECTED_UNITS)
    assert set(EXPECTED_UNITS) <= set(list_tasks())


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_shipped_task_parses(path):
    task = load_task(path.stem)
    assert task.name == path.stem and task.version >= 1 and task.description
    assert task.key == f"{path.stem}-v{task.version}" and len(task.checksum) == 64
    assert path.read_text().startswith("#")  # a header says what it is and where data comes from
    assert load_task(path) == task  # by path as well as by name


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_shipped_task_space(path):
    """The layer patterns and ties name real modules and give the documented unit count."""
    task = load_task(path.stem)
    if task.is_lm:
        model, example = _lm_architecture(task), torch.zeros(1, 8, dtype=torch.long)
    else:
        chans, size = NATIVE.get(task.data.dataset, (3, task.data.image_size or 224))
        spec = dataclasses.replace(task.model, pretrained=False)  # architecture only, offline
        model = build_model(spec, chans, D.num_classes(task.data), size).eval()
        example = torch.zeros(1, chans, size, size)
    q = task.quant
    space = build_space(model, example, q.layers, q.exclude, q.tie, q.weight_bits, q.act_bits)
    assert len(space.units) == EXPECTED_UNITS[task.name]
    assert len(space.modules) == len(space.units) + len(q.tie)
    assert all(m > 0 for m in space.macs)


def _lm_architecture(task):
    from transformers import AutoConfig, AutoModelForCausalLM

    from mqbench.task.text.model import CausalLM, tiny_llama

    if task.model.source == "train":
        return tiny_llama(task.model, task.data.vocab_size, task.data.seq_len).eval()
    kind, depth = HF_ARCH[task.name]
    cfg = AutoConfig.for_model(kind, hidden_size=16, intermediate_size=32, vocab_size=64,
                               num_hidden_layers=depth, num_attention_heads=2,
                               num_key_value_heads=2)
    return CausalLM(AutoModelForCausalLM.from_config(cfg)).eval()


def test_unknown_task_did_you_mean():
    with pytest.raises(MqbenchError, match="did you mean 'fmnist-resnet8'"):
        load_task("fmnist-resnet9")


def test_custom_task_from_env(task_dir):
    _write(task_dir, "mine", VALID.format(name="mine"))
    assert list_tasks()["mine"] == task_dir / "mine.toml"
    task = load_task("mine")
    assert task.quant.weight_bits == (2, 4) and task.quant.act_bits == (8,)
    assert task.data.calibration_samples == 256  # defaults fill what the file leaves out


def test_malformed_toml(task_dir):
    assert "not valid TOML" in _error(task_dir, VALID.format(name="bad") + "[quant\n")


def test_unknown_field(task_dir):
    text = VALID.format(name="bad").replace('arch = "resnet8"', 'arch = "resnet8"\nwidht = 8')
    msg = _error(task_dir, text)
    assert "model" in msg and "unknown field 'widht'" in msg and "did you mean 'width'" in msg


def test_missing_field(task_dir):
    text = VALID.format(name="bad").replace("weight_bits = [2, 4]", "act_bits = [8]")
    assert "missing required field 'weight_bits'" in _error(task_dir, text)


@pytest.mark.parametrize("old, new, field", [
    ("weight_bits = [2, 4]", 'weight_bits = "4"', "quant.weight_bits"),
    ("weight_bits = [2, 4]", "weight_bits = [2, 4.5]", "quant.weight_bits[1]"),
    ("version = 1", "version = true", "version"),
    ('arch = "resnet8"', "arch = 8", "model.arch"),
    ("version = 1", "version = 1\nharness = 3", "harness"),
])
def test_wrong_type(task_dir, old, new, field):
    msg = _error(task_dir, VALID.format(name="bad").replace(old, new))
    assert field in msg and "expected" in msg


def test_bad_choice(task_dir):
    msg = _error(task_dir, VALID.format(name="bad").replace('"digits"', '"imagenet"'))
    assert "data.dataset" in msg and "imagenet-folder" in msg


@pytest.mark.parametrize("bits", ["[0, 4]", "[4, 17]"])
def test_bits_out_of_range(task_dir, bits):
    msg = _error(task_dir, VALID.format(name="bad").replace("[2, 4]", bits))
    assert "quant.weight_bits" in msg and "1..16" in msg


@pytest.mark.parametrize("bits", ["[4, 2]", "[2, 2, 4]"])
def test_bits_unsorted_or_repeated(task_dir, bits):
    msg = _error(task_dir, VALID.format(name="bad").replace("[2, 4]", bits))
    assert "quant.weight_bits" in msg and "ascending" in msg


def test_act_bits_checked_too(task_dir):
    text = VALID.format(name="bad").replace("[2, 4]", "[2, 4]\nact_bits = [8, 4]")
    assert "quant.act_bits" in _error(task_dir, text)


def test_name_must_match_file(task_dir):
    msg = _error(task_dir, VALID.format(name="other"))
    assert "'other'" in msg and "file name 'bad'" in msg


def test_mean_std_checked(task_dir):
    text = VALID.format(name="bad").replace('dataset = "digits"',
                                            'dataset = "digits"\nmean = [0.5]')
    assert "mean and std" in _error(task_dir, text)


def test_duplicate_name(task_dir):
    _write(task_dir, "fmnist-resnet8", VALID.format(name="fmnist-resnet8"))
    with pytest.raises(MqbenchError, match="defined twice"):
        list_tasks()


def test_parse_task_names_source():
    with pytest.raises(MqbenchError, match="task file here.toml: unknown field 'nmae'"):
        parse_task('nmae = "x"', "here.toml")


# ---------------------------------------------------------------- protocol 2
V2 = VALID.replace('dataset = "digits"', 'dataset = "digits"\neval_samples = 0\n'
                   'val_split = "train"\nval_samples = 200') + "[table]\nprotocol = 2\n"
PROTOCOL2_FILES = sorted((Path(__file__).resolve().parents[2] / "tasks" / "protocol2")
                         .glob("*.toml"))


def test_protocol2_task_parses(task_dir):
    _write(task_dir, "mine", V2.format(name="mine"))
    task = load_task("mine")
    assert task.table.protocol == 2 and task.data.val_samples == 200
    assert task.table.split_half and task.table.sampling == "size"


@pytest.mark.parametrize("old, new, match", [
    ('val_split = "train"', 'val_split = "test"', "validation and test overlap"),
    ('val_split = "train"', 'val_split = "val"', "digits has no split 'val'"),
    ('val_split = "train"\n', "", "needs a validation set"),
    ("val_samples = 200", "val_samples = 1200", "too few of the 1297 training samples"),
    ("val_samples = 200", "val_samples = 0", "how many training samples to hold out"),
    ("eval_samples = 0", "eval_samples = 600", "more than the 500 samples"),
    ("eval_samples = 0", 'eval_samples = 0\neval_split = "train"', "must not come from"),
    ("eval_samples = 0", "eval_samples = 3", "table.split_half: needs a test set"),
    ("protocol = 2", "protocol = 2\nnoise_seed = 0", "table.noise_seed: must differ"),
    ("weight_bits = [2, 4]", "weight_bits = [2, 4]\nact_bits = [32]",
     "table.noise_configs: a weight-only task"),
    ("protocol = 2", "protocol = 2\nbroken_share = 1.0", "table.broken_share"),
    ("protocol = 2", 'protocol = 2\nsampling = "random"', "table.sampling"),
    ("weight_bits = [2, 4]", "weight_bits = [4]\n[table]\nsampling = 'damage'", "damage"),
    ("protocol = 2", "protocol = 3", "table.protocol: must be 1 or 2"),
    ("protocol = 2", "protocol = 1", "data.val_split: a protocol-2 field"),
])
def test_protocol2_bad_input_is_one_line(task_dir, old, new, match):
    text = V2.format(name="bad").replace(old, new)
    if "sampling = 'damage'" in new:  # that edit opens [table] early: merge the sections
        text = text.replace("[table]\nprotocol = 2\n", "protocol = 2\n")
    assert match in _error(task_dir, text)


def test_protocol2_text_validation_comes_from_other_files(task_dir):
    from mqbench.testing import TINY_LM

    text = TINY_LM.format(name="lm", root="/nowhere", seq_len=16).replace(
        "[table]\n", "[table]\nprotocol = 2\nnoise_configs = 0\n").replace(
        'eval_split = "test"', 'eval_split = "test"\nval_split = "train"\nval_samples = 8')
    text = text.replace("noise_configs = 3\n", "")
    assert "share files with the training text" in _error(task_dir, text, "lm")
    _write(task_dir, "lm", text.replace('val_split = "train"', 'val_split = "validation"'))
    assert load_task("lm").data.val_split == "validation"


@pytest.mark.parametrize("path", PROTOCOL2_FILES, ids=lambda p: p.stem)
def test_protocol2_drafts_of_the_bundled_tasks(path):
    """tasks/protocol2/ holds the next versions of the bundled tasks: loadable by path, not
    registered (so the shipped protocol-1 tables keep their task files), same name, +1."""
    task = load_task(path)
    current = load_task(path.stem)
    assert task.name == current.name and task.version == current.version + 1
    assert task.table.protocol == 2 and current.table.protocol == 1
    assert list_tasks()[path.stem] != path  # the registered file is still the protocol-1 one
    assert path.read_text().startswith("#")
