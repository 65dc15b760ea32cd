"""Datasets as uint8 image tensors plus labels, for bundled (offline) and real tasks.

Every image loader returns `Split(x uint8 [N,C,H,W], y int64 [N])`; text loaders (see
`mqbench.task.text`) return token windows `Split(x int64 [N,L], y int64 [N,L])`. Normalisation
happens per batch on the way into the model, so ImageNet-sized evaluation sets stay 4x
smaller in memory.
Missing data is a one-line error that says how to provide it. `DataSpec` (a task's `[data]`
section) and `DATASETS` (the one table of datasets it may name) live here, so the task spec
imports them and nothing here imports the spec.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mqbench.errors import MqbenchError
from mqbench.progress import bar as progress_bar
from mqbench.task.text import corpus, tokenize
from mqbench.task.text.tokenize import vocab_size


@dataclass(frozen=True)
class DataSpec:
    """Dataset, splits and how many samples calibration and evaluation use."""

    dataset: str  # digits | fashion-mnist | cifar10 | imagenet-folder | imagenet-hf |
    #              python-docs | wikitext2 (text: the task is a causal LM)
    root: str = ""  # data folder; empty = the dataset's default lookup
    hf_name: str = ""  # Hugging Face dataset id for imagenet-hf / wikitext2
    hf_config: str = ""  # Hugging Face dataset configuration (wikitext2: wikitext-2-raw-v1)
    calibration_samples: int = 256
    eval_split: str = "test"
    eval_samples: int = 2000  # 0 = the whole split
    image_size: int = 0  # 0 = the dataset's native size
    mean: tuple[float, ...] = ()  # channel statistics the model expects; () = the dataset's
    std: tuple[float, ...] = ()
    # Text tasks: samples are windows of seq_len tokens; calibration/eval counts are windows.
    seq_len: int = 0
    tokenizer: str = ""  # "" = a BPE tokenizer trained by mqbench on the train split
    vocab_size: int = 0  # size of that trained tokenizer
    corpus_sha256: str = ""  # pins the corpus the task was built on ("" = not pinned)
    # Protocol 2: the validation (search) set. "train" holds val_samples out of the training
    # split (the model never trains or calibrates on them); another split name (text:
    # "validation") takes val_samples of that split (0 = all of it).
    val_split: str = ""
    val_samples: int = 0


FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Split:
    """Images (uint8, NCHW) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int) -> "Split":
        """A seeded random subset of n samples (all of them when n is 0 or too large)."""
        return self.take(subset_indices(len(self), n, seed))

    def take(self, idx: torch.Tensor | None) -> Split:
        """The samples at `idx`, in that order (all of them when idx is None)."""
        return self if idx is None else Split(self.x[idx], self.y[idx])


def subset_indices(total: int, n: int, seed: int) -> torch.Tensor | None:
    """Indices of a seeded random subset of n of total items; None means all of them."""
    if n <= 0 or n >= total:
        return None
    return torch.from_numpy(np.random.default_rng(seed).permutation(total)[:n])


# Salts that make the protocol-2 index draws independent of every other seeded draw.
HOLDOUT_SALT, HALVES_SALT = 0x5EA4C4, 0x4A1F


def holdout(total: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(total) into a seeded held-out set of n indices and the rest (both sorted).

    Protocol 2 holds its validation samples out of the training split this way: the model
    is trained, and calibrated, on the rest only.
    """
    if not 0 < n < total:
        raise MqbenchError(f"cannot hold out {n} of {total} samples; choose 0 < n < {total}")
    perm = np.random.default_rng([seed, HOLDOUT_SALT]).permutation(total)
    return (torch.from_numpy(np.sort(perm[:n])), torch.from_numpy(np.sort(perm[n:])))


def halves(total: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint seeded halves of positions range(total) (sorted; the second gets the odd
    one out): protocol 2 measures every row on each half to get the test-sample noise."""
    perm = np.random.default_rng([seed, HALVES_SALT]).permutation(total)
    return (torch.from_numpy(np.sort(perm[:total // 2])),
            torch.from_numpy(np.sort(perm[total // 2:])))


def normalization(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std, shaped [1, C, 1, 1], for inputs scaled to [0, 1].

    The task's own `data.mean`/`data.std` win over the dataset's statistics: a pretrained
    checkpoint must see inputs normalised the way it was trained.
    """
    info = DATASETS[spec.dataset]
    if info.text:  # token ids are not normalised
        return torch.zeros(1), torch.ones(1)
    mean, std = (spec.mean, spec.std) if spec.mean else (info.mean, info.std)
    return (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))


def num_classes(spec: DataSpec) -> int:
    """Output classes: the label count, or the tokenizer's vocabulary for text tasks."""
    info = DATASETS[spec.dataset]
    return vocab_size(spec) if info.text else info.classes


def to_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images -> normalised float input (token ids pass through unchanged)."""
    if not x.dtype.is_floating_point and x.dtype != torch.uint8:
        return x
    return (x.float().div_(255.0) - mean) / std


def load_split(spec: DataSpec, split: str, n: int = 0, seed: int = 0) -> Split:
    """Load `split` ('train' or the task's eval split): a seeded subset of n samples, or all.

    Large datasets decode only the chosen images, so a 1,024-image calibration set never
    reads the whole ImageNet training folder.
    """
    return load_indexed(spec, split, lambda total: subset_indices(total, n, seed))


def load_indexed(spec: DataSpec, split: str,
                 pick: Callable[[int], torch.Tensor | None]) -> Split:
    """Load the samples `pick(len(split))` chooses (None = all), in that order.

    Only the chosen images are decoded where the loader can (ImageNet), as in `load_split`.
    """
    info = DATASETS[spec.dataset]
    if info.subsets:
        return info.load(spec, split, pick)
    data = info.load(spec, split)
    return data.take(pick(len(data)))


def split_size(spec: DataSpec, split: str) -> int | None:
    """How many samples `split` holds, when the dataset table knows it without loading."""
    info = DATASETS[spec.dataset]
    return dict(info.sizes).get(info.canonical(split) or "")


def _text(spec: DataSpec, split: str) -> Split:
    """Token windows of a text split: x = tokens [N, seq_len], y = the next tokens."""
    corpus.check_pinned(spec)
    split = "validation" if split == "val" else split
    x, y = corpus.windows(tokenize.token_stream(spec, split), spec.seq_len,
                          f"the {split} split of {spec.dataset}")
    return Split(x, y)


def _digits(spec: DataSpec, split: str) -> Split:
    from sklearn.datasets import load_digits  # lazy: scikit-learn only for the digits tasks

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    # A fixed permutation makes a stable 1297/500 train/test split (the dataset has none).
    perm = torch.from_numpy(np.random.default_rng(12345).permutation(len(y)))
    idx = perm[:1297] if split == "train" else perm[1297:]
    return Split(x[idx].contiguous(), y[idx].contiguous())


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise MqbenchError(f"{path} is not an IDX file of unsigned bytes; re-download it")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fmnist_dirs(spec: DataSpec) -> list[Path]:
    dirs = []
    for root in (spec.root, os.environ.get("MQBENCH_DATA", "")):
        if root:
            dirs += [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    return dirs + [FMNIST_SYSTEM_DIR]


def _fashion_mnist(spec: DataSpec, split: str) -> Split:
    prefix = "train" if split == "train" else "t10k"
    for folder in _fmnist_dirs(spec):
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.exists() and labels.exists():
                x = torch.from_numpy(_read_idx(images).copy()).unsqueeze(1)
                y = torch.from_numpy(_read_idx(labels).astype(np.int64))
                return Split(x, y)
    looked = ", ".join(str(d) for d in _fmnist_dirs(spec))
    raise MqbenchError(f"Fashion-MNIST not found (looked in {looked}); install it with "
                       f"`apt-get install dataset-fashion-mnist`, or put the IDX files in a "
                       f"folder and pass --data-dir / set MQBENCH_DATA")


def _cifar10(spec: DataSpec, split: str) -> Split:
    from torchvision.datasets import CIFAR10  # lazy: torchvision only for CIFAR/ImageNet tasks

    root = spec.root or os.environ.get("MQBENCH_DATA", "")
    try:
        ds = CIFAR10(root or ".", train=(split == "train"), download=False)
    except RuntimeError:
        raise MqbenchError(f"CIFAR-10 not found under {root or '.'!r} (expects "
                           f"cifar-10-batches-py/); download it once with torchvision "
                           f"(`CIFAR10(root, download=True)`) and pass --data-dir") from None
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.tensor(ds.targets, dtype=torch.int64))


def _imagenet_transform(size: int):
    from torchvision import transforms as T  # lazy: torchvision only for CIFAR/ImageNet tasks

    size = size or 224
    return T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])


def _stack(images, labels, transform) -> Split:
    bar = progress_bar(len(labels), "decode images", unit="img")
    xs = []
    for img in images:
        xs.append(transform(img.convert("RGB")))
        bar.update()
    bar.close()
    if not xs:
        raise MqbenchError("the dataset split is empty; point --data-dir at a non-empty folder")
    return Split(torch.stack(xs), torch.tensor(labels, dtype=torch.int64))


def _imagenet_folder(spec: DataSpec, split: str, pick) -> Split:
    """ImageNet laid out as ROOT/{train,val}/<wnid>/*.JPEG (torchvision ImageFolder)."""
    from torchvision.datasets import ImageFolder  # lazy: torchvision only for CIFAR/ImageNet tasks

    root = Path(spec.root or os.environ.get("MQBENCH_DATA", ""))
    folder = root / ("train" if split == "train" else split)
    if not spec.root and not os.environ.get("MQBENCH_DATA") or not folder.is_dir():
        raise MqbenchError(f"ImageNet folder {folder} not found; pass --data-dir pointing at a "
                           f"folder with train/ and {split}/ subfolders of class folders")
    ds = ImageFolder(str(folder))
    idx = pick(len(ds.samples))
    chosen = [ds.samples[i] for i in (range(len(ds.samples)) if idx is None else idx.tolist())]
    from PIL import Image  # lazy: Pillow only for the Hugging Face ImageNet loader

    def images():
        for path, _ in chosen:
            with Image.open(path) as img:
                yield img.convert("RGB")

    return _stack(images(), [t for _, t in chosen], _imagenet_transform(spec.image_size))


def _imagenet_hf(spec: DataSpec, split: str, pick) -> Split:
    """ImageNet from Hugging Face `datasets` (a hub id or a local path), columns image/label."""
    try:
        import datasets  # lazy: optional extra `hf`, and slow to import
    except ImportError:
        raise MqbenchError("the imagenet-hf dataset needs Hugging Face datasets: "
                           "pip install 'mqbench[hf]'") from None
    name = spec.root or spec.hf_name
    hf_split = "train" if split == "train" else ("validation" if split in ("val", "test")
                                                 else split)
    try:
        ds = datasets.load_dataset(name, split=hf_split)
    except Exception as exc:
        raise MqbenchError(f"could not load Hugging Face dataset {name!r} split {hf_split!r} "
                           f"({type(exc).__name__}); log in and download it once, or pass a "
                           f"local copy with --data-dir") from None
    idx = pick(len(ds))
    if idx is not None:
        ds = ds.select(idx.tolist())
    # Rows are decoded one at a time: `ds["image"]` would decode the whole column at once in
    # datasets < 4 (gigabytes for an ImageNet evaluation set).
    return _stack((row["image"] for row in ds), list(ds["label"]),
                  _imagenet_transform(spec.image_size))


@dataclass(frozen=True)
class Dataset:
    """One dataset a task may name in `data.dataset`: what it is and how to load it."""

    name: str
    load: Callable  # (spec, split) -> Split, or (spec, split, pick) when `subsets`
    text: bool = False  # token windows: the task is a causal LM
    classes: int = 0  # image datasets: label count (text: the tokenizer's vocabulary)
    mean: tuple[float, ...] = ()  # channel statistics used to normalise inputs
    std: tuple[float, ...] = ()
    subsets: bool = False  # the loader decodes only the samples `pick(total)` chooses itself
    # Which split names load which data: splits the loader tells apart (() = any folder
    # name is its own split), other names it maps onto them, and known split sizes. Protocol
    # 2 checks a task's validation and test sets against these before any work starts.
    splits: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    sizes: tuple[tuple[str, int], ...] = ()

    def canonical(self, split: str) -> str | None:
        """The split `split` loads (aliases resolved); None if the dataset has no such split."""
        split = dict(self.aliases).get(split, split)
        return split if not self.splits or split in self.splits else None


# The one table of datasets: adding a dataset is one entry here (and its loader above).
_TRAIN_TEST = ("train", "test")
_TEXT = {"text": True, "splits": ("train", "validation", "test"),
         "aliases": (("val", "validation"),)}
DATASETS = {d.name: d for d in (
    Dataset("digits", _digits, classes=10, mean=(0.3,), std=(0.37,), splits=_TRAIN_TEST,
            sizes=(("train", 1297), ("test", 500))),
    Dataset("fashion-mnist", _fashion_mnist, classes=10, mean=(0.2860,), std=(0.3530,),
            splits=_TRAIN_TEST, aliases=(("t10k", "test"),),
            sizes=(("train", 60000), ("test", 10000))),
    Dataset("cifar10", _cifar10, classes=10, mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616), splits=_TRAIN_TEST,
            sizes=(("train", 50000), ("test", 10000))),
    Dataset("imagenet-folder", _imagenet_folder, classes=1000, mean=IMAGENET_MEAN,
            std=IMAGENET_STD, subsets=True),
    # the loader reads "val" and "test" both from the hub's validation split
    Dataset("imagenet-hf", _imagenet_hf, classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            subsets=True, splits=("train", "validation"),
            aliases=(("val", "validation"), ("test", "validation"))),
    Dataset("python-docs", _text, **_TEXT),
    Dataset("wikitext2", _text, **_TEXT),
)}
