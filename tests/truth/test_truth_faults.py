"""Faults around ground truth: racing first-time runs, killed builds, damaged tables and
artifacts. Real processes, real SIGKILL, real damaged files; each ends in one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from mqbench import paths
from mqbench.cli.main import main
from mqbench.errors import MqbenchError
from mqbench.task import artifacts
from mqbench.task.spec import load_task
from mqbench.truth.build import build_table
from mqbench.truth.store import import_shipped, load_table, table_path

REPO = Path(__file__).resolve().parents[2]
OPEN_BENCH = ("import sys; from mqbench.task.spec import load_task; "
              "from mqbench.truth.bench import open_bench; "
              "b = open_bench(load_task('tiny'), progress=False); print(b.weights_manifest['checksum'])")


def _env(extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def test_two_first_time_runs_race_safely(tiny_env):
    """Two cold-cache processes train and save the same weights at once: both succeed, with
    the same checksum, and no temporary file is left behind (was: a shared weights.tmp)."""
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_BENCH], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert outs[0][0] == outs[1][0]
    folder = Path(os.environ["MQBENCH_CACHE"]) / "models"
    leftovers = [p.name for p in folder.rglob("*") if ".tmp" in p.name]
    assert not leftovers


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_parallel_build_takes_its_workers_with_it(tiny_env):
    parent = subprocess.Popen([sys.executable, "-m", "mqbench.cli", "build", "--task", "tiny",
                               "--jobs", "2", "--quiet"], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        workers = [c for c in _children(parent.pid) if "spawn" in
                   Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]
        time.sleep(0.2)
    assert len(workers) == 2, "the build never started its workers"
    time.sleep(1.0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "workers outlived their killed parent"
    # and the next build resumes to a complete, verified table
    assert main(["build", "--task", "tiny", "--jobs", "2", "--quiet"]) == 0
    assert load_table(load_task("tiny")).meta["complete"] == "true"


@pytest.fixture
def tiny_table(tiny_env):
    task = load_task("tiny")
    build_table(task, progress=False)
    return task


def test_truncated_cached_table_is_one_line(tiny_table, capsys):
    path = table_path(tiny_table)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(MqbenchError) as exc:
        load_table(tiny_table)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)
    assert main(["show", "--task", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_flipped_bytes_are_not_reported_as_a_lock(tiny_table):
    path = table_path(tiny_table)
    data = bytearray(path.read_bytes())
    for i in range(4096, min(len(data), 4096 * 6), 7):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MqbenchError) as exc:
        load_table(tiny_table)
    assert "another mqbench process" not in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_real_lock_is_reported_as_one(tiny_table):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('ok', flush=True); time.sleep(30)", str(table_path(tiny_table))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(MqbenchError, match="another mqbench process"):
            load_table(tiny_table)
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """The repository's task files and shipped artifacts, copied; paths point at the copy."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "tasks", root / "tasks",
                    ignore=shutil.ignore_patterns("pydocs-llama-v1", "fmnist-vit-v*",
                                                  "fmnist-resnet8-v1"))
    monkeypatch.setattr(paths, "REPO_ROOT", root)
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return root / "tasks" / "artifacts" / "fmnist-resnet8-v2"


def test_the_committed_manifest_matches_every_shipped_file():
    sums = artifacts.pinned()
    shipped = sorted(p.relative_to(paths.shipped_root()).as_posix()
                     for p in paths.shipped_root().glob("*/*") if p.is_file())
    assert sorted(sums) == shipped
    for name, digest in sums.items():
        assert artifacts.file_sha256(paths.shipped_root() / name) == digest


def test_artifact_rewritten_with_its_own_checksum_is_refused(repo_copy):
    """Change a value in the shipped table *and* its rows_checksum in table_meta.json: the
    table's own check passes, the committed manifest does not."""
    from mqbench.truth.store import rows_checksum

    parquet, meta_path = repo_copy / "table.parquet", repo_copy / "table_meta.json"
    con = duckdb.connect()
    rows = con.execute(f"SELECT * FROM read_parquet('{parquet}')").df()
    rows.loc[rows.index[0], "acc"] = 0.999
    con.register("rows", rows)
    con.execute(f"COPY rows TO '{parquet}' (FORMAT PARQUET)")
    meta = json.loads(meta_path.read_text())
    meta["rows_checksum"] = rows_checksum(rows)
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    task = load_task("fmnist-resnet8")
    with pytest.raises(MqbenchError, match="does not match its checksum in .*SHA256SUMS"):
        import_shipped(task)
    assert not table_path(task).exists()


def test_truncated_shipped_parquet_is_one_line_and_leaves_nothing(repo_copy):
    parquet = repo_copy / "table.parquet"
    data = parquet.read_bytes()
    parquet.write_bytes(data[: len(data) // 2])
    artifacts.pin([parquet])  # even a re-pinned (so, consistent) damaged file fails cleanly
    task = load_task("fmnist-resnet8")
    with pytest.raises(MqbenchError, match="unreadable") as exc:
        import_shipped(task)
    assert "\n" not in str(exc.value)
    folder = table_path(task).parent
    assert not [p.name for p in folder.iterdir()] if folder.exists() else True


def test_stale_temporaries_of_killed_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.duckdb.{dead.pid}-0123abcd.tmp"
    live = tmp_path / f".x.duckdb.{os.getpid()}-0123abcd.tmp"
    for p in (stale, live, tmp_path / "keep.duckdb"):
        p.write_text("x")
    assert paths.remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and (tmp_path / "keep.duckdb").exists()


@pytest.mark.parametrize("value, expect", [("/proc/x", "cannot create"), ("FILE", "is a file")])
def test_bad_cache_folder_is_one_line(value, expect, tmp_path, monkeypatch, capsys):
    if value == "FILE":
        value = str(tmp_path / "f")
        Path(value).write_text("")
    monkeypatch.setenv("MQBENCH_CACHE", value)
    assert main(["show"]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1


def test_missing_task_dirs_and_files_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MQBENCH_TASKS", str(tmp_path / "nope"))
    assert main(["tasks"]) == 2
    assert "MQBENCH_TASKS" in capsys.readouterr().err
    monkeypatch.delenv("MQBENCH_TASKS")
    assert main(["show", "--task", str(tmp_path / "x.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
