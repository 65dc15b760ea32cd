"""Progress lines: a bar on a terminal, two plain lines per stage in logs, nothing if quiet."""

from __future__ import annotations

import re

from mqbench import progress


def test_a_counted_stage_is_two_lines_when_stderr_is_not_a_terminal(capsys):
    bar = progress.bar(5, "build t", initial=2, unit="cfg")
    for _ in range(3):
        bar.update()
    bar.set_postfix(loss="0.1")
    bar.close()
    bar.close()  # closing twice prints once
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "build t: 3 of 5 cfg to do"
    assert re.fullmatch(r"build t: 5 of 5 cfg in \d+\.\d s \(loss 0\.1\)", lines[1])
    assert len(lines) == 2


def test_a_long_stage_says_it_is_alive(capsys, monkeypatch):
    clock = iter([0.0, 30.0, 61.0, 62.0, 200.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = progress.bar(10, "build t", unit="cfg")  # starts at 0 s
    bar.update(2)  # 30 s: quiet
    bar.update(2)  # 61 s: a heartbeat
    bar.update(2)  # 62 s: quiet again
    bar.close()  # 200 s
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["build t: 10 of 10 cfg to do",
                     "build t: 4 of 10 cfg (0.07/s, about 92 s left)",
                     "build t: 6 of 10 cfg in 200.0 s"]


def test_stage_and_quiet(capsys):
    with progress.stage("statistics"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "statistics ..." and re.fullmatch(r"statistics: done in \d+\.\d s", err[1])
    with progress.stage("statistics", enabled=False):
        pass
    quiet = progress.bar(3, "x", enabled=False)
    quiet.update()
    quiet.close()
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(progress, "_tty", lambda: True)
    bar = progress.bar(2, "x")
    assert type(bar).__name__ == "tqdm"
    bar.close()
