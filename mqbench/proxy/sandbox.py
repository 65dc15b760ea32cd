"""Run untrusted proxy code confined: a clean process, kernel isolation, limits, plain data.

Where the code runs. A forked copy of the caller would hold everything the caller holds (the
ground-truth table, the discovery context's measured sensitivities, API keys, os.environ),
and a proxy can walk `gc.get_objects()` or its own stack frames to find them. So untrusted
code runs in children of a *worker*: a fresh interpreter (`python -I`, minimal environment)
started once per caller process, PID 1 of its own PID namespace (as root, or inside an
unprivileged user namespace), holding only what it is sent: functions by reference, their
arguments and read-only views of the statistics (`StatsView`, shipped once per `Stats`).
Each call forks one child from the worker (the statistics are shared copy-on-write), which
confines itself before the untrusted call, in this order:

1. its own session; /dev/null as stdin, pipes as stdout/stderr (captured and returned to
   the caller apart from any verdict); every other descriptor closed; a minimal os.environ;
2. new mount, network and IPC namespaces, and a size-capped tmpfs (`disk_mb`) mounted as
   its scratch directory (TMPDIR, HOME, cwd), invisible to the host and gone with the call;
3. Python's, NumPy's and torch's global generators reseeded from the OS, so unseeded
   randomness shows up as non-determinism across calls;
4. rlimits: CPU time, file size (= the scratch cap), descriptors; not dumpable (no core);
5. Landlock: reads only beneath the Python installation, the mqbench package (not the
   repository), system library folders, its own /proc entry and a few devices; writes only
   beneath the scratch and /dev/null. With ABI >= 4 TCP is denied too, with ABI >= 6
   abstract Unix sockets and signals leaving the domain;
6. every capability dropped (bounding and ambient sets too), no_new_privs;
7. seccomp: no socket() at all (so no pathname Unix-socket connect), no new processes
   (fork, vfork, exec, clone without CLONE_THREAD; threads still work), signals only to
   itself, no memfd / SysV / POSIX shared memory (memory the address-space limit would not
   see), no io_uring, ptrace, process_vm_*, pidfd, bpf, perf, keyrings, mounts, namespaces,
   modules, handles (open_by_handle_at), clocks, swap or reboot;
8. a `sys.addaudithook` layer giving the one-line messages ("network access", "writing X
   (outside the scratch directory)", "reading X", "starting a process", "sending signal");
   a refused write, network use, process, signal or read of ground truth / home / /etc
   fails the call even if the code catches the PermissionError. It is for the messages:
   code in the same interpreter can get around it (ctypes, gc), the kernel layers cannot;
9. an address-space limit of `mem_mb` above what the worker already maps.

Since the child can start no process, it has no descendants: when it ends, nothing of the
call is left; when the worker ends, the kernel kills whatever is left in its namespace. The
result travels back as JSON behind a fixed header through a pipe the caller reads with
poll() against the deadline: never pickle, never a blocking read. The caller decodes it and
the proxy contract (mqbench.proxy.contract) validates it. At the deadline the caller kills
the child through a pidfd.

The kernel features are required, not optional: where one is missing every call fails with
one line saying which (`layers()` lists what this machine applies). Not covered: CPU side
channels and timing, and a proxy may use all of its time and memory allowance.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import functools
import json
import math
import os
import pickle
import platform
import random
import resource
import select
import shutil
import signal
import site
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mqbench.errors import MqbenchError
from mqbench.paths import REPO_ROOT, cache_dir, leaderboard_dir, task_dirs
from mqbench.proxy.context import Stats

MAX_RESULT_BYTES = 64 << 20  # a config proxy's scores for a large table are a few MB
MAX_OUTPUT_CHARS = 16 << 10  # of each of stdout and stderr kept for the caller
RESULT_FD = 3  # the child's result pipe; everything else above stderr is closed
_HEADER = b"MQR1"
_STATUS_KINDS = ("ok", "error", "mqbench", "violation", "memory", "disk", "unavailable")


# --------------------------------------------------------------------------- limits
def check_limits(timeout: float, mem_mb: int, disk_mb: int = 512) -> None:
    """Raise MqbenchError (one line, naming the option) unless the limits are usable."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise MqbenchError(f"--timeout must be a positive, finite number of seconds per proxy "
                           f"call, got {timeout!r}")
    for flag, value in (("--mem-mb", mem_mb), ("disk_mb", disk_mb)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise MqbenchError(f"{flag} must be a positive whole number of MiB, got {value!r} "
                               f"(there is no unlimited setting)")


@dataclass(frozen=True)
class Captured:
    """What one sandboxed call printed (sanitised: no control characters but newline/tab)."""

    name: str
    stdout: str
    stderr: str


def marked(captured, indent: str = "    ") -> str:
    """What sandboxed calls printed, each line behind '| ', '' when they printed nothing.

    The mark is what keeps a proxy's own "PASS ..." line from passing for mqbench's verdict.
    """
    lines = []
    for c in captured:
        for stream, text in (("stdout", c.stdout), ("stderr", c.stderr)):
            if text.strip():
                lines.append(f"{indent}| proxy {c.name!r} printed on its {stream}:")
                lines += [f"{indent}| {line}" for line in text.rstrip().split("\n")]
    return "\n".join(lines)


def printable(text: str) -> str:
    """`text` without terminal control sequences: only newline, tab and printable characters."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


# --------------------------------------------------------------------------- statistics view
VIEW_FIELDS = ("units", "modules", "unit_of", "weight_bits", "act_bits", "params", "macs",
               "depth", "num_layers", "weights", "perturbation", "inputs", "outputs", "logits",
               "labels", "grads", "hessian_trace", "hessian_trace_se", "hessian_eig",
               "virtual_grads", "synflow")


class StatsView:
    """The statistics a sandboxed proxy receives: Stats' public values, read-only.

    Nothing in it reaches the task, its model, its data, its cache folder or any file; the
    attributes are those `mqbench.proxy.context.Stats` documents.
    """

    __slots__ = VIEW_FIELDS

    def __init__(self, values: dict):
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError("the statistics are read-only")

    def __delattr__(self, name):
        raise AttributeError("the statistics are read-only")

    def __reduce__(self):
        return StatsView, ({k: getattr(self, k) for k in VIEW_FIELDS if hasattr(self, k)},)

    def compute_all(self) -> None:
        """Everything is already computed (Stats API compatibility)."""


def stats_view(stats) -> StatsView:
    """A StatsView of `stats` (forces every statistic group)."""
    return StatsView({k: getattr(stats, k) for k in VIEW_FIELDS if hasattr(stats, k)})


# --------------------------------------------------------------------------- kernel layers
_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET, _CLONE_THREAD = 0x20000000, 0x40000000, 0x00010000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 1, 4, 24
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _PR_CAP_AMBIENT = 38, 22, 47

# Landlock (uapi/linux/landlock.h); the syscall numbers are shared by every 64-bit arch.
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_DIR_WRITES = sum(1 << b for b in range(4, 13))  # remove dir/file, make char..symlink
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2  # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2  # ABI 6

# seccomp: (audit arch, syscall numbers) per architecture; numbers from the kernel's tables
# (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: include/uapi/asm-generic/unistd.h).
_DENIED = ("socketpair", "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv",
           "process_vm_writev", "process_madvise", "pidfd_open", "pidfd_getfd",
           "pidfd_send_signal", "kcmp", "memfd_create", "memfd_secret", "shmget", "msgget",
           "semget", "mq_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
           "io_uring_register", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
           "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
           "open_by_handle_at", "name_to_handle_at", "init_module", "finit_module",
           "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
           "iopl", "ioperm", "acct", "settimeofday", "clock_settime", "clock_adjtime",
           "adjtimex", "sethostname", "setdomainname", "quotactl", "quotactl_fd", "syslog",
           "fanotify_init", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
           "open_tree", "mount_setattr", "vhangup", "lookup_dcookie", "uselib")
_SYSCALLS = {
    "x86_64": (0xC000003E, dict(  # noqa: C408 - names read better than quoted keys
        socket=41, clone=56, clone3=435, capset=126, kill=62, tkill=200, tgkill=234,
        rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, socketpair=53, execve=59, execveat=322,
        fork=57, vfork=58, ptrace=101, process_vm_readv=310, process_vm_writev=311,
        process_madvise=440, pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424,
        kcmp=312, memfd_create=319, memfd_secret=447, shmget=29, msgget=68, semget=64,
        mq_open=240, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, bpf=321, perf_event_open=298, keyctl=250, add_key=248,
        request_key=249, mount=165, umount2=166, pivot_root=155, chroot=161, unshare=272,
        setns=308, open_by_handle_at=304, name_to_handle_at=303, init_module=175,
        finit_module=313, delete_module=176, kexec_load=246, kexec_file_load=320,
        reboot=169, swapon=167, swapoff=168, iopl=172, ioperm=173, acct=163,
        settimeofday=164, clock_settime=227, clock_adjtime=305, adjtimex=159,
        sethostname=170, setdomainname=171, quotactl=179, quotactl_fd=443, syslog=103,
        fanotify_init=300, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
        move_mount=429, open_tree=428, mount_setattr=442, vhangup=153, lookup_dcookie=212,
        uselib=134)),
    "aarch64": (0xC00000B7, dict(  # noqa: C408
        socket=198, clone=220, clone3=435, capset=91, kill=129, tkill=130, tgkill=131,
        rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, socketpair=199, execve=221,
        execveat=281, ptrace=117, process_vm_readv=270, process_vm_writev=271,
        process_madvise=440, pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424,
        kcmp=272, memfd_create=279, memfd_secret=447, shmget=194, msgget=186, semget=190,
        mq_open=180, userfaultfd=282, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, bpf=280, perf_event_open=241, keyctl=219, add_key=217,
        request_key=218, mount=40, umount2=39, pivot_root=41, chroot=51, unshare=97,
        setns=268, open_by_handle_at=265, name_to_handle_at=264, init_module=105,
        finit_module=273, delete_module=106, kexec_load=104, kexec_file_load=294,
        reboot=142, swapon=224, swapoff=225, acct=89, settimeofday=170, clock_settime=112,
        clock_adjtime=266, adjtimex=171, sethostname=161, setdomainname=162, quotactl=60,
        quotactl_fd=443, syslog=116, fanotify_init=262, fsopen=430, fsconfig=431,
        fsmount=432, fspick=433, move_mount=429, open_tree=428, mount_setattr=442,
        vhangup=58, lookup_dcookie=18)),
}
_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO, _SECCOMP_RET_ALLOW = \
    0x80000000, 0x00050000, 0x7FFF0000


class _Unavailable(Exception):
    """A kernel feature the sandbox needs is missing (reported as one line, never degraded)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _prctl(option: int, arg: int = 0) -> None:
    if _libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                     ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise _Unavailable(f"prctl({option}) failed: {os.strerror(err)}")


def _landlock_abi() -> int:
    abi = _libc().syscall(ctypes.c_long(_LL_CREATE), None, ctypes.c_size_t(0),
                          ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    return max(abi, 0)


def _enter_namespaces(scratch: str, disk_mb: int) -> list[str]:
    """(The child) new mount, network and IPC namespaces and a size-capped tmpfs scratch."""
    libc = _libc()
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC
    if libc.unshare(flags) != 0:
        raise _Unavailable(f"unshare(mount|net|IPC namespaces) failed: "
                           f"{os.strerror(ctypes.get_errno())}")
    if libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None) != 0:
        raise _Unavailable(f"cannot make the mount namespace private: "
                           f"{os.strerror(ctypes.get_errno())}")
    opts = f"size={disk_mb}m,mode=0700".encode()
    if libc.mount(b"tmpfs", scratch.encode(), b"tmpfs",
                  ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC), opts) != 0:
        raise _Unavailable(f"cannot mount a size-capped tmpfs scratch: "
                           f"{os.strerror(ctypes.get_errno())}")
    return ["mountns", "netns", "ipcns", f"tmpfs-scratch-{disk_mb}m"]


def _landlock(reads: list[str], scratch: str) -> int:
    """Reads only beneath `reads`, writes only beneath `scratch`; returns the ABI used."""
    libc = _libc()
    abi = _landlock_abi()
    if abi < 1:
        raise _Unavailable("Landlock is not enabled in this kernel (Linux >= 5.13 with "
                           "landlock in the lsm= list)")
    fs = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_READ_DIR | _FS_DIR_WRITES
    fs |= _FS_REFER if abi >= 2 else 0
    fs |= _FS_TRUNCATE if abi >= 3 else 0
    fs |= _FS_IOCTL_DEV if abi >= 5 else 0
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct size this ABI knows
    rfd = libc.syscall(ctypes.c_long(_LL_CREATE), ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))
    if rfd < 0:
        raise _Unavailable(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    file_rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (fs & _FS_TRUNCATE)
    read = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
    rules = [(p, read) for p in reads] + [(scratch, fs & ~_FS_IOCTL_DEV),
                                          ("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE |
                                           (fs & _FS_TRUNCATE))]
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # an optional folder this machine lacks
            try:
                if not os.path.isdir(path):
                    rights &= file_rights
                rule = _PathBeneath(rights, fd)
                if libc.syscall(ctypes.c_long(_LL_ADD_RULE), ctypes.c_int(rfd),
                                ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    raise _Unavailable(f"landlock_add_rule({path}) failed: "
                                       f"{os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        if libc.syscall(ctypes.c_long(_LL_RESTRICT), ctypes.c_int(rfd), ctypes.c_uint32(0)):
            raise _Unavailable(f"landlock_restrict_self failed: "
                               f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(rfd)
    return abi


def _drop_capabilities(capset_nr: int, last: int) -> None:
    for cap in range(last + 1):  # needs CAP_SETPCAP, so before capset() drops it
        _libc().prctl(ctypes.c_int(_PR_CAPBSET_DROP), ctypes.c_ulong(cap), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0))
    _libc().prctl(ctypes.c_int(_PR_CAP_AMBIENT), ctypes.c_ulong(4), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0))  # PR_CAP_AMBIENT_CLEAR_ALL
    hdr, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if _libc().syscall(ctypes.c_long(capset_nr), ctypes.byref(hdr), data) != 0:
        raise _Unavailable(f"capset failed: {os.strerror(ctypes.get_errno())}")


def seccomp_program(machine: str, pid: int) -> bytes:
    """The seccomp BPF filter of the child whose pid is `pid`, for `machine`, as raw bytes.

    Denied syscalls return an errno (EACCES for socket(), ENOSYS for clone3 so that glibc
    falls back to clone(), EPERM otherwise); signals may only target the child itself.
    """
    if machine not in _SYSCALLS:
        raise _Unavailable(f"the seccomp filter knows x86_64 and aarch64, not {machine}")
    arch, nr = _SYSCALLS[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, JMP|JEQ/JGE/JSET|K
    allow, deny = (ret, 0, 0, _SECCOMP_RET_ALLOW), (ret, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM)

    def err(e):
        return (ret, 0, 0, _SECCOMP_RET_ERRNO | e)

    def first_arg_in(syscall: str, values) -> list:
        """Allow `syscall` only when its first argument's low 32 bits are in `values`."""
        values = [v & 0xFFFFFFFF for v in values]
        body = [(ld, 0, 0, 16)]
        for i, v in enumerate(values):
            body.append((jeq, len(values) - i, 0, v))  # to `allow` past the remaining tests
        body += [deny, allow]
        return [(jeq, 0, len(body), nr[syscall])] + body

    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, _SECCOMP_RET_KILL_PROCESS),
            (ld, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers would bypass the table
        prog += [(jge, 0, 1, 0x40000000), deny]
    prog += [(jeq, 0, 1, nr["socket"]), err(errno.EACCES)]
    prog += [(jeq, 0, 1, nr["clone3"]), err(errno.ENOSYS)]
    for name in _DENIED:
        if name in nr:
            prog += [(jeq, 0, 1, nr[name]), deny]
    prog += [(jeq, 0, 1, nr["tkill"]), deny]
    prog += first_arg_in("kill", (0, pid, -pid))  # 0 and -pid: its own session's group
    for name in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        prog += first_arg_in(name, (pid,))
    # clone: threads only (torch's intra-op pool), never a new process
    prog += [(jeq, 0, 3, nr["clone"]), (ld, 0, 0, 16), (jset, 1, 0, _CLONE_THREAD), deny,
             allow]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _seccomp() -> None:
    code = seccomp_program(platform.machine(), os.getpid())
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    if _libc().prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.byref(prog),
                     ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise _Unavailable(f"seccomp filter refused: {os.strerror(ctypes.get_errno())}")


# --------------------------------------------------------------------------- audit hook
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit event -> positions of the path arguments that the event would create or change
_PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
                "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1),
                "os.symlink": (1,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,)}
_READ_EVENTS = ("os.listdir", "os.scandir")
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "pty.spawn")


def _beneath(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _install_audit_hook(reads: list[str], secrets: list[str], scratch: str,
                        violations: list[str]) -> None:
    """Refuse network, processes and writes outside `scratch`; reads outside `reads` fail,
    and those beneath `secrets` (ground truth, home, /etc) fail the whole call."""
    writable = [os.path.realpath(scratch), "/dev/null"]
    readable = [os.path.realpath(p) for p in reads] + writable
    own = (0, os.getpid(), -os.getpid())  # its own process (group): after setsid, pid = pgid

    def refuse(what: str):
        msg = f"sandbox: {what} is not allowed"
        violations.append(msg)
        raise PermissionError(msg)

    def real(path) -> str | None:
        if path is None or isinstance(path, int):
            return None  # an already-open descriptor: opening it was checked
        return os.path.realpath(os.fsdecode(path))

    def read(p: str) -> None:
        if _beneath(p, readable):
            return
        what = f"reading {p} (proxies may read only their statistics)"
        if _beneath(p, secrets):
            refuse(what)
        # elsewhere (a library probing a config file): the error Landlock would give, clearer
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args) -> None:
        if event.startswith("socket."):
            refuse(f"network access ({event})")
        elif event in _PROCESS_EVENTS:
            refuse(f"starting a process ({event})")
        elif event in ("os.kill", "os.killpg") and args[0] not in own:
            refuse(f"sending signal {args[1]} to process {args[0]} (only to itself)")
        elif event == "open":
            path, _, flags = args
            p = real(path)
            if p is None:
                return
            if (flags or 0) & _WRITE_FLAGS:
                if not _beneath(p, writable):
                    refuse(f"writing {p} (outside the scratch directory)")
            else:
                read(p)
        elif event in _READ_EVENTS:
            p = real(args[0] if args and args[0] is not None else ".")
            if p is not None:
                read(p)
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                p = real(args[i]) if i < len(args) else None
                if p is not None and not _beneath(p, writable):
                    refuse(f"{event} on {p} (outside the scratch directory)")

    sys.addaudithook(hook)


# --------------------------------------------------------------------------- what may be read
@functools.lru_cache(maxsize=1)
def _python_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    roots.add(str(Path(__file__).resolve().parents[1]))  # the mqbench package, not the repo
    roots |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib"}  # shared libraries
    return sorted(os.path.realpath(r) for r in roots)


_ALWAYS_READABLE = ["/etc/ld.so.cache", "/dev/zero", "/dev/urandom", "/dev/random",
                    "/sys/devices/system/cpu"]


def read_roots() -> list[str]:
    """Everything the child may read (besides the scratch), checked against the secret places.

    Raises MqbenchError when a place that holds ground truth (the cache, the leaderboard, a
    task folder) lies beneath one of them: Landlock cannot carve an exception out of a rule.
    """
    roots = _python_roots()
    for secret in (cache_dir(), leaderboard_dir(), *task_dirs()):
        s = os.path.realpath(secret)
        inside = [r for r in roots if _beneath(s, [r])]
        if inside:
            raise MqbenchError(f"{s} lies inside {inside[0]}, which sandboxed proxies may read; "
                               f"move it (or set MQBENCH_CACHE / MQBENCH_LEADERBOARD elsewhere)")
    return roots + _ALWAYS_READABLE


def secret_places() -> list[str]:
    """Where a read attempt fails the whole call: ground truth (the cache, the leaderboard,
    task folders, the repository), the home folder, /etc."""
    places = [cache_dir(), leaderboard_dir(), *task_dirs(), REPO_ROOT, "/etc", "/root"]
    home = os.path.expanduser("~")
    if home != "~":  # no HOME and no passwd entry: nothing more to add
        places.append(home)
    return sorted({os.path.realpath(p) for p in places})


# --------------------------------------------------------------------------- child side
_APPLIED: list[str] = []  # layers the worker and the child applied (read by layers())


def _plain(value, depth: int = 0):
    """`value` as JSON-ready plain data (numbers, strings, lists, dicts with string keys)."""
    if depth > 32:
        raise TypeError("the result is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().tolist() if value.is_floating_point() \
            else value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"a dict key {type(k).__name__} is not a string")
            out[str(k)] = _plain(v, depth + 1)
        return out
    raise TypeError(f"a {type(value).__name__} is not plain data (numbers, lists, dicts)")


def _where(exc: BaseException) -> str:
    """' (file.py line N)': the deepest frame outside mqbench and the Python installation."""
    tb = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__),
                                        lookup_lines=False)  # reading sources is refused
    if not tb:
        return ""
    ours = _python_roots()
    outside = [f for f in tb if not _beneath(os.path.realpath(f.filename), ours)
               and not f.filename.startswith("<")]
    frame = (outside or tb)[-1]
    return f" ({os.path.basename(frame.filename)} line {frame.lineno})"


def _message(exc: BaseException) -> str:
    """str(exc), which for an untrusted exception may itself raise."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return "(its message could not be read)"


def _is_memory(exc: BaseException) -> bool:
    text = _message(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "not enough memory", "out of memory")))


def _reseed() -> None:
    seed = int.from_bytes(os.urandom(8), "little")
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _write_result(result: dict) -> None:
    try:
        body = json.dumps(result, allow_nan=True).encode()
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        body = json.dumps({"status": "error", "message": f"result could not be encoded: "
                           f"{type(exc).__name__}"}).encode()
    data = _HEADER + struct.pack("!Q", len(body)) + body
    view = memoryview(data)
    while view:
        try:
            n = os.write(RESULT_FD, view)
        except OSError:
            return  # the caller stopped listening (deadline)
        view = view[n:]


def _child(fn, args, req: dict, fds: tuple[int, int, int]) -> None:
    """(Forked from the worker) confine, call, write the result, exit; never returns."""
    try:
        _confined_call(fn, args, req, fds)
    finally:
        os._exit(0)  # whatever happened, never fall back into the worker's loop


def _confined_call(fn, args, req: dict, fds: tuple[int, int, int]) -> None:
    violations: list[str] = []
    result: dict
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _APPLIED[:] = [_WORKER_LAYER]
        os.setsid()
        res, out, err = fds
        null = os.open("/dev/null", os.O_RDWR)
        for src, dst in ((null, 0), (out, 1), (err, 2), (res, RESULT_FD)):
            os.dup2(src, dst)
        os.closerange(RESULT_FD + 1, 1 << 16)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace",  # noqa: SIM115
                          closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace",  # noqa: SIM115
                          closefd=False)
        scratch = req["scratch"]
        if req["confine"]:
            _APPLIED.extend(_enter_namespaces(scratch, req["disk_mb"]))
        os.chdir(scratch if req["confine"] else "/")
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": scratch,
                           "HOME": scratch, "OMP_NUM_THREADS": "1"})
        tempfile.tempdir = scratch
        sys.dont_write_bytecode = True
        _reseed()
        cpu = int(req["timeout"]) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        disk = req["disk_mb"] << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        _prctl(_PR_SET_DUMPABLE, 0)
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        if req["confine"]:
            with open("/proc/sys/kernel/cap_last_cap") as f:  # unreadable under Landlock
                last_cap = int(f.read())
            # this process's own /proc folder (the host's view: /proc is not remounted)
            req["reads"] = req["reads"] + ["/proc/" + os.readlink("/proc/self")]
            abi = _landlock(req["reads"], scratch)
            _APPLIED.append(f"landlock-abi{abi}")
            _drop_capabilities(_SYSCALLS.get(platform.machine(), (0, {"capset": 126}))[1]
                               ["capset"], last_cap)
            _APPLIED.append("no-capabilities")
            _seccomp()
            _APPLIED.append("seccomp")
            _install_audit_hook(req["reads"], req["secrets"], scratch, violations)
            _APPLIED.append("audit-hook")
        _APPLIED.append("rlimits")
        limit = vm + (req["mem_mb"] << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except _Unavailable as exc:
        _write_result({"status": "unavailable", "message": str(exc)})
        return
    except BaseException as exc:  # noqa: BLE001 - our own setup failed: say so, one line
        _write_result({"status": "unavailable", "message": f"sandbox setup failed: "
                       f"{type(exc).__name__}: {exc}"})
        return
    try:
        result = {"status": "ok", "value": _plain(fn(*args))}
    except MqbenchError as exc:
        result = {"status": "mqbench", "message": _message(exc)}
    except BaseException as exc:  # noqa: BLE001 - report anything the untrusted code raised
        if _is_memory(exc):
            result = {"status": "memory"}
        elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
            result = {"status": "disk"}
        else:
            text = _message(exc)
            first = text.splitlines()[0] if text else ""
            result = {"status": "error", "message": f"{type(exc).__name__}: {first}"
                                                    f"{_where(exc)}"}
    if violations:  # refused even if the code swallowed the PermissionError
        result = {"status": "violation", "message": violations[0]}
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - the proxy may have replaced or closed it
            pass
    _write_result(result)
    for fd in (1, 2, RESULT_FD):  # the caller has everything; it need not wait for our exit
        os.close(fd)


# --------------------------------------------------------------------------- worker protocol
_FRAME = struct.Struct("!4sQI")  # magic, body length, number of descriptors


def _send(sock: socket.socket, body: bytes, fds: tuple[int, ...] = ()) -> None:
    head = _FRAME.pack(b"MQW1", len(body), len(fds))
    # MSG_NOSIGNAL: a dead peer is an error here, never a SIGPIPE for the whole process
    if fds:
        socket.send_fds(sock, [head], list(fds), socket.MSG_NOSIGNAL)
    else:
        sock.sendall(head, socket.MSG_NOSIGNAL)
    sock.sendall(body, socket.MSG_NOSIGNAL)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = sock.recv(min(n - got, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    head, fds, _, _ = socket.recv_fds(sock, _FRAME.size, 8)
    if not head:
        raise EOFError
    if len(head) < _FRAME.size:
        head += _recv_exact(sock, _FRAME.size - len(head))
    magic, n, nfds = _FRAME.unpack(head)
    if magic != b"MQW1" or len(fds) != nfds:
        raise EOFError
    return _recv_exact(sock, n), fds


@dataclass(frozen=True)
class _Ref:
    """An argument stored in the worker (a shipped StatsView)."""

    token: int


# The worker's first lines, before any import: a user namespace can only be entered while
# the process is single-threaded, and importing torch starts threads. argv: sys.path (JSON),
# the socket's descriptor. The creator of the PID namespace waits; its child is PID 1.
_BOOT = r"""
import ctypes, errno, json, os, sys
sys.path[:] = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
NEWPID, NEWUSER = 0x20000000, 0x10000000
uid, gid = os.geteuid(), os.getegid()
if libc.unshare(NEWPID) == 0:
    layer = "pidns"
elif ctypes.get_errno() != errno.EPERM:
    layer = "unavailable: unshare(CLONE_NEWPID) failed: " + os.strerror(ctypes.get_errno())
elif libc.unshare(NEWPID | NEWUSER) != 0:
    layer = ("unavailable: cannot create namespaces: no privilege (not root) and user "
             "namespaces are disabled (" + os.strerror(ctypes.get_errno()) + ")")
else:
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                       ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    layer = "userns+pidns"
if not layer.startswith("unavailable"):
    inner = os.fork()
    if inner:
        os.close(int(sys.argv[2]))
        os._exit(os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1]) & 0xFF)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL: die with the creator
from mqbench.proxy.sandbox import worker_main
worker_main(int(sys.argv[2]), layer)
"""
_WORKER_LAYER = "clean-worker"


def worker_main(fd: int, layer: str) -> None:
    """The worker: PID 1 of its own PID namespace; stores views, forks one child per call.

    Every child is confined by itself before running untrusted code; when the worker ends
    (its caller closed the socket or died), the kernel kills every child left in the
    namespace. A child's end is reported through the status pipe the caller sent with it.
    """
    global _WORKER_LAYER
    sock = socket.socket(fileno=fd)
    reply = functools.partial(_send, sock)  # replies are JSON: nothing is unpickled upstream
    if layer.startswith("unavailable: "):
        reply(json.dumps({"unavailable": layer.split(": ", 1)[1]}).encode())
        os._exit(0)
    _WORKER_LAYER = f"clean-worker+{layer}"
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a wake-up only; reaped below
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when we stop
    torch.set_num_threads(1)  # OpenMP's pool does not survive fork(); one thread is inline
    store: dict[int, object] = {}
    status_of: dict[int, int] = {}  # child pid -> the write end of its status pipe

    def reap() -> None:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fd_ = status_of.pop(pid, None)
            if fd_ is not None:
                try:
                    os.write(fd_, json.dumps({"wait": st}).encode())
                except OSError:
                    pass
                os.close(fd_)

    reply(json.dumps({"ready": os.getpid()}).encode())
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            reap()
        if sock not in ready:
            continue
        try:
            body, fds = _recv(sock)
        except (EOFError, OSError):
            break
        keep = ()
        try:
            msg = pickle.loads(body)
            if msg[0] == "store":
                store[msg[1]] = msg[2]
                reply(b'{"ok": true}')
            elif msg[0] == "drop":
                for token in msg[1]:
                    store.pop(token, None)
            elif msg[0] == "spawn":
                _, fn, args, req = msg
                args = tuple(store[a.token] if isinstance(a, _Ref) else a for a in args)
                res, out, err, status = fds
                pid = os.fork()
                if pid == 0:
                    _child(fn, args, req, (res, out, err))  # exits
                status_of[pid] = status
                keep = (status,)
                pidfd = os.pidfd_open(pid)
                try:
                    _send(sock, json.dumps({"pid": pid}).encode(), (pidfd,))
                finally:
                    os.close(pidfd)
        except Exception as exc:  # noqa: BLE001 - e.g. an argument that does not unpickle here
            reply(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            for f in fds:
                if f not in keep:
                    os.close(f)
        reap()
    root = os.getcwd()  # the caller's mqbench-sandbox-* folder: gone even if it was killed
    if os.path.basename(root).startswith("mqbench-sandbox-"):
        shutil.rmtree(root, ignore_errors=True)
    os._exit(0)


class _Worker:
    """The caller's handle on its worker process (one per caller process, started lazily)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner = os.getpid()
        self.root = tempfile.mkdtemp(prefix="mqbench-sandbox-")
        self.scratch = os.path.join(self.root, "scratch")
        os.mkdir(self.scratch, 0o700)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.root,
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        if "LD_LIBRARY_PATH" in os.environ:  # some installs find torch's libraries this way
            env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, cwd=self.root, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.sock = ours
        self.tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.next_token = 0
        self.dropped: list[int] = []
        ours.settimeout(300)  # importing torch on a cold disk
        try:
            reply = self._reply()
        except (EOFError, OSError, TimeoutError):
            self.close()
            raise MqbenchError("the proxy sandbox's worker process did not start; run "
                               "`python -c 'import mqbench.proxy.sandbox'` to see why") from None
        ours.settimeout(None)
        if "unavailable" in reply:
            self.close()
            _refuse(reply["unavailable"])
        if "ready" not in reply:
            self.close()
            raise MqbenchError(f"the proxy sandbox's worker failed to start: {reply}")

    def _reply(self, keep_fds: bool = False):
        body, fds = _recv(self.sock)
        if keep_fds:
            return json.loads(body), fds
        for f in fds:
            os.close(f)
        return json.loads(body)

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def ref(self, stats) -> _Ref:
        """(Lock held) the worker-side handle of `stats`, shipping its view the first time."""
        token = self.tokens.get(stats)
        if token is None:
            token = self.next_token = self.next_token + 1
            _send(self.sock, pickle.dumps(("store", token, stats_view(stats)),
                                          protocol=pickle.HIGHEST_PROTOCOL))
            reply = self._reply()
            if not reply.get("ok"):
                raise MqbenchError(f"the sandbox could not take the statistics: {reply}")
            self.tokens[stats] = token
            weakref.finalize(stats, self.dropped.append, token)
        return _Ref(token)

    def spawn(self, fn, args, req: dict, fds: tuple[int, ...], name: str) -> int:
        """Start fn(*args) in a child; returns a pidfd of the child."""
        with self.lock:
            if self.dropped:
                drops, self.dropped[:] = list(self.dropped), []
                _send(self.sock, pickle.dumps(("drop", drops)))
            args = tuple(self.ref(a) if isinstance(a, Stats) else a for a in args)
            try:
                body = pickle.dumps(("spawn", fn, args, req), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - e.g. a lambda or a local function
                raise MqbenchError(f"cannot send {name!r} to the sandbox ({type(exc).__name__}:"
                                   f" {exc}); pass a module-level function or a proxy file") \
                    from None
            _send(self.sock, body, fds)
            reply, got = self._reply(keep_fds=True)
        if "pid" not in reply or len(got) != 1:
            for f in got:
                os.close(f)
            raise MqbenchError(f"the sandbox could not load {name!r} ({reply.get('error')}); "
                               f"pass a proxy file or a function importable by module name")
        return got[0]  # a pidfd: signals reach that child and no recycled pid

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.owner == os.getpid():
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            shutil.rmtree(self.root, ignore_errors=True)


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()
atexit.register(lambda: shutdown())


def _worker() -> _Worker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None or not _WORKER.alive():
            _WORKER = _Worker()
        return _WORKER


def shutdown() -> None:
    """Stop this process's worker (it also stops by itself when this process exits)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is not None:
            _WORKER.close()
            _WORKER = None


# --------------------------------------------------------------------------- caller side
def _collect(fds: dict[str, int], pidfd: int | None, deadline: float,
             name: str) -> tuple[dict, bytes, str, str, bool]:
    """Read result, stdout, stderr and status until they end or the deadline passes.

    Every read follows a poll() bounded by the deadline, so a child that writes half a
    header and sleeps cannot hold the caller past its limit.
    """
    data = {k: bytearray() for k in fds}
    by_fd = {fd: k for k, fd in fds.items()}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    live = set(by_fd)
    timed_out = too_big = False

    def pump(wait_s: float) -> None:
        nonlocal too_big
        for fd, _ in poller.poll(max(0, int(wait_s * 1000) + 1)):
            chunk = os.read(fd, 1 << 16)
            key = by_fd[fd]
            if not chunk:
                poller.unregister(fd)
                live.discard(fd)
            elif key == "res":
                data[key] += chunk
                too_big = len(data[key]) > MAX_RESULT_BYTES + 64
            elif len(data[key]) < 4 * MAX_OUTPUT_CHARS:
                data[key] += chunk  # the rest is drained, not kept

    def complete() -> bool:  # a whole result arrived and its pipe ended: the status can wait
        r = data["res"]
        return fds["res"] not in live and len(r) >= 12 and \
            len(r) == 12 + struct.unpack("!Q", bytes(r[4:12]))[0]

    while {fds["status"], fds["res"]} & live and not too_big and not complete():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        pump(min(left, 1.0))
    if (timed_out or too_big) and pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # its child and namespace follow
        except ProcessLookupError:
            pass
    # stdout/stderr end with the namespace; give them a moment to drain
    grace = time.monotonic() + (1.0 if (timed_out or too_big) else 5.0)
    while {fds["out"], fds["err"]} & live and time.monotonic() < grace:
        pump(grace - time.monotonic())
    status = {}
    if data["status"] and not timed_out:
        try:
            status = json.loads(bytes(data["status"]))
        except ValueError:
            status = {}
    if too_big:
        raise MqbenchError(f"proxy {name!r} returned more than {MAX_RESULT_BYTES >> 20} MiB; "
                           f"return one number per module, unit or configuration")
    text = [printable(bytes(data[k]).decode("utf-8", "replace")[:MAX_OUTPUT_CHARS])
            for k in ("out", "err")]
    return status, bytes(data["res"]), text[0], text[1], timed_out


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(printable(str(text)).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _decode(res: bytes, name: str) -> dict:
    if not res:
        return {}
    if res[:4] != _HEADER or len(res) < 12:
        raise MqbenchError(f"proxy {name!r} wrote a malformed result (it must return its "
                           f"value, not write to the result pipe)")
    (n,) = struct.unpack("!Q", res[4:12])
    if len(res) != 12 + n:
        raise MqbenchError(f"proxy {name!r} wrote a malformed result ({len(res) - 12} bytes "
                           f"where the header announced {n})")
    try:
        out = json.loads(res[12:])
    except (ValueError, RecursionError):
        raise MqbenchError(f"proxy {name!r} returned a result that is not valid JSON") from None
    if not isinstance(out, dict) or out.get("status") not in _STATUS_KINDS:
        raise MqbenchError(f"proxy {name!r} wrote a malformed result")
    return out


def run_limited(fn, args=(), *, name: str, timeout: float = 60.0, mem_mb: int = 4096,
                disk_mb: int = 512, confine: bool = True, capture: list | None = None):
    """Call fn(*args) confined; returns its value as plain data (lists, dicts, numbers, str).

    `fn` and `args` are pickled to the clean worker, so `fn` must be importable (a
    module-level function, or a proxy's `fn` from mqbench.proxy.contract); a `Stats`
    argument arrives as a read-only StatsView. MqbenchError (one line) names `name` and the
    limit or rule it broke. `capture`, a list, receives a Captured of what the call printed.
    confine=False skips the namespaces and the Landlock/seccomp/audit layers (time, memory
    and the clean process remain): for trusted code only.
    """
    check_limits(timeout, mem_mb, disk_mb)
    if sys.platform != "linux":
        raise MqbenchError("the proxy sandbox needs Linux (namespaces, Landlock, seccomp); "
                           f"this is {sys.platform}")
    worker = _worker()
    req = {"timeout": float(timeout), "mem_mb": int(mem_mb), "disk_mb": int(disk_mb),
           "confine": bool(confine), "scratch": worker.scratch,
           "reads": read_roots() if confine else [], "secrets": secret_places()}
    pipes = {k: os.pipe() for k in ("res", "out", "err", "status")}
    ends = tuple(pipes[k][1] for k in ("res", "out", "err", "status"))
    pidfd = None
    try:
        try:
            try:
                pidfd = worker.spawn(fn, args, req, ends, name)
            except (OSError, EOFError, ValueError):
                shutdown()  # the worker died (killed from outside?): one fresh start
                worker = _worker()
                req["scratch"] = worker.scratch
                try:
                    pidfd = worker.spawn(fn, args, req, ends, name)
                except (OSError, EOFError, ValueError) as exc:
                    raise MqbenchError(f"the proxy sandbox's worker stopped unexpectedly "
                                       f"({type(exc).__name__}); run again") from None
        finally:
            for fd in ends:
                os.close(fd)
        status, res, out, err, timed_out = _collect(
            {k: r for k, (r, _) in pipes.items()}, pidfd, time.monotonic() + timeout, name)
    finally:
        for r, _ in pipes.values():
            os.close(r)
        if pidfd is not None:
            os.close(pidfd)
    if capture is not None:
        capture.append(Captured(name, out, err))
    if "unavailable" in status:
        _refuse(status["unavailable"])
    if timed_out:
        raise MqbenchError(f"proxy {name!r} ran longer than its {timeout:g} s time limit; "
                           f"make it faster or raise --timeout")
    result = _decode(res, name)
    kind = result.get("status")
    if kind == "unavailable":
        _refuse(result.get("message", ""))
    if kind == "ok":
        return result.get("value")
    if kind == "memory":
        raise MqbenchError(f"proxy {name!r} exceeded its {mem_mb} MiB memory limit; use less "
                           f"memory or raise --mem-mb")
    if kind == "disk":
        raise MqbenchError(f"proxy {name!r} exceeded its {disk_mb} MiB scratch-disk limit")
    if kind == "violation":
        raise MqbenchError(f"proxy {name!r} broke the {_one_line(result.get('message', ''))}")
    if kind == "mqbench":
        raise MqbenchError(_one_line(result.get("message", "")))
    if kind == "error":
        raise MqbenchError(f"proxy {name!r} raised {_one_line(result.get('message', ''))}")
    if "wait" not in status:
        raise MqbenchError(f"proxy {name!r}: the sandbox's worker stopped during the call; "
                           f"run again")
    code = os.waitstatus_to_exitcode(status["wait"])
    if code < 0:
        sig = -code
        why = f"was killed by signal {sig} ({signal.Signals(sig).name})"
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            why += "; over its CPU-time limit or out of memory (raise --timeout or --mem-mb)"
        raise MqbenchError(f"proxy {name!r} {why} before returning a result")
    raise MqbenchError(f"proxy {name!r} exited ({code}) before returning a result")


def _refuse(why: str) -> None:
    raise MqbenchError(f"the proxy sandbox cannot run here: {_one_line(why, 200)}; it needs "
                       f"Linux >= 5.13 with Landlock, seccomp and PID/mount/network namespaces "
                       f"(root or unprivileged user namespaces); see CONTRIBUTING.md")


def _applied() -> list[str]:
    return list(_APPLIED)


_LAYERS: list[str] | None = None


def layers() -> list[str]:
    """The isolation layers this machine applies (e.g. ['clean-worker', 'pidns', ...])."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = run_limited(_applied, name="probe", timeout=30)
    return list(_LAYERS)
