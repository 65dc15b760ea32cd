"""Shared fixtures: a tiny offline task on scikit-learn's digits, isolated cache folders."""

from __future__ import annotations

import socket
import threading

import pytest

from mqbench.testing import TINY_LM, write_corpus, write_task


@pytest.fixture
def tiny_env(tmp_path, monkeypatch):
    """A task folder holding `tiny.toml` and a private cache; returns the task folder."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks)
    monkeypatch.setenv("MQBENCH_TASKS", str(tasks))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return tasks


@pytest.fixture(autouse=True)
def _never_touch_user_dirs(tmp_path_factory, monkeypatch):
    """Tests write caches and leaderboard records under pytest's temp dir, never ~ or the repo."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("MQBENCH_CACHE", str(base / "default-cache"))
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(base / "default-leaderboard"))
    # CLI flags (--device, --data-dir, --output) write these for the process; pin them per test
    monkeypatch.setenv("MQBENCH_DEVICE", "cpu")
    monkeypatch.setenv("MQBENCH_DATA", "")


@pytest.fixture
def lm_env(tmp_path, monkeypatch):
    """A task folder holding the tiny Llama task `tinylm` (stdlib text), private cache."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    root = write_corpus(tmp_path / "corpus")
    (tasks / "tinylm.toml").write_text(TINY_LM.format(name="tinylm", root=root, seq_len=32))
    monkeypatch.setenv("MQBENCH_TASKS", str(tasks))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return tasks


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One tiny task and cache per test module: its table and statistics are built once."""
    base = tmp_path_factory.mktemp("shared")
    (base / "tasks").mkdir()
    write_task(base / "tasks")
    return base


@pytest.fixture
def env(shared, tmp_path, monkeypatch):
    """The module's shared tiny task and cache, and a private leaderboard (returned)."""
    monkeypatch.setenv("MQBENCH_TASKS", str(shared / "tasks"))
    monkeypatch.setenv("MQBENCH_CACHE", str(shared / "cache"))
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(tmp_path / "lb"))
    return tmp_path / "lb"


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
