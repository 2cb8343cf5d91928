"""The Service Gateway's DNS answers for its pods (docs/protocol.md 13.1).

A pod's resolver is its SG (169.254.1.1, port 53). An A query for a name under
``.dmsc`` that maps to a known service prefix (forwarder.dataplane.hostmap:
``cart.shop.dmsc`` <-> ``/shop/cart``) is answered with the prefix's service
address; an AAAA query for it with no answer (NOERROR, no records: the service
exists, over IPv4); anything else with NXDOMAIN, or REFUSED outside ``.dmsc``.
The answers are authoritative and live for TTL seconds, so a revoked service
disappears from a pod's view within that time.

Pure functions on bytes (RFC 1035 section 4): one question per query, no
compression needed in queries, a pointer to the question in answers.
"""
from __future__ import annotations

import socket
import struct
from typing import Callable, NamedTuple, Optional

TTL_S = 5
A, AAAA, IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN, REFUSED = 0, 1, 3, 5
SUFFIX = "dmsc"


class Query(NamedTuple):
    ident: int
    flags: int
    name: str        # lower case, no trailing dot
    qtype: int
    qclass: int
    question: bytes  # the question section as received


def parse_query(data: bytes) -> Optional[Query]:
    """One standard query with one question; None when it is not one (then nothing is sent)."""
    if len(data) < 12:
        return None
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qd != 1:
        return None
    i, labels = 12, []
    while True:
        if i >= len(data):
            return None
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln > 63 or i + 1 + ln > len(data):
            return None
        labels.append(data[i + 1:i + 1 + ln].decode("ascii", "replace").lower())
        i += 1 + ln
    if i + 4 > len(data):
        return None
    qtype, qclass = struct.unpack_from("!HH", data, i)
    return Query(ident, flags, ".".join(labels), qtype, qclass, bytes(data[12:i + 4]))


def answer(query: Query, lookup: Callable[[str], Optional[str]]) -> bytes:
    """The response: `lookup(host)` gives the service address of a .dmsc host, or None."""
    rd = query.flags & 0x0100
    base = 0x8000 | 0x0400 | rd  # response, authoritative, recursion desired copied
    if query.qclass != IN or not (query.name == SUFFIX or query.name.endswith("." + SUFFIX)):
        return _response(query, base | REFUSED, None)
    address = lookup(query.name)
    if address is None:
        return _response(query, base | NXDOMAIN, None)
    if query.qtype != A:
        return _response(query, base | NOERROR, None)
    return _response(query, base | NOERROR, address)


def _response(query: Query, flags: int, address: Optional[str]) -> bytes:
    head = struct.pack("!HHHHHH", query.ident, flags, 1, 1 if address else 0, 0, 0)
    out = head + query.question
    if address:
        out += struct.pack("!HHHIH", 0xC00C, A, IN, TTL_S, 4) + socket.inet_aton(address)
    return out
