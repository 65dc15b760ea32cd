"""`mqbench submit-check`: validate a new proxy file end to end, as CI does for a pull request.

Checks, in order, stopping at the first failure: the file imports and defines one @proxy
(contract); its name is not taken by a different registered proxy file; it passes the
conformance suite (mqbench.proxy.conformance) on each task; it scores on each task through the
harness. Records are written only when every check passed, so a failing submission leaves
the leaderboard untouched.

The submitted file is untrusted: it is never imported in this process. Importing it,
the conformance suite and every call of the proxy run in mqbench.proxy.sandbox children (no
network, no writes outside a scratch directory, time and memory limits); the harness gets
a Proxy whose function loads the file inside the child.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mqbench.board.store import save_record
from mqbench.errors import MqbenchError
from mqbench.paths import proxy_dirs
from mqbench.proxy.conformance import check_proxy
from mqbench.proxy.context import Stats
from mqbench.proxy.contract import Proxy, load_proxy_file
from mqbench.proxy.sandbox import layers, run_limited
from mqbench.scoring.harness import EvalOptions, evaluate_proxy
from mqbench.task.spec import load_task
from mqbench.truth.bench import open_bench

DEFAULT_TASKS = ("fmnist-resnet8", "fmnist-vit")


@dataclass(frozen=True)
class SubmitOptions:
    """How to check a submission."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    timeout: float = 120.0  # seconds per proxy call
    mem_mb: int = 4096
    bootstrap: int = 1000
    record: bool = True
    progress: bool = True


@dataclass(frozen=True)
class Check:
    """One line of the summary."""

    name: str
    ok: bool
    detail: str


def _inspect(path: str) -> dict:
    """(In the sandbox) import the file and return its proxy's metadata."""
    p = load_proxy_file(path)
    return {"name": p.name, "version": p.version, "paper": p.paper, "kind": p.kind,
            "sha256": p.source_sha256, "doc": p.doc}


def _call_file(path: str, *args):
    """(In the sandbox) import the file and call its proxy."""
    return load_proxy_file(path).fn(*args)


def _conform(path: str, stats) -> str:
    """(In the sandbox) run the conformance suite; '' when it passes, else the broken rule."""

    try:
        check_proxy(load_proxy_file(path), stats)
    except MqbenchError as exc:
        if "raised MemoryError" in str(exc):
            raise MemoryError from None  # so the sandbox names the memory limit
        return str(exc)
    return ""


def isolated_proxy(path: Path, meta: dict) -> Proxy:
    """A Proxy whose calls import `path` inside the sandboxed child, never in this process."""
    return Proxy(meta["name"], meta["version"], meta["paper"], meta["kind"],
                 functools.partial(_call_file, str(path)), str(path), meta["sha256"],
                 meta["doc"])


def name_clash(path: Path, name: str) -> str:
    """'' if `name` is free (or registered by this very file), else the clashing file."""
    for folder in proxy_dirs():
        for other in sorted(folder.glob("*.py")):
            if other.name.startswith("_") or other.resolve() == path.resolve():
                continue
            if load_proxy_file(other).name == name:  # registered proxies are trusted code
                return str(other)
    return ""


def check_submission(path: str | Path, opts: SubmitOptions = SubmitOptions(),
                     report=print) -> tuple[bool, list[Check]]:
    """Run every check on the proxy file `path`; `report` gets each Check as it finishes.

    Bad input (missing file, unknown task) raises MqbenchError before anything runs.
    """

    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise MqbenchError(f"proxy file {path} does not exist or is not a .py file; pass the "
                           f"path of your proxies/NAME.py")
    tasks = [load_task(t) for t in opts.tasks]  # unknown names fail here, with did-you-mean
    checks: list[Check] = []

    def add(name, ok, detail) -> bool:
        checks.append(Check(name, ok, detail))
        report(checks[-1])
        return ok

    limits = {"timeout": opts.timeout, "mem_mb": opts.mem_mb}
    try:
        meta = run_limited(_inspect, (str(path),), name=path.stem, **limits)
    except MqbenchError as exc:
        add("contract", False, str(exc))
        return False, checks
    add("contract", True, f"proxy {meta['name']!r} v{meta['version']}, kind {meta['kind']}, "
        f"paper {meta['paper'] or '(none given)'!r}, sha256 {meta['sha256'][:12]}")
    clash = name_clash(path, meta["name"])
    if not add("name", not clash, f"{meta['name']!r} is already registered by {clash}; rename "
               f"your proxy" if clash else f"{meta['name']!r} is not taken by another proxy file"):
        return False, checks
    add("isolation", True, f"{', '.join(layers())}; {opts.timeout:g} s and {opts.mem_mb} MiB "
        f"per call")

    p = isolated_proxy(path, meta)
    records = []
    eval_opts = EvalOptions(bootstrap=opts.bootstrap, progress=opts.progress, **limits)
    for task in tasks:
        stats = Stats(open_bench(task, opts.progress))
        stats.compute_all()  # before the fork: the child only reads them
        try:
            # the suite calls the proxy three times: allow three calls' time
            broken = run_limited(_conform, (str(path), stats), name=meta["name"],
                                 timeout=3 * opts.timeout, mem_mb=opts.mem_mb)
        except MqbenchError as exc:
            broken = str(exc)
        if not add("conformance", not broken, f"{task.name}: {broken}" if broken else
                   f"{task.name}: shape, finite, deterministic, no mutation, order-free"):
            return False, checks
        try:
            rec = evaluate_proxy(p, task, eval_opts)
        except MqbenchError as exc:
            add("score", False, f"{task.name}: {exc}")
            return False, checks
        m = rec["metrics"]
        acc = [d["acc"] for d in rec["downstream"] if d["metric"] == "size"]
        add("score", True, f"{task.name}: Spearman {_f(m.get('spearman'))}, @top20% "
            f"{_f(m.get('spearman_top20'))}, layer {_f(m.get('layer_spearman'))}, "
            f"ILP acc {'/'.join(f'{a:.3f}' for a in acc) or '—'}")
        records.append(rec)
    if opts.record:
        for rec in records:
            saved = save_record(rec)
            add("record", True, f"{saved.path} ({saved.status})")
    return True, checks


def _f(v) -> str:
    return "—" if v is None else f"{v:+.3f}"
