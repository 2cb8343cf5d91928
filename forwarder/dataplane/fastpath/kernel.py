"""The kernel fast path of one forwarder process: load, pin, attach, fill, read.

    fp = FastPath("/run/dmsc/bpf/<node>")          # load once; maps pinned there
    fp.attach([ifindex, ...])                        # fp_ingress: network faces
    fp.attach_pods([ifindex, ...])                   # fp_pod_ingress: pod-facing veths
    fp.set_face(ifindex, face_slot)                  # every face, pod-facing ones too
    fp.set_pod(pod_ifindex, "10.200.1.2", face_slot)
    fp.set_generation(gen)
    fp.install(layout.key_from_block(key), layout.flow_value(...))   # FORWARD / DECAP
    fp.install_l4(layout.l4_key(...), layout.l4_value(...))          # encap
    ... fp.read_flow_stats([slot]), fp.read_face_stats(), fp.read_verdicts()
    fp.close()                                       # detach, unpin, remove the pin dir

`FastPathMaps` is the map half alone: `FastPathMaps.open_pinned(pin_dir)` gives
another process (a ctl tool, a test) the same maps through their pins.

tc attachments are made in the calling thread's network namespace; call
attach/detach/close from the forwarder's own namespace. If the process dies
without close(), its filters keep running on the maps they hold (pins stay too)
until the interfaces go away or a new FastPath with the same pin_dir replaces
them (BPF_TC_F_REPLACE on the same handle/priority, stale pins unlinked first).
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

    # -- faces ---------------------------------------------------------------
    def set_face(self, ifindex: int, face_slot: int, flags: int = 0) -> None:
        """Make `ifindex` one of this forwarder's faces (counted in `face_slot`);
        flags: layout.FACE_DOWN, layout.FACE_PEER."""
        libbpf.map_update(self.fds["fp_faces"], layout.U32.pack(ifindex),
                          layout.face_value(face_slot, flags), what="fp_faces")

    def face(self, ifindex: int) -> Optional[layout.Face]:
        v = libbpf.map_lookup(self.fds["fp_faces"], layout.U32.pack(ifindex), layout.FACE.size,
                              "fp_faces")
        return layout.decode_face(v) if v is not None else None

    def set_face_down(self, ifindex: int, face_slot: int, down: bool) -> None:
        """Flag a face unusable as output (hits towards it are passed up); its other
        flags stay."""
        cur = self.face(ifindex)
        flags = (cur.flags if cur is not None else 0) & ~layout.FACE_DOWN
        self.set_face(ifindex, face_slot, flags | (layout.FACE_DOWN if down else 0))

    def remove_face(self, ifindex: int) -> bool:
        return libbpf.map_delete(self.fds["fp_faces"], layout.U32.pack(ifindex), what="fp_faces")

    def faces(self) -> Dict[int, Tuple[int, int]]:
        """{ifindex: (face_slot, flags)}"""
        fd, out = self.fds["fp_faces"], {}
        for k in libbpf.map_keys(fd, layout.U32.size, "fp_faces"):
            v = libbpf.map_lookup(fd, k, layout.FACE.size, "fp_faces")
            if v is not None:
                f = layout.decode_face(v)
                out[layout.U32.unpack(k)[0]] = (f.face_slot, f.flags)
        return out

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
    def set_pod(self, ifindex: int, addr: layout.AddrLike, face_slot: int) -> None:
        """Make `ifindex` a pod-facing veth whose pod may only send from `addr`
        (dotted string or 4 bytes); its encapsulated packets count as rx on
        `face_slot`. Register it with set_face too when DECAP entries deliver to it."""
        libbpf.map_update(self.fds["fp_pods"], layout.U32.pack(ifindex),
                          layout.pod_value(addr, face_slot), what="fp_pods")

    def remove_pod(self, ifindex: int) -> bool:
        return libbpf.map_delete(self.fds["fp_pods"], layout.U32.pack(ifindex), what="fp_pods")

    def pods(self) -> Dict[int, Tuple[str, int]]:
        """{ifindex: (address, face_slot)}"""
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
    def _percpu(self, name: str, slot: int) -> List[bytes]:
        _, vs, _, _ = layout.MAPS[name]
        vals = libbpf.map_lookup_percpu(self.fds[name], layout.U32.pack(slot), vs, name)
        return vals or []

    def _percpu_all(self, name: str) -> List[Tuple[int, List[bytes]]]:
        ks, vs, n, _ = layout.MAPS[name]
        rows = libbpf.map_lookup_batch(self.fds[name], ks, vs, n, percpu=True, what=name)
        return [(layout.U32.unpack(k)[0], v) for k, v in rows]

    def _zero(self, name: str, slots: Iterable[int]) -> None:
        _, vs, _, _ = layout.MAPS[name]
        zero = bytes(libbpf.percpu_value_size(vs) * libbpf.num_possible_cpus())
        for s in slots:
            libbpf.map_update(self.fds[name], layout.U32.pack(s), zero, what=name)

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

    def _cpu_stats(self) -> Tuple[List[int], List[layout.FaceStats]]:
        return layout.decode_cpu_stats(self._percpu("fp_cpu_stats", 0))

    def _reset_cpu_stats(self, keep) -> None:
        """Rewrite every CPU's fp_cpu_stats record with `keep(values)` (tests' resets:
        a count the program makes meanwhile may be lost)."""
        per_cpu = self._percpu("fp_cpu_stats", 0)
        step = libbpf.percpu_value_size(layout.CPU_STATS.size)
        blob = b"".join(layout.CPU_STATS.pack(*keep(list(layout.CPU_STATS.unpack_from(raw))))
                        .ljust(step, b"\0") for raw in per_cpu)
        libbpf.map_update(self.fds["fp_cpu_stats"], layout.U32.pack(0), blob, what="fp_cpu_stats")

    def read_face_stats(self) -> Dict[int, layout.FaceStats]:
        """{face slot: FaceStats} for the slots with any count."""
        return {slot: st for slot, st in enumerate(self._cpu_stats()[1]) if any(st)}

    def read_prefix_stats(self, slots: Optional[Iterable[int]] = None
                          ) -> Dict[int, layout.PrefixStats]:
        """{prefix slot: PrefixStats} for the slots with any count: among `slots` (one
        lookup each: what a forwarder merging the few slots it handed out wants), or
        all FP_PREFIXES_MAX of them (one batch)."""
        rows = self._percpu_all("fp_prefix_stats") if slots is None else \
            [(s, self._percpu("fp_prefix_stats", s)) for s in slots]
        out = {}
        for slot, vals in rows:
            st = layout.decode_prefix_stats(vals)
            if any(st):
                out[slot] = st
        return out

    def reset_prefix_stats(self, slots: Iterable[int]) -> None:
        self._zero("fp_prefix_stats", slots)

    def reset_face_stats(self, slots: Iterable[int]) -> None:
        drop = {s for s in slots if 0 <= s < layout.FP_FACES_MAX}

        def keep(v: List[int]) -> List[int]:
            for s in drop:
                base = layout.FP_VERDICTS_MAX + 4 * s
                v[base:base + 4] = [0, 0, 0, 0]
            return v
        self._reset_cpu_stats(keep)

    def reset_verdicts(self) -> None:
        self._reset_cpu_stats(lambda v: [0] * layout.FP_VERDICTS_MAX + v[layout.FP_VERDICTS_MAX:])

    def read_verdicts(self) -> Dict[str, int]:
        """{verdict name: frames} for every name in layout.VERDICTS."""
        return layout.verdict_dict(self._cpu_stats()[0])

    def read_via_peer(self) -> int:
        """Of the frames counted "redirected", those handed straight to the neighbour's
        ingress (bpf_redirect_peer) rather than sent through the out interface."""
        return self._cpu_stats()[0][layout.C_VIA_PEER]


class FastPath(FastPathMaps):
    """The program loaded once per forwarder process, its maps pinned under pin_dir."""

    def __init__(self, pin_dir: str, obj_path: Optional[str] = None, *,
                 flows_max: Optional[int] = None, reuse_pins: bool = False,
                 handle: int = 1, priority: int = 1, build_if_stale: bool = False,
                 log_level: int = 0) -> None:
        """`pin_dir`: a directory in a bpffs, normally PIN_ROOT/<node> (the pin root is
        mounted if missing). Maps pinned there by an earlier process are unlinked
        first unless `reuse_pins` (then libbpf reuses them if compatible).
        `flows_max` shrinks fp_flows/fp_flow_stats/fp_l4: the kernel allocates a per-CPU
        array element by element, so the default 65536 slots cost 65536 x 24 B x
        CPUs of memory and ~60 ms of load time on a quiet machine, but seconds
        (2.5-4 s seen) when hundreds of processes contend for the allocator.
        `log_level` 1/4 keeps the verifier log/stats in `verifier_logs` (by program
        name; `verifier_log` is fp_ingress's)."""
        self.pin_dir = str(pin_dir)
        self.flows_max = flows_max or layout.FP_FLOWS_MAX
        self.handle, self.priority = handle, priority
        self._attached: Dict[int, bool] = {}   # ifindex -> we created its clsact qdisc
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
        if not reuse:
            for name in layout.MAP_NAMES:  # our own paths from an earlier run
                try:
                    os.unlink(os.path.join(self.pin_dir, name))
                except FileNotFoundError:
                    pass

    def _cleanup_pins(self) -> None:
        for name in layout.MAP_NAMES:
            libbpf.unpin(os.path.join(self.pin_dir, name))
        self._pins = []
        try:
            os.rmdir(self.pin_dir)  # only if empty: never somebody else's pins
        except OSError:
            pass

    # -- tc ------------------------------------------------------------------
    def attach(self, ifindexes: Iterable[int]) -> None:
        """Attach fp_ingress at clsact ingress of each ifindex (network faces; this
        thread's netns)."""
        self._attach(ifindexes, self.prog_fd)

    def attach_pods(self, ifindexes: Iterable[int]) -> None:
        """Attach fp_pod_ingress at clsact ingress of each pod-facing veth (this
        thread's netns). Same handle/priority as attach(): an ifindex holds one
        of the two programs, the later call's."""
        self._attach(ifindexes, self.pod_prog_fd)

    def _attach(self, ifindexes: Iterable[int], prog_fd: int) -> None:
        for ifindex in ifindexes:
            created = libbpf.tc_hook_create(ifindex)
            try:
                libbpf.tc_attach(ifindex, prog_fd, self.handle, self.priority, replace=True)
            except BpfError:
                if created:
                    libbpf.tc_hook_destroy(ifindex)
                raise
            self._attached[ifindex] = self._attached.get(ifindex, False) or created

    def attached(self) -> List[int]:
        return sorted(self._attached)

    def detach(self, ifindex: int) -> bool:
        """Remove our filter (and the clsact qdisc if we created it)."""
        created = self._attached.pop(ifindex, False)
        found = libbpf.tc_detach(ifindex, self.handle, self.priority)
        if created and found:
            try:
                libbpf.tc_hook_destroy(ifindex)
            except BpfError as exc:
                if exc.errno not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                    raise
        return found

    def detach_all(self) -> None:
        errors = []
        for ifindex in list(self._attached):
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
    if not pins.is_bpffs(pin_root):
        if not pins.bpffs_supported():
            return False, "kernel has no bpf filesystem (bpffs) for pins"
        if not _has_cap(CAP_SYS_ADMIN):
            return False, f"{pin_root} is not a bpffs and mounting one needs CAP_SYS_ADMIN"
    return True, "ok"
