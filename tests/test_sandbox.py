"""The sandbox: no network, no writes outside scratch, limits, one-line errors, overhead."""

from __future__ import annotations

import ctypes
import math
import os
import socket
import struct
import threading
import time

import pytest
import torch  # noqa: F401 - imported before forking, as in the harness (the child reuses it)

from mqbench.errors import MqbenchError
from mqbench.proxy.sandbox import layers, run_limited

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


def _raw_create(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open(os.fsencode(path), os.O_WRONLY | os.O_CREAT, 0o644)
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


def test_layers_on_this_machine():
    got = layers()
    assert "audit-hook" in got and "fork" in got
    if os.geteuid() == 0:
        assert "netns" in got


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
    if not ({"netns"} & set(layers()) or any(x.startswith("landlock-abi") and
                                              int(x[12:]) >= 4 for x in layers())):
        pytest.skip("no kernel network layer on this machine (audit hook only)")
    assert _raw_connect(port)[:2] == ("connect", 0)  # unconfined it connects
    time.sleep(0.3)
    n = len(hits)
    got = run_limited(_raw_connect, (port,), name="raw")
    assert got[1] != 0 if got[0] == "connect" else got[1] > 0
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


def test_kernel_layer_blocks_raw_create(tmp_path):
    if not any(x.startswith("landlock") for x in layers()):
        pytest.skip("Landlock unavailable: the audit hook is the only filesystem layer")
    target = tmp_path / "raw.txt"
    fd, errno_ = run_limited(_raw_create, (target,), name="raw")
    assert fd == -1 and errno_ == 13  # EACCES from Landlock
    assert not target.exists()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fd, _ = run_limited(_raw_create, (scratch / "ok.txt",), name="raw", scratch=scratch)
    assert fd >= 0 and (scratch / "ok.txt").exists()


def test_writes_inside_scratch_and_tempfile(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert run_limited(_write, (scratch / "a.txt", "hello"), name="ok", scratch=scratch) == "wrote"
    assert (scratch / "a.txt").read_text() == "hello"

    def use_tempfile():
        import tempfile

        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("t")
        os.makedirs(os.path.join(os.path.dirname(f.name), "sub"))
        return f.name
    name = run_limited(use_tempfile, name="tmp", scratch=scratch)
    assert os.path.dirname(name) == str(scratch.resolve())
    assert (scratch / "sub").is_dir()


def test_no_subprocesses():
    def spawn():
        import subprocess

        return subprocess.run(["true"], check=False).returncode
    with pytest.raises(MqbenchError, match="starting a process"):
        run_limited(spawn, name="spawner")


def test_failures_are_one_line():
    def nan():
        return float("nan")
    assert math.isnan(run_limited(nan, name="nan"))  # NaN is a value; the harness rejects it

    def boom():
        raise ValueError("bad\nsecond line")

    def bomb():
        return bytearray(3 << 30)
    cases = [(boom, "raised ValueError: bad"), (bomb, "memory limit"),
             (lambda: time.sleep(30), "time limit")]
    for fn, expect in cases:
        start = time.perf_counter()
        with pytest.raises(MqbenchError) as err:
            run_limited(fn, name="bad", timeout=2, mem_mb=512)
        assert expect in str(err.value) and "\n" not in str(err.value)
        assert time.perf_counter() - start < 8


def test_missing_scratch_is_a_clear_error(tmp_path):
    with pytest.raises(MqbenchError, match="scratch directory .* does not exist"):
        run_limited(sum, ([1],), name="x", scratch=tmp_path / "nope")


def test_unconfined_still_limited():
    assert run_limited(sum, ([1, 2],), name="x", confine=False) == 3


@pytest.mark.benchmark(group="sandbox")
@pytest.mark.parametrize("confine", [False, True], ids=["fork-only", "sandboxed"])
def test_benchmark_sandbox_overhead(benchmark, confine):
    """Per-call cost of the sandbox vs the fork-only baseline (target: < 50 ms extra)."""
    benchmark.pedantic(run_limited, args=(sum, ([1, 2],)),
                       kwargs={"name": "trivial", "confine": confine}, rounds=30, iterations=1)
