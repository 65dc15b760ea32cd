"""The escapes and cheats of issue 19, each tried by a hostile proxy file (tests/proxy/hostile/) and
shown contained: the attack's effect is checked from outside (marker files, listeners, the
record, the process table), not only the error message."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import mqbench
from mqbench.board.submit import SubmitOptions, check_submission, name_clash
from mqbench.cli.main import main
from mqbench.cli.proxy import print_check
from mqbench.errors import MqbenchError
from mqbench.paths import REPO_ROOT
from mqbench.proxy import sandbox
from mqbench.proxy.conformance import check_proxy
from mqbench.proxy.context import Stats
from mqbench.proxy.contract import (
    Proxy,
    check_scores,
    damage_matrix,
    expected_name,
    get_proxy,
    list_proxies,
    load_proxy_file,
)
from mqbench.proxy.sandbox import VIEW_FIELDS, run_limited, stats_view
from mqbench.scoring.harness import EvalOptions, evaluate_proxy
from mqbench.task.spec import load_task
from mqbench.truth.bench import open_bench
from mqbench.truth.build import ensure_table

HOSTILE = Path(__file__).resolve().parent / "hostile"
OPTS = SubmitOptions(tasks=("tiny",), timeout=10, mem_mb=1024, bootstrap=0, progress=False)
EVAL = EvalOptions(bootstrap=0, timeout=10, mem_mb=1024, progress=False, downstream=False)
FAKE = SimpleNamespace(modules=tuple(f"m{i}" for i in range(6)))  # enough for run_limited


def hostile(name: str, folder: Path, **tokens) -> Path:
    """Copy tests/proxy/hostile/<name>.py into `folder`, replacing __TOKEN__ placeholders."""
    text = (HOSTILE / f"{name}.py").read_text()
    for key, value in tokens.items():
        text = text.replace(f"__{key}__", str(value))
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


@pytest.fixture
def stats(env):
    s = Stats(open_bench(load_task("tiny"), progress=False))
    s.compute_all()
    return s


def _fails(path: Path, stage: str, *words: str) -> str:
    ok, checks = check_submission(path, OPTS, report=lambda c: None)
    assert not ok and checks[-1].name == stage and not checks[-1].ok, checks
    detail = checks[-1].detail
    assert "\n" not in detail and all(w in detail for w in words), detail
    return detail


# --------------------------------------------------------------------------- 1: plain data only
def test_pickled_result_never_runs_in_the_parent(env, tmp_path):
    mark = tmp_path / "pwned"
    p = load_proxy_file(hostile("pickle_eval", tmp_path, MARK=mark))
    rec = evaluate_proxy(p, load_task("tiny"), EVAL)
    assert not mark.exists()  # the list subclass crossed as plain numbers
    assert all(isinstance(v, float) and np.isfinite(v) for v in rec.sensitivity.values())


def test_result_pipe_forgery_is_malformed(env, tmp_path):
    mark = tmp_path / "pwned"
    p = load_proxy_file(hostile("forged_result", tmp_path, MARK=mark))
    with pytest.raises(MqbenchError, match="malformed result") as err:
        evaluate_proxy(p, load_task("tiny"), EVAL)
    assert "\n" not in str(err.value) and not mark.exists()


# --------------------------------------------------------------------------- 2: listing runs nothing
def test_listing_and_name_checks_never_execute(env, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "contrib"
    folder.mkdir()
    mark = tmp_path / "listed"
    path = hostile("runs_at_import", folder, MARK=mark)
    monkeypatch.setenv("MQBENCH_PROXIES", str(folder))
    found = list_proxies()
    assert found["runs_at_import"].paper == "hostile fixture"
    assert get_proxy("runs_at_import").path == str(path)
    assert name_clash(tmp_path / "mine.py", "runs_at_import") == str(path)
    assert "runs_at_import" in mqbench.list_proxies()
    assert main(["proxies"]) == 0 and "runs_at_import" in capsys.readouterr().out
    assert not mark.exists()
    # run for real, it only ever runs in the sandbox, which refuses the write
    with pytest.raises(MqbenchError, match="broke the sandbox: writing"):
        run_limited(found["runs_at_import"].fn, (FAKE,), name="runs_at_import")
    assert not mark.exists()


def test_computed_metadata_is_refused(env, tmp_path):
    path = hostile("computed_paper", tmp_path)
    with pytest.raises(MqbenchError, match=r"@proxy\(paper=\.\.\.\) must be a literal"):
        load_proxy_file(path)
    _fails(path, "contract", "must be a literal")


def test_metadata_is_the_files_not_the_runs(env, tmp_path):
    path = hostile("renamed_at_run", tmp_path)
    assert load_proxy_file(path).name == "renamed_at_run"  # what the file literally says
    _fails(path, "contract", "registered name 'weight_norm'", "renamed_at_run")


def test_registered_name_is_the_file_name(env, tmp_path):
    path = tmp_path / "mine.py"
    path.write_text((HOSTILE / "huge_values.py").read_text().replace(
        'name="huge_values"', 'name="not_mine"'))
    _fails(path, "name", "'not_mine' must equal the file name", "mine.py")
    # every shipped proxy follows the rule, and the records keep their names
    records = {p.stem for p in (REPO_ROOT / "leaderboard" / "records").glob("*/*.json")}
    shipped = list_proxies()
    for name, p in shipped.items():
        assert name == expected_name(p.path), p.path
    # a variant record (`hawqv2@hessian-bn-unfolded`: other harness options) is its proxy's
    assert {r.partition("@")[0] for r in records} <= set(shipped)
    assert expected_name("proxies/tap_best.py") == "tap" == shipped["tap"].name


# --------------------------------------------------------------------------- 3: no ground truth
def _truth_files(shared) -> dict[str, Path]:
    cache = shared / "cache"
    out = {"stats-cache": next(cache.rglob("*.pt"))}
    for suffix in ("duckdb", "parquet"):
        found = sorted(cache.rglob(f"*.{suffix}"))
        if found:
            out[f"cached-{suffix}"] = found[0]
    shipped = sorted((REPO_ROOT / "tasks" / "artifacts").glob("*/table.parquet"))
    if shipped:
        out["shipped-table"] = shipped[0]
    out["record"] = next((REPO_ROOT / "leaderboard" / "records").glob("*/*.json"))
    out["task-file"] = shared / "tasks" / "tiny.toml"
    out["passwd"] = Path("/etc/passwd")
    return out


@pytest.mark.parametrize("which", ["stats-cache", "cached-duckdb", "shipped-table", "record",
                                   "task-file", "passwd"])
def test_ground_truth_is_unreadable(which, env, shared, tmp_path):
    ensure_table(load_task("tiny"), progress=False)  # the cache holds the built table
    files = _truth_files(shared)
    if which not in files:
        pytest.skip(f"no {which} on this machine")
    target = files[which]
    assert target.is_file() and os.access(target, os.R_OK)  # readable here
    path = hostile("read_truth", tmp_path, TARGET=target)
    _fails(path, "conformance", "broke the sandbox: reading", str(target.resolve()))
    assert not (env / "records").exists()


def test_memory_holds_no_ground_truth(env, stats, tmp_path):
    task = load_task("tiny")
    table = ensure_table(task, progress=False)  # noqa: F841 - held here while the proxy runs
    bench = open_bench(task, progress=False)  # noqa: F841
    p = load_proxy_file(hostile("memory_truth", tmp_path))
    raw = run_limited(p.fn, (stats,), name=p.name)
    # found == 0: no DataFrame, Stats, bench or caller frame in the sandbox's memory
    assert raw == [float(i + 1) for i in range(len(stats.modules))]
    assert p.fn(stats)[0] > 1  # in this process the same code finds them: the probe works


# --------------------------------------------------------------------------- 4: leaks
def test_environment_secrets_do_not_leak(env, monkeypatch, tmp_path):
    monkeypatch.setenv("MQBENCH_TEST_SECRET", "hunter2")
    p = load_proxy_file(hostile("env_leak", tmp_path))
    many = SimpleNamespace(modules=tuple(range(2000)))
    text = "".join(chr(int(v)) for v in run_limited(p.fn, (many,), name=p.name) if v < 128)
    assert "PATH=" in text and "hunter2" not in text and "MQBENCH" not in text


def test_printed_verdicts_are_the_proxys_not_ours(env, tmp_path, capsys):
    opts = SubmitOptions(tasks=("tiny",), timeout=10, mem_mb=1024, bootstrap=0,
                         progress=False, record=False)
    ok, checks = check_submission(hostile("fake_verdicts", tmp_path), opts,
                                  report=lambda c: None)
    assert ok, checks
    assert not any("+0.999" in c.detail or "faked" in c.detail for c in checks)
    out = next(c for c in checks if c.name == "conformance").output
    # every line it printed sits behind the mark, none starts like a verdict line
    assert "printed on its stdout:\n    |   PASS  score       tiny: Spearman +0.999" in out
    assert "printed on its stderr:" in out and "faked" in out and "\x1b" not in out
    assert all(line.startswith("    | ") for line in out.split("\n")), out
    for c in checks:  # as `mqbench submit-check` prints them
        print_check(c)
    verdicts = [l for l in capsys.readouterr().out.splitlines() if l.startswith(("  PASS", "  FAIL"))]
    assert len(verdicts) == len(checks) and not any("0.999" in l for l in verdicts)


# --------------------------------------------------------------------------- 5: Unix sockets
def test_pathname_unix_socket_is_unreachable(env, tmp_path):
    folder = tempfile.mkdtemp(prefix="mqs-", dir="/tmp")  # short: sun_path holds 108 bytes
    sock_path = os.path.join(folder, "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen()
    srv.settimeout(0.2)
    got, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn.recv(16))
                conn.close()
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(sock_path)  # reachable from here: the listener works
        probe.sendall(b"hi")
        probe.close()
        time.sleep(0.5)
        assert got == [b"hi"]
        p = load_proxy_file(hostile("unix_socket", tmp_path, SOCK=sock_path))
        fd, _, err = run_limited(p.fn, (FAKE,), name=p.name)[:3]
        assert fd == -1 and err == errno.EACCES  # seccomp: no socket at all
        time.sleep(0.5)
        assert got == [b"hi"]
    finally:
        stop.set()
        t.join(2)
        srv.close()
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- 6: no survivors
def _descendants(pid: int) -> list[int]:
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def test_no_daemon_survives_the_call(env, tmp_path):
    mark = tmp_path / "daemon"
    p = load_proxy_file(hostile("daemon", tmp_path, MARK=mark))
    captured = []
    pid, clone, err = run_limited(p.fn, (FAKE,), name=p.name, capture=captured)[:3]
    assert pid == -1 and clone == -1 and err == errno.EPERM  # no fork, no plain clone
    worker = sandbox._WORKER.proc.pid
    time.sleep(3.5)  # past the lingering thread's 3 s
    assert len(_descendants(worker)) == 1  # only the worker's PID 1 itself: no proxy left
    assert not mark.exists() and "still alive" not in captured[0].stdout
    with pytest.raises(MqbenchError, match=r"starting a process \(os.fork\)"):
        run_limited(os.fork, name="forker")


# --------------------------------------------------------------------------- 7: checks in the caller
@pytest.mark.parametrize("name, rule", [
    ("patched_checks", "mutated the statistics"),  # its faked fingerprint gives it away
    ("seeded_per_process", "is not deterministic (two processes differ"),
    ("hidden_mutation", "is not deterministic (two calls")])
def test_conformance_is_judged_by_the_caller(name, rule, env, tmp_path):
    _fails(hostile(name, tmp_path), "conformance", rule)
    assert not (env / "records").exists()


# --------------------------------------------------------------------------- 8: memory and disk
def test_memfd_is_denied(tmp_path):
    p = load_proxy_file(hostile("memfd_hog", tmp_path))
    with pytest.raises(MqbenchError, match=r"raised PermissionError: .*\(memfd_hog.py line 9\)"):
        run_limited(p.fn, (FAKE,), name=p.name, mem_mb=1024)


def test_scratch_disk_is_capped(tmp_path):
    p = load_proxy_file(hostile("disk_hog", tmp_path))
    start = time.perf_counter()
    with pytest.raises(MqbenchError, match="exceeded its 64 MiB scratch-disk limit"):
        run_limited(p.fn, (FAKE,), name=p.name, disk_mb=64)
    assert time.perf_counter() - start < 20
    with pytest.raises(MqbenchError, match="writing /dev/shm"):
        run_limited(shutil.copyfile, ("/dev/null", "/dev/shm/mqbench-hog"), name="shm")
    assert not os.path.exists("/dev/shm/mqbench-hog")


# --------------------------------------------------------------------------- 9: signals
def test_the_harness_cannot_be_signalled(tmp_path):
    p = load_proxy_file(hostile("kill_harness", tmp_path, HARNESS_PID=os.getpid()))
    rcs = run_limited(p.fn, (FAKE,), name=p.name)[:5]
    assert rcs == [-1.0] * 5  # seccomp: signals reach only the proxy itself
    with open(f"/proc/{os.getpid()}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state != "T"  # not stopped
    for target in (os.getpid(), 1, -1):
        with pytest.raises(MqbenchError, match=f"sending signal 9 to process {target}"):
            run_limited(os.kill, (target, signal.SIGKILL), name="killer")
    assert run_limited(sum, ([1, 2],), name="after") == 3  # the worker is fine too


# --------------------------------------------------------------------------- 10: deadlines
def test_partial_header_cannot_hold_the_caller(tmp_path):
    p = load_proxy_file(hostile("partial_header", tmp_path))
    start = time.perf_counter()
    with pytest.raises(MqbenchError, match="ran longer than its 2 s time limit"):
        run_limited(p.fn, (FAKE,), name=p.name, timeout=2)
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------------- 11: huge values
def test_huge_finite_values_score_without_a_traceback(env, tmp_path):
    p = load_proxy_file(hostile("huge_values", tmp_path))
    rec = evaluate_proxy(p, load_task("tiny"), EvalOptions(bootstrap=0, timeout=10,
                                                           progress=False))
    assert rec.downstream and all(np.isfinite(list(rec.scores.values())))
    assert rec.metrics["spearman"] is not None


def test_rescaling_is_exact_and_keeps_the_order():
    stats = SimpleNamespace(modules=("a", "b", "c"), units=("a", "b", "c"), unit_of=(0, 1, 2),
                            weight_bits=(2, 8), perturbation=np.array([[4.0, 1.0]] * 3))
    p = Proxy("x", 1, "", "layer", None)
    raw = [1.7e308, 1e308, 3.0]
    damage, sens = damage_matrix(p, raw, stats)
    assert np.all(np.isfinite(damage)) and np.abs(damage).max() <= 2.0 ** 60
    ratio = sens / np.asarray(raw)
    assert np.all(ratio == ratio[0])  # one power of two for all: ratios unchanged
    assert np.log2(ratio[0]) == int(np.log2(ratio[0]))
    cfg = Proxy("c", 1, "", "config", None)
    assert np.all(np.isfinite(check_scores(cfg, [-1.7e308, 1.7e308, 0.0], 3)))
    for bad, rule in (([1.0, "2", 3.0], "holding a str"), ([1.0, True, 2.0], "holding a bool"),
                      ([1.0, None, 2.0], "holding a NoneType"), ([float("inf")] * 3, "NaN")):
        with pytest.raises(MqbenchError, match=rule):
            damage_matrix(p, bad, stats)


# --------------------------------------------------------------------------- clumsy proxies
def test_errors_cite_the_proxy_file(env, tmp_path):
    p = load_proxy_file(hostile("deep_error", tmp_path))
    with pytest.raises(MqbenchError, match=r"raised AttributeError: .*\(deep_error.py line 9\)$") as err:
        evaluate_proxy(p, load_task("tiny"), EVAL)
    assert "ops.py" not in str(err.value)


def test_torch_allocation_failure_names_mem_mb(env, tmp_path):
    p = load_proxy_file(hostile("torch_alloc", tmp_path))
    with pytest.raises(MqbenchError, match="exceeded its 1024 MiB memory limit; .* --mem-mb"):
        evaluate_proxy(p, load_task("tiny"), EVAL)


# --------------------------------------------------------------------------- 12: bad limits
@pytest.mark.parametrize("field, value", [("timeout", 0), ("timeout", -1),
                                          ("timeout", float("nan")), ("mem_mb", 0),
                                          ("mem_mb", -1)])
def test_bad_limits_are_refused_up_front(field, value):
    flag = "--timeout" if field == "timeout" else "--mem-mb"
    for cls in (SubmitOptions, EvalOptions):
        with pytest.raises(MqbenchError, match=flag) as err:
            cls(**{field: value})
        assert "\n" not in str(err.value)


def test_record_json_has_only_plain_values(env, tmp_path):
    """A record built from sandboxed output is JSON as written: no object sneaks through."""
    p = load_proxy_file(hostile("pickle_eval", tmp_path, MARK=tmp_path / "m"))
    rec = evaluate_proxy(p, load_task("tiny"), EVAL)
    assert json.loads(rec.to_json())["sensitivity"] == rec.sensitivity


# --------------------------------------------------------------------------- no false alarms
@pytest.mark.parametrize("name", sorted(list_proxies()))
def test_every_shipped_proxy_passes_the_sandboxed_suite(name, stats):
    """The confinement refuses attacks, not the imports and reads real proxies make."""
    def run(fn, args, calls):
        return run_limited(fn, args, name=name, timeout=60 * calls, mem_mb=2048)
    check_proxy(list_proxies()[name], stats, run=run)


def test_the_view_offers_every_statistic_and_nothing_else(stats):
    """The sandbox's StatsView keeps up with Stats: all its statistics, none of its plumbing."""
    public = {n for n in [*dir(Stats), *vars(stats)] if not n.startswith("_")}
    # plumbing (where it is cached, which batch and Hessian variant it is) stays outside
    plumbing = {"task", "folder", "shared_folder", "path", "batch_seed", "hessian_bn",
                "compute_all"}
    assert public - plumbing == set(VIEW_FIELDS)
    view = stats_view(stats)
    assert all(getattr(view, n) is getattr(stats, n) for n in VIEW_FIELDS)
