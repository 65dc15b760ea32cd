"""Table builds: determinism, resume after a crash, shards, provenance and tamper detection."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pytest

from mqbench.cli.main import main
from mqbench.errors import MqbenchError
from mqbench.task.spec import load_task
from mqbench.task.train import load_or_train, train_model, weights_checksum
from mqbench.testing import write_task
from mqbench.truth.bench import open_bench
from mqbench.truth.build import build_table, plan
from mqbench.truth.store import load_table, rows_checksum, table_path


def _rows(table):
    cols = ["kind", "cal_seed", "key", "acc", "loss", "kl", "size_bits", "bops"]
    return table.rows.sort_values(["kind", "cal_seed", "key"])[cols].reset_index(drop=True)


def test_build_contents(tiny_env):
    task = load_task("tiny")
    build_table(task, progress=False)
    t = load_table(task)
    bench = open_bench(task, progress=False)
    n_units = len(bench.space.units)
    assert n_units == 8
    assert len(t.kind("layer")) == n_units * 3
    assert len(t.kind("uniform")) == 3 and len(t.kind("fp")) == 1
    assert len(t.kind("sample")) == 24
    assert set(t.meta) >= {"task_version", "seed", "package_version", "git_commit",
                           "rows_checksum", "weights_checksum", "noise_spearman_acc"}
    assert len(t.rows[t.rows.cal_seed == task.table.noise_seed]) == 3 + 6
    fp = t.kind("fp").iloc[0]
    assert fp.kl < 1e-6  # folded BatchNorm differs from the original only by rounding
    w8 = t.kind("uniform").sort_values("avg_wbits").iloc[-1]
    w2 = t.kind("uniform").sort_values("avg_wbits").iloc[0]
    assert w8.kl < w2.kl and w8.acc >= w2.acc  # 8 bits is closer to float than 2 bits
    # every row's metrics are reproduced by evaluating its configuration directly
    ev = bench.evaluator(task.seed)
    from mqbench.quant.space import BitConfig
    row = t.kind("sample").iloc[5]
    m = ev.evaluate(BitConfig.from_key(row.key))
    assert (m.acc, m.loss, m.kl) == (row.acc, row.loss, row.kl)


def test_same_seed_same_table(tiny_env):
    task = load_task("tiny")
    first = _rows(load_table(task) if table_path(task).exists() else
                  (build_table(task, progress=False), load_table(task))[1])
    build_table(task, force=True, progress=False)
    second = load_table(task)
    assert _rows(second).equals(first)


def test_resume_after_crash(tiny_env, tmp_path, monkeypatch):
    task = load_task("tiny")
    build_table(task, progress=False)
    reference = load_table(task)
    build_table(task, force=True, progress=False, stop_after=20, chunk=8)  # "crash" mid-way
    with pytest.raises(MqbenchError, match="incomplete"):
        load_table(task)
    con = duckdb.connect(str(table_path(task)), read_only=True)
    assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 20
    con.close()
    build_table(task, progress=False)
    resumed = load_table(task)
    assert len(resumed.rows) == len(plan(open_bench(task, progress=False)))
    assert _rows(resumed).equals(_rows(reference))
    assert resumed.meta["rows_checksum"] == reference.meta["rows_checksum"]


def test_shards_merge_to_the_full_table(tiny_env):
    task = load_task("tiny")
    build_table(task, progress=False)
    full = load_table(task).meta["rows_checksum"]
    table_path(task).unlink()
    build_table(task, shard=(0, 2), progress=False)
    with pytest.raises(MqbenchError, match="missing"):
        from mqbench.truth.build import merge_shards
        merge_shards(task, 2, progress=False)
    build_table(task, shard=(1, 2), progress=False)
    from mqbench.truth.build import merge_shards
    merge_shards(task, 2, progress=False)
    assert load_table(task).meta["rows_checksum"] == full


def test_tampered_and_corrupt_tables(tiny_env):
    task = load_task("tiny")
    build_table(task, progress=False)
    path = table_path(task)
    con = duckdb.connect(str(path))
    con.execute("UPDATE results SET acc = acc + 0.01 WHERE kind = 'sample'")
    con.close()
    with pytest.raises(MqbenchError, match="checksum"):
        load_table(task)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(MqbenchError, match="unreadable"):
        load_table(task)


def test_changed_task_is_refused(tiny_env):
    task = load_task("tiny")
    build_table(task, progress=False)
    text = (tiny_env / "tiny.toml").read_text().replace("noise_configs = 6", "noise_configs = 5")
    (tiny_env / "tiny.toml").write_text(text)
    changed = load_task("tiny")
    with pytest.raises(MqbenchError, match="different"):
        load_table(changed)
    with pytest.raises(MqbenchError, match="different version of the task file"):
        build_table(changed, progress=False)
    assert rows_checksum(load_table(task).rows) == load_table(task).meta["rows_checksum"]


def test_comments_and_layout_of_the_task_file_may_change(tiny_env):
    """Tables record what the task says (parsed values), so editing a comment or the order of
    fields keeps them; older tables without that record are matched by the file's bytes."""
    task = load_task("tiny")
    build_table(task, progress=False)
    meta = load_table(task).meta
    assert meta["task_spec_checksum"] == task.spec_checksum
    text = (tiny_env / "tiny.toml").read_text()
    (tiny_env / "tiny.toml").write_text("# a new comment\n\n" + text.replace(" = ", "  =  "))
    edited = load_task("tiny")
    assert edited.checksum != task.checksum and edited.spec_checksum == task.spec_checksum
    assert load_table(edited).rows.equals(load_table(task).rows)
    build_table(edited, progress=False)  # complete: nothing to do, nothing refused
    con = duckdb.connect(str(table_path(task)))  # a table from before spec checksums ...
    con.execute("DELETE FROM meta WHERE key = 'task_spec_checksum'")
    con.close()
    assert load_table(task).meta.get("task_spec_checksum") is None
    with pytest.raises(MqbenchError, match="different version"):
        load_table(edited)  # ... is matched by the file's bytes


def test_retraining_is_deterministic(tiny_env):
    task = load_task("tiny")
    bench = open_bench(task, progress=False)
    from mqbench.task import datasets as D
    from mqbench.truth.bench import seeded_model
    split = D.load_split(task.data, "train")
    sums = []
    for _ in range(2):
        m = seeded_model(task, 1, 10, 8)
        train_model(m, split, bench.mean, bench.std, task.model.train, task.seed, progress=False)
        sums.append(weights_checksum(m.state_dict()))
    assert sums[0] == sums[1] == bench.weights_manifest["checksum"]


def test_tampered_weights_are_refused(tiny_env):
    task = load_task("tiny")
    bench = open_bench(task, progress=False)
    import torch
    path = next((tiny_env.parent / "cache" / "models").rglob("weights.pt"))
    state = torch.load(path, weights_only=True)
    state["fc.bias"] += 1
    torch.save(state, path)
    with pytest.raises(MqbenchError, match="checksum"):
        load_or_train(task, bench.model, None, bench.mean, bench.std, progress=False)


def test_cli_errors_are_one_line(tiny_env, capsys):
    assert main(["build", "--task", "tinny", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'tiny'" in err
    write_task(tiny_env, name="broken").write_text("name = 'broken'\nversion = 'x'\n")
    assert main(["build", "--task", "broken", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "version" in err and "expected int" in err and err.count("\n") == 0
    assert main(["show", "--task", "tiny"]) == 2
    assert "mqbench build --task tiny" in capsys.readouterr().err


def test_cli_build_and_show(tiny_env):
    out = subprocess.run([sys.executable, "-m", "mqbench.cli", "build", "--task", "tiny", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "noise floor" in out.stdout and "rows" in out.stdout


def test_cli_measure_and_bad_configs(tiny_env, capsys):
    assert main(["measure", "--task", "tiny", "--bits", "conv1=2,fc=4", "--quiet"]) == 0
    assert "w:2.8.8.8.8.8.8.4|a:8.8.8.8.8.8.8.8" in capsys.readouterr().out
    cases = [(["--bits", "conv1=5"], "not in the task's choices"),
             (["--bits", "layer9.conv1=2"], "not a unit"),
             (["--bits", "layer2.0.downsample.0=2"], "tied to 'layer2.0.conv2'"),
             (["--bits", "conv1"], "expected NAME=BITS"),
             (["--config", "w:2.2|a:8.8"], "this task has 8 units"),
             (["--config", "eval('1')"], "malformed")]
    for extra, msg in cases:
        assert main(["measure", "--task", "tiny", "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_parallel_build_matches_sequential(tiny_env):
    from mqbench.truth.build import build_parallel

    task = load_task("tiny")
    build_table(task, progress=False)
    seq = load_table(task).rows.sort_values(["kind", "cal_seed", "key"]).reset_index(drop=True)
    table_path(task).unlink()
    build_parallel(task, jobs=2, progress=False)
    par = load_table(task)
    assert par.meta["build_jobs"] == "2" and float(par.meta["build_wall_seconds"]) > 0
    assert not list(table_path(task).parent.glob("*.shard-*"))  # spent shards removed
    rows = par.rows.sort_values(["kind", "cal_seed", "key"]).reset_index(drop=True)
    assert list(rows.key) == list(seq.key) and list(rows.kind) == list(seq.kind)
    # One thread per worker can change float summation order, nothing more.
    np.testing.assert_allclose(rows[["acc", "loss", "kl"]], seq[["acc", "loss", "kl"]],
                               atol=1e-5)


@pytest.mark.parametrize("value,match", [("tpu9", "not a torch device"),
                                         ("cuda", "no CUDA GPU")])
def test_bad_device_is_one_line_error(tiny_env, monkeypatch, value, match):
    import torch

    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    monkeypatch.setenv("MQBENCH_DEVICE", value)
    with pytest.raises(MqbenchError, match=match):
        build_table(load_task("tiny"), progress=False)


@pytest.mark.gpu
def test_gpu_table_matches_cpu(tiny_env, monkeypatch):
    """The same table evaluated on a GPU: same rows, metrics equal up to float noise."""
    build_table(load_task("tiny"), progress=False)
    cpu = load_table(load_task("tiny")).rows.sort_values(["kind", "cal_seed", "key"])
    table_path(load_task("tiny")).unlink()
    monkeypatch.setenv("MQBENCH_DEVICE", "cuda")
    build_table(load_task("tiny"), progress=False)
    gpu = load_table(load_task("tiny")).rows.sort_values(["kind", "cal_seed", "key"])
    assert list(gpu.key) == list(cpu.key)
    np.testing.assert_allclose(gpu[["acc"]], cpu[["acc"]], atol=2e-2)
    np.testing.assert_allclose(gpu[["loss"]], cpu[["loss"]], rtol=2e-2, atol=1e-3)


def test_parallel_build_from_an_unguarded_stdin_script(tiny_env):
    """Spawned workers must not re-run the caller's script (no __main__ guard, stdin)."""
    script = ("from mqbench.truth.build import build_parallel\n"
              "from mqbench.task.spec import load_task\n"
              "print('RAN')\n"
              "build_parallel(load_task('tiny'), 2, progress=False)\n")
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.count("RAN") == 1
    assert load_table(load_task("tiny")).meta["build_jobs"] == "2"
