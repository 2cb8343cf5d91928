"""Where the fast path pins its maps: a bpffs at /run/dmsc/bpf.

Why there and not /sys/fs/bpf: ``ip netns exec`` (and the lab's zygote, which
does the same) gives a process a private mount namespace, detaches /sys and
mounts a fresh sysfs for the network namespace. A bpffs under /sys/fs/bpf is
gone in there: /sys/fs/bpf is the new sysfs's empty directory. /run is left
alone, so a bpffs mounted at /run/dmsc/bpf by the root mount namespace is the
same bpffs instance (same pins) for

* processes in the root mount namespace, including those that only setns()
  into a network namespace (a network namespace does not change mounts), and
* processes started with ``ip netns exec`` / the zygote *after* the mount
  (their private mount namespace is a copy that includes it).

What does not work (verified on this machine, tests/test_pins.py): a process
whose private mount namespace was made *before* the root namespace mounted the
bpffs does not see it, because "/" is a private mount here (no systemd), so
nothing propagates into the copies. Such a process that calls
ensure_pin_root() mounts its own bpffs at the same path: the fast path works
(libbpf can pin), but its pins are visible only inside that mount namespace.
Hence: the lab mounts the pin root once, in the root mount namespace, before it
starts forwarders (``python -m forwarder.dataplane.fastpath.pins``, or ensure_pin_root()).
The mount is made shared so that its later unmount reaches the copies.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import NamedTuple

PIN_ROOT = "/run/dmsc/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_SHARED = 1 << 20
# what a fresh bpffs already holds (the kernel's preloaded iterators)
BPFFS_PRELOADED = frozenset(("maps.debug", "progs.debug"))

_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class PinRoot(NamedTuple):
    path: str
    mounted_now: bool      # this call mounted it
    mount_ns: str          # e.g. "mnt:[4026531832]": where the mount is known to exist


def fs_type(path: str) -> int:
    """statfs(path).f_type, or 0 if the path does not exist."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder)


def pin_dir_for(workdir: "os.PathLike | str", root: str = PIN_ROOT) -> str:
    """Where the forwarder working in `workdir` pins its maps: one folder per node
    of a run (a digest of the work folder's absolute path), so that the harness
    that starts the node can record it for `make clean` before the node exists."""
    import hashlib
    digest = hashlib.sha1(os.path.abspath(os.fspath(workdir)).encode()).hexdigest()[:16]
    return os.path.join(root, digest)


def remove_pin_dir(path: "os.PathLike | str") -> bool:
    """Unpin a node's maps and tcx links (its folder's files) and remove the folder:
    what a forwarder does when it stops, for one that could not (killed). A link
    nothing else holds detaches its program. True if there was one."""
    d = os.fspath(path)
    if not os.path.isdir(d):
        return False
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)
    return True


def is_bpffs(path: str) -> bool:
    return fs_type(path) == BPF_FS_MAGIC


def mount_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/mnt")
    except OSError:
        return "?"


def bpffs_supported() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == "bpf" for line in f if line.strip())
    except OSError:
        return False


def ensure_pin_root(root: str = PIN_ROOT) -> PinRoot:
    """Make `root` a bpffs (mounting one if it is not), return where it is."""
    if is_bpffs(root):
        return PinRoot(root, False, mount_ns())
    os.makedirs(root, mode=0o755, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(root), b"bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   ctypes.c_char_p(b"mode=0700")) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t bpf bpf {root}: {os.strerror(err)}")
    # shared: an unmount here reaches the mount namespaces copied from this one later
    _libc.mount(None, os.fsencode(root), None, MS_SHARED, None)
    return PinRoot(root, True, mount_ns())


def unmount_pin_root(root: str = PIN_ROOT, only_if_empty: bool = True) -> bool:
    """Undo ensure_pin_root (for tests and `make clean`): unmount and remove the dir."""
    if not is_bpffs(root):
        return False
    if only_if_empty and set(os.listdir(root)) - BPFFS_PRELOADED:
        return False
    if _libc.umount2(os.fsencode(root), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {root}: {os.strerror(err)}")
    try:
        os.rmdir(root)
    except OSError:
        pass
    return True


def main(argv=None) -> int:
    """python -m forwarder.dataplane.fastpath.pins [ROOT]: mount the pin root (run in the root mount namespace)."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = args[0] if args else PIN_ROOT
    r = ensure_pin_root(root)
    print(f"{r.path}: bpffs ({'mounted now' if r.mounted_now else 'already mounted'}) in {r.mount_ns}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
