"""Faults around the leaderboard: damaged record files, killed rebuilds, a full disk. Real
files, a real SIGKILL, a real (tiny) tmpfs; each ends in one line and loses no result."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mqbench.board import store
from mqbench.board.report import load_records
from mqbench.errors import MqbenchError
from mqbench.scoring.record import Record

REPO = Path(__file__).resolve().parents[2]
RECORDS = REPO / "leaderboard" / "records" / "fmnist-resnet8"


@pytest.fixture
def board(tmp_path, monkeypatch):
    """A leaderboard folder holding three committed records of fmnist-resnet8."""
    folder = tmp_path / "lb"
    (folder / "records" / "fmnist-resnet8").mkdir(parents=True)
    for name in ("hawq", "fisher", "snip"):
        shutil.copy(RECORDS / f"{name}.json", folder / "records" / "fmnist-resnet8")
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(folder))
    return folder


def _damage(path: Path, how: str) -> None:
    data = json.loads(path.read_text())
    if how == "string metrics":
        data["metrics"] = "excellent"
    elif how == "string metric value":
        data["metrics"]["spearman"] = "0.99"
    elif how == "malformed downstream":
        data["downstream"][0] = {"acc": 1.0}
    elif how == "not json":
        path.write_text("{ truncated")
        return
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["string metrics", "string metric value",
                                 "malformed downstream", "not json"])
def test_a_damaged_record_is_named_and_skipped(board, how, capsys):
    _damage(board / "records" / "fmnist-resnet8" / "snip.json", how)
    store.rebuild_db()
    err = capsys.readouterr().err
    assert "skipped a damaged leaderboard record" in err and "snip.json" in err
    assert err.count("\n") == 1
    assert [r.proxy for r in load_records("fmnist-resnet8")] == ["fisher", "hawq"]


def test_a_damaged_record_does_not_block_saving_another(board, capsys):
    _damage(board / "records" / "fmnist-resnet8" / "snip.json", "string metric value")
    rec = Record.from_json((RECORDS / "qe.json").read_text())
    saved = store.save_record(rec)
    assert saved.status == "new" and saved.path.exists()
    assert "snip.json" in capsys.readouterr().err
    assert {r.proxy for r in load_records("fmnist-resnet8")} == {"fisher", "hawq", "qe"}


def test_temporaries_of_a_killed_writer_are_removed(board):
    """A process is SIGKILLed while it holds a temporary database beside the index (as a
    killed `leaderboard rebuild` does); the next writer removes it."""
    code = ("import sys, time; from pathlib import Path; from mqbench.paths import atomic_path\n"
            "with atomic_path(Path(sys.argv[1]) / 'mqbench.duckdb') as tmp:\n"
            "    tmp.write_bytes(b'x' * 4096); Path(str(tmp) + '.wal').write_bytes(b'w')\n"
            "    print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(board)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in board.iterdir() if ".tmp" in p.name]
    assert len(left) == 2  # the temporary and its WAL
    store.rebuild_db()
    assert not [p.name for p in board.iterdir() if ".tmp" in p.name]
    assert (board / "mqbench.duckdb").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A 16 MiB tmpfs (root only: mount(8)); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk path is untested")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_full_disk_keeps_the_result_and_cleans_up(full_disk, monkeypatch, tmp_path):
    lb = full_disk / "lb"
    (lb / "records" / "fmnist-resnet8").mkdir(parents=True)
    shutil.copy(RECORDS / "hawq.json", lb / "records" / "fmnist-resnet8")
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(lb))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store.rebuild_db()
    _fill(full_disk)
    rec = Record.from_json((RECORDS / "fisher.json").read_text())
    rec = dataclasses.replace(rec, proxy="fisher_copy")
    with pytest.raises(MqbenchError) as exc:
        store.save_record(rec)
    msg = str(exc.value)
    assert "\n" not in msg and "saved in" in msg
    saved = Path(msg.split("saved in ")[1].split(": copy")[0])
    assert Record.from_json(saved.read_text()).scores == rec.scores
    assert not [p for p in lb.rglob("*") if ".tmp" in p.name]
    # a rebuild on the full disk fails with one line and leaves no temporary database behind
    (lb / "mqbench.duckdb").unlink()
    with pytest.raises(MqbenchError, match="could not rebuild"):
        store.rebuild_db()
    assert not [p for p in lb.iterdir() if ".tmp" in p.name]
