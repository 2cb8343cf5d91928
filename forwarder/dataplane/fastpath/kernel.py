"""The kernel fast path of one forwarder process: load, pin, attach, fill, read.

    fp = FastPath("/run/dmsc/bpf/<node>")          # load once; maps pinned there
    fp.attach([ifindex, ...])                        # fp_ingress: network faces
    fp.attach_pods([ifindex, ...])                   # fp_pod_ingress: pod-facing veths
    fp.set_pod(pod_ifindex, "10.200.1.2")
    fp.set_generation(gen)
    fp.install(layout.key_from_block(key), layout.flow_value(...))   # FORWARD / DECAP
    fp.install_l4(layout.l4_key(...), layout.l4_value(...))          # encap
    ... fp.read_flow_stats([slot]), fp.read_verdicts()

A hit is counted in its flow slot's record only (packets, bytes sent and received,
how many went to the peer); whoever hands out the slots knows each one's faces,
prefix and kind and adds them up (forwarder.runtime.offload). read_verdicts()
counts the frames passed up or dropped.
    fp.close()                                       # detach, unpin, remove the pin dir

`FastPathMaps` is the map half alone: `FastPathMaps.open_pinned(pin_dir)` gives
another process (a ctl tool, a test) the same maps through their pins.

Programs are attached at tcx ingress through BPF links (not classic tc filters:
no clsact qdisc, filter chain or cls_bpf between the device and the program, on
every frame), made in the calling thread's network namespace; call
attach/detach/close from the forwarder's own namespace. Each link is pinned in
pin_dir beside the maps (link_<ifindex>). If the process dies without close(),
its programs keep running on the maps they hold until the pins go: `make clean`
(pins.remove_pin_dir) or a new FastPath with the same pin_dir unlinks them, and a
link with no pin and no fd detaches itself.
"""
from __future__ import annotations

import errno
import os
from typing import Dict, Iterable, List, Optional, Tuple

from . import build, layout, libbpf, pins
from .libbpf import BpfError

BPF_MAP_TYPE_ARRAY = 2
CAP_SYS_ADMIN = 21
CAP_BPF = 39
CAP_NET_ADMIN = 12
LINK_PIN = "link_"    # pin_dir/link_<ifindex>: a tcx link of ours


class FastPathMaps:
    """The maps (layout.MAP_NAMES), by fd, with typed accessors (layout.py formats)."""

    def __init__(self, fds: Dict[str, int], owns_fds: bool = False) -> None:
        missing = [n for n in layout.MAP_NAMES if n not in fds]
        if missing:
            raise ValueError(f"maps missing: {missing}")
        self.fds = dict(fds)
        self._owns = owns_fds
        if not hasattr(self, "flows_max"):
            self.flows_max = layout.FP_FLOWS_MAX

    @classmethod
    def open_pinned(cls, pin_dir: str) -> "FastPathMaps":
        """Open the maps pinned under `pin_dir` and check their shapes against layout."""
        fds: Dict[str, int] = {}
        flows_max = layout.FP_FLOWS_MAX
        try:
            for name in layout.MAP_NAMES:
                fd = libbpf.obj_get(os.path.join(pin_dir, name))
                fds[name] = fd
                info = libbpf.map_info(fd)
                if name == "fp_flow_stats":
                    flows_max = info.max_entries
                ks, vs, _, _ = layout.MAPS[name]
                if (info.key_size, info.value_size) != (ks, vs):
                    raise BpfError(f"{pin_dir}/{name}: key/value size {info.key_size}/"
                                   f"{info.value_size}, layout says {ks}/{vs}", errno.EINVAL)
        except Exception:
            for fd in fds.values():
                os.close(fd)
            raise
        maps = cls(fds, owns_fds=True)
        maps.flows_max = flows_max
        return maps

    def close_maps(self) -> None:
        if self._owns:
            for fd in self.fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = {}

    # -- flows ---------------------------------------------------------------
    @staticmethod
    def _key(key: bytes) -> bytes:
        if len(key) != layout.KEY.size:
            raise ValueError(f"flow key of {len(key)} bytes; an fp_key is {layout.KEY.size} "
                             "(layout.flow_key / layout.key_from_block make one)")
        return bytes(key)

    def install(self, key: bytes, value: bytes) -> None:
        """Insert or replace one flow (fp_key bytes -> fp_flow bytes: FORWARD or DECAP)."""
        if len(value) != layout.FLOW.size:
            raise ValueError(f"flow value of {len(value)} bytes; an fp_flow is {layout.FLOW.size}")
        slot = layout.decode_flow(value).flow_slot
        if slot >= self.flows_max:
            raise ValueError(f"flow_slot {slot} >= flows_max {self.flows_max}")
        name, k = layout.kernel_key(self._key(key))
        libbpf.map_update(self.fds[name], k, value, what=name)

    def delete(self, key: bytes) -> bool:
        """Remove one flow; False if it was not installed."""
        name, k = layout.kernel_key(self._key(key))
        return libbpf.map_delete(self.fds[name], k, what=name)

    def lookup(self, key: bytes) -> Optional[layout.Flow]:
        name, k = layout.kernel_key(self._key(key))
        v = libbpf.map_lookup(self.fds[name], k, layout.FLOW.size, name)
        return None if v is None else layout.decode_flow(v)

    def flow_keys(self) -> List[bytes]:
        """Every installed flow's fp_key, from both maps."""
        short = libbpf.map_keys(self.fds["fp_flows_short"], layout.KEY_SHORT.size,
                                "fp_flows_short")
        return [layout.key_from_short(k) for k in short] + \
            list(libbpf.map_keys(self.fds["fp_flows"], layout.KEY.size, "fp_flows"))

    def clear_flows(self) -> int:
        n = 0
        for k in self.flow_keys():
            n += self.delete(k)
        return n

    # -- pods (pod-facing veths) -------------------------------------------
    def set_pod(self, ifindex: int, addr: layout.AddrLike) -> None:
        """Make `ifindex` a pod-facing veth whose pod may only send from `addr`
        (dotted string or 4 bytes)."""
        libbpf.map_update(self.fds["fp_pods"], layout.U32.pack(ifindex),
                          layout.pod_value(addr), what="fp_pods")

    def remove_pod(self, ifindex: int) -> bool:
        return libbpf.map_delete(self.fds["fp_pods"], layout.U32.pack(ifindex), what="fp_pods")

    def pods(self) -> Dict[int, str]:
        """{ifindex: address}"""
        fd, out = self.fds["fp_pods"], {}
        for k in libbpf.map_keys(fd, layout.U32.size, "fp_pods"):
            v = libbpf.map_lookup(fd, k, layout.POD.size, "fp_pods")
            if v is not None:
                out[layout.U32.unpack(k)[0]] = layout.decode_pod(v)
        return out

    # -- L4 flows (encap) ----------------------------------------------------
    @staticmethod
    def _l4_key(key: bytes) -> bytes:
        if len(key) != layout.L4_KEY.size:
            raise ValueError(f"L4 key of {len(key)} bytes; an fp_l4_key is "
                             f"{layout.L4_KEY.size} (layout.l4_key makes one)")
        return bytes(key)

    def install_l4(self, key: bytes, value: bytes) -> None:
        """Insert or replace one encap entry (fp_l4_key bytes -> fp_l4 bytes)."""
        if len(value) != layout.L4_VALUE.size:
            raise ValueError(f"L4 value of {len(value)} bytes; an fp_l4 is "
                             f"{layout.L4_VALUE.size} (layout.l4_value makes one)")
        slot = layout.decode_l4(value).flow_slot
        if slot >= self.flows_max:
            raise ValueError(f"flow_slot {slot} >= flows_max {self.flows_max}")
        libbpf.map_update(self.fds["fp_l4"], self._l4_key(key), value, what="fp_l4")

    def delete_l4(self, key: bytes) -> bool:
        """Remove one encap entry; False if it was not installed."""
        return libbpf.map_delete(self.fds["fp_l4"], self._l4_key(key), what="fp_l4")

    def lookup_l4(self, key: bytes) -> Optional[layout.L4Flow]:
        v = libbpf.map_lookup(self.fds["fp_l4"], self._l4_key(key), layout.L4_VALUE.size,
                              "fp_l4")
        return None if v is None else layout.decode_l4(v)

    def l4_keys(self) -> List[bytes]:
        return list(libbpf.map_keys(self.fds["fp_l4"], layout.L4_KEY.size, "fp_l4"))

    def clear_l4(self) -> int:
        n = 0
        for k in self.l4_keys():
            n += self.delete_l4(k)
        return n

    def set_generation(self, gen: int) -> None:
        """Every entry (fp_flows and fp_l4) whose gen differs from this is stale (passed up)."""
        libbpf.map_update(self.fds["fp_gen"], layout.U32.pack(0), layout.U64.pack(gen),
                          what="fp_gen")

    def generation(self) -> int:
        v = libbpf.map_lookup(self.fds["fp_gen"], layout.U32.pack(0), layout.U64.size, "fp_gen")
        return layout.U64.unpack(v)[0] if v else 0

    # -- counters ------------------------------------------------------------
    def read_flow_stats(self, slots: Iterable[int]) -> Dict[int, layout.FlowStats]:
        """{slot: FlowStats} for the given slots."""
        fd, size, out = self.fds["fp_flow_stats"], layout.FLOW_STATS.size, {}
        for s in slots:
            v = libbpf.map_lookup(fd, layout.U32.pack(s), size, "fp_flow_stats")
            out[s] = layout.decode_flow_stats(v) if v else layout.FlowStats()
        return out

    def reset_flow_stats(self, slots: Iterable[int]) -> None:
        """Zero flow slots (do it before giving a slot to a new flow)."""
        fd, zero = self.fds["fp_flow_stats"], bytes(layout.FLOW_STATS.size)
        for s in slots:
            libbpf.map_update(fd, layout.U32.pack(s), zero, what="fp_flow_stats")

    def _verdict_copies(self) -> List[bytes]:
        _, vs, _, _ = layout.MAPS["fp_verdicts"]
        return libbpf.map_lookup_percpu(self.fds["fp_verdicts"], layout.U32.pack(0), vs,
                                        "fp_verdicts") or []

    def reset_verdicts(self) -> None:
        """Zero every CPU's verdict counts (tests: a count made meanwhile may be lost)."""
        n = len(self._verdict_copies()) or libbpf.num_possible_cpus()
        blob = bytes(libbpf.percpu_value_size(layout.VERDICT_COUNTS.size) * n)
        libbpf.map_update(self.fds["fp_verdicts"], layout.U32.pack(0), blob, what="fp_verdicts")

    def read_verdicts(self) -> Dict[str, int]:
        """{verdict name: frames} for every name in layout.VERDICTS. The kernel counts
        what it passed up or dropped; the HANDLED verdicts are its flows' packets, which
        only the slots' owner can add up (they read 0 here)."""
        return layout.verdict_dict(layout.decode_verdicts(self._verdict_copies()))


class FastPath(FastPathMaps):
    """The program loaded once per forwarder process, its maps pinned under pin_dir."""

    def __init__(self, pin_dir: str, obj_path: Optional[str] = None, *,
                 flows_max: Optional[int] = None, reuse_pins: bool = False,
                 build_if_stale: bool = False, log_level: int = 0) -> None:
        """`pin_dir`: a directory in a bpffs, normally PIN_ROOT/<node> (the pin root is
        mounted if missing). Maps pinned there by an earlier process are unlinked
        first unless `reuse_pins` (then libbpf reuses them if compatible).
        `flows_max` shrinks fp_flows/fp_flow_stats/fp_l4: the counter records are
        allocated up front (the default 65536 slots: 4 MB; a forwarder asks for
        runtime.offload.KERNEL_FLOWS).
        `log_level` 1/4 keeps the verifier log/stats in `verifier_logs` (by program
        name; `verifier_log` is fp_ingress's)."""
        self.pin_dir = str(pin_dir)
        self.flows_max = flows_max or layout.FP_FLOWS_MAX
        self._links: Dict[int, int] = {}   # ifindex -> its tcx link's fd (pinned)
        self._pins: List[str] = []
        self._made_dir = False
        self._obj: Optional[libbpf.BpfObject] = None
        self.fds = {}
        self._owns = False
        if obj_path is None:
            obj_path = str(build.ensure_built() if build_if_stale else build.object_path())
        if not os.path.exists(obj_path):
            raise BpfError(f"BPF object {obj_path} (build it: python -m forwarder.dataplane.fastpath.build)",
                           errno.ENOENT)
        self.obj_path = obj_path
        self._prepare_pin_dir(reuse_pins)
        obj = None
        try:
            obj = libbpf.BpfObject(obj_path)
            for name in layout.MAP_NAMES:
                obj.set_pin_path(name, os.path.join(self.pin_dir, name))
            if flows_max is not None:
                if not 1 <= flows_max <= layout.FP_FLOWS_MAX:
                    raise ValueError(f"flows_max {flows_max} outside 1..{layout.FP_FLOWS_MAX}")
                for name in layout.FLOW_SIZED_MAPS:
                    obj.set_max_entries(name, flows_max)
            obj.load(log_level=log_level, programs=layout.PROG_NAMES)
            self.verifier_logs = {n: obj.program_logs.get(n, "") for n in layout.PROG_NAMES}
            self.verifier_log = self.verifier_logs[layout.PROG_NAME]
            self._pins = [os.path.join(self.pin_dir, n) for n in layout.MAP_NAMES]
            self.prog_fd = obj.prog_fd(layout.PROG_NAME)
            self.pod_prog_fd = obj.prog_fd(layout.POD_PROG_NAME)
            super().__init__({n: obj.map_fd(n) for n in layout.MAP_NAMES}, owns_fds=False)
            self._obj = obj
        except BaseException:
            if obj is not None:
                obj.close()
            self._cleanup_pins()
            raise
        self.prog_id = libbpf.prog_info(self.prog_fd).id
        self.pod_prog_id = libbpf.prog_info(self.pod_prog_fd).id

    # -- pins ----------------------------------------------------------------
    def _prepare_pin_dir(self, reuse: bool) -> None:
        parent = os.path.dirname(self.pin_dir.rstrip("/"))
        if os.path.abspath(self.pin_dir).startswith(os.path.abspath(pins.PIN_ROOT) + "/"):
            pins.ensure_pin_root(pins.PIN_ROOT)
        if not pins.is_bpffs(parent) and not pins.is_bpffs(self.pin_dir):
            raise BpfError(f"{parent} is not a bpffs (pins.ensure_pin_root mounts one)",
                           errno.EINVAL)
        if not os.path.isdir(self.pin_dir):
            os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
            self._made_dir = True
        # links of an earlier process with this pin_dir go (their programs detach)
        stale = [n for n in os.listdir(self.pin_dir) if n.startswith(LINK_PIN)]
        if not reuse:
            stale += list(layout.MAP_NAMES)  # our own paths from an earlier run
        for name in stale:
            try:
                os.unlink(os.path.join(self.pin_dir, name))
            except FileNotFoundError:
                pass

    def _link_pin(self, ifindex: int) -> str:
        return os.path.join(self.pin_dir, f"{LINK_PIN}{ifindex}")

    def _cleanup_pins(self) -> None:
        for name in layout.MAP_NAMES:
            libbpf.unpin(os.path.join(self.pin_dir, name))
        self._pins = []
        try:
            os.rmdir(self.pin_dir)  # only if empty: never somebody else's pins
        except OSError:
            pass

    # -- tcx -----------------------------------------------------------------
    def attach(self, ifindexes: Iterable[int]) -> None:
        """Attach fp_ingress at tcx ingress of each ifindex (network faces; this
        thread's netns)."""
        self._attach(ifindexes, self.prog_fd)

    def attach_pods(self, ifindexes: Iterable[int]) -> None:
        """Attach fp_pod_ingress at tcx ingress of each pod-facing veth (this thread's
        netns). An ifindex holds one of the two programs, the later call's."""
        self._attach(ifindexes, self.pod_prog_fd)

    def _attach(self, ifindexes: Iterable[int], prog_fd: int) -> None:
        for ifindex in ifindexes:
            fd = self._links.get(ifindex)
            if fd is not None:
                libbpf.link_update(fd, prog_fd)
                continue
            fd = libbpf.tcx_link(ifindex, prog_fd)
            try:
                libbpf.obj_pin(fd, self._link_pin(ifindex))
            except BpfError:
                os.close(fd)   # the only reference: the program detaches
                raise
            self._links[ifindex] = fd

    def attached(self) -> List[int]:
        return sorted(self._links)

    def detach(self, ifindex: int) -> bool:
        """Detach our program from `ifindex` (unpin and release its link); False if we
        had not attached it."""
        fd = self._links.pop(ifindex, None)
        if fd is None:
            return False
        try:
            libbpf.unpin(self._link_pin(ifindex))
            libbpf.link_detach(fd)
        finally:
            os.close(fd)
        return True

    def detach_all(self) -> None:
        errors = []
        for ifindex in list(self._links):
            try:
                self.detach(ifindex)
            except BpfError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- misc ----------------------------------------------------------------
    def prog_info(self) -> libbpf.ProgInfo:
        return libbpf.prog_info(self.prog_fd)

    def pod_prog_info(self) -> libbpf.ProgInfo:
        return libbpf.prog_info(self.pod_prog_fd)

    def test_run(self, frame: bytes, ifindex: int = 0, repeat: int = 1,
                 **ctx) -> libbpf.TestRun:
        """fp_ingress under BPF_PROG_TEST_RUN with ctx ifindex (looked up in this
        thread's netns); other ctx fields as libbpf.skb_ctx takes them."""
        return libbpf.test_run(self.prog_fd, frame, libbpf.skb_ctx(ifindex=ifindex, **ctx),
                               repeat)

    def test_run_pod(self, frame: bytes, ifindex: int = 0, repeat: int = 1,
                     **ctx) -> libbpf.TestRun:
        """fp_pod_ingress under BPF_PROG_TEST_RUN (as test_run)."""
        return libbpf.test_run(self.pod_prog_fd, frame,
                               libbpf.skb_ctx(ifindex=ifindex, **ctx), repeat)

    def close(self) -> None:
        """Detach everywhere, close the object, unpin our maps, remove our pin dir."""
        try:
            self.detach_all()
        finally:
            if self._obj is not None:
                self._obj.close()
                self._obj = None
            self.fds = {}
            if self._pins:
                self._cleanup_pins()

    def __enter__(self) -> "FastPath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------- availability
def _has_cap(cap: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return False


def available(obj_path: Optional[str] = None, pin_root: str = pins.PIN_ROOT) -> Tuple[bool, str]:
    """(True, "ok") if FastPath can work here, else (False, one-line reason).
    No side effects beyond a throw-away 1-entry map."""
    path = obj_path or str(build.object_path())
    if not os.path.exists(path):
        return False, f"no BPF object at {path} (python -m forwarder.dataplane.fastpath.build)"
    try:
        libbpf.lib()
    except libbpf.LibbpfUnavailable as exc:
        return False, f"libbpf unusable: {exc}"
    try:
        fd = libbpf.map_create(BPF_MAP_TYPE_ARRAY, "fp_probe", 4, 8, 1)
        os.close(fd)
    except BpfError as exc:
        return False, f"bpf() not permitted: {exc.strerror.splitlines()[0]}"
    if not (_has_cap(CAP_NET_ADMIN) or _has_cap(CAP_SYS_ADMIN)):
        return False, "no CAP_NET_ADMIN: cannot attach tc programs"
    release = os.uname().release
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        version = (0, 0)
    if version < (6, 6):
        return False, f"kernel {release} has no tcx attachment (Linux 6.6 or later needed)"
    if not pins.is_bpffs(pin_root):
        if not pins.bpffs_supported():
            return False, "kernel has no bpf filesystem (bpffs) for pins"
        if not _has_cap(CAP_SYS_ADMIN):
            return False, f"{pin_root} is not a bpffs and mounting one needs CAP_SYS_ADMIN"
    return True, "ok"
