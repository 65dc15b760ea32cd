"""Argument groups shared by several commands, and the parsers of compound values.

Every command names tasks the same way (`--task`, repeatable, comma lists accepted); the
sandbox limits, `--bootstrap`, `--data-dir` and `--quiet` are defined once here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

from mqbench.errors import MqbenchError
from mqbench.task.spec import DEFAULT_TASK, QUANT_METHODS, Task, load_task
from mqbench.truth import backends as B


def add_tasks(p: argparse.ArgumentParser, default: str = f"the bundled task, {DEFAULT_TASK}",
              what: str = "task") -> None:
    p.add_argument("--task", action="append", metavar="TASK",
                   help=f"{what}: a name or a path to a task .toml (NAME@METHOD: under another "
                   f"quantization method); repeat or give a comma list for several (default: "
                   f"{default})")
    p.add_argument("--method", choices=QUANT_METHODS, default=None,
                   help="quantization method for every named task, overriding its "
                   "quant.method (rtn: round to nearest, the default; gptq: GPTQ on the same "
                   "grid); tables, statistics and records are kept apart per method")


def split_names(values: list[str] | None) -> list[str]:
    """Names from a repeated option whose values may be comma lists, in order, deduplicated."""
    names: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if part and part not in names:
                names.append(part)
    return names


def task_names(args, default: tuple[str, ...] = (DEFAULT_TASK,)) -> list[str]:
    """The tasks named by --task (repeated and/or comma-separated), else `default`."""
    return split_names(args.task) or list(default)


def tasks(args, default: tuple[str, ...] = (DEFAULT_TASK,)) -> list[Task]:
    """The named tasks, loaded (a misspelt one fails before any work starts)."""
    return [load_task(n, getattr(args, "method", None)) for n in task_names(args, default)]


def one_task(args, command: str, default: str = DEFAULT_TASK) -> Task:
    names = task_names(args, (default,))
    if len(names) != 1:
        raise MqbenchError(f"`mqbench {command}` works on one task; got {', '.join(names)}")
    return load_task(names[0], getattr(args, "method", None))


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset folder (also $MQBENCH_DATA)")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"need a finite number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"need an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"need an integer >= 0, got {text!r}")
    return value


def add_limits(p: argparse.ArgumentParser) -> None:
    """The sandbox limits of one proxy call."""
    p.add_argument("--timeout", type=positive_float, default=120.0,
                   help="seconds allowed per proxy call (default 120)")
    p.add_argument("--mem-mb", type=positive_int, default=4096,
                   help="memory allowed to the proxy in MiB (default 4096)")


def add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=nonnegative_int, default=1000,
                   help="bootstrap resamples for the confidence intervals (default 1000; "
                   "0: no intervals)")


def shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def parse_bits(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, sep, bits = part.partition("=")
        if not sep or not bits.strip().isdigit():
            raise MqbenchError(f"--bits: expected NAME=BITS[,NAME=BITS...], got {part!r}")
        out[name.strip()] = int(bits)
    return out


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cpu", "cuda", "auto"],
                   help="where configurations are evaluated (also $MQBENCH_DEVICE; "
                   "default cpu; `cuda:N` through the variable)")


def apply_environment(args) -> None:
    """Flags that stand for environment variables (read deep inside the subpackages)."""
    for flag, var in (("data_dir", "MQBENCH_DATA"), ("device", "MQBENCH_DEVICE"),
                      ("output", "MQBENCH_LEADERBOARD")):
        if getattr(args, flag, None):
            os.environ[var] = str(getattr(args, flag))


ENVIRONMENT = """environment:
  MQBENCH_CACHE        cache of tables, weights, statistics (default ~/.cache/mqbench)
  MQBENCH_TASKS        extra folders of task .toml files (os.pathsep-separated)
  MQBENCH_PROXIES      extra folders of proxy files
  MQBENCH_LEADERBOARD  leaderboard folder: records, index, tables (default ./leaderboard)
  MQBENCH_DATA         dataset folder (as --data-dir)
  MQBENCH_DEVICE       cpu | cuda | cuda:N | auto (as --device)
  MQBENCH_PYDOCS       folder of the Python docs corpus (default Debian's python3.11-doc)
  RAY_ADDRESS          Ray cluster for --backend ray (as --ray-address)"""


def add_backend(p: argparse.ArgumentParser, build: bool = True) -> None:
    """Where the work runs: --backend and each engine's settings (`build`: a table build's
    batch size and --dry-run too)."""
    g = p.add_argument_group("backends (see README: Building tables on a cluster)")
    g.add_argument("--backend", choices=["local", "ray", "slurm"], default="local",
                   help="local worker processes (default), a Ray cluster, or a SLURM job array "
                   "through submitit" + ("; any mix fills the same table" if build else
                                         "; one work unit per task"))
    if build:
        g.add_argument("--batch-rows", type=positive_int, default=64, metavar="N",
                       help="planned rows per batch, the unit of work and of retry (default "
                       "64)")
    g.add_argument("--retries", type=nonnegative_int, default=2, metavar="N",
                   help="times a batch whose worker died is run again (default 2)")
    g.add_argument("--ray-address", metavar="HOST:PORT",
                   help="Ray cluster to join (default $RAY_ADDRESS; none: a private local "
                   "instance with --jobs CPUs)")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    g.add_argument("--time-min", type=positive_int, default=60, metavar="MIN",
                   help="SLURM time limit per array task in minutes (default 60)")
    g.add_argument("--array-parallelism", type=nonnegative_int, default=0, metavar="N",
                   help="SLURM array tasks running at once (default 0: no limit)")
    g.add_argument("--log-dir", type=Path, metavar="DIR",
                   help="SLURM logs, one per array task (default $MQBENCH_CACHE/slurm-logs)")
    g.add_argument("--cluster-config", type=Path, metavar="FILE",
                   help="TOML with [slurm] keys (partition, time_min, parallelism, log_dir, "
                   "and any sbatch parameter such as account or qos) or [ray] ray_address")
    if build:
        g.add_argument("--dry-run", action="store_true",
                       help="print the plan (rows, batches) and an estimate from one timed "
                       "batch; write nothing")


def backend_options(args, jobs: int):
    """The backends.Options the flags describe (a --cluster-config file, then the flags)."""
    device = os.environ.get("MQBENCH_DEVICE", "cpu")
    opts = B.Options(args.backend, jobs=jobs, retries=args.retries,
                     batch_rows=getattr(args, "batch_rows", 64),
                     gpus=1 if device.startswith("cuda") else 0)
    if args.cluster_config:
        opts = B.read_config(args.cluster_config, opts)
    flags = {"ray_address": args.ray_address, "partition": args.partition,
             "log_dir": args.log_dir}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.time_min != 60:
        flags["time_min"] = args.time_min
    if args.array_parallelism:
        flags["parallelism"] = args.array_parallelism
    return dataclasses.replace(opts, **flags)
