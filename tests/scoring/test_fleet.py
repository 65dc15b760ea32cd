"""`mqbench eval` on a backend: tasks side by side, records equal to a sequential run."""

from __future__ import annotations

import numpy as np
import pytest

from mqbench.cli.main import main
from mqbench.proxy.contract import get_proxy
from mqbench.scoring.fleet import evaluate_many
from mqbench.scoring.harness import EvalOptions, evaluate_proxy
from mqbench.task.spec import load_task
from mqbench.testing import write_task
from mqbench.truth import backends as B
from mqbench.truth.build import build_table

pytestmark = pytest.mark.slow
OPTS = EvalOptions(bootstrap=50, progress=False, downstream=False, batches=1)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")
    mp = pytest.MonkeyPatch()
    (base / "tasks").mkdir()
    for name in ("tiny", "tinyb"):
        write_task(base / "tasks", name)
    mp.setenv("MQBENCH_TASKS", str(base / "tasks"))
    mp.setenv("MQBENCH_CACHE", str(base / "cache"))
    tasks = [load_task("tiny"), load_task("tinyb")]
    for t in tasks:
        build_table(t, progress=False)
    proxies = [get_proxy("bparams"), get_proxy("fisher")]
    expected = {(r.task, r.proxy): r for r in
                (evaluate_proxy(p, t, OPTS) for t in tasks for p in proxies)}
    yield tasks, proxies, expected
    mp.undo()


def _same(a, b) -> None:
    assert (a.task, a.proxy, a.table_checksum) == (b.task, b.proxy, b.table_checksum)
    # statistics computed in a 1-thread worker may differ from a 2-thread run in the last
    # float digits, nothing more
    assert list(a.scores) == list(b.scores)
    np.testing.assert_allclose(list(a.scores.values()), list(b.scores.values()), rtol=1e-5)
    assert set(a.metrics) == set(b.metrics)
    for k, v in a.metrics.items():
        if v is None:
            assert b.metrics[k] is None, k
        else:
            assert b.metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_eval_on_a_backend_equals_the_sequential_run(two_tasks, backend):
    if backend == "ray":
        pytest.importorskip("ray")
    tasks, proxies, expected = two_tasks
    got = list(evaluate_many(proxies, tasks, OPTS, B.Options(backend, jobs=2)))
    assert sorted((r.task, r.proxy) for r in got) == sorted(expected)
    for r in got:
        _same(expected[(r.task, r.proxy)], r)


def test_eval_cli_backend_records_and_bad_address(two_tasks, tmp_path, capsys):
    out_dir = tmp_path / "lb"
    assert main(["eval", "--proxy", "bparams", "--task", "tiny,tinyb", "--jobs", "2",
                 "--bootstrap", "50", "--batches", "1", "--no-downstream", "--quiet",
                 "--output", str(out_dir)]) == 0
    assert len(list(out_dir.glob("records/*/bparams.json"))) == 2
    capsys.readouterr()
    assert main(["eval", "--proxy", "bparams", "--task", "tiny", "--backend", "ray",
                 "--ray-address", "127.0.0.1:1", "--quiet", "--no-record"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Ray" in err and err.count("\n") == 1


def test_a_proxy_that_fails_is_named_and_the_others_recorded(two_tasks, tmp_path):
    from mqbench.proxy.contract import load_proxy_file

    tasks, proxies, expected = two_tasks
    bad = tmp_path / "boom.py"
    bad.write_text('from mqbench.proxy import proxy\n\n@proxy(name="boom", kind="layer")\n'
                   'def f(stats):\n    raise RuntimeError("boom")\n')
    got = list(evaluate_many([load_proxy_file(bad), proxies[0]], tasks[:1], OPTS,
                             B.Options("local", jobs=1)))
    errors = [g for g in got if isinstance(g, Exception)]
    assert len(errors) == 1 and "RuntimeError: boom" in str(errors[0])
    (rec,) = [g for g in got if not isinstance(g, Exception)]
    _same(expected[(rec.task, rec.proxy)], rec)
