"""The sandbox: clean worker, no network, no writes outside scratch, limits, one-line errors,
overhead. The escapes of issue 19 are in tests/test_sandbox_hostile.py."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mqbench.errors import MqbenchError
from mqbench.paths import REPO_ROOT
from mqbench.proxy import sandbox
from mqbench.proxy.sandbox import StatsView, check_limits, layers, printable, run_limited

REPO = str(REPO_ROOT)


# Functions the sandbox runs: module level, so the worker can import them by reference.
def _connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.close()
    return "connected"


def _raw_connect(port):
    """connect() through libc, below Python's audit hooks: only the kernel layers stop it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    if fd < 0:
        return ("socket", ctypes.get_errno())
    addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + bytes([127, 0, 0, 1])
    addr += b"\0" * 8
    rc = libc.connect(fd, addr, len(addr))
    return ("connect", rc, ctypes.get_errno())


def _raw_open(path, flags):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open(os.fsencode(str(path)), flags, 0o644)
    return fd, ctypes.get_errno()


def _write(path, text="x"):
    with open(path, "w") as f:
        f.write(text)
    return "wrote"


def _swallowing_write(path):
    try:
        _write(path)
    except OSError:
        pass
    return 1.0


def _use_scratch():
    import tempfile

    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write("t")
    os.makedirs(os.path.join(os.path.dirname(f.name), "sub"))
    with open(f.name) as g:
        return [os.path.dirname(f.name), g.read(), os.path.isdir(os.path.join(
            os.path.dirname(f.name), "sub"))]


def _spawn():
    import subprocess

    return subprocess.run(["true"], check=False).returncode


def _nan():
    return float("nan")


def _boom():
    raise ValueError("bad\nsecond line")


def _bomb():
    return bytearray(3 << 30)


def _torch_bomb():
    return torch.ones(1 << 31).sum().item()  # 8 GiB: torch's own "can't allocate memory"


def _sleep():
    time.sleep(30)


def _exit_early():
    os._exit(3)


def _segfault():
    ctypes.string_at(0)


class _BadMessage(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


def _bad_message():
    raise _BadMessage


def _threads():
    """torch's intra-op pool and Python threads still work (clone with CLONE_THREAD)."""
    out = []
    t = threading.Thread(target=lambda: out.append(1))
    t.start()
    t.join()
    torch.set_num_threads(2)
    return [out, float(torch.ones(1000, 1000).sum())]


def _values():
    return {"t": torch.tensor([1.5, 2.5]), "a": __import__("numpy").arange(3),
            "n": (1, 2.0, None, True, "s")}


def _return_object():
    return object()


def _pids():
    return [os.getpid(), os.getppid()]


def _env_and_cwd():
    return [dict(os.environ), os.getcwd()]


def test_layers_on_this_machine():
    got = layers()
    assert got[0].startswith("clean-worker") and "pidns" in got[0]
    for layer in ("mountns", "netns", "seccomp", "no-capabilities", "audit-hook", "rlimits"):
        assert layer in got
    assert any(x.startswith("landlock-abi") for x in got)
    assert any(x.startswith("tmpfs-scratch-") for x in got)


def test_child_cannot_connect_to_parent_loopback(server):
    port, hits = server
    assert _connect(port) == "connected"  # the parent can: the server works
    time.sleep(0.3)
    n = len(hits)
    assert n >= 1
    with pytest.raises(MqbenchError) as err:
        run_limited(_connect, (port,), name="net")
    assert "network access" in str(err.value) and "\n" not in str(err.value)
    time.sleep(0.3)
    assert len(hits) == n


def test_kernel_layers_block_raw_connect(server):
    port, hits = server
    assert _raw_connect(port)[:2] == ("connect", 0)  # unconfined it connects
    time.sleep(0.3)
    n = len(hits)
    assert run_limited(_raw_connect, (port,), name="raw") == ["socket", 13]  # seccomp: EACCES
    time.sleep(0.3)
    assert len(hits) == n


@pytest.mark.parametrize("where", ["repo", "tmp"])
def test_no_writes_outside_scratch(where, tmp_path):
    target = os.path.join(REPO if where == "repo" else "/tmp", f"mqbench-evil-{os.getpid()}.txt")
    try:
        with pytest.raises(MqbenchError, match=r"writing .* \(outside the scratch directory\)"):
            run_limited(_write, (target,), name="writer")
        assert not os.path.exists(target)
        # swallowing the refusal does not help: the call still fails
        with pytest.raises(MqbenchError, match="broke the sandbox"):
            run_limited(_swallowing_write, (target,), name="writer")
        assert not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.unlink(target)


def test_cannot_modify_or_delete_existing_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    for fn, args in [(_write, (victim, "changed")), (os.remove, (victim,)),
                     (os.rename, (victim, tmp_path / "moved.txt"))]:
        with pytest.raises(MqbenchError, match="broke the sandbox"):
            run_limited(fn, args, name="vandal")
    assert victim.read_text() == "original" and not (tmp_path / "moved.txt").exists()


def test_kernel_layer_blocks_raw_create_and_read(tmp_path):
    target = tmp_path / "raw.txt"
    assert run_limited(_raw_open, (target, os.O_WRONLY | os.O_CREAT), name="raw") == [-1, 13]
    assert not target.exists()  # EACCES from Landlock, below the audit hook
    secret = tmp_path / "secret.txt"
    secret.write_text("ground truth")
    assert _raw_open(secret, os.O_RDONLY)[0] >= 0  # readable here
    assert run_limited(_raw_open, (secret, os.O_RDONLY), name="raw") == [-1, 13]


def test_scratch_is_private_and_disappears():
    folder, text, sub = run_limited(_use_scratch, name="tmp")
    assert text == "t" and sub
    # a tmpfs mounted in the call's own mount namespace: the host sees an empty folder
    assert not os.path.exists(os.path.join(folder, "sub"))


def test_no_subprocesses():
    with pytest.raises(MqbenchError, match="starting a process"):
        run_limited(_spawn, name="spawner")


def test_threads_still_work():
    assert run_limited(_threads, name="threads") == [[1], 1e6]


def test_results_are_plain_data():
    assert run_limited(_values, name="v") == {"t": [1.5, 2.5], "a": [0, 1, 2],
                                              "n": [1, 2.0, None, True, "s"]}
    with pytest.raises(MqbenchError, match="not plain data"):
        run_limited(_return_object, name="obj")


def test_failures_are_one_line():
    assert math.isnan(run_limited(_nan, name="nan"))  # NaN is a value; the harness rejects it
    cases = [(_boom, r"raised ValueError: bad \(test_sandbox.py line \d+\)"),
             (_bomb, "512 MiB memory limit; use less memory or raise --mem-mb"),
             (_torch_bomb, "512 MiB memory limit; use less memory or raise --mem-mb"),
             (_sleep, "time limit"), (_exit_early, r"exited \(3\) before returning a result"),
             (_segfault, r"killed by signal 11 \(SIGSEGV\) before returning a result"),
             (_bad_message, "raised _BadMessage: .its message could not be read.")]
    for fn, expect in cases:
        start = time.perf_counter()
        with pytest.raises(MqbenchError, match=expect) as err:
            run_limited(fn, name="bad", timeout=2, mem_mb=512)
        assert "\n" not in str(err.value)
        assert time.perf_counter() - start < 8


@pytest.mark.parametrize("limits, flag", [
    ({"timeout": 0}, "--timeout"), ({"timeout": -1}, "--timeout"),
    ({"timeout": float("nan")}, "--timeout"), ({"timeout": float("inf")}, "--timeout"),
    ({"mem_mb": 0}, "--mem-mb"), ({"mem_mb": -1}, "--mem-mb"), ({"mem_mb": 1.5}, "--mem-mb")])
def test_bad_limits_are_one_line(limits, flag):
    with pytest.raises(MqbenchError, match=flag) as err:
        run_limited(sum, ([1],), name="x", **limits)
    assert "\n" not in str(err.value)
    with pytest.raises(MqbenchError, match=flag):
        check_limits(limits.get("timeout", 1.0), limits.get("mem_mb", 1))


def test_clean_environment_and_pid_namespace(monkeypatch):
    monkeypatch.setenv("MQBENCH_TEST_SECRET", "hunter2")
    env, cwd = run_limited(_env_and_cwd, name="env")
    assert "MQBENCH_TEST_SECRET" not in env and set(env) <= {"PATH", "LANG", "TMPDIR", "HOME",
                                                              "OMP_NUM_THREADS"}
    assert cwd == env["TMPDIR"] == env["HOME"]
    pid, ppid = run_limited(_pids, name="pids")
    assert ppid == 1 and pid != os.getpid()  # the worker is PID 1 of the proxy's namespace


def test_stats_view_is_read_only():
    view = StatsView({"modules": ("a",), "weights": {"a": torch.ones(2)}})
    with pytest.raises(AttributeError):
        view.modules = ("b",)
    with pytest.raises(AttributeError):
        view.anything = 1
    assert not hasattr(view, "folder") and not hasattr(view, "task")


def test_printable_strips_terminal_control():
    assert printable("ok\n\tPASS\x1b[1A\rFAIL") == "ok\n\tPASS?[1A?FAIL"


def test_unpicklable_function_is_one_line():
    with pytest.raises(MqbenchError, match="cannot send 'local' to the sandbox") as err:
        run_limited(lambda: 1, name="local")
    assert "\n" not in str(err.value)


def test_unconfined_still_limited():
    assert run_limited(sum, ([1, 2],), name="x", confine=False) == 3
    with pytest.raises(MqbenchError, match="time limit"):
        run_limited(_sleep, name="x", confine=False, timeout=1)


@pytest.mark.benchmark(group="sandbox")
@pytest.mark.parametrize("confine", [False, True], ids=["worker-only", "sandboxed"])
def test_benchmark_sandbox_overhead(benchmark, confine):
    """Per-call cost of the sandbox vs the unconfined worker baseline (target: < 50 ms)."""
    benchmark.pedantic(run_limited, args=(sum, ([1, 2],)),
                       kwargs={"name": "trivial", "confine": confine}, rounds=30, iterations=1)


_CHILD = """
import sys
import mqbench.proxy.sandbox as S
try:
    print(S.layers()[0]); print(S.run_limited(sum, ([1, 2],), name="x"))
except Exception as exc:
    print(type(exc).__name__, exc)
"""
# A seccomp filter making unshare() fail with EPERM, then the script above (x86_64/aarch64)
_NO_UNSHARE = """
import ctypes, platform, struct, sys
nr = {"x86_64": 272, "aarch64": 97}[platform.machine()]
prog = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]
code = b"".join(struct.pack("=HBBI", *i) for i in prog)
buf = ctypes.create_string_buffer(code, len(code))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)
assert libc.prctl(22, 2, ctypes.byref(Prog(len(prog), ctypes.addressof(buf))), 0, 0) == 0
exec(sys.argv[1])
"""


def _python(*argv, prefix=()):
    return subprocess.run([*prefix, sys.executable, *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO}, check=False)


@pytest.mark.skipif(not os.path.exists("/usr/bin/setpriv") or os.geteuid() != 0,
                    reason="needs root and setpriv to drop CAP_SYS_ADMIN")
def test_without_privilege_a_user_namespace_is_used():
    got = _python("-c", _CHILD, prefix=("setpriv", "--bounding-set=-sys_admin",
                                        "--inh-caps=-sys_admin"))
    assert got.stdout.split("\n")[:2] == ["clean-worker+userns+pidns", "3"], got


def test_missing_kernel_features_refuse_in_one_line():
    got = _python("-c", _NO_UNSHARE, _CHILD)
    line = got.stdout.strip()
    assert line.startswith("MqbenchError the proxy sandbox cannot run here: cannot create "
                           "namespaces") and "\n" not in line, got


_CALLER = """
import sys, time
import mqbench.proxy.sandbox as S
S.run_limited(sum, ([1],), name="x")
print(S._WORKER.proc.pid, S._WORKER.root, flush=True)
if sys.argv[1] == "hang":
    time.sleep(60)
"""


def _gone(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # exited, not yet reaped by its (dead) parent's reaper
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["exit", "kill -9"])
def test_nothing_outlives_the_caller(how):
    proc = subprocess.Popen([sys.executable, "-c", _CALLER, "hang" if how != "exit" else ""],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    worker, root = proc.stdout.readline().split()
    if how == "kill -9":
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    assert _gone(int(worker), 10), f"worker {worker} outlived its caller"
    end = time.monotonic() + 5
    while os.path.exists(root) and time.monotonic() < end:
        time.sleep(0.1)
    assert not os.path.exists(root)  # the scratch mount point too


def _square_after(x, delay):
    time.sleep(delay)
    return x * x


def test_concurrent_calls_get_their_own_results():
    """Discovery scores candidates from several threads at once through one worker."""
    args = [(i, 0.05 * (i % 3)) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda a: run_limited(_square_after, a, name=f"c{a[0]}"), args))
    assert got == [i * i for i, _ in args]


def test_a_killed_worker_fails_the_call_in_one_line_and_restarts():
    run_limited(sum, ([1],), name="warm")
    outer = sandbox._WORKER.proc.pid
    threading.Timer(1.0, os.kill, (outer, signal.SIGKILL)).start()
    with pytest.raises(MqbenchError, match="worker stopped during the call") as err:
        run_limited(_sleep, name="victim", timeout=20)
    assert "\n" not in str(err.value)
    assert run_limited(sum, ([1, 2],), name="after") == 3  # a fresh worker
    assert sandbox._WORKER.proc.pid != outer
