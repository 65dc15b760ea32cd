"""Protocol 2's sets: which samples are test, validation, training and calibration data.

The test set is a seeded subset (or all) of the evaluation split, cut into two seeded halves
for the split-half noise rows. The validation (search) set is either held out of the
training split (`data.val_split = "train"`: the model is trained and calibrated on the rest
only) or a seeded subset of another split (text: the validation files). Sizes the dataset
table does not know are checked here, as soon as a split's size is read and before any
training starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mqbench.errors import MqbenchError
from mqbench.task import datasets as D
from mqbench.task.spec import Task


@dataclass(frozen=True)
class Splits:
    """Protocol 2's index sets, for checking and provenance.

    `train`, `val` and calibration draws index the training split (`val` is None when the
    validation set is another split); `test` indexes the evaluation split (None = all of
    it); `halves` are positions within the test set.
    """

    train_total: int | None  # samples in the training split (None: not loaded)
    train: torch.Tensor | None  # what the model trains and calibrates on (None = all)
    val: torch.Tensor | None
    val_split: str
    test: torch.Tensor | None
    halves: tuple[torch.Tensor, torch.Tensor] | None

    def calibration(self, n: int, seed: int, total: int | None = None) -> torch.Tensor | None:
        """Training-split indices of the calibration draw with `seed` (None = all); `total`
        is the training split's size when the validation set is another split."""
        pool = self.train
        if pool is None:  # the whole training split: protocol 1's draw
            return D.subset_indices(self.train_total if total is None else total, n, seed)
        idx = D.subset_indices(len(pool), n, seed)
        return pool if idx is None else pool[idx]


def _pick(chosen: dict, key: str, fn):
    """A `load_indexed` pick that remembers what it chose (and the split's size)."""
    def pick(total: int):
        chosen[f"{key}_total"] = total
        chosen[key] = fn(total)
        return chosen[key]
    return pick


def protocol2_splits(task: Task) -> tuple[D.Split, D.Split, Splits]:
    """Test and validation samples of a protocol-2 task, sizes checked before any training."""
    spec, seed, where = task.data, task.seed, f"task {task.name}"
    chosen: dict = {}

    def test_pick(total):
        if spec.eval_samples > total:
            raise MqbenchError(f"{where}: data.eval_samples {spec.eval_samples} is more than "
                               f"the {total} samples of split {spec.eval_split!r}; lower it")
        return D.subset_indices(total, spec.eval_samples, seed)

    test = D.load_indexed(spec, spec.eval_split, _pick(chosen, "test", test_pick))
    if D.DATASETS[spec.dataset].canonical(spec.val_split) == "train":
        def val_pick(total):
            if spec.val_samples + spec.calibration_samples >= total:
                raise MqbenchError(f"{where}: data.val_samples {spec.val_samples} held-out "
                                   f"samples leave too few of the {total} training samples to "
                                   f"train and calibrate on; lower it")
            chosen["held"], chosen["rest"] = D.holdout(total, spec.val_samples, seed)
            return chosen["held"]

        val = D.load_indexed(spec, "train", _pick(chosen, "val", val_pick))
        train_total, train, val_idx = chosen["val_total"], chosen["rest"], chosen["held"]
    else:
        def other_pick(total):
            if spec.val_samples > total:
                raise MqbenchError(f"{where}: data.val_samples {spec.val_samples} is more than "
                                   f"the {total} samples of split {spec.val_split!r}; lower it")
            return D.subset_indices(total, spec.val_samples, seed)

        val = D.load_indexed(spec, spec.val_split, other_pick)
        train_total, train, val_idx = None, None, None
    if task.table.split_half and len(test) < 4:
        raise MqbenchError(f"{where}: table.split_half needs a test set of >= 4 samples to "
                           f"halve, split {spec.eval_split!r} holds {len(test)}")
    halves = D.halves(len(test), seed) if task.table.split_half else None
    return test, val, Splits(train_total, train, val_idx, spec.val_split, chosen["test"], halves)
