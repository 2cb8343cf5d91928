"""IPv4, TCP and UDP as far as a Service Gateway needs them: the 5-tuple, address
rewriting with correct checksums, and the ICMP errors and TCP resets it sends.

Pure functions on bytes. Checksums are computed in full (RFC 1071): only the
first packets of a connection, and those of flows under a per-packet policy,
pass through here; the kernel rewrites the rest incrementally.
"""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple, Optional

TCP, UDP, ICMP = 6, 17, 1
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
ETH_P_IP = 0x0800

# ICMP destination unreachable codes (RFC 792, 1812)
HOST_UNREACHABLE = 1
PORT_UNREACHABLE = 3
FRAG_NEEDED = 4
ADMIN_PROHIBITED = 13


class BadPacket(ValueError):
    """Not an IPv4 packet a gateway carries; str() says why (a drop reason)."""


class Ipv4(NamedTuple):
    """What a gateway reads of a packet."""
    ihl: int            # header bytes
    total_length: int
    proto: int
    src: str
    dst: str
    fragment: bool      # MF set or a fragment offset
    sport: int          # 0 when not TCP or UDP
    dport: int
    tcp_flags: int      # 0 when not TCP
    tcp_seq: int
    tcp_ack: int


def parse(ip: bytes) -> Ipv4:
    """Read an IPv4 packet's header (and its TCP or UDP ports); BadPacket when malformed."""
    if len(ip) < 20:
        raise BadPacket("short")
    vihl = ip[0]
    if vihl >> 4 != 4:
        raise BadPacket("not_ipv4")
    ihl = (vihl & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    if ihl < 20 or total < ihl or total > len(ip):
        raise BadPacket("bad_ipv4_length")
    frag = struct.unpack_from("!H", ip, 6)[0]
    proto = ip[9]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    sport = dport = flags = seq = ack = 0
    fragment = bool(frag & 0x2000 or frag & 0x1FFF)
    if proto in (TCP, UDP) and not frag & 0x1FFF:
        need = ihl + (14 if proto == TCP else 4)
        if total < need:
            raise BadPacket("short_l4")
        sport, dport = struct.unpack_from("!HH", ip, ihl)
        if proto == TCP:
            seq, ack = struct.unpack_from("!II", ip, ihl + 4)
            flags = ip[ihl + 13]
    return Ipv4(ihl, total, proto, src, dst, fragment, sport, dport, flags, seq, ack)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(memoryview(data).cast("H"))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return socket.htons(~s & 0xFFFF)


def _l4_checksum(ip: bytearray, ihl: int, total: int, proto: int) -> int:
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, proto, total - ihl)
    return checksum(pseudo + bytes(ip[ihl:total]))


def rewrite(ip: bytes, src: Optional[str] = None, dst: Optional[str] = None) -> bytes:
    """The packet with its source and/or destination address replaced, the IPv4 header
    checksum and the TCP or UDP checksum recomputed (a UDP checksum of 0 stays 0)."""
    p = parse(ip)
    out = bytearray(ip[:p.total_length])
    if src is not None:
        out[12:16] = socket.inet_aton(src)
    if dst is not None:
        out[16:20] = socket.inet_aton(dst)
    out[10:12] = b"\0\0"
    out[10:12] = struct.pack("!H", checksum(bytes(out[:p.ihl])))
    if not p.fragment:
        if p.proto == TCP:
            out[p.ihl + 16:p.ihl + 18] = b"\0\0"
            out[p.ihl + 16:p.ihl + 18] = struct.pack("!H", _l4_checksum(out, p.ihl, p.total_length, TCP))
        elif p.proto == UDP and out[p.ihl + 6:p.ihl + 8] != b"\0\0":
            out[p.ihl + 6:p.ihl + 8] = b"\0\0"
            c = _l4_checksum(out, p.ihl, p.total_length, UDP)
            out[p.ihl + 6:p.ihl + 8] = struct.pack("!H", c or 0xFFFF)
    return bytes(out)


def checksums_ok(ip: bytes) -> bool:
    """Both checksums verify (for tests and for packets the gateway built)."""
    p = parse(ip)
    if checksum(ip[:p.ihl]) != 0:
        return False
    if p.fragment or p.proto not in (TCP, UDP):
        return True
    if p.proto == UDP and ip[p.ihl + 6:p.ihl + 8] == b"\0\0":
        return True
    return _l4_checksum(bytearray(ip), p.ihl, p.total_length, p.proto) == 0


def _ipv4_header(src: str, dst: str, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", checksum(h)) + h[12:]


def icmp_unreachable(orig: bytes, code: int, src: str, mtu: int = 0) -> bytes:
    """ICMP destination unreachable about `orig` (its header and 8 bytes, RFC 792), from
    `src` to orig's source; `mtu` is the next-hop MTU of a FRAG_NEEDED (RFC 1191)."""
    ihl = (orig[0] & 0x0F) * 4
    quoted = orig[:ihl + 8]
    body = struct.pack("!BBHHH", 3, code, 0, 0, mtu) + quoted
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return _ipv4_header(src, socket.inet_ntoa(orig[12:16]), ICMP, len(body)) + body


def tcp_reset(orig: bytes) -> bytes:
    """The RST a TCP receiver with no connection sends back for `orig` (RFC 793): from
    orig's destination to its source, seq = orig's ack (or 0 with ACK of its segment)."""
    p = parse(orig)
    seg_len = p.total_length - p.ihl - ((orig[p.ihl + 12] >> 4) * 4)
    seg_len += 1 if p.tcp_flags & TCP_SYN else 0
    seg_len += 1 if p.tcp_flags & TCP_FIN else 0
    if p.tcp_flags & TCP_ACK:
        seq, ack, flags = p.tcp_ack, 0, TCP_RST
    else:
        seq, ack, flags = 0, (p.tcp_seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    tcp = bytearray(struct.pack("!HHIIBBHHH", p.dport, p.sport, seq, ack, 5 << 4, flags, 0, 0, 0))
    ip = bytearray(_ipv4_header(p.dst, p.src, TCP, len(tcp)) + tcp)
    ip[36:38] = struct.pack("!H", _l4_checksum(ip, 20, len(ip), TCP))
    return bytes(ip)
