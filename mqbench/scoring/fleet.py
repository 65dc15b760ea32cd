"""Evaluating many proxies on many tasks through a build backend (`mqbench eval --backend`).

The unit of work is one task with the proxies to score on it: the worker computes (or loads)
the task's statistics once and runs every proxy through the usual isolated harness, and
returns the records as plain dictionaries; this process turns them back into validated
`Record`s (`Record.from_dict`) and the caller stores them. Tasks run side by side on the
backend's workers; proxies are named by file path, so a worker loads the same code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import Proxy, get_proxy
from mqbench.scoring.harness import EvalOptions, evaluate_proxy
from mqbench.scoring.record import Record
from mqbench.task.spec import Task
from mqbench.truth import backends as B
from mqbench.truth.work import driver_env


@dataclass(frozen=True)
class EvalUnit:
    """One task and the proxy files to score on it."""

    task: Task
    proxies: tuple[str, ...]
    opts: EvalOptions
    env: tuple[tuple[str, str], ...] = ()


def evaluate_unit(unit: EvalUnit) -> list[dict]:
    """Worker entry point: per proxy of `unit`, {"record": the record as a dict} or
    {"proxy": path, "error": the one-line reason it could not be scored on this task}."""
    for k, v in unit.env:
        os.environ[k] = v
    opts = dataclasses.replace(unit.opts, progress=False)
    out = []
    for path in unit.proxies:
        try:
            out.append({"record": evaluate_proxy(get_proxy(path), unit.task, opts).to_dict()})
        except MqbenchError as exc:  # e.g. a CNN-only proxy on a language model
            out.append({"proxy": path, "error": str(exc)})
    return out


def evaluate_many(proxies: list[Proxy], tasks: list[Task], opts: EvalOptions,
                  backend: B.Options) -> Iterator[Record | MqbenchError]:
    """Each proxy's record on each task, task by task as the backend finishes them, or the
    `MqbenchError` that says why that proxy could not be scored on that task."""
    module = B.load_module(backend.backend)
    module.check(backend)
    units = [EvalUnit(t, tuple(p.path for p in proxies), opts, driver_env()) for t in tasks]
    for i, results in module.run(evaluate_unit, units, backend):
        for r in results:
            if "error" in r:
                yield MqbenchError(r["error"])
            else:
                yield Record.from_dict(r["record"], source=f"{units[i].task.key} worker")
