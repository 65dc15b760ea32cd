"""Where build work runs: one interface, one short module per engine (local, ray, slurm).

A backend is a module with two functions:
- `check(opts)`: validate the engine within seconds (address reachable, `sbatch` on PATH,
  partition exists); raise `MqbenchError` with a one-line message, touching nothing.
- `run(fn, batches, opts)`: run `fn(batch)` for every batch anywhere, yield `(index, result)`
  as each finishes (any order); retry a batch whose worker died (`opts.retries` times), raise
  `MqbenchError` on a batch that fails in Python, and stop the remaining work on exit.
Results must be plain data (`mqbench.truth.work.measure_batch` returns tuples); the caller
stores them, so a backend never writes a table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import tomllib

from mqbench.errors import MqbenchError

# name -> module; imported on use so that ray/submitit load only when chosen
BACKENDS = {"local": "mqbench.truth.backends.local", "ray": "mqbench.truth.backends.ray",
            "slurm": "mqbench.truth.backends.slurm"}


@dataclass(frozen=True)
class Options:
    """How and where a build runs; fields not used by a backend are ignored by it."""

    backend: str = "local"
    jobs: int = 1  # local: worker processes; ray without an address: CPUs of the local instance
    retries: int = 2  # times a batch whose worker died is run again
    batch_rows: int = 64  # planned rows per batch (one prefix-shared group)
    gpus: int = 0  # GPUs per batch (ray) / per array task (slurm); set by --device cuda
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a private local instance
    partition: str | None = None  # slurm
    time_min: int = 60  # slurm: time limit per array task
    parallelism: int = 0  # slurm: array tasks running at once (0: no limit)
    log_dir: Path | None = None  # slurm: submitit folder (one log per array task)
    executor: str = "slurm"  # submitit cluster: slurm, or local/debug (tests, no SLURM)
    sbatch: dict = field(default_factory=dict)  # slurm: extra sbatch parameters (account, qos...)


def load_module(name: str):
    """The backend module called `name`."""
    if name not in BACKENDS:
        raise MqbenchError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def read_config(path: Path, opts: Options) -> Options:
    """`opts` with the values of a small TOML file (`[slurm]` / `[ray]` keys named like the
    Options fields; unknown keys go to sbatch as extra parameters under [slurm])."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MqbenchError(f"cluster config {path}: {exc}; fix the file or drop --cluster-config")
    known = {f.name for f in fields(Options)} - {"backend", "sbatch"}
    values, extra = {}, dict(opts.sbatch)
    for section in ("slurm", "ray"):
        for k, v in data.get(section, {}).items():
            if k in known:
                values[k] = Path(v) if k == "log_dir" else v
            elif section == "slurm":
                extra[k] = v
            else:
                raise MqbenchError(f"cluster config {path}: unknown [ray] key {k!r}")
    return replace(opts, **values, sbatch=extra)
