"""The one provenance builder: which software produced a table, a record or a report."""

from __future__ import annotations

import torch

from mqbench.paths import git_commit

PACKAGE_VERSION = "0.1.0"


def software() -> dict[str, str]:
    """Package version, git commit and torch version, as every artifact records them."""
    return {"package_version": PACKAGE_VERSION, "git_commit": git_commit(),
            "torch_version": torch.__version__}
