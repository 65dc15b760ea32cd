"""`mqbench submit-check`: a good proxy passes and is recorded; hostile ones fail, write nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mqbench.board.submit import SubmitOptions, check_submission
from mqbench.cli.main import main
from mqbench.errors import MqbenchError
from mqbench.paths import REPO_ROOT

REPO = REPO_ROOT
GOOD = '''"""Weight norm times Hessian trace."""
from mqbench.proxy import proxy


@proxy(name="{name}", version=1, paper="test", kind="layer")
def f(stats):
    return [float(stats.weights[m].norm() * (1 + stats.hessian_trace[i]))
            for i, m in enumerate(stats.modules)]
'''


OPTS = SubmitOptions(tasks=("tiny",), timeout=2, mem_mb=1024, bootstrap=0, progress=False)


def _proxy_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text('from mqbench.proxy import proxy\n\n'
                    f'@proxy(name="{name}", kind="layer")\ndef f(stats):\n    {body}\n')
    return path


def test_good_proxy_passes_and_is_recorded(env, tmp_path):
    path = tmp_path / "good_sub.py"
    path.write_text(GOOD.format(name="good_sub"))
    lines = []
    ok, checks = check_submission(path, OPTS, report=lines.append)
    assert ok, checks
    assert [c.name for c in checks] == ["contract", "name", "isolation", "conformance", "score",
                                        "record"]
    assert lines == checks
    rec = json.loads((env / "records" / "tiny" / "good_sub.json").read_text())
    import hashlib

    assert rec["proxy_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["n_configs"] == len(rec["scores"]) and rec["metrics"]["spearman"] is not None
    assert "recorded" not in checks[-1].detail and "(new)" in checks[-1].detail


def _hostile(evil: Path, port: int) -> dict[str, tuple[str, str]]:
    """name -> (function body, expected words in the failing check's detail)."""
    return {
        "loop": ("while True:\n        pass", "time limit"),
        "bomb": ("x = bytearray(4 << 30)\n    return [1.0] * len(stats.modules)", "memory"),
        "writer": ((f"open({str(evil)!r}, 'w').write('x')\n    "
                    "return [1.0] * len(stats.modules)"), "writing"),
        "sneaky": ((f"import socket\n    try:\n        socket.create_connection(('127.0.0.1', "
                    f"{port}), timeout=1)\n    except OSError:\n        pass\n    "
                    "return [1.0] * len(stats.modules)"), "network access"),
        "nan": ("return [float('nan')] * len(stats.modules)", "NaN"),
        "shape": ("return [1.0, 2.0]", "shape"),
        "at_import": None,  # filled below: hostile code at module level
    }


@pytest.mark.parametrize("kind", ["loop", "bomb", "writer", "sneaky", "nan", "shape",
                                  "at_import"])
def test_hostile_proxies_fail_and_write_nothing(kind, env, tmp_path, server):
    port, hits = server
    evil = REPO / f"evil-{kind}-{os.getpid()}.txt"
    if kind == "at_import":
        path = tmp_path / "at_import.py"
        path.write_text(f"open({str(evil)!r}, 'w').write('x')\n" + GOOD.format(name="at_import"))
        expect, stage = "writing", "contract"
    else:
        body, expect = _hostile(evil, port)[kind]
        path = _proxy_file(tmp_path, kind, body)
        stage = "conformance"
    try:
        ok, checks = check_submission(path, OPTS, report=lambda c: None)
        assert not ok
        assert checks[-1].name == stage and not checks[-1].ok
        assert expect in checks[-1].detail and "\n" not in checks[-1].detail
        assert not evil.exists()
        assert not (env / "records").exists()
        assert hits == []
    finally:
        evil.unlink(missing_ok=True)


def test_name_clash_and_bad_input(env, tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(GOOD.format(name="weight_norm"))  # the name of a shipped proxy
    ok, checks = check_submission(path, OPTS, report=lambda c: None)
    assert not ok and checks[-1].name == "name" and "proxies/weight_norm.py" in \
        checks[-1].detail
    with pytest.raises(MqbenchError, match="does not exist"):
        check_submission(tmp_path / "nope.py", OPTS)
    with pytest.raises(MqbenchError, match="did you mean 'tiny'"):
        check_submission(path, SubmitOptions(tasks=("tinyy",)))
    for argv in (["submit-check", str(tmp_path / "nope.py"), "--task", "tiny"],
                 ["submit-check", str(path), "--task", "tinyy"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not (env / "records").exists()


def test_cli_end_to_end_on_a_shipped_proxy(env, capsys):
    """CI's check: a shipped proxy goes through `mqbench submit-check` and is recorded."""
    argv = ["submit-check", str(REPO / "proxies" / "weight_norm.py"), "--task", "tiny",
            "--bootstrap", "0", "--quiet", "--timeout", "30"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 6 and "FAIL" not in out and "passed:" in out
    assert (env / "records" / "tiny" / "weight_norm.json").exists()
    assert main(argv) == 0  # a re-run keeps the stored record
    assert "(unchanged)" in capsys.readouterr().out
    bad = ["submit-check", str(REPO / "proxies" / "weight_norm.py"), "--task", "tiny",
           "--timeout", "0.001", "--quiet", "--no-record"]
    assert main(bad) == 1
    assert "FAIL" in capsys.readouterr().out
