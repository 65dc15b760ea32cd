"""Build backends: local processes, Ray and SLURM (submitit) fill the same table, exactly.

The reference is a sequential in-process build at one torch thread (what every backend
worker runs), so equal tables mean equal checksums, not float closeness. A Ray instance is
started inside the tests (127.0.0.1, 2 CPUs); SLURM runs through submitit's local
executor, and through a real single-node slurmctld/slurmd when the machine has one.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import duckdb
import pytest
import torch

from mqbench.cli.main import main
from mqbench.errors import MqbenchError
from mqbench.task.spec import load_task
from mqbench.testing import TINY_TASK, protocol2_text
from mqbench.truth import backends as B
from mqbench.truth.build import build_table, fill_table, store_rows
from mqbench.truth.store import load_table, table_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The protocol-2 tiny task, its reference table (1 thread, in process) and a cache."""
    base = tmp_path_factory.mktemp("backends")
    mp = pytest.MonkeyPatch()
    (base / "tasks").mkdir()
    (base / "tasks" / "tiny2.toml").write_text(protocol2_text(TINY_TASK, "tiny2"))
    mp.setenv("MQBENCH_TASKS", str(base / "tasks"))
    mp.setenv("MQBENCH_CACHE", str(base / "cache"))
    task = load_task("tiny2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_table(task, progress=False)
    finally:
        torch.set_num_threads(threads)
    ref = load_table(task).meta["rows_checksum"]
    table_path(task).rename(base / "reference.duckdb")
    yield task, ref, base
    mp.undo()


@pytest.fixture
def fresh(env):
    """No table on disk before the test (the trained weights stay cached)."""
    task, ref, base = env
    table_path(task).unlink(missing_ok=True)
    Path(str(table_path(task)) + ".wal").unlink(missing_ok=True)
    return task, ref, base


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _checksum(task) -> str:
    return load_table(task).meta["rows_checksum"]


def test_local_backend_equals_the_sequential_build(fresh):
    task, ref, _ = fresh
    fill_table(task, B.Options("local", jobs=2, batch_rows=16), progress=False)
    table = load_table(task)
    assert table.meta["rows_checksum"] == ref
    assert table.meta["build_backend"] == "local" and table.meta["build_jobs"] == "2"
    assert table.meta["prefix_shared"] == "yes"


def test_ray_build_equals_local_and_survives_a_killed_worker(fresh, ray_instance, tmp_path,
                                                             monkeypatch):
    from mqbench.testing import dies_once

    task, ref, _ = fresh
    monkeypatch.setenv("MQBENCH_TEST_DIE_DIR", str(tmp_path))
    fill_table(task, B.Options("ray", batch_rows=16, retries=2), progress=False,
               worker=dies_once)
    assert (tmp_path / "died").exists()  # one worker really was killed mid-batch
    assert _checksum(task) == ref
    assert load_table(task).meta["build_backend"] == "ray"


def test_half_sequential_half_ray_is_one_build(fresh, ray_instance):
    task, ref, _ = fresh
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_table(task, progress=False, stop_after=40)  # an interrupted local build
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(MqbenchError, match="incomplete"):
        load_table(task)
    fill_table(task, B.Options("ray", batch_rows=16), progress=False)
    assert _checksum(task) == ref


def test_slurm_local_executor_equals_local_and_resubmits_a_lost_task(fresh, tmp_path,
                                                                     monkeypatch):
    pytest.importorskip("submitit")
    from mqbench.testing import dies_once

    task, ref, _ = fresh
    monkeypatch.setenv("MQBENCH_TEST_DIE_DIR", str(tmp_path))
    # a few large batches: submitit's local executor starts every array task at once
    opts = B.Options("slurm", executor="local", batch_rows=128, log_dir=tmp_path / "logs",
                     time_min=10)
    fill_table(task, opts, progress=False, worker=dies_once)
    assert (tmp_path / "died").exists()
    assert _checksum(task) == ref
    assert any((tmp_path / "logs").rglob("*_log.err"))  # one log per array task


def test_a_row_measured_twice_differently_is_an_error(env, tmp_path):
    _, _, base = env
    path = tmp_path / "t.duckdb"
    shutil.copy(base / "reference.duckdb", path)
    con = duckdb.connect(str(path))
    try:
        rows = con.execute("SELECT * FROM results LIMIT 3").fetchall()
        keys = {(r[0], int(r[1]), r[2]): tuple(r) for r in
                con.execute("SELECT * FROM results").fetchall()}
        n = len(keys)
        assert store_rows(con, rows, keys) == 0  # the same rows again: nothing new
        bad = list(rows[0])
        bad[9] += 0.01  # acc
        with pytest.raises(MqbenchError, match="measured twice with different values"):
            store_rows(con, [tuple(bad)], keys)
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == n
        stored = con.execute("SELECT acc FROM results WHERE kind = ? AND cal_seed = ? AND "
                             "key = ?", [rows[0][0], rows[0][1], rows[0][2]]).fetchone()[0]
        assert stored == rows[0][9]  # the stored value was not overwritten
    finally:
        con.close()


def test_dry_run_prints_the_plan_and_writes_nothing(fresh, capsys):
    task, _, _ = fresh
    assert main(["build", "--task", "tiny2", "--dry-run", "--quiet", "--batch-rows", "16"]) == 0
    out = capsys.readouterr().out
    assert "to measure in" in out and "batches of up to 16" in out and "CPU-hours" in out
    assert not table_path(task).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flags,match", [
    (["--backend", "ray", "--ray-address", "127.0.0.1:{port}"], "cannot reach Ray"),
    (["--backend", "ray", "--ray-address", "nonsense"], "expected host:port"),
    (["--backend", "slurm"], "no `sbatch` on PATH"),
])
def test_bad_backend_input_is_one_line_and_writes_nothing(fresh, capsys, monkeypatch, flags,
                                                          match):
    task, _, _ = fresh
    flags = [f.format(port=_free_port()) for f in flags]
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no sbatch here
    start = time.perf_counter()
    assert main(["build", "--task", "tiny2", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert time.perf_counter() - start < 10
    assert not table_path(task).exists()


def test_missing_partition_is_named(fresh, capsys, tmp_path, monkeypatch):
    """A partition sinfo does not list: one line naming the ones it does (fake sinfo/sbatch)."""
    pytest.importorskip("submitit")
    task, _, _ = fresh
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\nprintf 'debug\\ngpu\\n'\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["build", "--task", "tiny2", "--quiet", "--backend", "slurm",
                 "--partition", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "partition 'nosuch' does not exist (sinfo lists: debug, gpu)" in err, err
    assert err.count("\n") == 1 and not table_path(task).exists()


def test_cuda_without_a_gpu_is_one_line(fresh, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    task, _, _ = fresh
    assert main(["build", "--task", "tiny2", "--quiet", "--backend", "ray",
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and err.count("\n") == 1
    assert not table_path(task).exists()


def test_cluster_config_file(tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('[slurm]\npartition = "gpu"\ntime_min = 30\nparallelism = 8\n'
                   'account = "lab"\n')
    opts = B.read_config(cfg, B.Options("slurm"))
    assert (opts.partition, opts.time_min, opts.parallelism) == ("gpu", 30, 8)
    assert opts.sbatch == {"account": "lab"}
    cfg.write_text("[ray]\nnope = 1\n")
    with pytest.raises(MqbenchError, match="unknown \\[ray\\] key 'nope'"):
        B.read_config(cfg, B.Options("ray"))
    cfg.write_text("[slurm\n")
    with pytest.raises(MqbenchError, match="cluster config"):
        B.read_config(cfg, B.Options("slurm"))


def test_real_single_node_slurm(fresh, tmp_path, monkeypatch, capsys):
    """Debian's slurm-wlm started privately (slurmctld + slurmd + munge on 127.0.0.1); the
    build runs as a real job array and equals the sequential table. Skips, with the reason,
    where SLURM cannot come up within a minute."""
    pytest.importorskip("submitit")
    from mqbench.testing import start_slurm

    task, ref, _ = fresh
    env, stop = start_slurm(Path("/tmp") / f"mqbench-slurm-{os.getpid()}")
    if env is None:
        pytest.skip(f"no single-node SLURM here: {stop}")
    try:
        monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
        assert main(["build", "--task", "tiny2", "--quiet", "--backend", "slurm",
                     "--partition", "debug", "--batch-rows", "64", "--time-min", "10",
                     "--log-dir", str(tmp_path / "logs")]) == 0
        assert _checksum(task) == ref
        assert load_table(task).meta["build_backend"] == "slurm"
        assert len(list((tmp_path / "logs").rglob("*_log.out"))) >= 2  # one per array task
    finally:
        stop()


def test_preparation_is_cached_once_and_restores_exactly(fresh):
    """The driver prepares each seed once; a later bench (a worker) restores the same
    tensors from the cache and measures the same rows bit for bit."""
    from mqbench.quant.space import sample_configs
    from mqbench.truth.bench import open_bench

    task, _, _ = fresh
    first = open_bench(task, progress=False)
    path = first.prepared_path(task.seed)
    path.unlink(missing_ok=True)
    fresh_qm = first.prepared(task.seed)
    assert path.exists()
    second = open_bench(task, progress=False)
    restored = second.prepared(task.seed)
    assert set(restored.weights) == set(fresh_qm.weights)
    assert all(torch.equal(restored.weights[k], fresh_qm.weights[k]) for k in fresh_qm.weights)
    assert restored.acts == fresh_qm.acts
    cfgs = sample_configs(first.space, 6, 3, seed=1)
    a = [m.full for m in first.evaluator(task.seed).measure(cfgs)]
    b = [m.full for m in second.evaluator(task.seed).measure(cfgs)]
    assert a == b
    # another seed or another quantizer setting is another file
    assert first.prepared_path(task.seed + 1) != path
