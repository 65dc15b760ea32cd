"""The Ray backend: each batch a Ray task (`mqbench build --backend ray [--ray-address A]`).

Without an address (and no $RAY_ADDRESS) it starts a private local instance with `--jobs`
CPUs and stops it afterwards. A task whose worker process dies is retried by Ray itself
(`max_retries`); an exception raised in Python is not retried (it would fail again). Workers
read trained weights from $MQBENCH_CACHE, which on a multi-node cluster must be a shared
filesystem (the driver trains or installs them before any batch is sent).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

from mqbench.errors import MqbenchError


def _ray():
    try:
        import ray  # optional extra [cluster]; heavy (seconds), only --backend ray needs it
    except ImportError:
        raise MqbenchError("--backend ray needs Ray: pip install 'mqbench[cluster]'") from None
    return ray


def address(opts) -> str | None:
    return opts.ray_address or os.environ.get("RAY_ADDRESS") or None


def check(opts) -> None:
    _ray()
    addr = address(opts)
    if addr in (None, "auto", "local"):
        return
    hostport = addr.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MqbenchError(f"Ray address {addr!r}: expected host:port (or ray://host:port)")
    try:  # fail in seconds, where ray.init would retry for a minute
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise MqbenchError(f"cannot reach Ray at {addr} ({exc.strerror or exc}); start it with "
                           f"`ray start --head` or drop --ray-address") from None


def run(fn: Callable, batches: list, opts) -> Iterator[tuple[int, object]]:
    ray = _ray()
    addr = address(opts)
    started = not ray.is_initialized()
    if started:
        kw = {"address": addr} if addr else {"num_cpus": opts.jobs}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
    remote = ray.remote(fn).options(num_cpus=1, num_gpus=opts.gpus, max_retries=opts.retries,
                                    retry_exceptions=False)
    refs = {remote.remote(b): i for i, b in enumerate(batches)}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if exc.cause is not None else exc
                    raise MqbenchError(f"build batch {i} failed on Ray: "
                                       f"{type(cause).__name__}: {cause}") from None
                except ray.exceptions.RayError as exc:  # worker died more than max_retries
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise MqbenchError(f"build batch {i} lost on Ray after {opts.retries} "
                                       f"retries ({type(exc).__name__}: {first}); rerun the "
                                       f"same command to resume") from None
                yield i, result
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
