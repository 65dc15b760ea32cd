"""Data loaders on tiny datasets the tests write themselves, and their missing-data errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mqbench.errors import MqbenchError
from mqbench.task import datasets as D
from mqbench.task.datasets import DataSpec

# Class c of the fake ImageNet folders is a flat image of this colour, so labels can be
# checked against pixels after JPEG, resize and crop.
COLOURS = [(220, 30, 30), (30, 30, 220)]


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MQBENCH_DATA", raising=False)


def _write_image_folder(root: Path, splits: tuple[str, ...], per_class: int = 3) -> Path:
    from PIL import Image

    for split in splits:
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                # 40x48 so that resize(36) + centre crop(32) both act
                Image.new("RGB", (48, 40), colour).save(folder / f"img_{i}.JPEG", quality=95)
    return root


def _check_colours(split: D.Split) -> None:
    for c, colour in enumerate(COLOURS):
        mean = split.x[split.y == c].float().mean(dim=(0, 2, 3))
        assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float), atol=6)


# ---------------------------------------------------------------- ImageNet folder
@pytest.fixture
def imagenet_root(tmp_path) -> Path:
    return _write_image_folder(tmp_path / "imagenet", ("train", "val"))


def test_imagenet_folder_loads_uint8_images_and_labels(imagenet_root):
    spec = DataSpec(dataset="imagenet-folder", root=str(imagenet_root), image_size=32)
    val = D.load_split(spec, "val")
    assert val.x.shape == (6, 3, 32, 32) and val.x.dtype == torch.uint8
    assert val.y.dtype == torch.int64 and val.y.tolist() == [0, 0, 0, 1, 1, 1]
    _check_colours(val)


def test_imagenet_folder_seeded_subset(imagenet_root, monkeypatch):
    monkeypatch.setenv("MQBENCH_DATA", str(imagenet_root))  # root from the environment
    spec = DataSpec(dataset="imagenet-folder", image_size=32)
    a = D.load_split(spec, "train", n=4, seed=3)
    b = D.load_split(spec, "train", n=4, seed=3)
    assert a.x.shape == (4, 3, 32, 32)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    # the subset is exactly the seeded choice among the 6 sorted samples
    expected = torch.tensor([0, 0, 0, 1, 1, 1])[D.subset_indices(6, 4, 3)]
    assert a.y.tolist() == expected.tolist()
    _check_colours(a)


def test_imagenet_folder_missing(tmp_path):
    spec = DataSpec(dataset="imagenet-folder", root=str(tmp_path / "absent"), image_size=32)
    with pytest.raises(MqbenchError) as exc:
        D.load_split(spec, "val")
    assert "--data-dir" in _one_line_error(exc) and "absent" in str(exc.value)
    with pytest.raises(MqbenchError, match="not found"):  # no root and no MQBENCH_DATA
        D.load_split(DataSpec(dataset="imagenet-folder"), "train")


# ---------------------------------------------------------------- ImageNet from HF datasets
@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads its cache folder at import time: redirect it for this test too
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    return tmp_path


def test_imagenet_hf_local_imagefolder(hf_offline):
    # `load_dataset(path)` reads a folder of train/ and validation/ class folders offline
    root = _write_image_folder(hf_offline / "hf-imagenet", ("train", "validation"))
    spec = DataSpec(dataset="imagenet-hf", root=str(root), image_size=32)
    val = D.load_split(spec, "val")  # the task's "val" maps to the dataset's "validation"
    assert val.x.shape == (6, 3, 32, 32) and val.x.dtype == torch.uint8
    assert sorted(val.y.tolist()) == [0, 0, 0, 1, 1, 1]
    _check_colours(val)
    a = D.load_split(spec, "train", n=4, seed=5)
    b = D.load_split(spec, "train", n=4, seed=5)
    assert a.x.shape == (4, 3, 32, 32) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    _check_colours(a)


def test_imagenet_hf_missing(hf_offline):
    spec = DataSpec(dataset="imagenet-hf", root=str(hf_offline / "absent"))
    with pytest.raises(MqbenchError) as exc:
        D.load_split(spec, "val")
    assert "--data-dir" in _one_line_error(exc)


# ---------------------------------------------------------------- CIFAR-10
def test_cifar10_missing(tmp_path):
    with pytest.raises(MqbenchError) as exc:
        D.load_split(DataSpec(dataset="cifar10", root=str(tmp_path)), "test")
    msg = _one_line_error(exc)
    assert "cifar-10-batches-py" in msg and "download=True" in msg


def test_cifar10_reads_python_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks each file against the real CIFAR-10's md5; a fake cannot match it
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, size=(2, 3 * 32 * 32), dtype=np.uint8)  # rows are CHW
        labels = rng.integers(0, 10, size=2).tolist()
        batches[name] = (pixels, labels)
        (folder / name).write_bytes(pickle.dumps({"data": pixels, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in
                                                                        range(10)]}))
    monkeypatch.setenv("MQBENCH_DATA", str(tmp_path))
    spec = DataSpec(dataset="cifar10")
    test = D.load_split(spec, "test")
    assert test.x.shape == (2, 3, 32, 32) and test.x.dtype == torch.uint8
    assert torch.equal(test.x, torch.from_numpy(batches["test_batch"][0]).view(2, 3, 32, 32))
    assert test.y.tolist() == batches["test_batch"][1]
    train = D.load_split(spec, "train")
    assert train.x.shape == (10, 3, 32, 32)
    assert train.y.tolist() == [y for i in range(1, 6) for y in batches[f"data_batch_{i}"][1]]


# ---------------------------------------------------------------- Fashion-MNIST
def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fmnist(folder: Path, n_train: int = 5, n_test: int = 3) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_system_fmnist(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-copy")


def test_fashion_mnist_idx_reader(tmp_path, monkeypatch, no_system_fmnist):
    written = _write_fmnist(tmp_path / "data" / "fashion-mnist")  # MQBENCH_DATA/fashion-mnist
    monkeypatch.setenv("MQBENCH_DATA", str(tmp_path / "data"))
    spec = DataSpec(dataset="fashion-mnist")
    train = D.load_split(spec, "train")
    assert train.x.shape == (5, 1, 28, 28) and train.x.dtype == torch.uint8
    assert torch.equal(train.x[:, 0], torch.from_numpy(written["train"][0]))
    assert train.y.dtype == torch.int64
    assert train.y.tolist() == written["train"][1].tolist()
    test = D.load_split(spec, "test", n=2, seed=4)  # seeded subset of the 3 test images
    idx = D.subset_indices(3, 2, 4)
    assert test.y.tolist() == written["t10k"][1][idx.numpy()].tolist()
    # the task's data.root is searched too
    root_spec = DataSpec(dataset="fashion-mnist", root=str(tmp_path / "data" / "fashion-mnist"))
    monkeypatch.delenv("MQBENCH_DATA")
    assert torch.equal(D.load_split(root_spec, "test").x[:, 0],
                       torch.from_numpy(written["t10k"][0]))


def test_fashion_mnist_not_idx(tmp_path, no_system_fmnist):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(folder / name, "wb") as f:
            f.write(b"<html>not found</html>")
    with pytest.raises(MqbenchError, match="not an IDX file"):
        D.load_split(DataSpec(dataset="fashion-mnist", root=str(folder)), "test")


def test_fashion_mnist_missing(tmp_path, monkeypatch, no_system_fmnist):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MQBENCH_DATA", str(tmp_path / "empty"))
    with pytest.raises(MqbenchError) as exc:
        D.load_split(DataSpec(dataset="fashion-mnist"), "train")
    msg = _one_line_error(exc)
    assert "apt-get install dataset-fashion-mnist" in msg and "MQBENCH_DATA" in msg
    assert str(tmp_path / "empty") in msg


# ---------------------------------------------------------------- digits
def test_digits_split():
    from sklearn.datasets import load_digits

    spec = DataSpec(dataset="digits")
    train, test = D.load_split(spec, "train"), D.load_split(spec, "test")
    assert train.x.shape == (1297, 1, 8, 8) and test.x.shape == (500, 1, 8, 8)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert set(test.y.tolist()) == set(range(10))
    # disjoint and complete: together the splits are exactly the 1,797 images (as a multiset)
    full = (load_digits().images * (255.0 / 16.0)).round().astype(np.uint8)
    both = torch.cat([train.x, test.x])[:, 0].numpy()
    rows = sorted(r.tobytes() for r in both.reshape(len(both), -1))
    assert rows == sorted(r.tobytes() for r in full.reshape(len(full), -1))
    again = D.load_split(spec, "test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    sub = D.load_split(spec, "train", n=100, seed=2)
    assert len(sub) == 100 and torch.equal(sub.x, D.load_split(spec, "train", 100, 2).x)


def test_normalization_override():
    mean, std = D.normalization(DataSpec(dataset="imagenet-folder"))
    assert torch.allclose(mean.flatten(), torch.tensor(D.IMAGENET_MEAN))
    mean, std = D.normalization(DataSpec(dataset="imagenet-folder", mean=(0.5, 0.5, 0.5),
                                         std=(0.5, 0.5, 0.5)))
    assert mean.shape == (1, 3, 1, 1) and torch.equal(std.flatten(), torch.full((3,), 0.5))


# ---------------------------------------------------------------- protocol 2 index sets
def test_holdout_and_halves_are_disjoint_seeded_partitions():
    held, rest = D.holdout(1297, 200, seed=0)
    assert len(held) == 200 and len(rest) == 1097
    assert not set(held.tolist()) & set(rest.tolist())
    assert sorted(held.tolist() + rest.tolist()) == list(range(1297))
    again, _ = D.holdout(1297, 200, seed=0)
    other, _ = D.holdout(1297, 200, seed=1)
    assert torch.equal(held, again) and not torch.equal(held, other)
    a, b = D.halves(241, seed=0)
    assert (len(a), len(b)) == (120, 121) and sorted(a.tolist() + b.tolist()) == list(range(241))
    with pytest.raises(MqbenchError, match="cannot hold out"):
        D.holdout(10, 10, seed=0)


def test_load_indexed_takes_exactly_the_picked_samples():
    spec = DataSpec(dataset="digits")
    full = D.load_split(spec, "train")
    idx = torch.tensor([5, 0, 1296])
    part = D.load_indexed(spec, "train", lambda total: idx if total == len(full) else None)
    assert torch.equal(part.x, full.x[idx]) and torch.equal(part.y, full.y[idx])
    assert D.load_indexed(spec, "train", lambda total: None).x.shape == full.x.shape


def test_split_names_and_sizes():
    info = D.DATASETS
    assert info["fashion-mnist"].canonical("t10k") == "test"
    assert info["fashion-mnist"].canonical("val") is None  # would silently load the test set
    assert info["python-docs"].canonical("val") == "validation"
    assert info["imagenet-hf"].canonical("test") == info["imagenet-hf"].canonical("val")
    assert info["imagenet-folder"].canonical("anything") == "anything"
    assert D.split_size(DataSpec(dataset="digits"), "train") == len(
        D.load_split(DataSpec(dataset="digits"), "train"))
    assert D.split_size(DataSpec(dataset="imagenet-folder"), "train") is None


def test_imagenet_folder_loads_picked_indices(imagenet_root):
    spec = DataSpec(dataset="imagenet-folder", root=str(imagenet_root), image_size=32)
    part = D.load_indexed(spec, "train", lambda total: torch.tensor([total - 1, 0]))
    assert part.y.tolist() == [1, 0]
