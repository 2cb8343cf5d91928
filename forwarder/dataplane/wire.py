"""The DMSC packet codec (docs/protocol.md). struct-based; no Scapy here.

`decode` validates everything in section 9 of the specification and raises
:class:`DecodeError` with the reason name used in the drop counters, and nothing
else, whatever the input bytes are.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

from .names import COMPONENT_MAX, COMPONENTS_MAX, FNV_OFFSET, FNV_PRIME, InvalidName, Name

ETHERTYPE = 0x88B5
UDP_PORT = 6464
VERSION = 1
HEADER_LEN = 40
DEFAULT_HOP_LIMIT = 32
MAX_TLVS = 32
MAX_PACKET = 0xFFFF
ETH_HEADER_LEN = 14

# version type flags hop total hdrlen flow seq fidx fcnt dhash shash dlen slen dn sn bounds
HEADER = struct.Struct("!BBBBHHIIHHIIBBBB8s")
TLV_HEADER = struct.Struct("!HH")

# Offsets of the fixed header's fields (section 3), for code that reads or
# rewrites one field of a packet in place instead of decoding it.
OFF_TYPE = 1
OFF_FLAGS = 2
OFF_HOP_LIMIT = 3
OFF_LENGTHS = 4          # total_length, header_length: LENGTHS
OFF_FLOW_SEQ = 8         # flow_id, seq: FLOW_SEQ
OFF_DST_HASH = 20        # the flow key starts here (section 3): hashes, lengths, bounds, names
OFF_DST_LEN = 28
OFF_SRC_LEN = 29
LENGTHS = struct.Struct("!HH")
FLOW_SEQ = struct.Struct("!II")
# What a flow-table hit reads in one call: (version << 24 | type << 16 | flags << 8
# | hop_limit, total_length, header_length, frag_index, frag_count, dst_len, src_len).
FAST = struct.Struct("!IHH8xHH8xBB")


def names_end(buf, offset: int = 0) -> int:
    """Offset, relative to the packet start, of the end of the two names (40 + dst_len + src_len)."""
    return HEADER_LEN + buf[offset + OFF_DST_LEN] + buf[offset + OFF_SRC_LEN]


def flow_key(buf, offset: int = 0) -> bytes:
    """The bytes [20, names end) that identify a (destination, source) flow exactly (section 3)."""
    return bytes(buf[offset + OFF_DST_HASH:offset + names_end(buf, offset)])


class PacketType(enum.IntEnum):
    REQUEST = 0x01
    DATA = 0x02
    ECHO_REQUEST = 0x03
    ECHO_REPLY = 0x04
    NACK = 0x05
    IPV4 = 0x06          # an IPv4 packet carried by name between Service Gateways (4.6)
    HELLO = 0x10
    LSA = 0x11
    ACK = 0x12
    REGISTER = 0x20
    UNREGISTER = 0x21
    REGISTER_RESULT = 0x22
    ATTACH = 0x23


TYPE_CODES = frozenset(int(t) for t in PacketType)
# Types a forwarder forwards by name (the rest are link-local control or local-face only).
FORWARDED_TYPES = frozenset(int(t) for t in (PacketType.REQUEST, PacketType.DATA,
                                             PacketType.ECHO_REQUEST, PacketType.ECHO_REPLY,
                                             PacketType.NACK, PacketType.IPV4))
LOCAL_ONLY_TYPES = frozenset(int(t) for t in (PacketType.REGISTER, PacketType.UNREGISTER,
                                              PacketType.REGISTER_RESULT, PacketType.ATTACH))
CONTROL_TYPES = frozenset(t for t in TYPE_CODES if t >= PacketType.HELLO)


class Flag(enum.IntFlag):
    TELEMETRY = 0x01


class NackReason(enum.IntEnum):
    NO_ROUTE = 1
    HOP_LIMIT_EXCEEDED = 2
    UNAUTHORIZED = 3
    RATE_LIMITED = 4
    INSTANCE_UNREACHABLE = 5
    DENIED = 6
    TOO_BIG = 7


class TlvType(enum.IntEnum):
    HOP_RECORD = 0x0001
    PRIORITY = 0x0002
    TRACE_CONTEXT = 0x0003
    INSTANCE = 0x0004
    SPA_AUTHORIZATION = 0x0010
    SPA_SIGNATURE = 0x0011


TLV_CRITICAL = 0x8000
# Fixed value sizes of the TLVs that have one; others are variable.
TLV_SIZES = {0x0001: 24, 0x0002: 1, 0x0003: 25, 0x0004: 4, 0x0011: 80}
# SPA_AUTHORIZATION (6.4) is 130 + L bytes, L being the prefix length byte at 25.
SPA_AUTH_PREFIX_LEN_AT = 25
SPA_AUTH_FIXED = 1 + 8 + 8 + 8 + 1 + 32 + 8 + 64
KNOWN_TLVS = frozenset(int(t) for t in TlvType)

# Decode error reasons, in the order the checks run (spec section 9).
REASONS = ("truncated", "bad_version", "bad_type", "bad_length", "bad_name",
           "bad_bounds", "bad_hash", "bad_tlv", "bad_fragment", "bad_body")


class DecodeError(ValueError):
    """A malformed packet; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Packet:
    """A decoded DMSC packet. `tlvs` keeps wire order as (type, value)."""

    type: int
    dst: Name
    src: Name
    payload: bytes = b""
    flags: int = 0
    hop_limit: int = DEFAULT_HOP_LIMIT
    flow_id: int = 0
    seq: int = 0
    frag_index: int = 0
    frag_count: int = 1
    tlvs: List[Tuple[int, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        return encode(self)

    def tlv(self, tlv_type: int) -> Optional[bytes]:
        for t, v in self.tlvs:
            if t == tlv_type:
                return v
        return None

    def tlvs_of(self, tlv_type: int) -> List[bytes]:
        return [v for t, v in self.tlvs if t == tlv_type]


def encode_tlvs(tlvs: List[Tuple[int, bytes]]) -> bytes:
    return b"".join(TLV_HEADER.pack(t, len(v)) + v for t, v in tlvs)


def encode(p: Packet) -> bytes:
    """Encode a packet; raises ValueError if it breaks a limit."""
    if len(p.dst) == 0 or len(p.src) == 0:
        raise ValueError("packets need non-empty destination and source names")
    dw, sw = p.dst.wire, p.src.wire
    tlv_bytes = encode_tlvs(p.tlvs)
    if len(p.tlvs) > MAX_TLVS:
        raise ValueError(f"{len(p.tlvs)} TLVs; at most {MAX_TLVS}")
    header_length = HEADER_LEN + len(dw) + len(sw) + len(tlv_bytes)
    total = header_length + len(p.payload)
    if total > MAX_PACKET:
        raise ValueError(f"packet of {total} bytes; at most {MAX_PACKET}")
    bounds = bytes(p.dst.bounds()).ljust(8, b"\0")
    head = HEADER.pack(VERSION, p.type, p.flags, p.hop_limit, total, header_length,
                       p.flow_id, p.seq, p.frag_index, p.frag_count,
                       p.dst.hash32, p.src.hash32, len(dw), len(sw),
                       len(p.dst), len(p.src), bounds)
    return b"".join((head, dw, sw, tlv_bytes, p.payload))


def _fnv(buf, start: int, end: int) -> int:
    state = FNV_OFFSET
    for i in range(start, end):
        state = ((state ^ buf[i]) * FNV_PRIME) & 0xFFFFFFFF
    return state


def _check_name(buf, start: int, length: int, ncomp: int) -> List[int]:
    """Check one name's component structure (bad_name); return its boundaries.

    Only `bad_name` is decided here; the caller compares the boundaries with
    `dst_bounds` once both names are known to be well formed, so that every
    bad_name condition of section 9 is reported before bad_bounds.
    """
    if ncomp == 0 or ncomp > COMPONENTS_MAX:
        raise DecodeError("bad_name", f"{ncomp} components")
    i, end = start, start + length
    ends: List[int] = []
    while i < end:
        ln = buf[i]
        if ln == 0 or ln > COMPONENT_MAX:
            raise DecodeError("bad_name", f"component length {ln}")
        i += 1 + ln
        if i > end:
            raise DecodeError("bad_name", "component overruns the name")
        ends.append(i - start)
        if len(ends) > COMPONENTS_MAX:
            raise DecodeError("bad_name", "too many components")
    if len(ends) != ncomp:
        raise DecodeError("bad_name", f"{len(ends)} components, header says {ncomp}")
    return ends


def _check_bounds(bounds: bytes, ends: List[int]) -> None:
    """`dst_bounds` must list the component ends, then zeros (bad_bounds)."""
    expected = bytes(ends).ljust(8, b"\0")
    if bounds != expected:
        raise DecodeError("bad_bounds", f"bounds {list(bounds)}, components end at {ends}")


def parse_tlvs(buf, start: int, end: int) -> List[Tuple[int, bytes]]:
    """Walk the TLV area [start, end); raises DecodeError('bad_tlv')."""
    tlvs: List[Tuple[int, bytes]] = []
    i = start
    while i < end:
        if i + 4 > end:
            raise DecodeError("bad_tlv", "TLV header runs past the header")
        t, ln = TLV_HEADER.unpack_from(buf, i)
        i += 4
        if i + ln > end:
            raise DecodeError("bad_tlv", f"TLV {t:#06x} value runs past the header")
        base = t & ~TLV_CRITICAL
        if base not in KNOWN_TLVS:
            if t & TLV_CRITICAL:
                raise DecodeError("bad_tlv", f"unknown critical TLV {t:#06x}")
        else:
            size = TLV_SIZES.get(base)
            if base == TlvType.SPA_AUTHORIZATION:
                # Variable, but fixed by its own prefix length byte.
                if ln <= SPA_AUTH_PREFIX_LEN_AT:
                    raise DecodeError("bad_tlv", f"SPA_AUTHORIZATION of {ln} bytes")
                size = SPA_AUTH_FIXED + buf[i + SPA_AUTH_PREFIX_LEN_AT]
            if size is not None and size != ln:
                raise DecodeError("bad_tlv", f"TLV {t:#06x} of {ln} bytes, expected {size}")
        tlvs.append((t, bytes(buf[i:i + ln])))
        i += ln
        if len(tlvs) > MAX_TLVS:
            raise DecodeError("bad_tlv", f"more than {MAX_TLVS} TLVs")
    return tlvs


class Header(NamedTuple):
    version: int
    type: int
    flags: int
    hop_limit: int
    total_length: int
    header_length: int
    flow_id: int
    seq: int
    frag_index: int
    frag_count: int
    dst_hash: int
    src_hash: int
    dst_len: int
    src_len: int
    dst_ncomp: int
    src_ncomp: int
    dst_bounds: bytes


def validate(buf, offset: int = 0, names_checked: bool = False) -> Header:
    """Run every check of spec section 9 on buf[offset:]; return the fixed header.

    Kept separate from `decode` so a forwarder can validate without building
    Name objects for the names. `names_checked` skips the name, bounds and hash
    checks when the caller knows bytes [20, names end) equal an already
    validated packet's (a flow table hit).
    """
    avail = len(buf) - offset
    if avail < HEADER_LEN:
        raise DecodeError("truncated", f"{avail} bytes, the fixed header is {HEADER_LEN}")
    h = Header._make(HEADER.unpack_from(buf, offset))
    if h.total_length > avail:
        raise DecodeError("truncated", f"total_length {h.total_length}, {avail} bytes present")
    if h.version != VERSION:
        raise DecodeError("bad_version", f"version {h.version}")
    if h.type not in TYPE_CODES:
        raise DecodeError("bad_type", f"type {h.type:#04x}")
    names_end = HEADER_LEN + h.dst_len + h.src_len
    if h.total_length < HEADER_LEN or h.header_length < names_end \
            or h.header_length > h.total_length:
        raise DecodeError("bad_length", f"total {h.total_length}, header {h.header_length}, "
                                        f"names end at {names_end}")
    base = offset + HEADER_LEN
    dst_ends = _check_name(buf, base, h.dst_len, h.dst_ncomp)
    _check_name(buf, base + h.dst_len, h.src_len, h.src_ncomp)
    _check_bounds(h.dst_bounds, dst_ends)
    if _fnv(buf, base, base + h.dst_len) != h.dst_hash:
        raise DecodeError("bad_hash", "destination name hash")
    if _fnv(buf, base + h.dst_len, base + h.dst_len + h.src_len) != h.src_hash:
        raise DecodeError("bad_hash", "source name hash")
    parse_tlvs(buf, offset + names_end, offset + h.header_length)
    if h.frag_count == 0 or h.frag_index >= h.frag_count:
        raise DecodeError("bad_fragment", f"fragment {h.frag_index} of {h.frag_count}")
    return h


def decode(buf, offset: int = 0) -> Packet:
    """Decode one packet starting at `offset`; trailing bytes (padding) are ignored."""
    try:
        h = validate(buf, offset)
        base = offset + HEADER_LEN
        dst = Name.from_wire(bytes(buf[base:base + h.dst_len]))
        src = Name.from_wire(bytes(buf[base + h.dst_len:base + h.dst_len + h.src_len]))
    except InvalidName as exc:  # limits already checked; kept as a safety net
        raise DecodeError("bad_name", str(exc)) from None
    except (struct.error, IndexError) as exc:  # pragma: no cover - guarded by checks
        raise DecodeError("truncated", str(exc)) from None
    tlvs = parse_tlvs(buf, offset + HEADER_LEN + h.dst_len + h.src_len, offset + h.header_length)
    payload = bytes(buf[offset + h.header_length:offset + h.total_length])
    return Packet(type=h.type, dst=dst, src=src, payload=payload, flags=h.flags,
                  hop_limit=h.hop_limit, flow_id=h.flow_id, seq=h.seq,
                  frag_index=h.frag_index, frag_count=h.frag_count, tlvs=tlvs)


# ---------------------------------------------------------------------------
# Bodies and TLV values
# ---------------------------------------------------------------------------

ECHO = struct.Struct("!QI")
HOP = struct.Struct("!IHHQIHH")
HELLO = struct.Struct("!HHHH")
NACK_HEAD = struct.Struct("!BBB")
REGISTER_HEAD = struct.Struct("!HH")
NO_FACE = 0xFFFF


class EchoBody(NamedTuple):
    send_time_ns: int
    echo_id: int
    padding: bytes = b""

    def encode(self) -> bytes:
        return ECHO.pack(self.send_time_ns, self.echo_id) + self.padding

    @classmethod
    def decode(cls, data: bytes) -> "EchoBody":
        if len(data) < ECHO.size:
            raise DecodeError("bad_body", f"echo body of {len(data)} bytes")
        t, i = ECHO.unpack_from(data)
        return cls(t, i, bytes(data[ECHO.size:]))


class HopRecord(NamedTuple):
    node_hash: int
    in_face: int
    out_face: int
    time_ns: int
    queue: int = 0
    util_permille: int = 0

    def encode(self) -> bytes:
        return HOP.pack(self.node_hash, self.in_face, self.out_face, self.time_ns,
                        self.queue, self.util_permille, 0)

    @classmethod
    def decode(cls, data: bytes) -> "HopRecord":
        if len(data) != HOP.size:
            raise DecodeError("bad_tlv", f"hop record of {len(data)} bytes")
        n, i, o, t, q, u, _ = HOP.unpack(data)
        return cls(n, i, o, t, q, u)


class NackBody(NamedTuple):
    reason: int
    refused_type: int
    refused_dst: Name

    def encode(self) -> bytes:
        w = self.refused_dst.wire
        return NACK_HEAD.pack(self.reason, self.refused_type, len(w)) + w

    @classmethod
    def decode(cls, data: bytes) -> "NackBody":
        if len(data) < NACK_HEAD.size:
            raise DecodeError("bad_body", f"NACK body of {len(data)} bytes")
        reason, t, ln = NACK_HEAD.unpack_from(data)
        if len(data) < NACK_HEAD.size + ln:
            raise DecodeError("bad_body", "NACK name runs past the body")
        try:
            dst = Name.from_wire(bytes(data[3:3 + ln]))
        except InvalidName as exc:
            raise DecodeError("bad_body", str(exc)) from None
        return cls(reason, t, dst)


class HelloBody(NamedTuple):
    interval_ms: int
    dead_ms: int
    face_id: int
    flags: int = 0

    TWO_WAY = 0x1

    def encode(self) -> bytes:
        return HELLO.pack(self.interval_ms, self.dead_ms, self.face_id, self.flags)

    @classmethod
    def decode(cls, data: bytes) -> "HelloBody":
        if len(data) < HELLO.size:
            raise DecodeError("bad_body", f"hello body of {len(data)} bytes")
        return cls(*HELLO.unpack_from(data))


class RegisterBody(NamedTuple):
    flags: int = 0
    cost: int = 0
    options: bytes = b""  # UTF-8 JSON

    HTTP = 0x1

    def encode(self) -> bytes:
        return REGISTER_HEAD.pack(self.flags, self.cost) + self.options

    @classmethod
    def decode(cls, data: bytes) -> "RegisterBody":
        if len(data) < REGISTER_HEAD.size:
            raise DecodeError("bad_body", f"register body of {len(data)} bytes")
        f, c = REGISTER_HEAD.unpack_from(data)
        return cls(f, c, bytes(data[REGISTER_HEAD.size:]))


class RegisterResult(NamedTuple):
    status: int
    message: str = ""

    ACCEPTED, UNAUTHORIZED, INVALID, RESERVED = 0, 1, 2, 3

    def encode(self) -> bytes:
        return bytes((self.status,)) + self.message.encode()

    @classmethod
    def decode(cls, data: bytes) -> "RegisterResult":
        if len(data) < 1:
            raise DecodeError("bad_body", "empty register result")
        return cls(data[0], bytes(data[1:]).decode("utf-8", "replace"))


def _name_field(data: bytes, i: int) -> Tuple[Name, int]:
    if i >= len(data):
        raise DecodeError("bad_body", "name length byte missing")
    ln = data[i]
    if i + 1 + ln > len(data):
        raise DecodeError("bad_body", "name runs past the body")
    try:
        return Name.from_wire(bytes(data[i + 1:i + 1 + ln])), i + 1 + ln
    except InvalidName as exc:
        raise DecodeError("bad_body", str(exc)) from None


def _name_bytes(n: Name) -> bytes:
    return bytes((len(n.wire),)) + n.wire


class LsaPrefix(NamedTuple):
    prefix: Name
    cost: int = 0
    flags: int = 0
    authorization: bytes = b""


class LsaBody(NamedTuple):
    seq: int
    age_s: int
    flags: int
    adjacencies: List[Tuple[Name, int]]  # (neighbour, cost)
    prefixes: List[LsaPrefix]

    FLUSH = 0x1

    def encode(self) -> bytes:
        out = [struct.pack("!QHHHH", self.seq, self.age_s, self.flags,
                           len(self.adjacencies), len(self.prefixes))]
        for nb, cost in self.adjacencies:
            out.append(struct.pack("!H", cost) + _name_bytes(nb))
        for p in self.prefixes:
            out.append(struct.pack("!HH", p.cost, p.flags) + _name_bytes(p.prefix)
                       + struct.pack("!H", len(p.authorization)) + p.authorization)
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> "LsaBody":
        if len(data) < 16:
            raise DecodeError("bad_body", f"LSA body of {len(data)} bytes")
        seq, age, flags, na, np_ = struct.unpack_from("!QHHHH", data)
        i, adj, pfx = 16, [], []
        for _ in range(na):
            if i + 2 > len(data):
                raise DecodeError("bad_body", "adjacency runs past the body")
            cost, = struct.unpack_from("!H", data, i)
            nb, i = _name_field(data, i + 2)
            adj.append((nb, cost))
        for _ in range(np_):
            if i + 4 > len(data):
                raise DecodeError("bad_body", "prefix runs past the body")
            cost, pflags = struct.unpack_from("!HH", data, i)
            p, i = _name_field(data, i + 4)
            if i + 2 > len(data):
                raise DecodeError("bad_body", "authorization length missing")
            alen, = struct.unpack_from("!H", data, i)
            if i + 2 + alen > len(data):
                raise DecodeError("bad_body", "authorization runs past the body")
            pfx.append(LsaPrefix(p, cost, pflags, bytes(data[i + 2:i + 2 + alen])))
            i += 2 + alen
        if i != len(data):
            # routers store and flood the body as received: one encoding per LSA
            raise DecodeError("bad_body", f"{len(data) - i} bytes after the last prefix")
        return cls(seq, age, flags, adj, pfx)


class AckBody(NamedTuple):
    acks: List[Tuple[Name, int]]  # (originator, LSA seq)

    def encode(self) -> bytes:
        return struct.pack("!H", len(self.acks)) + b"".join(
            _name_bytes(n) + struct.pack("!Q", s) for n, s in self.acks)

    @classmethod
    def decode(cls, data: bytes) -> "AckBody":
        if len(data) < 2:
            raise DecodeError("bad_body", "ACK body too short")
        n, = struct.unpack_from("!H", data)
        i, acks = 2, []
        for _ in range(n):
            nm, i = _name_field(data, i)
            if i + 8 > len(data):
                raise DecodeError("bad_body", "ACK sequence runs past the body")
            acks.append((nm, struct.unpack_from("!Q", data, i)[0]))
            i += 8
        return cls(acks)


CONTROL = Name((b"_dmsc",))
HELLO_NAME = CONTROL.append("hello")
LSA_NAME = CONTROL.append("lsa")
ACK_NAME = CONTROL.append("ack")
LOCAL_NAME = CONTROL.append("local")


def ethernet_frame(dst_mac: bytes, src_mac: bytes, packet: bytes) -> bytes:
    """Wrap a packet in an Ethernet header, padded to the 60-byte minimum."""
    frame = dst_mac + src_mac + b"\x88\xb5" + packet
    return frame if len(frame) >= 60 else frame.ljust(60, b"\0")
