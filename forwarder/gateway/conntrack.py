"""The connections a Service Gateway carries for its pods: a bounded table that
forgets a connection when it is idle or closed (docs/protocol.md 13.3).

A connection is one TCP connection or UDP flow between a pod of this SG and a
service, seen from one side:

  * role "client": a pod here called a service address; packets from the pod
    go to the service's name, replies come back to the pod's client name;
  * role "server": a pod here is the service's instance; packets from the
    network arrive for the service's name and go to the pod (the service
    address rewritten to the pod's), the pod's replies leave with the service
    address as source, to the client's name.

Time is passed in; nothing here touches a socket.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from ..dataplane.names import Name
from .inet import TCP, TCP_FIN, TCP_RST

TCP_IDLE_S = 300.0     # an established TCP connection with no packet for this long is gone
UDP_IDLE_S = 30.0
CLOSED_LINGER_S = 5.0  # after FIN both ways or RST: late segments still find their way
MAX_CONNECTIONS = 16384

# (protocol, pod's address, pod's port, peer address, peer port) as the pod sees it:
# the peer is the service address for a client, the client's address for a server
PodKey = Tuple[int, str, int, str, int]


@dataclass
class Conn:
    role: str                 # "client" or "server"
    proto: int
    pod_face: int
    pod_addr: str
    pod_port: int
    peer_addr: str            # what the pod talks to (a service address, or a client)
    peer_port: int
    service_addr: str         # the service address (client: destination; server: SNAT source)
    prefix: Name              # the service prefix
    out_dst: Name             # DMSC destination of packets from the pod
    out_src: Name             # DMSC source of packets from the pod
    created: float
    last_seen: float
    tcp_flags_from_pod: int = 0
    tcp_flags_to_pod: int = 0
    syn_seq: Optional[int] = None  # the client's SYN, to name it in an ICMP error
    packets_from_pod: int = 0
    packets_to_pod: int = 0
    bytes_from_pod: int = 0
    bytes_to_pod: int = 0
    closed_at: Optional[float] = None
    broken: Optional[str] = None   # the network said the service end is gone (a NACK)
    kernel: Dict[str, object] = field(default_factory=dict)  # what the runtime installed

    @property
    def pod_key(self) -> PodKey:
        return (self.proto, self.pod_addr, self.pod_port, self.peer_addr, self.peer_port)

    @property
    def net_key(self) -> Tuple[bytes, bytes]:
        """(destination, source) of packets that arrive from the network for this pod."""
        return (self.out_src.wire, self.out_dst.wire)

    def saw(self, flags: int, from_pod: bool, nbytes: int, now: float) -> None:
        """One more packet through the gateway (TCP flags OR-ed in)."""
        self._count(from_pod, 1, nbytes)
        self._observe(flags, from_pod, now)

    def kernel_saw(self, tcp_flags: int, from_pod: bool, packets: int, nbytes: int,
                   last: float) -> None:
        """What the kernel carried since the last look (its flags are cumulative)."""
        self._count(from_pod, packets, nbytes)
        self._observe(tcp_flags, from_pod, last)

    def _count(self, from_pod: bool, packets: int, nbytes: int) -> None:
        if from_pod:
            self.packets_from_pod += packets
            self.bytes_from_pod += nbytes
        else:
            self.packets_to_pod += packets
            self.bytes_to_pod += nbytes

    def _observe(self, flags: int, from_pod: bool, when: float) -> None:
        """Closes the connection on RST, or FIN both ways."""
        self.last_seen = max(self.last_seen, when)
        if from_pod:
            self.tcp_flags_from_pod |= flags
        else:
            self.tcp_flags_to_pod |= flags
        if self.proto == TCP and self.closed_at is None:
            both = self.tcp_flags_from_pod | self.tcp_flags_to_pod
            if both & TCP_RST or (self.tcp_flags_from_pod & TCP_FIN and self.tcp_flags_to_pod & TCP_FIN):
                self.closed_at = when

    def expired(self, now: float) -> bool:
        if self.closed_at is not None:
            return now - self.closed_at >= CLOSED_LINGER_S
        return now - self.last_seen >= (TCP_IDLE_S if self.proto == TCP else UDP_IDLE_S)

    def to_json(self, now: float) -> dict:
        return {"role": self.role, "proto": "tcp" if self.proto == TCP else "udp",
                "pod_face": self.pod_face, "pod": f"{self.pod_addr}:{self.pod_port}",
                "peer": f"{self.peer_addr}:{self.peer_port}", "service": self.prefix.text,
                "service_address": self.service_addr, "dst": self.out_dst.text,
                "src": self.out_src.text, "state": "closed" if self.closed_at else "broken" if self.broken else "open",
                "packets_from_pod": self.packets_from_pod, "packets_to_pod": self.packets_to_pod,
                "bytes_from_pod": self.bytes_from_pod, "bytes_to_pod": self.bytes_to_pod,
                "age_s": round(now - self.created, 3), "idle_s": round(now - self.last_seen, 3)}


class ConnTable:
    """Connections by the pod's 5-tuple and by the names of packets from the network."""

    def __init__(self, max_entries: int = MAX_CONNECTIONS) -> None:
        self.max_entries = max_entries
        self._by_pod: Dict[PodKey, Conn] = {}
        self._by_net: Dict[Tuple[bytes, bytes], Conn] = {}
        self.stats = {"opened": 0, "closed": 0, "expired": 0, "evicted": 0}

    def add(self, conn: Conn) -> List[Conn]:
        """Insert; returns the connections evicted to make room (idlest first)."""
        evicted = []
        if len(self._by_pod) >= self.max_entries:
            for victim in sorted(self._by_pod.values(), key=lambda c: c.last_seen)[
                    :max(1, self.max_entries // 10)]:
                self._drop(victim)
                evicted.append(victim)
            self.stats["evicted"] += len(evicted)
        self._by_pod[conn.pod_key] = conn
        self._by_net[conn.net_key] = conn
        self.stats["opened"] += 1
        return evicted

    def by_pod(self, key: PodKey) -> Optional[Conn]:
        return self._by_pod.get(key)

    def by_names(self, dst_wire: bytes, src_wire: bytes) -> Optional[Conn]:
        return self._by_net.get((dst_wire, src_wire))

    def expire(self, now: float) -> List[Conn]:
        """Forget idle and closed connections; returns them (their kernel entries go too)."""
        dead = [c for c in self._by_pod.values() if c.expired(now)]
        for c in dead:
            self._drop(c)
            self.stats["closed" if c.closed_at is not None else "expired"] += 1
        return dead

    def remove_face(self, face_id: int) -> List[Conn]:
        dead = [c for c in self._by_pod.values() if c.pod_face == face_id]
        for c in dead:
            self._drop(c)
        return dead

    def _drop(self, c: Conn) -> None:
        self._by_pod.pop(c.pod_key, None)
        self._by_net.pop(c.net_key, None)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._by_pod.values()))

    def __len__(self) -> int:
        return len(self._by_pod)
