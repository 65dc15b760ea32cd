"""`mqbench submit-check`: validate a new proxy file end to end, as CI does for a pull request.

Checks, in order, stopping at the first failure: the file parses to exactly one @proxy with
literal arguments and imports cleanly in the sandbox (contract); its registered name equals
its file name and is not taken by another proxy file (name); it passes the conformance suite
(mqbench.proxy.conformance) on each task; it scores on each task through the harness.
Records are written only when every check passed, so a failing submission leaves the
leaderboard untouched.

The submitted file is untrusted: it is never executed in this process. Its metadata comes
from parsing it (mqbench.proxy.contract); importing it, the conformance calls and every call
of the proxy run in mqbench.proxy.sandbox children, and the conformance comparisons are made
here on their plain-data results. Other proxy files (the name check) are parsed, never run.
What the proxy printed is kept in `Check.output`, apart from the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mqbench.board.store import save_record
from mqbench.errors import MqbenchError
from mqbench.paths import proxy_dirs
from mqbench.proxy.conformance import check_proxy
from mqbench.proxy.context import Stats
from mqbench.proxy.contract import expected_name, import_check, load_proxy_file
from mqbench.proxy.sandbox import Captured, check_limits, layers, marked, run_limited
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

    def __post_init__(self):
        check_limits(self.timeout, self.mem_mb)


@dataclass(frozen=True)
class Check:
    """One line of the summary, and what the proxy printed while it ran (never a verdict)."""

    name: str
    ok: bool
    detail: str
    output: str = ""


def name_clash(path: Path, name: str) -> str:
    """'' if `name` is free (or registered by this very file), else the clashing file.

    Other files are parsed, never executed; a file that does not parse registers nothing.
    """
    for folder in proxy_dirs():
        for other in sorted(folder.glob("*.py")):
            if other.name.startswith("_") or other.resolve() == path.resolve():
                continue
            try:
                if load_proxy_file(other).name == name:
                    return str(other)
            except MqbenchError:
                continue
    return ""


def name_problem(path: Path, name: str) -> str:
    """'' if `path` may register `name`, else the one-line reason."""
    clash = name_clash(path, name)
    if clash:
        return f"{name!r} is already registered by {clash}; rename your proxy"
    want = expected_name(path)
    if name != want:
        return (f"the registered name {name!r} must equal the file name: rename the file to "
                f"{name}.py or the proxy to {want!r}")
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

    def add(name, ok, detail, captured=()) -> bool:
        checks.append(Check(name, ok, detail, marked(captured)))
        report(checks[-1])
        return ok

    captured: list[Captured] = []
    try:
        p = load_proxy_file(path)  # parsed: the metadata is what the file literally says
        run_limited(import_check, (p.fn,), name=p.name, timeout=opts.timeout,
                    mem_mb=opts.mem_mb, capture=captured)
    except MqbenchError as exc:
        add("contract", False, str(exc), captured)
        return False, checks
    add("contract", True, f"proxy {p.name!r} v{p.version}, kind {p.kind}, paper "
        f"{p.paper or '(none given)'!r}, sha256 {p.source_sha256[:12]}", captured)
    problem = name_problem(path, p.name)
    if not add("name", not problem, problem or f"{p.name!r} matches the file name and is not "
               f"taken by another proxy file"):
        return False, checks
    add("isolation", True, f"{', '.join(layers())}; {opts.timeout:g} s and {opts.mem_mb} MiB "
        f"per call")

    records = []
    eval_opts = EvalOptions(bootstrap=opts.bootstrap, progress=opts.progress,
                            timeout=opts.timeout, mem_mb=opts.mem_mb)
    for task in tasks:
        stats = Stats(open_bench(task, opts.progress))
        stats.compute_all()  # shipped to the sandbox once, read-only
        captured = []

        def run(fn, args, calls, captured=captured):
            return run_limited(fn, args, name=p.name, timeout=calls * opts.timeout,
                               mem_mb=opts.mem_mb, capture=captured)
        try:
            check_proxy(p, stats, run=run)
            broken = ""
        except MqbenchError as exc:
            broken = str(exc)
        if not add("conformance", not broken, f"{task.name}: {broken}" if broken else
                   f"{task.name}: shape, finite, deterministic, no mutation, order-free",
                   captured):
            return False, checks
        try:
            rec = evaluate_proxy(p, task, eval_opts)
        except MqbenchError as exc:
            add("score", False, f"{task.name}: {exc}")
            return False, checks
        m = rec.metrics
        acc = [d.acc for d in rec.downstream if d.metric == "size"]
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
