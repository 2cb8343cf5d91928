"""A Service Gateway's decisions for the packets of its pods (docs/protocol.md 13).

`PodGateway.from_pod` turns an IPv4 packet a pod sent into the DMSC packet the
pipeline then routes as if it had arrived on the pod's face (a face of kind
"pod"): to the service's name for a connection the pod opened to a service
address, or to a client's name for a reply of a pod that serves. `to_pod` does
the opposite for what the pipeline delivers to a pod's face. The SG's kernel
fast path repeats both for every later packet of the connection
(forwarder.runtime.offload); the first packets of each direction come here.

Pure: frames in, outcomes out; the connection table and service addresses are
passed in. Nothing here touches a socket.
"""
from __future__ import annotations

import zlib
from typing import Dict, NamedTuple, Optional, Union

from ..dataplane import wire
from ..dataplane.names import Name
from ..dataplane.wire import NackReason, Packet, PacketType
from . import inet
from .addresses import (POD_GATEWAY, ServiceAddresses, client_name, is_service_address,
                        parse_end, service_name)
from .conntrack import Conn, ConnTable

ETH_HLEN = 14
ETH_IPV4 = b"\x08\x00"


class Pod(NamedTuple):
    """One pod behind this SG, as its face sees it."""
    face_id: int
    index: int          # its number on this SG: the _pod/<index> of its names
    name: str
    address: str        # its one IPv4 address (a packet from another is refused)
    mac: bytes          # the pod's interface
    sg_mac: bytes       # the SG's end of the pod's veth
    mtu: int            # the pod's MTU (the network's minus the carriage overhead)


class Inject(NamedTuple):
    """A DMSC packet for the pipeline, as if received on the pod's face."""
    face_id: int
    packet: bytes
    conn: Optional[Conn]


class ToPod(NamedTuple):
    """An Ethernet frame for the pod (a carried packet, an ICMP error, a reset)."""
    face_id: int
    frame: bytes
    conn: Optional[Conn]


class Dropped(NamedTuple):
    reason: str


class Ignored(NamedTuple):
    """Not the gateway's (the SG's own stack answers it: DNS to 169.254.1.1, ARP...)."""


Outcome = Union[Inject, ToPod, Dropped, Ignored]

# a NACK for a carried packet becomes this ICMP destination unreachable code
_ICMP_FOR_NACK = {int(NackReason.NO_ROUTE): inet.HOST_UNREACHABLE,
                  int(NackReason.INSTANCE_UNREACHABLE): inet.HOST_UNREACHABLE,
                  int(NackReason.HOP_LIMIT_EXCEEDED): inet.HOST_UNREACHABLE,
                  int(NackReason.DENIED): inet.ADMIN_PROHIBITED,
                  int(NackReason.UNAUTHORIZED): inet.ADMIN_PROHIBITED,
                  int(NackReason.RATE_LIMITED): inet.ADMIN_PROHIBITED,
                  int(NackReason.TOO_BIG): inet.FRAG_NEEDED}


# NACKs that mean the connection's service end cannot be reached any more
_GONE = (int(NackReason.NO_ROUTE), int(NackReason.INSTANCE_UNREACHABLE))


class PodGateway:
    """The pods of one SG, its service addresses and its connections."""

    def __init__(self, node: Name, conns: Optional[ConnTable] = None,
                 addresses: Optional[ServiceAddresses] = None,
                 hop_limit: int = wire.DEFAULT_HOP_LIMIT) -> None:
        self.node = node
        self.conns = conns if conns is not None else ConnTable()
        self.addresses = addresses if addresses is not None else ServiceAddresses()
        self.hop_limit = hop_limit
        self.pods: Dict[int, Pod] = {}
        self.drops: Dict[str, int] = {}
        self.sent_to_pods = {"icmp": 0, "reset": 0}
        # carried packets this gateway (user space) handled; the kernel carries the rest
        self.python_packets = {"from_pods": 0, "to_pods": 0}

    def add_pod(self, pod: Pod) -> None:
        self.pods[pod.face_id] = pod

    def _drop(self, reason: str) -> Dropped:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return Dropped(reason)

    # ------------------------------------------------------------ from pods
    def from_pod(self, face_id: int, frame: bytes, now: float) -> Outcome:
        """A frame a pod sent to its gateway."""
        pod = self.pods.get(face_id)
        if pod is None or len(frame) < ETH_HLEN or frame[12:14] != ETH_IPV4:
            return Ignored()
        ip = frame[ETH_HLEN:]
        try:
            p = inet.parse(ip)
        except inet.BadPacket as exc:
            return self._drop(str(exc))
        if p.src != pod.address:
            return self._drop("spoofed_source")
        if is_service_address(p.dst):
            return self._to_service(pod, ip, p, now)
        if p.proto in (inet.TCP, inet.UDP):
            conn = self.conns.by_pod((p.proto, p.src, p.sport, p.dst, p.dport))
            if conn is not None and conn.role == "server":
                return self._reply_from_server(pod, conn, ip, p, now)
        return Ignored()   # the SG's own stack: DNS at 169.254.1.1, direct IP routing

    def _to_service(self, pod: Pod, ip: bytes, p: inet.Ipv4, now: float) -> Outcome:
        if p.fragment:
            return self._drop("ip_fragment")
        if p.proto not in (inet.TCP, inet.UDP):
            return self._icmp(pod, ip, inet.PORT_UNREACHABLE, "not_tcp_or_udp")
        conn = self.conns.by_pod((p.proto, p.src, p.sport, p.dst, p.dport))
        if conn is not None and conn.broken and p.proto == inet.TCP:
            return self._reset_broken(pod, conn, ip, p, now)
        if conn is None:
            prefix = self.addresses.prefix_of(p.dst)
            if prefix is None:
                return self._icmp(pod, ip, inet.HOST_UNREACHABLE, "no_service")
            if p.proto == inet.TCP and not p.tcp_flags & inet.TCP_SYN:
                if p.tcp_flags & inet.TCP_RST:
                    return self._drop("unknown_connection")
                self.sent_to_pods["reset"] += 1
                return ToPod(pod.face_id, self._frame(pod, inet.tcp_reset(ip)), None)
            conn = Conn("client", p.proto, pod.face_id, p.src, p.sport, p.dst, p.dport, p.dst,
                        prefix, service_name(prefix, p.proto, p.dport),
                        client_name(self.node, pod.index, p.proto, p.sport), now, now)
            if p.proto == inet.TCP:
                conn.syn_seq = p.tcp_seq
            self.conns.add(conn)
        conn.saw(p.tcp_flags, True, p.total_length, now)
        self.python_packets["from_pods"] += 1
        return Inject(pod.face_id, self._carry(conn, ip[:p.total_length]), conn)

    def _reset_broken(self, pod: Pod, conn: Conn, ip: bytes, p: inet.Ipv4, now: float) -> Outcome:
        """The next segment of a connection whose service end the network reported gone
        gets the reset its peer can no longer send: the pod's connection fails at once,
        as TCP does against a host that lost it, instead of retrying for minutes."""
        if p.tcp_flags & inet.TCP_RST:
            conn.saw(p.tcp_flags, True, p.total_length, now)
            return self._drop("unknown_connection")
        conn.saw(inet.TCP_RST, False, 0, now)
        self.sent_to_pods["reset"] += 1
        return ToPod(pod.face_id, self._frame(pod, inet.tcp_reset(ip[:p.total_length])), conn)

    def _reply_from_server(self, pod: Pod, conn: Conn, ip: bytes, p: inet.Ipv4,
                           now: float) -> Outcome:
        conn.saw(p.tcp_flags, True, p.total_length, now)
        self.python_packets["from_pods"] += 1
        return Inject(pod.face_id, self._carry(conn, inet.rewrite(ip, src=conn.service_addr)), conn)

    def _carry(self, conn: Conn, ip: bytes) -> bytes:
        return Packet(PacketType.IPV4, conn.out_dst, conn.out_src, ip, hop_limit=self.hop_limit,
                      flow_id=zlib.crc32(conn.out_src.wire) or 1).encode()

    # -------------------------------------------------------------- to pods
    def to_pod(self, face_id: int, data: bytes, now: float) -> Outcome:
        """A DMSC packet the pipeline delivers to a pod's face."""
        pod = self.pods.get(face_id)
        if pod is None:
            return self._drop("no_pod")
        pkt = wire.decode(data)
        if pkt.type == PacketType.NACK:
            return self._nack(pod, pkt)
        if pkt.type != PacketType.IPV4:
            return self._drop("not_carried")
        ip = pkt.payload
        try:
            p = inet.parse(ip)
        except inet.BadPacket:
            return self._drop("bad_inner")
        if p.total_length != len(ip):
            return self._drop("bad_inner")
        conn = self.conns.by_names(pkt.dst.wire, pkt.src.wire)
        if conn is None:
            return self._new_server_conn(pod, pkt, ip, p, now)
        if conn.role == "server":
            ip = inet.rewrite(ip, dst=pod.address)
        conn.saw(p.tcp_flags, False, p.total_length, now)
        self.python_packets["to_pods"] += 1
        return ToPod(pod.face_id, self._frame(pod, ip), conn)

    def _new_server_conn(self, pod: Pod, pkt: Packet, ip: bytes, p: inet.Ipv4,
                         now: float) -> Outcome:
        """The first packet of a connection to a service this pod serves."""
        svc, cli = parse_end(pkt.dst), parse_end(pkt.src)
        if svc is None or cli is None or svc.proto != p.proto or cli.proto != p.proto \
                or svc.port != p.dport or cli.port != p.sport:
            return self._drop("name_mismatch")
        if p.proto == inet.TCP and not p.tcp_flags & inet.TCP_SYN:
            # not a connection this instance holds (its old instance failed): reset it,
            # back to the client by name, as the service end would
            if p.tcp_flags & inet.TCP_RST:
                return self._drop("unknown_connection")
            self.sent_to_pods["reset"] += 1
            rst = Packet(PacketType.IPV4, pkt.src, pkt.dst, inet.tcp_reset(ip),
                         hop_limit=self.hop_limit, flow_id=pkt.flow_id).encode()
            return Inject(pod.face_id, rst, None)
        conn = Conn("server", p.proto, pod.face_id, pod.address, p.dport, p.src, p.sport, p.dst,
                    svc.base, pkt.src, pkt.dst, now, now)
        self.conns.add(conn)
        conn.saw(p.tcp_flags, False, p.total_length, now)
        self.python_packets["to_pods"] += 1
        return ToPod(pod.face_id, self._frame(pod, inet.rewrite(ip, dst=pod.address)), conn)

    def _nack(self, pod: Pod, pkt: Packet) -> Outcome:
        """A NACK for a packet this pod sent: the ICMP error a router would send."""
        try:
            body = wire.NackBody.decode(pkt.payload)
        except wire.DecodeError:
            return self._drop("bad_nack")
        conn = self.conns.by_names(pkt.dst.wire, body.refused_dst.wire)
        if conn is None:
            return self._drop("nack_for_no_connection")
        # the quoted packet: the pod's own header as it sent it (addresses, ports, the SYN)
        quoted = _quoted(conn)
        code = _ICMP_FOR_NACK.get(body.reason, inet.HOST_UNREACHABLE)
        if conn.proto == inet.TCP and conn.role == "client" and body.reason in _GONE \
                and conn.tcp_flags_to_pod & inet.TCP_ACK and conn.closed_at is None:
            # An established connection lost its instance and no other took it (another
            # instance would have reset it by name). Linux treats this ICMP error as soft
            # for an established socket; the runtime takes the connection out of the
            # kernel so the pod's next segment comes here and is answered with a reset.
            conn.broken = NackReason(body.reason).name.lower()
        mtu = pod.mtu if code == inet.FRAG_NEEDED else 0
        self.sent_to_pods["icmp"] += 1
        return ToPod(pod.face_id, self._frame(pod, inet.icmp_unreachable(quoted, code,
                                                                         POD_GATEWAY, mtu)), conn)

    def _icmp(self, pod: Pod, ip: bytes, code: int, reason: str) -> Outcome:
        self._drop(reason)
        self.sent_to_pods["icmp"] += 1
        return ToPod(pod.face_id, self._frame(pod, inet.icmp_unreachable(ip, code, POD_GATEWAY)),
                     None)

    @staticmethod
    def _frame(pod: Pod, ip: bytes) -> bytes:
        return pod.mac + pod.sg_mac + ETH_IPV4 + ip

    # ---------------------------------------------------------------- views
    def status(self, now: float) -> dict:
        return {"pods": {p.name: {"face": p.face_id, "address": p.address, "index": p.index}
                         for p in self.pods.values()},
                "services": dict(self.addresses.items()), "connections": len(self.conns),
                "conntrack": dict(self.conns.stats), "drops": dict(self.drops),
                "sent_to_pods": dict(self.sent_to_pods),
                "python_packets": dict(self.python_packets)}


def _quoted(conn: Conn) -> bytes:
    """An IPv4 header and 8 bytes as the pod sent them, for the pod to match an ICMP error."""
    import socket
    import struct
    src, dst = (conn.pod_addr, conn.peer_addr)
    l4 = struct.pack("!HHI", conn.pod_port, conn.peer_port, conn.syn_seq or 0) if conn.proto == inet.TCP \
        else struct.pack("!HHHH", conn.pod_port, conn.peer_port, 8, 0)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, conn.proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", inet.checksum(h)) + h[12:] + l4
