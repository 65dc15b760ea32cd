"""The command line: one way to name tasks, shared argument groups, real subcommands, and
bad input refused with a message naming the option (never a traceback)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from mqbench.cli import args as A
from mqbench.cli.main import build_parser, main
from mqbench.provenance import PACKAGE_VERSION


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _all_commands():
    out = []
    for name, p in _subparsers(build_parser()):
        subs = list(_subparsers(p))
        out += [([name, s], sp) for s, sp in subs] if subs else [([name], p)]
    return out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mqbench {PACKAGE_VERSION}"


@pytest.mark.parametrize("words, parser", _all_commands(), ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_every_command_has_help(words, parser, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mqbench {' '.join(words)}")
    options = {o for a in parser._actions for o in a.option_strings}
    if "--task" in options or words[0] in ("build", "show", "measure", "eval", "discover"):
        assert "--task" in options  # tasks are named the same way in every command
        assert "comma list" in " ".join(text.split())


def test_leaderboard_actions_are_subcommands_with_their_own_options(capsys):
    names = {w[1] for w, _ in _all_commands() if w[0] == "leaderboard"}
    assert names == {"table", "rebuild", "regenerate", "upgrade"}
    with pytest.raises(SystemExit):
        main(["leaderboard", "rebuild", "--format", "csv"])  # --format belongs to `table`
    assert "unrecognized arguments: --format" in capsys.readouterr().err


def test_task_lists_repeat_and_commas():
    ns = argparse.Namespace(task=["a,b", "c", "b", " d "])
    assert A.task_names(ns) == ["a", "b", "c", "d"]
    assert A.task_names(argparse.Namespace(task=None), ("x",)) == ["x"]


def test_commands_that_need_one_task_say_so(tiny_env, capsys):
    assert main(["measure", "--task", "tiny,tiny2", "--quiet"]) == 2
    assert "works on one task" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["measure", "--cal-seed", "-1"], "--cal-seed: need an integer >= 0"),
    (["build", "--shard", "-1/2"], "shard '-1/2': need n >= 1"),
    (["build", "--shard", "3/2"], "shard '3/2'"),
    (["build", "--merge", "0"], "--merge: need an integer >= 1"),
    (["build", "--jobs", "-2"], "--jobs: need an integer >= 1"),
    (["eval", "--proxy", "x", "--bootstrap", "-5"], "--bootstrap: need an integer >= 0"),
    (["eval", "--proxy", "x", "--bootstrap", "1.5"], "--bootstrap: expected an integer"),
    (["eval", "--proxy", "x", "--timeout", "nan"], "--timeout: need a finite number > 0"),
    (["eval", "--proxy", "x", "--timeout", "0"], "--timeout: need a finite number > 0"),
    (["eval", "--proxy", "x", "--timeout", "-1"], "--timeout: need a finite number > 0"),
    (["submit-check", "p.py", "--timeout", "nan"], "--timeout: need a finite number > 0"),
    (["submit-check", "p.py", "--mem-mb", "0"], "--mem-mb: need an integer >= 1"),
    (["submit-check", "p.py", "--mem-mb", "-1"], "--mem-mb: need an integer >= 1"),
    (["build", "--shard", "1/2", "--merge", "2"], "not allowed with argument"),
])
def test_bad_options_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_task_is_one_line_with_a_suggestion(tiny_env, capsys):
    assert main(["show", "--task", "tinny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'tiny'" in err


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "mqbench.cli", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"mqbench {PACKAGE_VERSION}"


def test_eval_json_output_and_no_downstream(tiny_env, tmp_path, capsys):
    from mqbench.scoring.record import Record

    path = tmp_path / "wn.py"
    path.write_text('from mqbench.proxy import proxy\n\n@proxy(name="wn", version=1)\n'
                    'def wn(stats):\n    return [float(stats.weights[m].norm()) '
                    'for m in stats.modules]\n')
    out_dir = tmp_path / "elsewhere"
    assert main(["eval", "--proxy", str(path), "--task", "tiny", "--quiet", "--json",
                 "--no-downstream", "--bootstrap", "0", "--output", str(out_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    rec = Record.from_json(lines[0])
    assert rec.proxy == "wn" and rec.downstream == () and -1 <= rec.metrics["spearman"] <= 1
    stored = Record.from_json((out_dir / "records" / "tiny" / "wn.json").read_text())
    assert stored.scores == rec.scores


def test_eval_shows_what_the_proxy_printed_marked_and_apart_from_the_result(tiny_env, tmp_path,
                                                                           capsys):
    path = tmp_path / "loud.py"
    path.write_text('import sys\nfrom mqbench.proxy import proxy\n\n'
                    '@proxy(name="loud", version=1)\n'
                    'def loud(stats):\n    print("spearman: +0.999")\n'
                    '    print("debug", file=sys.stderr)\n'
                    '    return [float(stats.weights[m].norm()) for m in stats.modules]\n')
    assert main(["eval", "--proxy", str(path), "--task", "tiny", "--json", "--no-downstream",
                 "--bootstrap", "0", "--no-record"]) == 0
    got = capsys.readouterr()
    assert len(got.out.strip().splitlines()) == 1  # the JSON record alone
    assert "  | proxy 'loud' printed on its stdout:\n  | spearman: +0.999\n" in got.err
    assert "  | proxy 'loud' printed on its stderr:\n  | debug" in got.err
    assert not any(line.startswith("spearman") for line in got.err.splitlines())


def test_eval_all_scores_every_registered_proxy(tiny_env, tmp_path, monkeypatch, capsys):
    from mqbench.cli import proxy as cli_proxy
    from mqbench.proxy.contract import load_proxy_file

    files = {}
    for name in ("pa", "pb"):
        files[name] = tmp_path / f"{name}.py"
        files[name].write_text(f'from mqbench.proxy import proxy\n\n@proxy(name="{name}", '
                               f'version=1)\ndef {name}(stats):\n    return [float(stats.'
                               f'weights[m].norm()) for m in stats.modules]\n')
    monkeypatch.setattr(cli_proxy, "list_proxies",
                        lambda: {n: load_proxy_file(f) for n, f in files.items()})
    assert main(["eval", "--all", "--task", "tiny", "--json", "--quiet", "--no-downstream",
                 "--bootstrap", "0", "--no-record"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["proxy"] for line in lines] == ["pa", "pb"]
    for argv in (["eval", "--task", "tiny"], ["eval", "--all", "--proxy", "pa"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_closed_pipe_is_not_a_traceback():
    """`mqbench proxies | head -1`: the reader has gone before mqbench writes (EPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "mqbench.cli", "proxies"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_device_flag_sets_the_evaluation_device(tiny_env, monkeypatch, capsys):
    monkeypatch.delenv("MQBENCH_DEVICE", raising=False)
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present: --device cuda would be valid")
    assert main(["measure", "--task", "tiny", "--device", "cuda", "--quiet"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_help_lists_the_environment(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for var in ("MQBENCH_CACHE", "MQBENCH_LEADERBOARD", "MQBENCH_DEVICE", "MQBENCH_TASKS"):
        assert var in out
