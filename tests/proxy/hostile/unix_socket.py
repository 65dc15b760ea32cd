"""Escape 5: reach a pathname Unix socket (TCP, UDP and setns were already blocked)."""
import ctypes
import socket
import struct

from mqbench.proxy import proxy

PATH = b"__SOCK__"


@proxy(name="unix_socket", version=1, paper="hostile fixture", kind="layer")
def unix_socket(stats):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)  # below Python's audit hooks
    rc = -1
    if fd >= 0:
        addr = struct.pack("=H", socket.AF_UNIX) + PATH + b"\0"
        rc = libc.connect(fd, addr, len(addr))
        libc.write(fd, b"leak", 4)
    return [float(fd), float(rc), float(ctypes.get_errno())] + \
        [1.0] * (len(stats.modules) - 3)
