"""A Service Gateway's pods at run time: their faces, their services' registration,
their DNS, and the hand-over between them, the pipeline and the kernel.

forwarder.gateway decides (pure); this module does the I/O around it on the
daemon's event loop: frames from a pod go through `PodGateway.from_pod` and then
into the pipeline as packets received on the pod's face; what the pipeline
sends to a pod's face goes through `PodGateway.to_pod` and out of its socket.
The first packets of a connection take this path; the kernel fast path
(forwarder.runtime.offload) repeats the decisions for the rest.
"""
from __future__ import annotations

import logging
import selectors
import socket
import time
from typing import Dict, List, Optional

from ..dataplane import wire
from ..dataplane.facetable import ETHER
from ..dataplane.hostmap import host_to_prefix
from ..dataplane.names import Name
from ..dataplane.pipeline import ENCAP, Offload
from ..dataplane.wire import Packet, PacketType, RegisterBody, RegisterResult
from ..gateway import dns
from ..gateway.addresses import L4_COMPONENT, L4_OVERHEAD, POD_GATEWAY
from ..gateway.conntrack import Conn
from ..gateway.gateway import Dropped, Inject, Pod, PodGateway, ToPod
from .faces import PodFace
from .offload import L4Spec

log = logging.getLogger("dmsc.pods")
DNS_PORT = 53


class PodRuntime:
    """Everything pod-related a daemon runs; `daemon` is the forwarder.runtime.daemon.Daemon."""

    def __init__(self, daemon) -> None:
        self.d = daemon
        self.core = daemon.core
        self.gateway = PodGateway(self.core.name, hop_limit=self.core.hop_limit)
        self.dns_sock: Optional[socket.socket] = None
        self.dns_answers = {"answered": 0, "nxdomain": 0, "refused": 0, "malformed": 0}
        self._services_gen = -1
        self.registered: Dict[str, str] = {}  # prefix -> how its registration went

    # ---------------------------------------------------------------- setup
    def open(self, now: float) -> None:
        cfg = self.d.cfg
        net_mtu = max([f.mtu for f in self.core.faces if f.kind == ETHER] or [1500])
        for index, pc in enumerate(cfg.pods):
            mtu = pc.mtu or net_mtu - L4_OVERHEAD
            face = self.core.add_pod_face(pc.name, index, mtu, now)
            try:
                io = PodFace(face.face_id, pc.interface)
            except OSError as exc:
                raise OSError(exc.errno, f"pod {pc.name}: cannot open {pc.interface}: "
                                         f"{exc.strerror}") from None
            self.d.io[face.face_id] = io
            self.d.sel.register(io, selectors.EVENT_READ, ("pod", io))
            self.gateway.add_pod(Pod(face.face_id, index, pc.name, pc.address,
                                     bytes.fromhex(pc.mac.replace(":", "")), io.mac, mtu))
            for svc in pc.services:
                self._register(face.face_id, svc, now)
        if cfg.pods:
            self._open_dns()

    def _register(self, face_id: int, svc, now: float) -> None:
        """The SG registers a pod's service as the client library registers an
        application's: ATTACH for the challenge, REGISTER with the SPA proof."""
        attach = Packet(PacketType.ATTACH, dst=wire.LOCAL_NAME, src=wire.LOCAL_NAME, seq=1)
        nonce = b""
        for a in self.core.receive(face_id, attach.encode(), now):
            if getattr(a, "face_id", None) == face_id and hasattr(a, "data"):
                nonce = wire.decode(a.data).payload
        tlvs = []
        if svc.identity is not None:
            from ..spa import ServiceIdentity
            ident = ServiceIdentity.load(svc.identity)
            if nonce:
                tlvs = ident.register_tlvs(nonce, svc.prefix)
        app = self.core.faces.get(face_id).app_name
        reg = Packet(PacketType.REGISTER, dst=svc.prefix, src=app, seq=2,
                     payload=RegisterBody(0, svc.cost).encode(), tlvs=tlvs)
        acts = self.core.receive(face_id, reg.encode(), now)
        for a in acts:
            if getattr(a, "face_id", None) == face_id and hasattr(a, "data"):
                res = RegisterResult.decode(wire.decode(a.data).payload)
                ok = res.status == RegisterResult.ACCEPTED
                self.registered[svc.prefix.text] = "registered" if ok else res.message
                (log.info if ok else log.error)("pod service %s: %s", svc.prefix, res.message)
        self.d._act([a for a in acts if not hasattr(a, "data")])  # Registered, Noted

    def _open_dns(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((POD_GATEWAY, DNS_PORT))
        except OSError as exc:
            s.close()
            log.warning("no DNS for the pods: cannot bind %s:%d (%s); the harness puts %s on "
                        "this node's loopback", POD_GATEWAY, DNS_PORT, exc.strerror, POD_GATEWAY)
            return
        s.setblocking(False)
        self.dns_sock = s
        self.d.sel.register(s, selectors.EVENT_READ, ("dns", None))

    # ------------------------------------------------------------- packets
    def read(self, io: PodFace) -> None:
        """Frames from a pod."""
        now = time.time()
        gw, core = self.gateway, self.core
        for frame in io.read_batch():
            out = gw.from_pod(io.face_id, frame, now)
            t = type(out)
            if t is Inject:
                fc = core.counters.faces[io.face_id]
                fc.rx_packets += 1
                fc.rx_bytes += len(frame)
                self.d._act(core.receive(out.face_id, out.packet, now))
            elif t is ToPod:
                self._send_frame(out.face_id, out.frame)
            elif t is Dropped:
                core.counters.drop(io.face_id, out.reason)

    def deliver(self, face_id: int, data: bytes) -> None:
        """A packet the pipeline sends to a pod's face."""
        now = time.time()
        out = self.gateway.to_pod(face_id, data, now)
        t = type(out)
        if t is ToPod:
            c = out.conn
            if c is not None and c.broken:
                self._forget_flows(c)   # its next segment comes up to be reset
            elif c is not None and c.role == "server" and self.d.offload is not None \
                    and (c.proto, c.pod_addr, c.pod_port) not in self.d.offload.served:
                self._sync_served()
            self._send_frame(out.face_id, out.frame)
        elif t is Inject:   # a reset for a connection this pod does not hold, back by name
            self.d._act(self.core.receive(out.face_id, out.packet, now))
        elif t is Dropped:
            self.core.counters.drop(face_id, out.reason)

    def _send_frame(self, face_id: int, frame: bytes) -> None:
        io = self.d.io.get(face_id)
        if io is None:
            return
        res = io.send(frame)
        fc = self.core.counters.faces[face_id]
        if res == "sent":
            fc.tx_packets += 1
            fc.tx_bytes += len(frame)
        elif res == "queued":
            self.d._want_flush(io)
        else:
            self.core.counters.drop(face_id, res)

    def dns_read(self) -> None:
        while self.dns_sock is not None:
            try:
                data, peer = self.dns_sock.recvfrom(512)
            except (BlockingIOError, OSError):
                return
            q = dns.parse_query(data)
            if q is None:
                self.dns_answers["malformed"] += 1
                continue
            resp = dns.answer(q, self._lookup)
            rcode = resp[3] & 0x0F
            self.dns_answers["answered" if rcode == dns.NOERROR else
                             "nxdomain" if rcode == dns.NXDOMAIN else "refused"] += 1
            try:
                self.dns_sock.sendto(resp, peer)
            except OSError:
                pass

    def _lookup(self, host: str) -> Optional[str]:
        try:
            prefix = host_to_prefix(host)
        except ValueError:
            return None
        return self.gateway.addresses.address_of(prefix)

    # -------------------------------------------------------------- upkeep
    def refresh_services(self) -> None:
        """Service addresses follow the FIB (cheap when the tables did not change)."""
        g = self.core.generation
        if g == self._services_gen:
            return
        self._services_gen = g
        if self.gateway.addresses.update(service_prefixes(self.core)):
            log.info("service addresses: %d", len(self.gateway.addresses))

    def tick(self, now: float) -> List[Conn]:
        """Expire idle and closed connections; their flows leave the pipeline (and so
        the kernel) with them."""
        dead = self.gateway.conns.expire(now)
        for c in dead:
            self._forget_flows(c)
        if dead:
            self._sync_served()
        return dead

    def _sync_served(self) -> None:
        """The kernel's served ports follow the server ends of the open connections."""
        if self.d.offload is not None:
            self.d.offload.served_ports({(c.proto, c.pod_addr, c.pod_port)
                                         for c in self.gateway.conns if c.role == "server"})

    def _forget_flows(self, c: Conn) -> None:
        """The pipeline's flows of a connection, both ways (their kernel entries follow)."""
        for dst, src in ((c.out_dst, c.out_src), (c.out_src, c.out_dst)):
            self.core.flows.discard(flow_key(dst, src))

    def l4_spec(self, off: Offload) -> Optional[L4Spec]:
        """What the kernel needs to repeat an ENCAP (from a pod) or DECAP (to a pod)
        decision: the connection's 5-tuple and address rewrites, the pod's addresses."""
        dlen, slen = off.key[8], off.key[9]
        dst, src = off.key[20:20 + dlen], off.key[20 + dlen:20 + dlen + slen]
        if off.kind == ENCAP:
            conn = self.gateway.conns.by_names(src, dst)
            pod = self.gateway.pods.get(off.in_face)
        else:
            conn = self.gateway.conns.by_names(dst, src)
            pod = self.gateway.pods.get(off.flow.face_id)
        if conn is None or pod is None:
            return None
        server = conn.role == "server"
        return L4Spec(conn, conn.pod_addr, conn.peer_addr, conn.pod_port, conn.peer_port,
                      conn.proto, snat=conn.service_addr if server else None,
                      dnat=pod.address if server else None, pod_mac=pod.mac, mtu=pod.mtu)

    def status(self, now: float) -> dict:
        out = self.gateway.status(now)
        out["dns"] = dict(self.dns_answers, listening=self.dns_sock is not None)
        out["registrations"] = dict(self.registered)
        return out

    def connections(self, now: float) -> List[dict]:
        return [c.to_json(now) for c in self.gateway.conns]

    def close(self) -> None:
        if self.dns_sock is not None:
            self.dns_sock.close()
            self.dns_sock = None


def flow_key(dst: Name, src: Name) -> bytes:
    """The pipeline's flow key of packets from `src` to `dst`."""
    return wire.flow_key(Packet(PacketType.IPV4, dst, src).encode())


def service_prefixes(core) -> List[Name]:
    """The prefixes that get a service address: every FIB prefix but nodes' own names
    (a node's name and what is under it: its applications, its pods) and the reserved
    /_dmsc. Routed prefixes passed SPA where this node checks it (routing refuses an
    unauthorized advertisement before it reaches the FIB), local ones at registration."""
    out = {}
    for e in core.fib.entries():
        p = e.prefix
        if len(p) == 0 or p[0] == b"_dmsc" or core.name.is_prefix_of(p) or p.is_prefix_of(core.name):
            continue   # reserved, this node's own names, or an aggregate route to nodes
        if any(r.instance and Name.parse(r.instance).is_prefix_of(p) for r in e.nexthops):
            continue
        if len(p) > 1 and p[-1] == L4_COMPONENT:
            p = p.prefix(len(p) - 1)   # pods serving <prefix>/_l4 only (its HTTP adapter has <prefix>)
        out[p.wire] = p
    return list(out.values())
