"""Every place mqbench reads or writes, and every MQBENCH_* folder variable: one module.

Other modules ask here instead of reading the environment or walking up from `__file__`, so
a reader (and a sandbox rule) finds all locations in one screen.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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
    """Where tables, weights and statistics are cached: $MQBENCH_CACHE or ~/.cache/mqbench.

    Created on first use; a path that is a file, cannot be created or is not writable is a
    one-line error here rather than a traceback wherever the first write happens.
    """
    path = Path(os.environ.get("MQBENCH_CACHE") or Path.home() / ".cache" / "mqbench")
    fix = "set MQBENCH_CACHE to a writable folder"
    if path.exists() and not path.is_dir():
        raise MqbenchError(f"cache folder {path} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MqbenchError(f"cannot create cache folder {path} ({exc.strerror}); {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise MqbenchError(f"cache folder {path} is not writable; {fix}")
    return path


def shipped_root() -> Path:
    """The repository's shipped weights and tables, one folder per task key."""
    return REPO_ROOT / "tasks" / "artifacts"


def shipped_dir(task_key: str) -> Path:
    """Where the repository ships a bundled task's trained weights and table."""
    return shipped_root() / task_key


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


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path unique to this process and call, beside `path`; when the block ends
    without error it replaces `path` atomically, otherwise it is removed.

    Concurrent writers of one file each get their own temporary, so none can rename another's
    half-written file, and readers only ever see a complete file or none.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMP = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp(\.wal)?$")  # atomic_path's names (+ DuckDB WAL)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporaries left in `folder` by `atomic_path` users that were killed (their
    process no longer exists); returns what was removed."""
    removed = []
    for tmp in folder.iterdir() if folder.is_dir() else []:
        m = _TEMP.match(tmp.name)
        if m and not _alive(int(m.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
