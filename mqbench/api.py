"""The public API a researcher uses from a notebook or a script (re-exported by `mqbench`).

    import mqbench
    def wvar(stats): return {m: float(stats.weights[m].var()) for m in stats.modules}
    result = mqbench.evaluate(wvar, task="fmnist-resnet8")
    print(result.metrics["spearman"], result.downstream)

Everything here is a thin layer over the subpackages; the CLI uses the same functions.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.proxy.contract import Proxy, get_proxy
from mqbench.proxy.contract import list_proxies as _registry
from mqbench.quant.quantizer import LayerBits
from mqbench.quant.quantizer import quantize as _quantize
from mqbench.scoring.harness import BATCHES, EvalOptions, evaluate_proxy
from mqbench.scoring.record import Record
from mqbench.task.spec import DEFAULT_TASK, Task, load_task
from mqbench.task.spec import list_tasks as _task_registry
from mqbench.truth.build import ensure_table

__all__ = ["evaluate", "load_task", "load_table", "quantize", "list_proxies", "list_tasks",
           "LayerBits", "Record"]


def _as_task(task: str | Path | Task) -> Task:
    return task if isinstance(task, Task) else load_task(str(task))


def _as_proxy(proxy) -> tuple[Proxy, bool]:
    """The Proxy for a name, a file path, a decorated or a plain function; and whether it is
    untrusted code to isolate (files and registered names are; your own function is not)."""
    if isinstance(proxy, Proxy):
        return proxy, True
    if isinstance(proxy, (str, Path)):
        return get_proxy(str(proxy)), True
    if callable(proxy):
        meta = getattr(proxy, "__mqbench_proxy__", None)
        if meta is not None:
            return meta, False
        params = inspect.signature(proxy).parameters
        kind = "config" if len(params) >= 2 else "layer"
        return Proxy(getattr(proxy, "__name__", "function"), 1, "", kind, proxy), False
    raise MqbenchError(f"evaluate: expected a proxy function, file path or name, got "
                       f"{type(proxy).__name__}")


def evaluate(proxy, task: str | Path | Task = DEFAULT_TASK, *, bootstrap: int = 1000,
             downstream: bool = True, progress: bool = False,
             isolate: bool | None = None, batches: int = BATCHES) -> Record:
    """Score a proxy on a task; returns its result record (nothing is written).

    Args:
        proxy: a plain function of `stats` (a `layer` proxy; two arguments make it a `config`
            proxy), an `@proxy`-decorated function, a proxy file path or a registered name.
        task: a task name, a task .toml path or a loaded Task.
        isolate: run the proxy in the sandbox; by default files and names are isolated and
            your own functions run in this process.
        batches: calibration batches the proxy runs on (its variance; 1 = one batch).
    """
    p, untrusted = _as_proxy(proxy)
    opts = EvalOptions(bootstrap=bootstrap, downstream=downstream, progress=progress,
                       isolate=untrusted if isolate is None else isolate, batches=batches)
    return evaluate_proxy(p, _as_task(task), opts)


def load_table(task: str | Path | Task = DEFAULT_TASK, progress: bool = False) -> pd.DataFrame:
    """The task's verified ground-truth table as a DataFrame (one row per measurement),
    installed from the shipped copy or built on first use."""
    return ensure_table(_as_task(task), progress).rows.copy()


def quantize(model: nn.Module, config: Mapping[str, LayerBits | int], calibration, **kwargs):
    """Quantize `model` per layer (`{module name: LayerBits(w=4, a=8)}`, or weight bits as an
    int for weight-only) with mqbench's quantizer; see mqbench.quant.quantizer.quantize."""
    cfg = {k: (v if isinstance(v, LayerBits) else LayerBits(w=int(v))) for k, v in config.items()}
    return _quantize(model, cfg, calibration, **kwargs)


def list_proxies(pattern: str = "*") -> list[str]:
    """Registered proxy names matching a shell-style pattern (`emq*`)."""
    return sorted(n for n in _registry() if fnmatch.fnmatchcase(n, pattern))


def list_tasks(pattern: str = "*") -> list[str]:
    """Registered task names matching a shell-style pattern (`fmnist-*`)."""
    return sorted(n for n in _task_registry() if fnmatch.fnmatchcase(n, pattern))

