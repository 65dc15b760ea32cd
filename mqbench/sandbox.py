"""Run untrusted proxy code in a forked child process with time and memory limits.

The child inherits the already-computed statistics copy-on-write, so isolation costs a
fork, not a re-import of torch. It gets its own session (so a kill takes any grandchildren
with it), an address-space limit, and a CPU-time limit; the parent waits at most
`timeout` seconds, then kills the whole process group. Results come back pickled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import resource
import signal
import traceback

from mqbench.errors import MqbenchError


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(conn, fn, args, mem_bytes: int, cpu_seconds: int, setup) -> None:
    try:
        # OpenMP's thread pool does not survive fork(): a parallel region in the child would
        # wait forever for the parent's workers. One thread keeps torch on the inline path.
        import torch

        torch.set_num_threads(1)
        os.setsid()
        if mem_bytes:
            limit = _vm_bytes() + mem_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        if setup is not None:
            setup()
        result = ("ok", fn(*args))
    except MemoryError:
        result = ("memory", "")
    except BaseException as exc:  # report anything the untrusted code raised
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (line {tb[-1].lineno})" if tb else ""
        result = ("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                  f"{where}")
    try:
        conn.send_bytes(pickle.dumps(result))
    except Exception as exc:
        conn.send_bytes(pickle.dumps(("error", f"result could not be returned: {exc}")))
    conn.close()
    os._exit(0)


def run_limited(fn, args=(), *, name: str, timeout: float = 60.0, mem_mb: int = 4096,
                setup=None):
    """Call fn(*args) in a child process; MqbenchError names `name` and the broken rule."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, mem_mb << 20,
                                            int(timeout) + 1, setup), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise MqbenchError(f"proxy {name!r} ran longer than its {timeout:g} s time limit; "
                               f"make it faster or raise --timeout")
        try:
            status, value = pickle.loads(parent.recv_bytes())
        except EOFError:
            proc.join(5)
            code = proc.exitcode
            why = (f"was killed by signal {-code}" if code and code < 0 else f"exited ({code})")
            if code in (-signal.SIGXCPU, -signal.SIGKILL):
                why += " (CPU-time or memory limit)"
            raise MqbenchError(f"proxy {name!r} {why} before returning a result") from None
    finally:
        if proc.is_alive():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        proc.join(5)
        parent.close()
    if status == "memory":
        raise MqbenchError(f"proxy {name!r} exceeded its {mem_mb} MiB memory limit")
    if status == "error":
        raise MqbenchError(f"proxy {name!r} raised {value}")
    return value
