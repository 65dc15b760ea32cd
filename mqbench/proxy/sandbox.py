"""Run untrusted proxy code in a forked child process: time, memory, network and file limits.

The child inherits the already-computed statistics copy-on-write, so isolation costs a
fork, not a re-import of torch. Before the untrusted call it gets, in this order:

1. its own session (a kill takes any grandchildren with it);
2. **no network**: `unshare(CLONE_NEWNET)` through ctypes (Python 3.11 has no os.unshare).
   A fresh network namespace has only a downed loopback, so even a server on the parent's
   127.0.0.1 is unreachable. Needs root (CAP_SYS_ADMIN); skipped for other users;
3. **no writes outside a scratch directory**: a Landlock ruleset (raw syscalls, ABI probed
   at run time; works unprivileged on Linux >= 5.13) that handles every write-type
   filesystem right and grants them only beneath the scratch directory (and /dev/null).
   With Landlock ABI >= 4 it also denies TCP bind/connect, and with ABI >= 6 it scopes
   abstract Unix sockets, so the network is closed even where the namespace is unavailable;
4. an address-space limit and a CPU-time limit;
5. a `sys.addaudithook` layer (defence in depth, and the only layer left where the kernel
   offers neither of the above): it refuses creating sockets, starting processes, and
   opening / removing / renaming / creating files outside the scratch directory. Any refused
   attempt fails the call even if the untrusted code catches the exception (fails closed).
   The hook cannot stop code that calls libc through ctypes; the kernel layers do.

`layers()` says which layers this machine provides (probed once in a child). The parent
waits at most `timeout` seconds, then kills the whole process group. Results come back
pickled through a pipe, the only channel the child keeps.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing as mp
import os
import pickle
import resource
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import torch

from mqbench.errors import MqbenchError

_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
# x86_64 / aarch64 / most 64-bit arches share the generic syscall numbers for Landlock.
_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446
_RULE_PATH_BENEATH, _CREATE_VERSION = 1, 1
_FS_WRITE_FILE = 1 << 1
_FS_DIR_WRITES = sum(1 << b for b in range(4, 13))  # remove dir/file, make char..symlink
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _landlock_abi(libc) -> int:
    abi = libc.syscall(ctypes.c_long(_SYS_CREATE), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_CREATE_VERSION))
    return max(abi, 0)


def _unshare_net(libc) -> bool:
    if libc.unshare(_CLONE_NEWNET) == 0:
        return True
    err = ctypes.get_errno()

    if err in (errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EACCES):
        return False  # not root, or no namespace support: the other layers still apply
    raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _landlock(libc, scratch: str) -> int:
    """Confine writes to `scratch`; returns the ABI used (0 = Landlock unavailable)."""
    abi = _landlock_abi(libc)
    if abi < 1:
        return 0
    fs = _FS_WRITE_FILE | _FS_DIR_WRITES
    fs |= _FS_REFER if abi >= 2 else 0
    fs |= _FS_TRUNCATE if abi >= 3 else 0
    # Without a scope/net field the kernel rejects a larger struct on an old ABI: pass the
    # size that this ABI knows.
    attr = _RulesetAttr(fs, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rfd = libc.syscall(ctypes.c_long(_SYS_CREATE), ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))
    if rfd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        null_rights = _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)
        for path, rights in ((scratch, fs), ("/dev/null", null_rights)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(rights, fd)
                if libc.syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(rfd),
                                ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}) failed")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(ctypes.c_long(_SYS_RESTRICT), ctypes.c_int(rfd), ctypes.c_uint32(0)):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(rfd)
    return abi


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit event -> positions of the path arguments that the event would create or change
_PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
                "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1),
                "os.symlink": (1,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,)}
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "pty.spawn")


def _install_audit_hook(scratch: str, violations: list[str]) -> None:
    root = os.path.realpath(scratch)

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor: opening it was checked
        p = os.path.realpath(os.fsdecode(path))
        return p == "/dev/null" or p == root or p.startswith(root + os.sep)

    def refuse(what: str):
        msg = f"sandbox: {what} is not allowed"
        violations.append(msg)
        raise PermissionError(msg)

    def hook(event: str, args) -> None:
        if event.startswith("socket."):
            refuse(f"network access ({event})")
        elif event in _PROCESS_EVENTS:
            refuse(f"starting a process ({event})")
        elif event == "open":
            path, _, flags = args
            if path is not None and (flags or 0) & _WRITE_FLAGS and not inside(path):
                refuse(f"writing {os.fsdecode(path)} (outside the scratch directory)")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    refuse(f"{event} on {os.fsdecode(args[i])} (outside the scratch directory)")

    sys.addaudithook(hook)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _confine(scratch: str, violations: list[str]) -> list[str]:
    """Apply the network and filesystem layers in this (child) process; returns their names."""
    libc = _libc()
    used = []
    if _unshare_net(libc):
        used.append("netns")
    abi = _landlock(libc, scratch)
    if abi:
        used.append(f"landlock-abi{abi}")
    # Libraries that honour TMPDIR (tempfile, torch) then write into the scratch directory.
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    _install_audit_hook(scratch, violations)
    used.append("audit-hook")
    return used


def _child(conn, fn, args, mem_bytes: int, cpu_seconds: int, setup, scratch) -> None:
    violations: list[str] = []
    try:
        # OpenMP's thread pool does not survive fork(): a parallel region in the child would
        # wait forever for the parent's workers. One thread keeps torch on the inline path.

        torch.set_num_threads(1)
        os.setsid()
        if scratch is not None:
            _confine(scratch, violations)
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
    except BaseException as exc:  # noqa: BLE001 - report anything the untrusted code raised
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (line {tb[-1].lineno})" if tb else ""
        first = str(exc).splitlines()[0] if str(exc) else ""
        result = ("error", f"{type(exc).__name__}: {first}{where}")
    if violations:  # refused even if the code swallowed the PermissionError
        result = ("violation", violations[0])
    try:
        conn.send_bytes(pickle.dumps(result))
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
        conn.send_bytes(pickle.dumps(("error", f"result could not be returned: {exc}")))
    conn.close()
    os._exit(0)


def _probe() -> list[str]:
    return _confine(tempfile.gettempdir(), [])


_LAYERS: list[str] | None = None


def layers() -> list[str]:
    """The isolation layers this machine applies (e.g. ['netns', 'landlock-abi7', ...])."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = ["fork", "rlimits"] + run_limited(_probe, name="probe", confine=False,
                                                     timeout=30)
    return list(_LAYERS)


def run_limited(fn, args=(), *, name: str, timeout: float = 60.0, mem_mb: int = 4096,
                setup=None, scratch: str | os.PathLike | None = None, confine: bool = True):
    """Call fn(*args) in a confined child process; MqbenchError names `name` and the broken rule.

    Args:
        scratch: the one directory the child may write to. None (default) gives a fresh
            temporary directory, deleted afterwards; a given directory is kept.
        confine: False skips the network/filesystem layers (time and memory limits remain);
            for trusted code only.
    """
    own_scratch = scratch is None and confine
    if own_scratch:
        scratch = tempfile.mkdtemp(prefix="mqbench-scratch-")
    elif scratch is not None:
        scratch = str(Path(scratch).resolve())
        if not os.path.isdir(scratch):
            raise MqbenchError(f"scratch directory {scratch} does not exist; create it first")
    try:
        return _run(fn, args, name, timeout, mem_mb, setup, scratch if confine else None)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(fn, args, name, timeout, mem_mb, setup, scratch):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, mem_mb << 20,
                                            int(timeout) + 1, setup, scratch), daemon=True)
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
    if status == "violation":
        raise MqbenchError(f"proxy {name!r} broke the {value}")
    if status == "error":
        raise MqbenchError(f"proxy {name!r} raised {value}")
    return value
