"""A forwarder's kernel fast path: which data plane runs, and the kernel's copy of
the pipeline's decisions kept true.

The pipeline decides; its Offload actions name the decisions the kernel may
repeat (forwarder.dataplane.pipeline). This module, on the event loop:

* installs them in the tc program's flow map (forwarder.dataplane.fastpath),
  with the pipeline's generation;
* writes the pipeline's generation to the kernel whenever the tables change
  (a FIB or strategy change, a face going down, an SPA revocation, a rule or
  SCSC weight change), so every kernel entry is stale at once and its next
  packet goes up to be decided again, exactly as a Python flow entry would;
* deletes the kernel entries of flows the pipeline forgot (idle expiry,
  eviction, a face removed, a stale choice dropped);
* merges the kernel's counters into the pipeline's: the kernel counts a hit in
  its flow slot's record only (one cache line per packet), and this module, which
  knows each slot's entry, adds the differences to the flow (with its idle time),
  its in and out faces, its prefix and the verdict counts, so /counters, /flows,
  /metrics and the SCSC's reports count what the kernel forwarded.

Modes (configuration `dataplane`): `python` never loads the program; `ebpf`
requires it (the forwarder refuses to start without it); `auto` (the default)
uses it when it loads here and otherwise runs the Python data plane, with the
reason in the log and in GET /status.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from ..dataplane.facetable import ETHER
from ..dataplane.flows import FlowEntry
from ..dataplane.pipeline import ENCAP, FORWARD, Forwarder, Offload

log = logging.getLogger("dmsc.offload")

MODES = ("auto", "ebpf", "python")
KERNEL_FLOWS = 8192     # flow slots in the kernel per forwarder (their counter records are
                        # allocated up front: 8192 x 64 B; more flows stay in Python)
HIGH_PRIORITY = 6       # classes 6 and 7 leave with skb->priority 7, as faces.EtherFace does


class DataplaneError(RuntimeError):
    """`dataplane: ebpf` was asked for and the kernel fast path cannot run; str() says why."""


class L4Spec(NamedTuple):
    """What an ENCAP or DECAP entry needs beyond the pipeline's decision: the pod side
    (forwarder.runtime.pods works it out from the connection)."""
    conn: object                       # forwarder.gateway.conntrack.Conn
    pod_addr: str                      # ENCAP: the 5-tuple as the pod sends it
    peer_addr: str
    pod_port: int
    peer_port: int
    proto: int
    snat: Optional[str] = None         # ENCAP of a serving pod: its source becomes this
    dnat: Optional[str] = None         # DECAP to a serving pod: the destination becomes this
    pod_mac: bytes = b""               # DECAP: the pod's and the gateway's addresses, its MTU
    mtu: int = 0


@dataclass
class _KernelFlow:
    """One pipeline flow entry and the kernel entries that repeat it."""
    flow: FlowEntry
    slot: int
    pkey: bytes                       # the pipeline's flow key (names only)
    # (map, kernel key) -> (generation written, how to write it again at a generation)
    keys: Dict[Tuple[str, bytes], Tuple[int, Callable[[int], None]]] = field(default_factory=dict)
    in_face: int = -1                 # the face id the kernel takes the flow's packets on
    verdict: str = "redirected"       # what a hit is: redirected, encapsulated, decapsulated
    seen: object = None               # the slot's FlowStats merged so far
    conn: object = None               # a carried connection's Conn (ENCAP, DECAP)
    from_pod: bool = False


class KernelOffload:
    """The FastPath of one forwarder process and the bookkeeping around it."""

    def __init__(self, core: Forwarder, pin_dir: str, flows_max: int = KERNEL_FLOWS) -> None:
        from ..dataplane.fastpath import kernel, layout
        self.core = core
        self.layout = layout
        self.fp = kernel.FastPath(pin_dir, flows_max=flows_max)
        self.pin_dir = pin_dir
        self.flows_max = flows_max
        self._free = list(range(flows_max - 1, -1, -1))  # pop() gives 0 first
        self._flows: Dict[int, _KernelFlow] = {}          # id(FlowEntry) -> its kernel entries
        self._ifindex: Dict[int, int] = {}                   # face id -> ifindex
        self._peer: Dict[int, bool] = {}                     # face id -> veth, peer elsewhere
        # the kernel's hits, merged from the flow slots: {verdict: packets}, via the peer
        self.hits: Dict[str, int] = {v: 0 for v in self.layout.HANDLED}
        self.hits_via_peer = 0
        self.served: set = set()   # served ports (proto, pod address, port); see served_ports
        self.gen = -1
        self.stats = {"installed": 0, "reinstalled": 0, "deleted": 0, "no_slot": 0,
                      "key_too_long": 0, "not_a_kernel_face": 0, "no_connection": 0}
        self.sync_generation()

    # ------------------------------------------------------------------ faces
    def add_face(self, face_id: int, interface: str,
                 peer_elsewhere: Optional[bool] = None) -> None:
        """Attach the program to a network face's interface (this process's netns).
        `peer_elsewhere`: whether it is a veth with its peer in another namespace
        (veths_with_peer_elsewhere says, for every interface at once); None: ask."""
        ifindex = _ifindex(interface)
        self.fp.attach([ifindex])
        if peer_elsewhere is None:
            peer_elsewhere = interface in veths_with_peer_elsewhere()
        self._peer[face_id] = peer_elsewhere
        self._ifindex[face_id] = ifindex

    def add_pod(self, face_id: int, interface: str, address: str) -> None:
        """Attach the pod program to a pod's veth; only `address` may be its source."""
        ifindex = _ifindex(interface)
        self.fp.attach_pods([ifindex])
        self.fp.set_pod(ifindex, address)
        self._ifindex[face_id] = ifindex

    def served_ports(self, want: set) -> None:
        """Make the kernel's served ports {(proto, pod address, port)} exactly `want`:
        the server ends of carried connections, whose packets the pod program passes
        up to the gateway when their entry is missing (docs/protocol.md 10.1)."""
        have = self.served
        for proto, addr, port in want - have:
            self.fp.install_l4(self.layout.served_key(addr, port, proto), self.layout.SERVED_VALUE)
        for proto, addr, port in have - want:
            self.fp.delete_l4(self.layout.served_key(addr, port, proto))
        self.served = set(want)

    # -------------------------------------------------------------- decisions
    def install(self, off: Offload, out_io, in_io, l4: Optional[L4Spec] = None) -> bool:
        """Repeat one pipeline decision in the kernel; False (and counted) when it
        cannot be: the packet then stays on the Python path, which is never wrong."""
        lay, fe = self.layout, off.flow
        out_ifindex = self._ifindex.get(fe.face_id)
        in_ifindex = self._ifindex.get(off.in_face)
        if out_ifindex is None or in_ifindex is None:
            self.stats["not_a_kernel_face"] += 1
            return False
        if off.kind != FORWARD and l4 is None:
            self.stats["no_connection"] += 1
            return False
        self.sync_generation()  # the kernel must hold the generation the value carries
        key = lay.key_from_block(off.key)
        if key is None:
            self.stats["key_too_long"] += 1
            return False
        kf = self._flows.get(id(fe))
        if kf is None or kf.flow is not fe:
            if not self._free:
                self.stats["no_slot"] += 1
                return False
            slot = self._free.pop()
            self.fp.reset_flow_stats([slot])
            dlen, slen = off.key[8], off.key[9]        # dst_len, src_len (offsets 28, 29)
            kf = self._flows[id(fe)] = _KernelFlow(fe, slot, off.key[:20 + dlen + slen],
                                                   seen=lay.FlowStats())
        if kf.in_face != off.in_face:
            if kf.in_face >= 0:
                self._merge_flows([kf])   # what came in on the old face is counted there
            kf.in_face = off.in_face
        prio = 7 if fe.priority >= HIGH_PRIORITY else 0
        if off.kind == FORWARD:
            kf.verdict = "redirected"
            flags = lay.FLOW_PEER if self._peer.get(fe.face_id) else 0

            def write(gen: int) -> None:
                # as the Python path sends: the out face's addresses as they are now (the
                # neighbour's may still be broadcast, as Python's own frames are)
                self.fp.install(key, lay.flow_value(
                    out_ifindex, kf.slot, gen, out_io.peer_mac, out_io.mac, fe.out.mtu,
                    in_ifindex, flags, prio))
            mkey = ("flows", key)
        elif off.kind == ENCAP:
            kf.conn, kf.from_pod, kf.verdict = l4.conn, True, "encapsulated"
            mkey = ("l4", lay.l4_key(l4.pod_addr, l4.peer_addr, l4.pod_port, l4.peer_port,
                                     l4.proto))

            def write(gen: int) -> None:
                self.fp.install_l4(mkey[1], lay.l4_value(
                    out_ifindex, kf.slot, gen, out_io.peer_mac, out_io.mac, fe.out.mtu,
                    prio, l4.snat, off.header))
        else:  # DECAP: to the pod behind fe.face_id
            kf.conn, kf.from_pod, kf.verdict = l4.conn, False, "decapsulated"

            def write(gen: int) -> None:
                self.fp.install(key, lay.flow_value(
                    out_ifindex, kf.slot, gen, l4.pod_mac, out_io.mac, l4.mtu, in_ifindex,
                    priority=prio, action=lay.ACT_DECAP, nat_addr=l4.dnat))
            mkey = ("flows", key)
        self.stats["reinstalled" if mkey in kf.keys else "installed"] += 1
        write(self.core.generation)
        kf.keys[mkey] = (self.core.generation, write)
        return True

    def neighbour_learnt(self, face_id: int, out_io) -> None:
        """The out face's neighbour address changed: current entries through it take it."""
        for kf in self._flows.values():
            if kf.flow.face_id == face_id:
                for mkey, (gen, write) in list(kf.keys.items()):
                    if gen == self.gen:  # a stale one is decided again first
                        write(gen)

    def python_hit(self, face_id: int, frame: bytes, out_io, in_io) -> None:
        """The Python fast path forwarded a frame of a flow the kernel does not hold
        (its install was refused earlier, e.g. before the neighbour's MAC was
        known), or holds for another in face (the flow now arrives on `face_id`:
        the kernel passed the frame up, verdict in_face): offer the flow again."""
        dlen, slen = frame[14 + 28], frame[14 + 29]
        pkey = bytes(frame[34:54 + dlen + slen])
        fe = self.core.flows.get(pkey)
        if fe is None:
            return
        kf = self._flows.get(id(fe))
        if kf is not None and kf.flow is fe and (kf.in_face == face_id or kf.verdict != "redirected"):
            return
        self.install(Offload(pkey, fe, face_id), out_io, in_io)

    def sync_generation(self) -> None:
        """Make every kernel entry decided under older tables stale (cheap when unchanged)."""
        g = self.core.generation
        if g != self.gen:
            self.fp.set_generation(g)
            self.gen = g

    # --------------------------------------------------------------- counters
    def merge(self) -> None:
        """Add what the kernel forwarded since the last merge to the pipeline's counters."""
        if self._flows:
            self._merge_flows(list(self._flows.values()))

    def _merge_flows(self, kfs: List[_KernelFlow]) -> None:
        """Each slot's new counts go to its flow (packets, bytes, idle time; a carried
        connection's state), the flow's in face (received) and out face (sent), its
        prefix, and the verdict its entry's kind stands for."""
        stats = self.fp.read_flow_stats([kf.slot for kf in kfs])
        now_wall, now_ns = time.time(), time.monotonic_ns()
        faces = self.core.counters.faces
        for kf in kfs:
            st = stats.get(kf.slot)
            if st is None or st == kf.seen:
                continue
            fe, seen = kf.flow, kf.seen
            dp, db, drx = st.packets - seen.packets, st.bytes - seen.bytes, st.rx_bytes - seen.rx_bytes
            if dp:
                fe.packets += dp
                fe.bytes += db
                rx, tx = faces[kf.in_face], faces[fe.face_id]
                rx.rx_packets += dp
                rx.rx_bytes += drx
                tx.tx_packets += dp
                tx.tx_bytes += db
                if fe.prefix_counters is not None:
                    fe.prefix_counters.packets += dp
                    fe.prefix_counters.bytes += db
                self.hits[kf.verdict] += dp
                self.hits_via_peer += st.peer_packets - seen.peer_packets
            if st.last_ns > seen.last_ns:
                last = now_wall - (now_ns - st.last_ns) / 1e9
                fe.last_used = max(fe.last_used, last)
                if kf.conn is not None:   # a carried connection's idle time and state
                    kf.conn.kernel_saw(st.tcp_flags, kf.from_pod, dp, db, last)
            kf.seen = st

    def prune(self) -> int:
        """Delete the kernel entries of flows the pipeline no longer holds (after a
        merge, so their last packets are counted); returns how many flows went."""
        gone = [k for k, kf in self._flows.items() if self.core.flows.get(kf.pkey) is not kf.flow]
        for k in gone:
            kf = self._flows.pop(k)
            for (m, key) in kf.keys:
                (self.fp.delete_l4 if m == "l4" else self.fp.delete)(key)
                self.stats["deleted"] += 1
            self._free.append(kf.slot)
        return len(gone)

    # ----------------------------------------------------------------- views
    def status(self) -> dict:
        return {"generation": self.gen, "kernel_flows": len(self._flows),
                "kernel_entries": sum(len(kf.keys) for kf in self._flows.values()),
                "flow_slots": self.flows_max, "pin_dir": self.pin_dir,
                "attached": {fid: ifx for fid, ifx in sorted(self._ifindex.items())},
                "served_ports": len(self.served),
                "offload": dict(self.stats), "verdicts": self.verdicts(),
                "redirected_to_peer": self.hits_via_peer}

    def verdicts(self) -> Dict[str, int]:
        """Every verdict's frames: those passed up or dropped as the kernel counts them,
        the hits as merged from the flow slots (as of the last merge)."""
        out = self.fp.read_verdicts()
        out.update(self.hits)
        return out

    def close(self) -> None:
        """Detach from every interface, unpin, free the maps."""
        self.fp.close()


def _ifindex(interface: str) -> int:
    try:
        return int(open(f"/sys/class/net/{interface}/ifindex").read())
    except (OSError, ValueError):
        return _socket_ifindex(interface)


def _socket_ifindex(interface: str) -> int:
    import socket
    return socket.if_nametoindex(interface)


def veths_with_peer_elsewhere() -> set:
    """The interfaces of this network namespace that are veths whose peer lives in
    another one: the kernel may hand a frame forwarded there straight to the peer's
    ingress (bpf_redirect_peer; the program checks the interface's queue and captures
    itself). Read when faces are attached, one `ip` call for all of them: a veth
    keeps its peer for life. Empty if `ip` cannot say (frames then go through the
    interface, which is never wrong)."""
    try:
        res = subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True,
                             text=True, timeout=10)
        links = json.loads(res.stdout) if res.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        links = []
    return {link.get("ifname") for link in links
            if link.get("linkinfo", {}).get("info_kind") == "veth" and "link_netnsid" in link}


def choose(mode: str, core: Forwarder, pin_dir: str, faces: List[Tuple[int, str, str]],
           pods: List[Tuple[int, str, str]] = ()) -> Tuple[Optional[KernelOffload], str]:
    """The data plane for this process: (the offload or None, why). `faces` are the
    network faces as (face id, interface, kind) (whether one is up is the pipeline's
    to know: a face going down or up changes its generation); `pods` the pod faces as
    (face id, interface, the pod's address). `ebpf` raises DataplaneError when the kernel fast
    path cannot run; `auto` falls back to Python instead."""
    if mode not in MODES:
        raise ValueError(f"dataplane {mode!r} is not one of {', '.join(MODES)}")
    if mode == "python":
        return None, "python: configured (dataplane: python)"
    from ..dataplane.fastpath import kernel
    ok, reason = kernel.available()
    off = None
    if ok:
        try:
            off = KernelOffload(core, pin_dir)
            peers = veths_with_peer_elsewhere()
            for face_id, interface, kind in faces:
                if kind == ETHER:
                    off.add_face(face_id, interface, interface in peers)
            for face_id, interface, address in pods:
                off.add_pod(face_id, interface, address)
        except (OSError, ValueError) as exc:  # libbpf's BpfError is an OSError
            if off is not None:
                off.close()
            off, ok, reason = None, False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    if ok:
        return off, (f"ebpf: tc program on {len(off._ifindex)} face(s), maps pinned in "
                     f"{pin_dir}")
    if mode == "ebpf":
        raise DataplaneError(f"dataplane: ebpf, but the kernel fast path cannot run here: {reason}")
    return None, f"python: the kernel fast path cannot run here ({reason})"
