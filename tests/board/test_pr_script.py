""".ci/pr-proxies, the pull-request check the GitHub workflow runs: on a scratch repository,
the proxy files a branch adds or changes go through `mqbench submit-check`; nothing else does."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mqbench.paths import REPO_ROOT

SCRIPT = REPO_ROOT / ".ci" / "pr-proxies"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "pull-request.yml"
GOOD = '''"""Weight norm (a test proxy)."""
from mqbench.proxy import proxy


@proxy(name="{name}", version=1, paper="test", kind="layer")
def {name}(stats):
    return [float(stats.weights[m].norm()) for m in stats.modules]
'''
UNSEEDED = GOOD.replace("import proxy\n", "import proxy\nimport random\n").replace(
    "float(stats.weights[m].norm())", "random.random()")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture
def repo(tmp_path):
    """A git repository with one commit (`base`) holding a README and an empty proxies/."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    r = tmp_path / "repo"
    (r / "proxies").mkdir(parents=True)
    (r / "README.md").write_text("x\n")
    _git(r, "init", "-q", "-b", "main")
    _git(r, "add", ".")
    _git(r, "commit", "-q", "-m", "base")
    _git(r, "tag", "base")
    return r


def _run(repo, tmp_path, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=repo, capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, "RECORDS_DIR": str(tmp_path / "out")})


def test_only_changed_proxy_files_are_checked_and_recorded_outside_the_repo(
        tiny_env, repo, tmp_path):
    (repo / "docs.txt").write_text("not a proxy\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "docs")
    got = _run(repo, tmp_path, "base", "--task", "tiny", "--bootstrap", "0", "--quiet")
    assert got.returncode == 0 and "no proxy file added or changed" in got.stdout, got

    (repo / "proxies" / "pr_wnorm.py").write_text(GOOD.format(name="pr_wnorm"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "add a proxy")
    got = _run(repo, tmp_path, "base", "--task", "tiny", "--bootstrap", "0", "--quiet")
    assert got.returncode == 0, got.stdout + got.stderr
    assert "pr-proxies: proxies/pr_wnorm.py" in got.stdout and "passed" in got.stdout
    assert (tmp_path / "out" / "records" / "tiny" / "pr_wnorm.json").exists()
    assert not (repo / "leaderboard").exists()  # nothing written into the checkout


def test_a_failing_proxy_fails_the_check(tiny_env, repo, tmp_path):
    (repo / "proxies" / "pr_unseeded.py").write_text(UNSEEDED.format(name="pr_unseeded"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "add a nondeterministic proxy")
    got = _run(repo, tmp_path, "base", "--task", "tiny", "--bootstrap", "0", "--quiet")
    assert got.returncode == 1 and "FAIL" in got.stdout, got.stdout + got.stderr
    assert not (tmp_path / "out" / "records" / "tiny" / "pr_unseeded.json").exists()


def test_unknown_base_is_one_line(repo, tmp_path):
    got = _run(repo, tmp_path, "no-such-branch")
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and "git fetch" in got.stderr


def test_the_workflow_calls_the_script_and_the_ci_entry_point():
    text = WORKFLOW.read_text()
    assert "bash .ci/pr-proxies" in text and "bash .ci/run" in text
    assert "torch==2.13.0+cpu" in text  # the README's CPU-only route
