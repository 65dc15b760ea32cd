"""The sandbox: clean worker, no network, no writes outside scratch, limits, one-line errors,
overhead. The escapes of issue 19 are in tests/test_sandbox_hostile.py."""

from __future__ import annotations

import ctypes
import math
import os
import socket
import struct
import threading
import time

import pytest
import torch  # noqa: F401 - imported before the sandbox, as in the harness

from mqbench.errors import MqbenchError
from mqbench.proxy.sandbox import StatsView, check_limits, layers, printable, run_limited

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server():
    """A TCP server on the parent's loopback that records whether anyone connected."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    hits = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    stop.set()
    t.join(2)
    srv.close()


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
             (_sleep, "time limit")]
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
