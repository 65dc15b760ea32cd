"""The result record: one typed `Record` that every reader and writer of results uses.

The harness builds one per (proxy, task); the leaderboard stores it as
`leaderboard/records/<task>/<proxy>.json`, indexes it in DuckDB and renders it; AutoMixQ writes
its searched allocations as one. `Record.from_dict` upgrades a record of any older schema
(`migrate`), so a file written by an older mqbench reads as the current schema.

Schema history: 1 = the first records; 2 = `spearman_top100` (and its CI) removed, being the
same number as `spearman` (Spearman over all configurations, "ρs@100%"). Optional fields
added within schema 2 (absent from the JSON while None, so older files stay valid):
`table_provenance`, `recorded_at`, `batch_damage` (per-calibration-batch damage matrices),
`options` (non-default harness options, e.g. Hessians with BatchNorm unfolded).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from mqbench.errors import MqbenchError

RECORD_SCHEMA = 2

# Keys of the ground-truth table's own metadata that a record copies into `table_provenance`.
TABLE_PROVENANCE_KEYS = ("package_version", "git_commit", "torch_version", "weights_checksum",
                         "rows", "eval_samples", "schema_version", "quant_method")


# Fields added after the first records: left out of the JSON while None (older files lack them).
_OMIT_IF_NONE = ("table_provenance", "recorded_at", "batch_damage", "options")
_OMIT_IF_NONE_ALLOCATION = ("best_table_loss",)


@dataclass(frozen=True)
class Allocation:
    """One bit configuration chosen under a budget, quantized and measured (a downstream row)."""

    budget_avg_bits: float  # the budget, as the average weight bits of a uniform model
    metric: str  # what the budget prices: "size" (weight bits) or "bops"
    config: str  # the configuration's key (BitConfig key; AutoMixQ: its option keys, ","-joined)
    acc: float  # top-1 accuracy (LM tasks: next-token accuracy) of the quantized model
    loss: float  # cross-entropy (LM tasks: log perplexity)
    kl: float  # KL(full precision || quantized) of the output distributions
    size_bits: int  # weight storage, bits
    bops: int | None  # bit operations; None where not measured (AutoMixQ)
    best_table_acc: float | None  # best table configuration's accuracy within the budget
    gap_to_best: float | None  # best_table_acc - acc (negative: beats every table entry)
    # lowest table cross-entropy within the budget: LM tasks report perplexity exp(loss)
    best_table_loss: float | None = None


@dataclass(frozen=True)
class Timing:
    """Wall-clock cost of producing the record."""

    proxy_seconds: float  # the proxy call (AutoMixQ: the whole search)
    score_seconds: float  # turning its output into a score for every configuration
    per_config_ms: float  # (proxy + score) time per configuration, milliseconds


@dataclass(frozen=True)
class Record:
    """A proxy scored on a task: identity, provenance, metrics, allocations and raw scores.

    `proxy_kind` is the proxy's kind ("layer", "layer_bit", "config"), or "search" for a search
    method (AutoMixQ) whose result is its allocations only: no scores, no metrics.
    """

    proxy: str  # registered name (the file stem)
    proxy_version: int
    proxy_sha256: str  # sha256 of the proxy file's bytes
    proxy_kind: str
    paper: str  # where the proxy comes from
    task: str  # task name
    task_version: int
    task_checksum: str  # sha256 of the task file's canonical form
    table_checksum: str | None  # sha256 of the ground-truth table's rows scored against
    seed: int  # the task's seed (calibration data, bootstrap)
    package_version: str  # mqbench that wrote the record (mqbench.provenance.software)
    git_commit: str
    torch_version: str
    n_configs: int  # table configurations scored (len(scores))
    bootstrap: int  # bootstrap resamples behind the CIs (0: no CIs)
    metrics: dict[str, float | None]  # name -> value, `<name>_lo/_hi` CI bounds (registry names)
    downstream: tuple[Allocation, ...]  # the ILP allocations under the task's budgets
    timing: Timing
    scores: dict[str, float]  # configuration key -> predicted score (kept: new metrics, no re-run)
    sensitivity: dict[str, float] | None  # unit -> per-layer sensitivity; None for config proxies
    schema_version: int = RECORD_SCHEMA
    # Added after the first records; absent (None) in records written before them.
    table_provenance: dict | None = None  # the table build's own provenance (TABLE_PROVENANCE_KEYS)
    recorded_at: str | None = None  # UTC ISO time the leaderboard stored it
    # calibration-batch seed -> the proxy's damage matrix [units][weight bits] computed on that
    # batch (the task seed's batch first; its scores are `scores`): the proxy's own variance,
    # which the verdicts fold into their intervals. None: one batch (or a config proxy).
    batch_damage: dict[str, list[list[float]]] | None = None
    # harness options that change what the proxy sees, when not the defaults (e.g.
    # {"hessian_bn": "unfolded"}); such a record is named `<proxy>@<variant>` (`variant_name`)
    options: dict[str, str] | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready form (fields added later are left out while None)."""
        out = dataclasses.asdict(self)
        for key in _OMIT_IF_NONE:
            if out[key] is None:
                del out[key]
        out["downstream"] = [{k: v for k, v in dataclasses.asdict(d).items()
                              if v is not None or k not in _OMIT_IF_NONE_ALLOCATION}
                             for d in self.downstream]
        return out

    def to_json(self) -> str:
        """The record file's text: sorted keys, one-space indent, newline-terminated."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> Record:
        """A Record from its dict form (any schema version; older ones are migrated)."""
        data = migrate(data, source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MqbenchError(f"{source}: unknown record field(s) {', '.join(unknown)}; it was "
                               f"written by another mqbench (check schema_version)")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is
                    dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise MqbenchError(f"{source}: not an mqbench result record (no {missing[0]!r} "
                               f"field)")
        if not isinstance(data["downstream"], list) or not isinstance(data["timing"], dict):
            raise MqbenchError(f"{source}: `downstream` must be a list and `timing` an object")
        try:
            downstream = tuple(Allocation(**d) for d in data["downstream"])
            timing = Timing(**data["timing"])
        except TypeError as exc:
            raise MqbenchError(f"{source}: malformed downstream or timing entry ({exc})") from None
        if not isinstance(data["metrics"], dict) or not isinstance(data["scores"], dict):
            raise MqbenchError(f"{source}: `metrics` and `scores` must be JSON objects")
        rec = cls(**{**data, "downstream": downstream, "timing": timing})
        _check_types(rec, source)
        return rec

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "record") -> Record:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MqbenchError(f"{source} is not valid JSON ({exc}); restore it from git or "
                               f"delete it") from None
        if not isinstance(data, dict):
            raise MqbenchError(f"{source} is not an mqbench record (not a JSON object)")
        return cls.from_dict(data, source)


def variant_name(proxy: str, options: dict[str, str] | None) -> str:
    """The record name of `proxy` run with non-default harness options."""
    if not options:
        return proxy
    return proxy + "@" + "+".join(f"{k.replace('_', '-')}-{v}"
                                  for k, v in sorted(options.items()))


_NUMBER = (int, float)


def _is(value, kind: str) -> bool:
    """JSON-level type check of one value against a field's annotation (as text)."""
    kind = kind.replace(" ", "")
    if kind.endswith("|None"):
        if value is None:
            return True
        kind = kind[: -len("|None")]
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, _NUMBER) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("dict[str,float"):  # metrics (values may be None), scores, sensitivity
        return isinstance(value, dict) and all(
            isinstance(k, str) and (v is None and "None" in kind or isinstance(v, _NUMBER)
                                    and not isinstance(v, bool)) for k, v in value.items())
    return True  # nested dataclasses are checked by their own fields


def _check_types(obj, source: str) -> None:
    """Every field holds the JSON type its annotation says, so no reader meets a string where
    it adds numbers (a hand-edited or damaged record fails here, by name, once)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_types(value, source)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for v in value:
                _check_types(v, source)
        elif not _is(value, str(f.type)):
            raise MqbenchError(f"{source}: field `{f.name}` should be {f.type}, got "
                               f"{type(value).__name__} {str(value)[:40]!r}")


def _v1_to_v2(data: dict) -> dict:
    """Schema 1 -> 2: drop `spearman_top100` (Spearman over the top 100% = `spearman`)."""
    metrics = dict(data.get("metrics") or {})
    for suffix in ("", "_lo", "_hi"):
        if f"spearman_top100{suffix}" in metrics:
            value = metrics.pop(f"spearman_top100{suffix}")
            metrics.setdefault(f"spearman{suffix}", value)  # kept: `spearman` if both exist
    return {**data, "metrics": metrics, "schema_version": 2}


MIGRATIONS = {1: _v1_to_v2}  # from-version -> function returning the next version's dict


def migrate(data: dict, source: str = "record") -> dict:
    """`data` upgraded to RECORD_SCHEMA (a new dict; the argument is not changed)."""
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise MqbenchError(f"{source}: not an mqbench result record (no integer schema_version)")
    if version > RECORD_SCHEMA:
        raise MqbenchError(f"{source} has record schema {version}, newer than this mqbench's "
                           f"{RECORD_SCHEMA}; upgrade mqbench")
    while version < RECORD_SCHEMA:
        data = MIGRATIONS[version](data)
        version = data["schema_version"]
    return data
