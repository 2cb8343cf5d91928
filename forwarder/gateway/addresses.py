"""Service addresses, pod addresses, and the names of a carried connection's two ends.

Service addresses (docs/protocol.md 13.1) are virtual IPv4 addresses in
10.96.0.0/12 (Kubernetes' default service range). Every SG computes the same
address for a prefix from the prefix alone: FNV-1a of its binary form, modulo
the range. The rare collision is resolved in name order (the smaller prefix
keeps the address, the next one takes the next free address), which every SG
that knows the same prefixes resolves the same way.

The names of a connection (13.2):

  * the client end: the client SG's node name, ``_pod``, the pod's index on that
    SG, and the protocol and port: ``/node/h1/_pod/0/t40123``
  * the service end: the service prefix, ``_l4``, protocol and port:
    ``/shop/cart/_l4/t8080``

so that each TCP connection or UDP flow is a flow of its own (routers keep it on
one instance), and the client's SG routes the replies (covered by its own node
name) to the right pod without a lookup.
"""
from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..dataplane.names import Name, fnv1a32
from ..dataplane.pipeline import POD_COMPONENT

VIP_NET = ipaddress.IPv4Network("10.96.0.0/12")
POD_GATEWAY = "169.254.1.1"   # every pod's default gateway (link-local, as Calico does)
L4_OVERHEAD = 128             # bytes of DMSC header a carried packet may need; pods' MTU is
                              # the network's minus this, so no carried packet is fragmented
L4_COMPONENT = b"_l4"
PROTOCOLS = {6: "t", 17: "u"}  # TCP, UDP
PROTOCOL_OF = {v: k for k, v in PROTOCOLS.items()}


class L4Name(NamedTuple):
    """A connection end's name taken apart: base (pod or service prefix), protocol, port."""
    base: Name
    proto: int
    port: int


def client_name(node: Name, pod_index: int, proto: int, port: int) -> Name:
    return node.append(POD_COMPONENT, str(pod_index), f"{PROTOCOLS[proto]}{port}")


def pod_name(node: Name, pod_index: int) -> Name:
    """The name under which an SG reaches one of its pods (the pod face's name)."""
    return node.append(POD_COMPONENT, str(pod_index))


def service_name(prefix: Name, proto: int, port: int) -> Name:
    return prefix.append(L4_COMPONENT, f"{PROTOCOLS[proto]}{port}")


def parse_end(name: Name) -> Optional[L4Name]:
    """(base, proto, port) of a client or service end name; None for any other name."""
    if len(name) < 3:
        return None
    marker, last = name[len(name) - 2], name[len(name) - 1]
    if len(name) >= 4 and name[len(name) - 3] == POD_COMPONENT:
        base = Name(name.components[:-1])        # /node/h1/_pod/0
    elif marker == L4_COMPONENT:
        base = Name(name.components[:-2])        # /shop/cart
    else:
        return None
    try:
        proto, port = PROTOCOL_OF[chr(last[0])], int(last[1:])
    except (KeyError, ValueError, IndexError):
        return None
    if not 0 < port < 65536:
        return None
    return L4Name(base, proto, port)


def _candidate(prefix: Name) -> int:
    span = VIP_NET.num_addresses - 2              # not the network or broadcast address
    return int(VIP_NET.network_address) + 1 + fnv1a32(prefix.wire) % span


class ServiceAddresses:
    """prefix <-> service address, for the service prefixes an SG knows."""

    def __init__(self) -> None:
        self._vip: Dict[Name, str] = {}
        self._prefix: Dict[str, Name] = {}

    def update(self, prefixes: Iterable[Name]) -> bool:
        """Recompute for this set of prefixes; True when any address changed."""
        vip: Dict[Name, str] = {}
        taken: Dict[int, Name] = {}
        first = int(VIP_NET.network_address) + 1
        last = int(VIP_NET.broadcast_address) - 1
        for p in sorted(set(prefixes), key=lambda n: n.wire):
            a = _candidate(p)
            while a in taken:
                a = a + 1 if a < last else first
            taken[a] = p
            vip[p] = str(ipaddress.IPv4Address(a))
        changed = vip != self._vip
        self._vip = vip
        self._prefix = {a: p for p, a in vip.items()}
        return changed

    def address_of(self, prefix: Name) -> Optional[str]:
        return self._vip.get(prefix)

    def prefix_of(self, address: str) -> Optional[Name]:
        return self._prefix.get(address)

    def items(self) -> List[Tuple[str, str]]:
        """(prefix text, address), in name order: GET /services."""
        return sorted((p.text, a) for p, a in self._vip.items())

    def __len__(self) -> int:
        return len(self._vip)


def is_service_address(address: str) -> bool:
    try:
        return ipaddress.IPv4Address(address) in VIP_NET
    except ValueError:
        return False
