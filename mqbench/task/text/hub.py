"""Loading from the Hugging Face hub without hanging on machines that cannot reach it.

Local folders load directly; hub ids are tried from the local cache first; only then, and
only if the hub answers a 3-second TCP probe, online. Offline, the hub clients would retry
with backoff for ~30 s per file and print a line per retry before failing: we fail at once
with the one-line error of the caller instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint ($HF_ENDPOINT or huggingface.co) accepts a TCP connection."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load(loader, name: str, **kwargs):
    """loader(name, **kwargs) from a folder, the local cache, or (if reachable) the hub."""
    if Path(name).is_dir():
        return loader(name, **kwargs)
    try:
        return loader(name, local_files_only=True, **kwargs)
    except Exception:  # not cached: fall through to the hub
        if not reachable():
            raise OSError(f"{name} is neither a local folder nor in the cache, and the hub is "
                          f"unreachable") from None
    return loader(name, **kwargs)
