"""The install's shape: heavy stacks are extras, importing mqbench does not pull them in, and
a command that needs a missing extra says which one in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mqbench.cli.main import main
from mqbench.errors import MqbenchError

PYPROJECT = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
HEAVY = ("transformers", "tokenizers", "openai", "trl", "peft", "datasets")


def test_heavy_stacks_are_extras_not_dependencies():
    base = " ".join(PYPROJECT["project"]["dependencies"])
    assert not [h for h in HEAVY if h in base]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any("transformers" in d for d in extras["lm"])
    assert any("openai" in d for d in extras["discover"])
    assert "mqbench[all]" in extras["test"]


def test_the_cpu_only_torch_build_satisfies_the_dependencies():
    """README's CPU route installs torch 2.13.0+cpu first; `pip install -e .` must keep it
    (`.ci/cpu-route` checks the real install in a fresh venv)."""
    from packaging.requirements import Requirement

    deps = {Requirement(d).name: Requirement(d) for d in PYPROJECT["project"]["dependencies"]}
    assert deps["torch"].specifier.contains("2.13.0+cpu")
    assert deps["torch"].specifier.contains("2.14.1")  # the reference machine's build
    assert deps["torchvision"].specifier.contains("0.28.0")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "pip install torch==2.13.0+cpu torchvision==0.28.0" in readme


def test_importing_everything_loads_no_heavy_stack():
    code = ("import sys, mqbench, mqbench.cli.main, mqbench.board.publish; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "[]"


@pytest.fixture
def without(monkeypatch):
    """Make `import NAME` fail as if the package were not installed."""
    def block(*names):
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return block


def test_lm_task_without_the_lm_extra_is_one_line(lm_env, without, capsys):
    without("tokenizers", "transformers")
    assert main(["measure", "--task", "tinylm", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mqbench[lm]'" in err


def test_openai_generator_without_its_extra_is_one_line(without):
    from mqbench.search.evolution.chat import OpenAIChat

    without("openai")
    with pytest.raises(MqbenchError, match=r"mqbench\[discover\]"):
        OpenAIChat(model="m", base_url="http://127.0.0.1:9/v1")


def test_tiny_llama_without_transformers_is_one_line(without):
    from mqbench.task.spec import ModelSpec
    from mqbench.task.text.model import tiny_llama

    without("transformers")
    with pytest.raises(MqbenchError, match=r"mqbench\[lm\]"):
        tiny_llama(ModelSpec(arch="llama"), vocab_size=10, seq_len=8)
