"""A thin ctypes wrapper over Debian's libbpf.so.1 (libbpf 1.1): what the fast path needs.

No bcc, no compilation at run time, no pyroute2: open an object file, pin its
maps by our own paths, load it, work on map fds, attach at tcx ingress through
pinned BPF links and run BPF_PROG_TEST_RUN. The ctypes structures below copy libbpf 1.1's
headers (/usr/include/bpf/libbpf.h, bpf.h; every *_opts struct starts with
``size_t sz``); tests/test_layout.py compiles a probe against those headers and
compares sizes and offsets.

Every failure raises :class:`BpfError` (an OSError with the errno), naming the
call that failed and carrying the lines libbpf printed meanwhile (a verifier
rejection's log among them). libbpf 1.x returns ``-errno`` from calls that
return int and NULL (errno set) from calls that return a pointer.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from contextlib import contextmanager
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_int, c_size_t, c_uint32,
                    c_uint64, c_void_p, create_string_buffer, sizeof)
from typing import Iterator, List, NamedTuple, Optional, Sequence

log = logging.getLogger("fastpath.libbpf")

LIBBPF_SONAME = "libbpf.so.1"

# enum bpf_map_update flags
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
# enum bpf_attach_type: tcx ingress (Linux 6.6+), newer than libbpf 1.1's own headers;
# libbpf 1.1 passes it to the kernel as given (bpf_link_create, bpf_prog_query)
BPF_TCX_INGRESS = 46
# libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
# tc actions (linux/pkt_cls.h)
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


class BpfError(OSError):
    """A libbpf/bpf() call failed: `what` names it, `log` holds libbpf's lines."""

    def __init__(self, what: str, err: int, lines: Sequence[str] = ()) -> None:
        err = abs(int(err)) or 1
        self.what = what
        self.log = list(lines)
        text = f"{what}: {os.strerror(err)}"
        if self.log:
            text += "\nlibbpf:\n" + "\n".join(self.log)
        super().__init__(err, text)

    def __str__(self) -> str:  # without OSError's "[Errno n]" prefix, which repeats the errno
        return self.strerror


class LibbpfUnavailable(BpfError):
    """libbpf.so.1 cannot be loaded or lacks a symbol we need."""


# --------------------------------------------------------------------------- structs
class bpf_test_run_opts(Structure):
    _fields_ = [("sz", c_size_t), ("data_in", c_void_p), ("data_out", c_void_p),
                ("data_size_in", c_uint32), ("data_size_out", c_uint32),
                ("ctx_in", c_void_p), ("ctx_out", c_void_p),
                ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
                ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
                ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]  # 80


class bpf_map_batch_opts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]  # 24


class bpf_map_create_opts(Structure):
    _fields_ = [("sz", c_size_t), ("btf_fd", c_uint32), ("btf_key_type_id", c_uint32),
                ("btf_value_type_id", c_uint32), ("btf_vmlinux_value_type_id", c_uint32),
                ("inner_map_fd", c_uint32), ("map_flags", c_uint32), ("map_extra", c_uint64),
                ("numa_node", c_uint32), ("map_ifindex", c_uint32)]  # 48


STRUCT_SIZES = {"bpf_test_run_opts": 80, "bpf_map_batch_opts": 24, "bpf_map_create_opts": 48}
for _s in (bpf_test_run_opts, bpf_map_batch_opts, bpf_map_create_opts):
    assert sizeof(_s) == STRUCT_SIZES[_s.__name__], _s.__name__

# struct __sk_buff (linux/bpf.h): the fields BPF_PROG_TEST_RUN accepts in ctx_in.
SKB_CTX_SIZE = 192
SKB_OFF_LEN = 0
SKB_OFF_MARK = 8
SKB_OFF_PRIORITY = 32
SKB_OFF_INGRESS_IFINDEX = 36
SKB_OFF_IFINDEX = 40
SKB_OFF_GSO_SEGS = 164
SKB_OFF_GSO_SIZE = 176
# struct bpf_prog_info / bpf_map_info offsets (linux/bpf.h)
PROG_INFO_SIZE = 232
PROG_INFO_OFF = {"type": 0, "id": 4, "jited_prog_len": 16, "xlated_prog_len": 20,
                 "name": 64, "verified_insns": 216}
MAP_INFO_SIZE = 88
MAP_INFO_OFF = {"type": 0, "id": 4, "key_size": 8, "value_size": 12, "max_entries": 16,
                "map_flags": 20, "name": 24}


def skb_ctx(ifindex: int = 0, ingress_ifindex: int = 0, priority: int = 0, mark: int = 0,
            gso_segs: int = 0, gso_size: int = 0) -> bytes:
    """A struct __sk_buff for test_run's ctx_in (other fields must stay 0).
    gso_segs/gso_size go to the test skb's shared info (a GSO packet's shape)."""
    buf = bytearray(SKB_CTX_SIZE)
    for off, val in ((SKB_OFF_MARK, mark), (SKB_OFF_PRIORITY, priority),
                     (SKB_OFF_INGRESS_IFINDEX, ingress_ifindex), (SKB_OFF_IFINDEX, ifindex),
                     (SKB_OFF_GSO_SEGS, gso_segs), (SKB_OFF_GSO_SIZE, gso_size)):
        buf[off:off + 4] = int(val).to_bytes(4, "little")
    return bytes(buf)


def skb_field(ctx: bytes, off: int) -> int:
    return int.from_bytes(ctx[off:off + 4], "little")


# --------------------------------------------------------------------------- the library
_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_tls = threading.local()
_load_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int


def _on_print(level: int, fmt: bytes, ap: int) -> int:
    # va_list is an array type on x86_64: it arrives as a pointer that vsnprintf takes as is.
    try:
        buf = create_string_buffer(4096)
        _libc.vsnprintf(buf, len(buf), fmt, ap)
        text = buf.value.decode("utf-8", "replace")
        captures = getattr(_tls, "captures", None)
        if captures:
            if level <= LIBBPF_INFO or os.environ.get("DMSC_LIBBPF_DEBUG"):
                for cap in captures:
                    cap.extend(line for line in text.rstrip("\n").split("\n"))
        elif level == LIBBPF_WARN:
            log.warning("%s", text.rstrip())
        elif level == LIBBPF_INFO or os.environ.get("DMSC_LIBBPF_DEBUG"):
            log.debug("%s", text.rstrip())
    except Exception:  # never raise through C
        pass
    return 0


_print_cb = _PRINT_FN(_on_print)  # kept alive for the process's lifetime

_SIGNATURES = {
    # name: (restype, argtypes)
    "libbpf_set_print": (c_void_p, [_PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_map__set_pin_path": (c_int, [c_void_p, c_char_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32]),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_char_p, c_size_t]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_uint32, c_uint32, c_uint32,
                               POINTER(bpf_map_create_opts)]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                     POINTER(c_uint32), POINTER(bpf_map_batch_opts)]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
    "bpf_link_update": (c_int, [c_int, c_int, c_void_p]),
    "bpf_link_detach": (c_int, [c_int]),
    "bpf_prog_query": (c_int, [c_int, c_int, c_uint32, POINTER(c_uint32), POINTER(c_uint32),
                               POINTER(c_uint32)]),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(bpf_test_run_opts)]),
}


def lib() -> ctypes.CDLL:
    """libbpf.so.1 with our signatures and print callback; LibbpfUnavailable if absent."""
    global _lib
    if _lib is not None:
        return _lib
    with _load_lock:
        if _lib is not None:
            return _lib
        try:
            handle = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
        except OSError as exc:
            raise LibbpfUnavailable(f"load {LIBBPF_SONAME} ({exc})", 2) from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(handle, name)
            except AttributeError:
                raise LibbpfUnavailable(f"{LIBBPF_SONAME} has no {name} (libbpf >= 1.0 needed)",
                                        38) from None
            fn.restype, fn.argtypes = restype, argtypes
        handle.libbpf_set_print(_print_cb)
        _lib = handle
        return handle


@contextmanager
def capture() -> Iterator[List[str]]:
    """Collect the lines libbpf prints in this thread during the block."""
    lines: List[str] = []
    stack = getattr(_tls, "captures", None)
    if stack is None:
        stack = _tls.captures = []
    stack.append(lines)
    try:
        yield lines
    finally:
        stack.remove(lines)


def _errno(rc: int) -> int:
    return -rc if rc < 0 else (ctypes.get_errno() or 1)


def _check(rc: int, what: str, lines: Sequence[str] = ()) -> int:
    if rc < 0:
        raise BpfError(what, _errno(rc), lines)
    return rc


def _buf(data: bytes):
    return ctypes.create_string_buffer(bytes(data), len(data)) if data else None


_ncpus: Optional[int] = None


def num_possible_cpus() -> int:
    global _ncpus
    if _ncpus is None:
        n = lib().libbpf_num_possible_cpus()
        _ncpus = _check(n, "libbpf_num_possible_cpus")
    return _ncpus


def percpu_value_size(value_size: int) -> int:
    """Bytes of one CPU's slot in a per-CPU lookup (the kernel rounds up to 8)."""
    return (value_size + 7) & ~7


# --------------------------------------------------------------------------- objects
class BpfObject:
    """An opened (then loaded) BPF object file."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.program_logs: dict = {}
        self._log_bufs: list = []
        L = lib()
        with capture() as lines:
            ptr = L.bpf_object__open_file(self.path.encode(), None)
            err = ctypes.get_errno()
        if not ptr:
            raise BpfError(f"bpf_object__open_file({self.path})", err or 22, lines)
        self._obj = ptr
        self.loaded = False

    def _map(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._ptr(), name.encode())
        if not ptr:
            raise BpfError(f"map {name!r} not in {self.path}", 2)
        return ptr

    def _prog(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self._ptr(), name.encode())
        if not ptr:
            raise BpfError(f"program {name!r} not in {self.path}", 2)
        return ptr

    def _ptr(self) -> int:
        if not self._obj:
            raise BpfError(f"{self.path}: object closed", 9)
        return self._obj

    def set_pin_path(self, map_name: str, path: str) -> None:
        """Pin `map_name` at `path` on load (reusing a compatible map pinned there)."""
        _check(lib().bpf_map__set_pin_path(self._map(map_name), str(path).encode()),
               f"bpf_map__set_pin_path({map_name}, {path})")

    def set_max_entries(self, map_name: str, n: int) -> None:
        _check(lib().bpf_map__set_max_entries(self._map(map_name), n),
               f"bpf_map__set_max_entries({map_name}, {n})")

    def load(self, log_level: int = 0, log_size: int = 1 << 20,
             programs: Sequence[str] = ()) -> None:
        """Load all programs and create (or reuse pinned) maps. With `log_level`
        (1: verifier log, 4: statistics) the named programs' logs land in
        `program_logs` even when the load succeeds."""
        L = lib()
        if log_level:
            for name in programs:
                buf = create_string_buffer(log_size)
                self._log_bufs.append((name, buf))
                p = self._prog(name)
                _check(L.bpf_program__set_log_buf(p, buf, log_size), "bpf_program__set_log_buf")
                _check(L.bpf_program__set_log_level(p, log_level), "bpf_program__set_log_level")
        with capture() as lines:
            rc = L.bpf_object__load(self._ptr())
        for name, buf in self._log_bufs:
            self.program_logs[name] = buf.value.decode("utf-8", "replace")
        _check(rc, f"bpf_object__load({self.path})", lines)
        self.loaded = True

    def prog_fd(self, name: str) -> int:
        return _check(lib().bpf_program__fd(self._prog(name)), f"bpf_program__fd({name})")

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_map__fd(self._map(name)), f"bpf_map__fd({name})")

    def close(self) -> None:
        """Close the object and its fds (pins and tc attachments outlive it)."""
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- maps
def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY, what: str = "map") -> None:
    rc = lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags)
    _check(rc, f"bpf_map_update_elem({what})")


def map_lookup(fd: int, key: bytes, value_size: int, what: str = "map") -> Optional[bytes]:
    """The value, or None when the key is absent."""
    out = ctypes.create_string_buffer(value_size)
    rc = lib().bpf_map_lookup_elem(fd, _buf(key), out)
    if rc < 0:
        err = _errno(rc)
        if err == 2:  # ENOENT
            return None
        raise BpfError(f"bpf_map_lookup_elem({what})", err)
    return out.raw


def map_lookup_percpu(fd: int, key: bytes, value_size: int, what: str = "map") -> Optional[List[bytes]]:
    """One value per possible CPU (per-CPU maps need ncpus * round_up(size, 8) bytes)."""
    step = percpu_value_size(value_size)
    n = num_possible_cpus()
    raw = map_lookup(fd, key, step * n, what)
    if raw is None:
        return None
    return [raw[i * step:i * step + value_size] for i in range(n)]


def map_delete(fd: int, key: bytes, what: str = "map") -> bool:
    """True if the key was there."""
    rc = lib().bpf_map_delete_elem(fd, _buf(key))
    if rc < 0:
        err = _errno(rc)
        if err == 2:
            return False
        raise BpfError(f"bpf_map_delete_elem({what})", err)
    return True


def map_keys(fd: int, key_size: int, what: str = "map") -> Iterator[bytes]:
    """Every key (bpf_map_get_next_key); a hash map changed meanwhile may restart."""
    L = lib()
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        rc = L.bpf_map_get_next_key(fd, cur, nxt)
        if rc < 0:
            err = _errno(rc)
            if err == 2:
                return
            raise BpfError(f"bpf_map_get_next_key({what})", err)
        key = nxt.raw
        yield key
        cur = ctypes.create_string_buffer(key, key_size)


def map_lookup_batch(fd: int, key_size: int, value_size: int, max_entries: int,
                     percpu: bool = False, what: str = "map") -> List[tuple]:
    """All (key, value) pairs in one or a few syscalls (BPF_MAP_LOOKUP_BATCH).
    With `percpu`, value is the list of per-CPU values."""
    L = lib()
    step = percpu_value_size(value_size) if percpu else value_size
    per_entry = step * (num_possible_cpus() if percpu else 1)
    chunk = max(1, min(max_entries, 4096))
    keys = ctypes.create_string_buffer(key_size * chunk)
    vals = ctypes.create_string_buffer(per_entry * chunk)
    token_in = ctypes.create_string_buffer(max(key_size, 8))
    token_out = ctypes.create_string_buffer(max(key_size, 8))
    opts = bpf_map_batch_opts(sz=sizeof(bpf_map_batch_opts))
    out: List[tuple] = []
    first = True
    while True:
        count = c_uint32(chunk)
        rc = L.bpf_map_lookup_batch(fd, None if first else token_in, token_out, keys, vals,
                                    byref(count), byref(opts))
        err = _errno(rc) if rc < 0 else 0
        if rc < 0 and err != 2:
            raise BpfError(f"bpf_map_lookup_batch({what})", err)
        kraw, vraw = keys.raw, vals.raw
        for i in range(count.value):
            k = kraw[i * key_size:(i + 1) * key_size]
            v = vraw[i * per_entry:(i + 1) * per_entry]
            if percpu:
                v = [v[c * step:c * step + value_size] for c in range(per_entry // step)]
            out.append((k, v))
        if err == 2 or count.value == 0:
            return out
        ctypes.memmove(token_in, token_out, len(token_out))
        first = False


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
    """Create an unpinned map (used by the availability probe); returns its fd."""
    opts = bpf_map_create_opts(sz=sizeof(bpf_map_create_opts))
    rc = lib().bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries,
                              byref(opts))
    return _check(rc, f"bpf_map_create({name})")


def obj_get(path: str) -> int:
    """An fd for a pinned map or program."""
    return _check(lib().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")


def unpin(path: str) -> bool:
    """Remove a pin (the object lives on while fds or attachments hold it);
    False if it was not there. Refuses paths outside a bpffs."""
    from . import pins
    if not os.path.lexists(path):
        return False
    if not pins.is_bpffs(os.path.dirname(os.path.abspath(path))):
        raise BpfError(f"unpin {path}: not in a bpffs", 22)
    os.unlink(path)
    return True


class MapInfo(NamedTuple):
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


class ProgInfo(NamedTuple):
    type: int
    id: int
    name: str
    jited_prog_len: int
    xlated_prog_len: int
    verified_insns: int


def _info(fd: int, size: int, what: str) -> bytes:
    buf = ctypes.create_string_buffer(size)
    n = c_uint32(size)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, byref(n)), f"bpf_obj_get_info_by_fd({what})")
    return buf.raw


def _u32(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off:off + 4], "little")


def map_info(fd: int) -> MapInfo:
    raw, o = _info(fd, MAP_INFO_SIZE, "map"), MAP_INFO_OFF
    return MapInfo(_u32(raw, o["type"]), _u32(raw, o["id"]), _u32(raw, o["key_size"]),
                   _u32(raw, o["value_size"]), _u32(raw, o["max_entries"]),
                   _u32(raw, o["map_flags"]),
                   raw[o["name"]:o["name"] + 16].split(b"\0")[0].decode())


def prog_info(fd: int) -> ProgInfo:
    raw, o = _info(fd, PROG_INFO_SIZE, "prog"), PROG_INFO_OFF
    return ProgInfo(_u32(raw, o["type"]), _u32(raw, o["id"]),
                    raw[o["name"]:o["name"] + 16].split(b"\0")[0].decode(),
                    _u32(raw, o["jited_prog_len"]), _u32(raw, o["xlated_prog_len"]),
                    _u32(raw, o["verified_insns"]))


# --------------------------------------------------------------------------- tcx
def obj_pin(fd: int, path: str) -> None:
    """Pin a map, program or link at `path` (in a bpffs)."""
    _check(lib().bpf_obj_pin(fd, str(path).encode()), f"bpf_obj_pin({path})")


def tcx_link(ifindex: int, prog_fd: int) -> int:
    """Attach a program at tcx ingress of `ifindex` (this netns) through a BPF link;
    returns the link's fd. The program stays attached while the link lives: while an
    fd or a pin holds it, or until the interface goes away."""
    with capture() as lines:
        rc = lib().bpf_link_create(prog_fd, ifindex, BPF_TCX_INGRESS, None)
    return _check(rc, f"bpf_link_create(ifindex {ifindex}, tcx ingress)", lines)


def link_update(link_fd: int, prog_fd: int) -> None:
    """Put another program on an existing link (atomically, in place)."""
    with capture() as lines:
        rc = lib().bpf_link_update(link_fd, prog_fd, None)
    _check(rc, "bpf_link_update", lines)


def link_detach(link_fd: int) -> bool:
    """Detach a link's program now, whoever else holds the link; False if its interface
    was already gone (the kernel detached it then)."""
    rc = lib().bpf_link_detach(link_fd)
    if rc in (-19, -67):  # ENODEV, ENOLINK: the interface went away
        return False
    _check(rc, "bpf_link_detach")
    return True


def tcx_query(ifindex: int) -> List[int]:
    """The ids of the programs attached at tcx ingress of `ifindex` (this netns), in
    the order they run; [] if none (or no such interface)."""
    ids = (c_uint32 * 64)()
    cnt = c_uint32(len(ids))
    flags = c_uint32(0)
    with capture():
        rc = lib().bpf_prog_query(ifindex, BPF_TCX_INGRESS, 0, byref(flags), ids, byref(cnt))
    if rc < 0:
        if -rc in (2, 19):  # ENOENT, ENODEV
            return []
        raise BpfError(f"bpf_prog_query(ifindex {ifindex}, tcx ingress)", -rc)
    return list(ids[:cnt.value])


# --------------------------------------------------------------------------- test run
class TestRun(NamedTuple):
    retval: int
    data: bytes
    ctx: Optional[bytes]
    duration_ns: int


def test_run(prog_fd: int, data: bytes, ctx: Optional[bytes] = None, repeat: int = 1,
             data_out_size: Optional[int] = None) -> TestRun:
    """BPF_PROG_TEST_RUN on one frame. `ctx` is a struct __sk_buff (see skb_ctx);
    its ifindex is looked up in the calling thread's network namespace."""
    data = bytes(data)
    din = _buf(data)
    out_size = data_out_size or max(len(data) + 256, 64)
    dout = ctypes.create_string_buffer(out_size)
    opts = bpf_test_run_opts(sz=sizeof(bpf_test_run_opts), data_in=ctypes.cast(din, c_void_p),
                             data_out=ctypes.cast(dout, c_void_p), data_size_in=len(data),
                             data_size_out=out_size, repeat=repeat)
    cin = cout = None
    if ctx is not None:
        cin = _buf(ctx)
        cout = ctypes.create_string_buffer(len(ctx))
        opts.ctx_in = ctypes.cast(cin, c_void_p)
        opts.ctx_out = ctypes.cast(cout, c_void_p)
        opts.ctx_size_in = len(ctx)
        opts.ctx_size_out = len(ctx)
    rc = lib().bpf_prog_test_run_opts(prog_fd, byref(opts))
    _check(rc, "bpf_prog_test_run_opts")
    return TestRun(opts.retval, dout.raw[:opts.data_size_out],
                   cout.raw[:opts.ctx_size_out] if cout is not None else None, opts.duration)


test_run.__test__ = False  # not a pytest test
TestRun.__test__ = False
