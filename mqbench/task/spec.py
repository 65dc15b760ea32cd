"""Tasks are data: `tasks/*.toml` files validated into frozen dataclasses, plus their registry.

A task names a model, a dataset, the quantizable layers (by module name, with tied layers),
the bit-width choices, quantizer settings, calibration/evaluation sizes and the table's
sampling plan. Any change in behaviour bumps `version`; tables and caches are keyed by it.
`table.protocol` picks the ground-truth protocol: 1 (the original tables) or 2 (separate
validation and test sets, split-half noise, per-layer noise, damage-stratified sampling);
see `mqbench.truth.protocol2` and `tasks/protocol2/README.md`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from mqbench.errors import MqbenchError, did_you_mean
from mqbench.paths import task_dirs
from mqbench.task.datasets import DATASETS, DataSpec

DEFAULT_TASK = "fmnist-resnet8"


@dataclass(frozen=True)
class TrainSpec:
    """How the project trains a bundled model (ignored for pretrained sources)."""

    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.1
    optimizer: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    weight_decay: float = 5e-4
    flip: bool = True  # random horizontal flip augmentation
    max_steps: int = 0  # >0 stops early; used by tests to train a few steps


@dataclass(frozen=True)
class ModelSpec:
    """Which network: an architecture and where its weights come from."""

    arch: str
    source: str = "train"  # train | torchvision | timm | hf (causal LMs: hub id or folder)
    pretrained: bool = True  # for torchvision/timm; false gives random init (tests only)
    width: int = 16  # base width of the project's own CNNs
    depth: int = 4  # transformer depth of the project's own ViT
    dim: int = 64
    heads: int = 4
    patch: int = 4
    ffn: int = 0  # MLP width of the project's own Llama; 0 = 3 x dim
    dtype: str = "float32"  # source = "hf": weights' dtype (bfloat16 halves memory at 7B+)
    train: TrainSpec = field(default_factory=TrainSpec)


@dataclass(frozen=True)
class QuantSpec:
    """The configuration space and the quantizer settings that define the ground truth."""

    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...] = (8,)
    layers: tuple[str, ...] = ("*",)  # fnmatch patterns over Conv2d/Linear module names
    exclude: tuple[str, ...] = ()
    tie: dict[str, str] = field(default_factory=dict)  # follower module -> leader module
    weight_clip: str = "mse"  # mse | max
    act_clip: str = "mse"  # mse | minmax
    fold_bn: bool = True
    group_size: int = 0  # >0: group-wise asymmetric weights along the input dim (LM tasks)
    method: str = "rtn"  # rtn | gptq (QUANT_METHODS; mqbench.quant.quantizer says what each does)


@dataclass(frozen=True)
class TableSpec:
    """How many configurations the ground-truth table samples, and the noise-floor subset."""

    configs: int = 1000
    strata: int = 10
    noise_configs: int = 100
    noise_seed: int = 1
    batch_size: int = 128  # small batches stay in CPU cache: fastest for the bundled models
    protocol: int = 1  # 1: the original tables; 2: see the module docstring
    # Protocol 2 only:
    sampling: str = "size"  # size: stratified by model size (protocol 1's sampler) |
    #                         damage: mostly configurations the per-layer rows predict usable
    broken_share: float = 0.1  # damage sampling: share drawn among predicted-broken ones
    split_half: bool = True  # measure every row on two disjoint halves of the test set


@dataclass(frozen=True)
class HarnessSpec:
    """Scoring settings shared by every proxy evaluated on this task."""

    alpha: float = 0.1  # TAP fitness weight of the layer-level correlation
    budgets: tuple[float, ...] = (3.0, 4.0)  # average weight bits for downstream allocation
    fixed: dict[str, int] = field(default_factory=dict)  # units pinned to a bit-width in ILP
    calibration_batch: int = 16  # samples the proxies' statistics are computed on


@dataclass(frozen=True)
class AutoMixQSpec:
    """AutoMixQ search settings (LM tasks): protection fractions and Algorithm 1 sizes."""

    budgets: tuple[float, ...] = (3.0, 3.25, 3.5, 3.75)  # average weight bits
    fractions: tuple[float, ...] = (0.25, 0.5)  # input channels kept at 4 bits in a mixed weight
    samples: int = 16  # N: candidate configurations per cycle
    elites: int = 4  # E: best candidates kept as the next cycle's starting points
    step: int = 2  # n: weights perturbed per candidate
    alpha: float = 1.0  # loss = CE + alpha * T^2 * KL(fp || quantized)
    temperature: float = 2.0
    aux_samples: int = 32  # windows of the validation split the search loss is computed on
    max_cycles: int = 200


@dataclass(frozen=True)
class Task:
    """A validated benchmark task."""

    name: str
    version: int
    model: ModelSpec
    data: DataSpec
    quant: QuantSpec
    description: str = ""
    seed: int = 0
    table: TableSpec = field(default_factory=TableSpec)
    harness: HarnessSpec = field(default_factory=HarnessSpec)
    automixq: AutoMixQSpec = field(default_factory=AutoMixQSpec)
    path: str = ""  # where it was read from (not part of the file)
    checksum: str = ""  # sha256 of the file's bytes (not part of the file)
    # sha256 of what the file says (its parsed values, canonical JSON): comments and layout
    # may change without invalidating the tables built from it (not part of the file)
    spec_checksum: str = ""

    @property
    def key(self) -> str:
        """Name, version and (when not rtn) quantization method: what tables, statistics
        and measurement caches are keyed by."""
        suffix = "" if self.quant.method == "rtn" else f"-{self.quant.method}"
        return f"{self.name}-v{self.version}{suffix}"

    @property
    def model_key(self) -> str:
        """Name and version: what the trained weights are keyed by (every method quantizes
        the same model)."""
        return f"{self.name}-v{self.version}"

    @property
    def label(self) -> str:
        """How records and the leaderboard name the task: `name`, or `name@method` for a
        method other than rtn (`load_task` reads it back)."""
        return self.name if self.quant.method == "rtn" else f"{self.name}@{self.quant.method}"

    @property
    def is_lm(self) -> bool:
        """A causal language-model task (text data, weight-only quantization)."""
        return DATASETS[self.data.dataset].text


QUANT_METHODS = ("rtn", "gptq")  # weight quantization methods (mqbench.quant.quantizer)
_CHOICES = {
    ("model", "source"): ("train", "torchvision", "timm", "hf"),
    ("train", "optimizer"): ("sgd", "adamw"),
    ("model", "dtype"): ("float32", "bfloat16", "float16"),
    ("data", "dataset"): tuple(DATASETS),
    ("quant", "weight_clip"): ("mse", "max"),
    ("quant", "act_clip"): ("mse", "minmax"),
    ("quant", "method"): QUANT_METHODS,
    ("table", "sampling"): ("size", "damage"),
}
_SECTION_NAMES = {ModelSpec: "model", TrainSpec: "train", DataSpec: "data", QuantSpec: "quant",
                  TableSpec: "table", HarnessSpec: "harness", AutoMixQSpec: "automixq",
                  Task: "task"}


def _coerce(value, tp, where: str):
    """Check one TOML value against a dataclass field type; return it in frozen form."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MqbenchError(f"{where}: expected a [section] table, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, list) or not value:
            raise MqbenchError(f"{where}: expected a non-empty list of {item.__name__}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise MqbenchError(f"{where}: expected a table of {kt.__name__} = {vt.__name__}")
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise MqbenchError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls, raw: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("path", "checksum", "spec_checksum")]
    section = _SECTION_NAMES[cls]
    for key in raw:
        if key not in names:
            raise MqbenchError(f"{where}: unknown field {key!r}{did_you_mean(key, names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MqbenchError(f"{where}: missing required field {f.name!r}")
            continue
        value = _coerce(raw[f.name], hints[f.name], f"{where}.{f.name}")
        allowed = _CHOICES.get((section, f.name))
        if allowed and value not in allowed:
            raise MqbenchError(f"{where}.{f.name}: {value!r} is not one of {', '.join(allowed)}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _check(task: Task, where: str) -> None:
    q = task.quant
    for label, bits in (("weight_bits", q.weight_bits), ("act_bits", q.act_bits)):
        bad = [b for b in bits if not (1 <= b <= 16 or b == 32)]
        if bad:
            raise MqbenchError(f"{where}.quant.{label}: bit-widths must be in 1..16 (or 32 = "
                               f"float), got {bad}")
        if list(bits) != sorted(set(bits)):
            raise MqbenchError(f"{where}.quant.{label}: list bit-widths ascending, no repeats")
    for name, value in (("version", task.version), ("table.configs", task.table.configs),
                        ("table.strata", task.table.strata),
                        ("table.batch_size", task.table.batch_size),
                        ("harness.calibration_batch", task.harness.calibration_batch),
                        ("data.calibration_samples", task.data.calibration_samples)):
        if value < 1:
            raise MqbenchError(f"{where}.{name}: must be >= 1, got {value}")
    if task.table.noise_configs < 0 or task.data.eval_samples < 0:
        raise MqbenchError(f"{where}: noise_configs and eval_samples must be >= 0")
    d = task.data
    if len(d.mean) != len(d.std) or any(v <= 0 for v in d.std):
        raise MqbenchError(f"{where}.data: give mean and std together, one positive std per "
                           f"channel (got mean {list(d.mean)}, std {list(d.std)})")
    if task.is_lm:
        _check_lm(task, where)
    if task.table.protocol == 2:
        _check_protocol2(task, where)
    elif task.table.protocol != 1:
        raise MqbenchError(f"{where}.table.protocol: must be 1 or 2, got {task.table.protocol}")
    else:
        _check_protocol1(task, where)
    if not 0.0 <= task.harness.alpha <= 1.0:
        raise MqbenchError(f"{where}.harness.alpha: must be in [0, 1], got {task.harness.alpha}")
    if not task.harness.budgets:
        raise MqbenchError(f"{where}.harness.budgets: give at least one average-bit budget")
    # checked when the file is read, so `build` and `eval` refuse the same files
    check_budgets(task, task.harness.budgets, f"{where}.harness.budgets")


def check_budgets(task: Task, budgets, where: str) -> None:
    """Average-bit budgets must lie between the task's lowest and highest weight bits."""
    lo, hi = min(task.quant.weight_bits), max(task.quant.weight_bits)
    for b in budgets:
        if not lo <= b <= hi:
            raise MqbenchError(f"{where}: budget {b:g} average bits is outside the task's "
                               f"weight bit choices [{lo}, {hi}]")


def _check_lm(task: Task, where: str) -> None:
    d, m, a = task.data, task.model, task.automixq
    if d.seq_len < 2:
        raise MqbenchError(f"{where}.data.seq_len: a text task needs a context length >= 2")
    if not ((m.source == "train" and m.arch == "llama") or m.source == "hf"):
        raise MqbenchError(f"{where}.model: a text task needs source = 'train' with arch = "
                           f"'llama', or source = 'hf' with arch = a hub id or model folder")
    if m.source == "train" and not d.tokenizer and d.vocab_size < 260:
        raise MqbenchError(f"{where}.data.vocab_size: give the size (>= 260) of the BPE "
                           f"tokenizer mqbench trains, or data.tokenizer = a model's tokenizer")
    if task.quant.group_size < 0:
        raise MqbenchError(f"{where}.quant.group_size: must be >= 0")
    check_budgets(task, a.budgets, f"{where}.automixq.budgets")
    if not all(0.0 < f < 1.0 for f in a.fractions):
        raise MqbenchError(f"{where}.automixq.fractions: each must be in (0, 1)")
    if a.samples < 1 or a.elites < 1 or a.step < 1 or a.aux_samples < 1:
        raise MqbenchError(f"{where}.automixq: samples, elites, step and aux_samples must be "
                           f">= 1")


_PROTOCOL2_FIELDS = (("data", "val_split"), ("data", "val_samples"), ("table", "sampling"),
                     ("table", "broken_share"), ("table", "split_half"))


def _check_protocol1(task: Task, where: str) -> None:
    """Protocol-2 fields in a protocol-1 file would be silently ignored: refuse them."""
    defaults = {"data": DataSpec(dataset=task.data.dataset), "table": TableSpec()}
    for section, name in _PROTOCOL2_FIELDS:
        if getattr(getattr(task, section), name) != getattr(defaults[section], name):
            raise MqbenchError(f"{where}.{section}.{name}: a protocol-2 field; set "
                               f"table.protocol = 2 or remove it")


def _check_protocol2(task: Task, where: str) -> None:
    """Splits and noise spec of a protocol-2 task, checked before any data is loaded."""
    d, t, info = task.data, task.table, DATASETS[task.data.dataset]
    if not d.val_split:
        raise MqbenchError(f"{where}.data.val_split: protocol 2 needs a validation set; set "
                           f"val_split = \"train\" with val_samples = N to hold N training "
                           f"samples out" + (" (text: val_split = \"validation\")"
                                             if info.text else ""))
    for name, split in (("val_split", d.val_split), ("eval_split", d.eval_split)):
        if info.canonical(split) is None:
            raise MqbenchError(f"{where}.data.{name}: {d.dataset} has no split {split!r}; its "
                               f"splits are {', '.join(info.splits)}")
    test, val = info.canonical(d.eval_split), info.canonical(d.val_split)
    if test == "train":
        raise MqbenchError(f"{where}.data.eval_split: the test set must not come from the "
                           f"training split; use the dataset's test split")
    if val == test:
        raise MqbenchError(f"{where}.data.val_split: {d.val_split!r} loads the same samples as "
                           f"eval_split {d.eval_split!r}, so validation and test overlap; use "
                           f"val_split = \"train\" (held-out training samples)")
    if d.val_samples < 0:
        raise MqbenchError(f"{where}.data.val_samples: must be >= 0, got {d.val_samples}")
    if val == "train":
        if info.text:
            raise MqbenchError(f"{where}.data.val_split: held-out training windows share files "
                               f"with the training text; use val_split = \"validation\"")
        if d.val_samples < 1:
            raise MqbenchError(f"{where}.data.val_samples: give how many training samples to "
                               f"hold out for validation (e.g. 5000)")
    sizes = dict(info.sizes)
    if val == "train" and "train" in sizes and \
            d.val_samples + d.calibration_samples >= sizes["train"]:
        raise MqbenchError(f"{where}.data.val_samples: {d.val_samples} held-out samples leave "
                           f"too few of the {sizes['train']} training samples of {d.dataset} "
                           f"to train and calibrate on ({d.calibration_samples}); lower it")
    for name, split, n in (("val_samples", val, d.val_samples if val != "train" else 0),
                           ("eval_samples", test, d.eval_samples)):
        if split in sizes and n > sizes[split]:
            raise MqbenchError(f"{where}.data.{name}: {n} is more than the {sizes[split]} "
                               f"samples of {d.dataset}'s {split} split; lower it (0 = all)")
    if t.split_half and 0 < d.eval_samples < 4:
        raise MqbenchError(f"{where}.table.split_half: needs a test set of >= 4 samples to "
                           f"halve; raise data.eval_samples or set split_half = false")
    if t.noise_configs and all(b >= 32 for b in task.quant.act_bits):
        raise MqbenchError(f"{where}.table.noise_configs: a weight-only task (act_bits = [32]) "
                           f"has no calibration randomness, so a second calibration seed "
                           f"re-measures nothing; set noise_configs = 0 (split-half rows "
                           f"still measure test-sample noise)")
    if t.noise_configs and t.noise_seed == task.seed:
        raise MqbenchError(f"{where}.table.noise_seed: must differ from the task seed "
                           f"{task.seed}, or the noise rows repeat the table")
    if not 0.0 <= t.broken_share < 1.0:
        raise MqbenchError(f"{where}.table.broken_share: must be in [0, 1), got "
                           f"{t.broken_share}")
    if t.sampling == "damage" and len(task.quant.weight_bits) < 2:
        raise MqbenchError(f"{where}.table.sampling: damage sampling needs >= 2 weight bit "
                           f"choices (it predicts damage from per-layer rows below the top)")


def parse_task(text: str, source: str = "<string>") -> Task:
    """Validate TOML text into a Task; errors name the file, the field and the reason."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MqbenchError(f"task file {source}: not valid TOML ({exc})") from None
    task = _build(Task, raw, f"task file {source}")
    task = dataclasses.replace(task, path=source,
                               checksum=hashlib.sha256(text.encode()).hexdigest(),
                               spec_checksum=_spec_checksum(raw))
    _check(task, f"task file {source}")
    return task


def list_tasks() -> dict[str, Path]:
    """Registered task names mapped to their files; a duplicate name is an error."""
    found: dict[str, Path] = {}
    for folder in task_dirs():
        for path in sorted(folder.glob("*.toml")):
            if path.stem in found:
                raise MqbenchError(f"task {path.stem!r} defined twice: {found[path.stem]} and "
                                   f"{path}; rename one")
            found[path.stem] = path
    return found


def load_task(name_or_path: str | os.PathLike | None = None,
              method: str | None = None) -> Task:
    """Load a task by registered name or by path to a TOML file (default: the bundled task).

    `NAME@METHOD` (or `method=`) loads the task with `quant.method` set to METHOD (see
    `with_method`): the same model and space under another quantizer.
    """
    name_or_path = str(name_or_path or DEFAULT_TASK)
    if "@" in name_or_path and not Path(name_or_path).is_file():
        name_or_path, _, at = name_or_path.rpartition("@")
        if method is not None and method != at:
            raise MqbenchError(f"task {name_or_path}@{at} and method {method!r} disagree; "
                               f"give the method once")
        method = at
    task = _load_file(name_or_path)
    return task if method is None else with_method(task, method)


def with_method(task: Task, method: str) -> Task:
    """`task` with `quant.method = method`; its spec checksum is that of the file with the
    field set, so tables built from a file saying so and from this override agree."""
    if method not in QUANT_METHODS:
        raise MqbenchError(f"quantization method {method!r}: choose one of "
                           f"{', '.join(QUANT_METHODS)}{did_you_mean(method, QUANT_METHODS)}")
    if method == task.quant.method:
        return task
    raw = tomllib.loads(Path(task.path).read_text()) if task.path and Path(task.path).is_file() \
        else None
    if raw is None:
        raise MqbenchError(f"task {task.name}: the method override needs the task file "
                           f"{task.path!r}")
    raw.setdefault("quant", {})["method"] = method
    return dataclasses.replace(task, quant=dataclasses.replace(task.quant, method=method),
                               spec_checksum=_spec_checksum(raw))


def _spec_checksum(raw: dict) -> str:
    """sha256 of a task's parsed values as canonical JSON; `quant.method = "rtn"` (the
    default) counts as unset, so a file that says it and one that does not agree."""
    quant = raw.get("quant")
    if isinstance(quant, dict) and quant.get("method") == "rtn":
        raw = {**raw, "quant": {k: v for k, v in quant.items() if k != "method"}}
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load_file(name_or_path: str) -> Task:
    path = Path(name_or_path)
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise MqbenchError(f"task file {name_or_path} does not exist; give a task name "
                               f"(`mqbench tasks` lists them) or the path of a .toml file")
    else:
        known = list_tasks()
        if name_or_path not in known:
            raise MqbenchError(f"unknown task {name_or_path!r}{did_you_mean(name_or_path, known)}"
                               f"; `mqbench tasks` lists them")
        path = known[name_or_path]
    task = parse_task(path.read_text(), str(path))
    if task.name != path.stem:
        raise MqbenchError(f"task file {path}: name {task.name!r} must match the file name "
                           f"{path.stem!r}")
    return task
