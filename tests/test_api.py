"""The public API (`import mqbench`): README's example runs, and each function agrees with the
subpackage it wraps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import mqbench
from mqbench.proxy.contract import Proxy
from mqbench.quant.quantizer import LayerBits
from mqbench.quant.quantizer import quantize as quantize_impl
from mqbench.scoring.harness import EvalOptions, evaluate_proxy
from mqbench.truth.build import ensure_table

README = Path(__file__).resolve().parent.parent / "README.md"


def wvar(stats):
    return {m: float(stats.weights[m].var()) for m in stats.modules}


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_short_and_runs(tiny_env, capsys):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 5
    assert 'task="fmnist-resnet8"' in code
    # The README names the bundled default task; here the same lines run on the tiny task.
    exec(compile(code.replace('task="fmnist-resnet8"', 'task="tiny"'), "README", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert -1.0 <= float(printed[0]) <= 1.0


def test_plain_function_scores_like_the_decorated_proxy(tiny_env):
    res = mqbench.evaluate(wvar, task="tiny", bootstrap=20)
    ref = evaluate_proxy(Proxy("wvar", 1, "", "layer", wvar), mqbench.load_task("tiny"),
                         EvalOptions(bootstrap=20, isolate=False, progress=False))
    assert res.metrics == ref.metrics
    assert [d.config for d in res.downstream] == [d.config for d in ref.downstream]
    assert res.proxy == "wvar" and res.proxy_kind == "layer"


def test_a_proxy_file_path_runs_isolated(tiny_env, tmp_path):
    path = tmp_path / "wv.py"
    path.write_text("from mqbench.proxy import proxy\n\n@proxy(name=\"wv\", version=3)\n"
                    "def wv(stats):\n    return {m: float(stats.weights[m].var()) "
                    "for m in stats.modules}\n")
    res = mqbench.evaluate(str(path), task="tiny", bootstrap=0, downstream=False)
    ref = mqbench.evaluate(wvar, task="tiny", bootstrap=0, downstream=False)
    assert res.proxy == "wv" and res.proxy_version == 3
    assert res.metrics["spearman"] == ref.metrics["spearman"]


def test_load_table_is_the_verified_table(tiny_env):
    df = mqbench.load_table("tiny")
    table = ensure_table(mqbench.load_task("tiny"), progress=False)
    assert df.equals(table.rows)
    assert {"key", "acc", "loss", "kl", "size_bits", "w_bits"} <= set(df.columns)
    assert df is not table.rows  # a copy: editing it cannot corrupt the cached table


def test_quantize_takes_int_bits_as_weight_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(16, 8)
    a = mqbench.quantize(model, {"0": 2, "2": 4}, x)
    b = quantize_impl(model, {"0": LayerBits(w=2), "2": LayerBits(w=4)}, x)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), model(x))


def test_registries_with_patterns(tiny_env):
    assert "tiny" in mqbench.list_tasks()
    assert mqbench.list_tasks("ti*") == ["tiny"]
    emq = mqbench.list_proxies("emq*")
    assert emq and all(n.startswith("emq") for n in emq)
    assert set(emq) < set(mqbench.list_proxies())


def test_bad_proxy_argument_is_one_line():
    with pytest.raises(mqbench.errors.MqbenchError, match="expected a proxy function"):
        mqbench.evaluate(42, task="digits-resnet8")


def test_version_matches_pyproject():
    text = (README.parent / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == mqbench.__version__
