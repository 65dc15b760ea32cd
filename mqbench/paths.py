"""Every place mqbench reads or writes, and every MQBENCH_* folder variable: one module.

Other modules ask here instead of reading the environment or walking up from `__file__`, so
a reader (and a sandbox rule) finds all locations in one screen.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mqbench.errors import MqbenchError

REPO_ROOT = Path(__file__).resolve().parent.parent


def env_dirs(variable: str) -> list[Path]:
    """Folders listed in $variable (os.pathsep-separated); a missing one is an error."""
    out = []
    for part in os.environ.get(variable, "").split(os.pathsep):
        if not part:
            continue
        path = Path(part)
        if not path.is_dir():
            raise MqbenchError(f"${variable} names {part!r}, which is not a directory; fix or "
                               f"unset {variable}")
        out.append(path)
    return out


def task_dirs() -> list[Path]:
    """Folders searched for task files: $MQBENCH_TASKS, then the repository's tasks/."""
    return [*env_dirs("MQBENCH_TASKS"), REPO_ROOT / "tasks"]


def proxy_dirs() -> list[Path]:
    """Folders searched for proxy files: $MQBENCH_PROXIES, then the repository's proxies/."""
    return [*env_dirs("MQBENCH_PROXIES"), REPO_ROOT / "proxies"]


def cache_dir() -> Path:
    """Where tables, weights and statistics are cached: $MQBENCH_CACHE or ~/.cache/mqbench."""
    return Path(os.environ.get("MQBENCH_CACHE") or Path.home() / ".cache" / "mqbench")


def shipped_dir(task_key: str) -> Path:
    """Where the repository ships a bundled task's trained weights and table."""
    return REPO_ROOT / "tasks" / "artifacts" / task_key


def leaderboard_dir() -> Path:
    """Records, DuckDB index and generated tables: $MQBENCH_LEADERBOARD or leaderboard/."""
    return Path(os.environ.get("MQBENCH_LEADERBOARD") or REPO_ROOT / "leaderboard")


def readme_path() -> Path:
    return REPO_ROOT / "README.md"


def git_commit() -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
