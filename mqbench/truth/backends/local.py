"""The local backend: spawned worker processes on this machine (`mqbench build --jobs N`).

The small models of the bundled tasks do not keep two cores busy inside one forward pass,
so on a CPU single-threaded workers side by side finish sooner than one multi-threaded
build. Workers die with the build (PR_SET_PDEATHSIG): a killed build leaves nothing running.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from mqbench.errors import MqbenchError

_PR_SET_PDEATHSIG = 1


def check(opts) -> None:
    if opts.jobs < 1:
        raise MqbenchError(f"--jobs {opts.jobs}: need at least 1")


def die_with(parent: int) -> None:
    """Make this worker exit when its parent does, even on SIGKILL (Linux PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


@contextmanager
def main_hidden():
    """Start spawned workers without re-running the caller's script.

    `spawn` children normally re-import `__main__`; a user script without an
    `if __name__ == "__main__":` guard (or `python -` from stdin) would then run again in
    every worker. The worker function lives in mqbench, so the children need nothing from
    `__main__`: hide its path/spec while the processes start.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if main and k in
             main.__dict__}
    if main is not None and "__spec__" in saved:
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def run(fn: Callable, batches: list, opts) -> Iterator[tuple[int, object]]:
    pending = dict(enumerate(batches))
    deaths = 0
    while pending:
        before = set(mp.active_children())
        pool = ProcessPoolExecutor(max_workers=min(opts.jobs, len(pending)),
                                   mp_context=mp.get_context("spawn"), initializer=die_with,
                                   initargs=(os.getpid(),))
        with main_hidden():  # a spawn pool starts its processes inside submit()
            futures = {pool.submit(fn, b): i for i, b in pending.items()}
        workers = set(mp.active_children()) - before
        broken = False
        try:
            left = set(futures)
            while left and not broken:
                done, left = wait(left, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except MqbenchError:
                        raise
                    except Exception as exc:  # a bug or bad input in the worker: one line
                        raise MqbenchError(f"build worker failed: {type(exc).__name__}: "
                                           f"{exc}") from None
                    i = futures[fut]
                    del pending[i]
                    yield i, result
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for p in workers:  # running batches are abandoned, not awaited
                if p.is_alive():
                    p.kill()
                p.join(5)
        if broken:
            deaths += 1
            if deaths > opts.retries:
                raise MqbenchError(f"build workers died {deaths} times (out of memory? "
                                   f"killed?); rerun the same command to resume")
