"""Open a socket inside another network namespace from this process.

A socket keeps the namespace it was created in, so one measuring process can
hold sockets in a sender and a receiver namespace and timestamp both ends with
the same clock. Python 3.11 has no os.setns, hence ctypes.
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
_lock = threading.Lock()
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the block in /run/netns/<netns> (this thread only), then come back: for
    calls that act on the caller's namespace (tc attach, BPF_PROG_TEST_RUN's ifindex)."""
    with _lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)


def socket_in(netns: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """socket.socket(family, type_, proto) created inside /run/netns/<netns>."""
    with in_netns(netns):
        return socket.socket(family, type_, proto)
