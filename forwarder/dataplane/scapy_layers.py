"""Scapy layers for DMSC (docs/protocol.md), for sniff(), rdpcap(), show() and tests.

The forwarder's data path never imports this module: it uses the struct codec in
:mod:`forwarder.wire`. These layers exist so that a capture can be read and
printed field by field, and so that packets (well formed or deliberately broken)
can be crafted by hand. Importing the module binds DMSC to EtherType 0x88B5 and
to UDP port 6464.

Names are kept internally in their binary form (so that malformed names can be
dissected and crafted too) and shown in canonical text form; assigning a text
name, a :class:`~forwarder.names.Name` or binary-form bytes all work::

    >>> from forwarder import wire
    >>> from forwarder.names import name
    >>> data = wire.Packet(wire.PacketType.REQUEST, name("/shop/cart"), name("/node/a")).encode()
    >>> bytes(DMSC(type="REQUEST", dst="/shop/cart", src="/node/a")) == data
    True
    >>> DMSC(data).dst
    '/shop/cart'

A frame too short for the 40-byte fixed header is left as Raw by the layer
below (Ether or UDP), as Scapy does for any truncated header.

Every length, hash, component count and boundary table left as ``None`` is
filled in by ``post_build``; set any of them explicitly to craft a malformed
packet.
"""
from __future__ import annotations

import struct
from typing import Any, List, Optional, Tuple, Type, Union

from scapy.fields import (
    ByteEnumField,
    ByteField,
    Field,
    FieldLenField,
    FlagsField,
    IntField,
    LongField,
    PacketListField,
    ShortEnumField,
    ShortField,
    StrField,
    StrLenField,
    XByteField,
    XIntField,
    XStrFixedLenField,
    XStrLenField,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_bottom_up, bind_layers

from .names import InvalidName, Name, fnv1a32
from .wire import (
    DEFAULT_HOP_LIMIT,
    ETHERTYPE,
    HEADER_LEN,
    TLV_CRITICAL,
    TLV_SIZES,
    UDP_PORT,
    NackReason,
    PacketType,
    TlvType,
)

__all__ = [
    "DMSC", "DMSCTLV", "DMSCTLVHopRecord", "DMSCTLVPriority", "DMSCTLVTraceContext", "DMSCTLVInstance",
    "DMSCTLVSpaAuthorization", "DMSCTLVSpaSignature", "DMSCEcho", "DMSCNack",
    "DMSCHello", "DMSCRegister", "DMSCRegisterResult", "DMSCLsa", "DMSCLsaAdjacency",
    "DMSCLsaPrefix", "DMSCAck", "DMSCAckEntry", "TYPE_NAMES", "TLV_NAMES",
    "NACK_REASON_NAMES", "name_wire", "name_text",
]

TYPE_NAMES = {int(t): t.name for t in PacketType}
NACK_REASON_NAMES = {int(r): r.name for r in NackReason}
# Both plain and critical variants, so a critical known TLV still shows its name.
TLV_NAMES = {int(t): t.name for t in TlvType}
TLV_NAMES.update({int(t) | TLV_CRITICAL: t.name + "|CRITICAL" for t in TlvType})
REGISTER_STATUS_NAMES = {0: "ACCEPTED", 1: "UNAUTHORIZED", 2: "INVALID", 3: "RESERVED"}
NO_FACE = 0xFFFF
# Bit 0 is TELEMETRY; the others are reserved (sent as 0, ignored on receipt).
_HEADER_FLAGS = ["TELEMETRY"] + [f"RESERVED{i}" for i in range(1, 8)]


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------

def name_wire(value: Union[str, bytes, bytearray, Name, None]) -> bytes:
    """Binary form of a name given as text, Name or (already) binary form.

    Bytes are taken as the binary form verbatim, so that malformed names can be
    crafted; text is parsed strictly (InvalidName on error).
    """
    if value is None:
        return b""
    if isinstance(value, Name):
        return value.wire
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return Name.parse(value).wire


def name_text(wire: bytes) -> Optional[str]:
    """Canonical text of a binary-form name, or None if it is not a valid name."""
    try:
        return Name.from_wire(wire).text
    except InvalidName:
        return None


def _component_ends(wire: bytes) -> List[int]:
    """End offset of each component, best effort (stops at the first overrun)."""
    ends, i = [], 0
    while i < len(wire):
        i += 1 + wire[i]
        if i > len(wire):
            break
        ends.append(i)
    return ends


class DMSCNameField(StrLenField):
    """A name in binary form, shown (and settable) in canonical text form.

    `pkt.dst` returns the text ("/shop/cart"); a name that is not valid is
    returned as its raw bytes so that nothing is hidden.
    """

    def h2i(self, pkt: Optional[Packet], x: Any) -> bytes:
        return name_wire(x)

    def any2i(self, pkt: Optional[Packet], x: Any) -> bytes:
        return name_wire(x)

    def i2h(self, pkt: Optional[Packet], x: Any) -> Union[str, bytes]:
        if x is None:
            return x
        text = name_text(bytes(x))
        return text if text is not None else bytes(x)

    def i2repr(self, pkt: Optional[Packet], x: Any) -> str:
        if x is None:
            return repr(x)
        text = name_text(bytes(x))
        if text is None:
            return f"<malformed name {bytes(x).hex(' ')}>"
        return text


class DMSCBoundsField(Field[Optional[List[int]], bytes]):
    """The 8-byte dst_bounds table, held and shown as a list of 8 ints."""

    def __init__(self, name: str, default: Optional[List[int]]) -> None:
        Field.__init__(self, name, default, "8s")

    def i2m(self, pkt: Optional[Packet], x: Optional[List[int]]) -> bytes:
        if x is None:
            return b"\0" * 8
        return bytes(x)[:8].ljust(8, b"\0")

    def m2i(self, pkt: Optional[Packet], x: bytes) -> List[int]:
        return list(x)

    def any2i(self, pkt: Optional[Packet], x: Any) -> Optional[List[int]]:
        if x is None:
            return None
        return list(bytes(x) if isinstance(x, (bytes, bytearray)) else x)

    def i2repr(self, pkt: Optional[Packet], x: Optional[List[int]]) -> str:
        return repr(x)


class _Sub(Packet):
    """Base of the layers that are list elements: they never have a payload."""

    def extract_padding(self, s: bytes) -> Tuple[bytes, bytes]:
        return b"", s


# ---------------------------------------------------------------------------
# TLVs (section 6)
# ---------------------------------------------------------------------------

_TLV_CLASSES: dict = {}


class DMSCTLV(_Sub):
    """A TLV with an opaque value; known TLVs of the right size dissect as a subclass."""

    name = "DMSC TLV"
    fields_desc = [
        ShortEnumField("type", 0, TLV_NAMES),
        ShortField("length", None),
        XStrLenField("value", b"", length_from=lambda p: p.length),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: Optional[bytes] = None, *args: Any, **kargs: Any) -> Type[Packet]:
        """Pick the decoded layer when the type is known and the length fits it."""
        if _pkt is None or len(_pkt) < 4:
            return cls
        t, ln = struct.unpack("!HH", _pkt[:4])
        sub = _TLV_CLASSES.get(t & ~TLV_CRITICAL)
        if sub is None or len(_pkt) < 4 + ln or not sub.value_fits(_pkt[4:4 + ln]):
            return cls
        return sub

    @classmethod
    def value_fits(cls, value: bytes) -> bool:
        """Whether `value` is exactly one value of this TLV kind."""
        return True

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            pkt = pkt[:2] + struct.pack("!H", len(pkt) - 4) + pkt[4:]
        return pkt + pay

    def tlv_value(self) -> bytes:
        """The raw value bytes, whichever layer dissected this TLV."""
        return bytes(self)[4:]


def _fixed_tlv(tlv_type: TlvType):
    """Register a decoded TLV layer whose value has a fixed size."""
    size = TLV_SIZES[int(tlv_type)]

    def register(cls):
        cls.value_fits = classmethod(lambda c, value: len(value) == size)
        _TLV_CLASSES[int(tlv_type)] = cls
        return cls
    return register


@_fixed_tlv(TlvType.HOP_RECORD)
class DMSCTLVHopRecord(DMSCTLV):
    """HOP_RECORD (6.1): one forwarder's telemetry record."""

    name = "DMSC TLV HOP_RECORD"
    fields_desc = [
        ShortEnumField("type", int(TlvType.HOP_RECORD), TLV_NAMES),
        ShortField("length", None),
        XIntField("node_hash", 0),
        ShortField("in_face", 0),
        ShortEnumField("out_face", 0, {NO_FACE: "answered"}),
        LongField("time_ns", 0),
        IntField("queue", 0),
        ShortField("util_permille", 0),
        ShortField("reserved", 0),
    ]


@_fixed_tlv(TlvType.PRIORITY)
class DMSCTLVPriority(DMSCTLV):
    """PRIORITY (6.2): class 0 (best effort) .. 7 (critical)."""

    name = "DMSC TLV PRIORITY"
    fields_desc = [
        ShortEnumField("type", int(TlvType.PRIORITY), TLV_NAMES),
        ShortField("length", None),
        ByteEnumField("priority", 0, {0: "best_effort", 7: "critical"}),
    ]


@_fixed_tlv(TlvType.TRACE_CONTEXT)
class DMSCTLVTraceContext(DMSCTLV):
    """TRACE_CONTEXT (6.3): W3C trace-context ids, carried end to end."""

    name = "DMSC TLV TRACE_CONTEXT"
    fields_desc = [
        ShortEnumField("type", int(TlvType.TRACE_CONTEXT), TLV_NAMES),
        ShortField("length", None),
        XStrFixedLenField("trace_id", b"\0" * 16, 16),
        XStrFixedLenField("parent_id", b"\0" * 8, 8),
        XByteField("trace_flags", 0),
    ]


@_fixed_tlv(TlvType.INSTANCE)
class DMSCTLVInstance(DMSCTLV):
    """INSTANCE (6.5): the anycast instance an upstream node chose for the flow."""

    name = "DMSC TLV INSTANCE"
    fields_desc = [
        ShortEnumField("type", int(TlvType.INSTANCE), TLV_NAMES),
        ShortField("length", None),
        XIntField("instance_hash", 0),
    ]


@_fixed_tlv(TlvType.SPA_SIGNATURE)
class DMSCTLVSpaSignature(DMSCTLV):
    """SPA_SIGNATURE: key id, signing time, Ed25519 signature."""

    name = "DMSC TLV SPA_SIGNATURE"
    fields_desc = [
        ShortEnumField("type", int(TlvType.SPA_SIGNATURE), TLV_NAMES),
        ShortField("length", None),
        XStrFixedLenField("key_id", b"\0" * 8, 8),
        LongField("signing_time", 0),
        XStrFixedLenField("signature", b"\0" * 64, 64),
    ]


# Fixed part of an SPA authorization around the prefix (6.4).
_SPA_AUTH_BEFORE = 1 + 8 + 8 + 8 + 1
_SPA_AUTH_AFTER = 32 + 8 + 64


def _spa_auth_fields() -> list:
    return [
        ByteField("version", 1),
        LongField("serial", 0),
        LongField("not_before", 0),
        LongField("not_after", 0),
        FieldLenField("prefix_len", None, length_of="prefix", fmt="B"),
        DMSCNameField("prefix", b"", length_from=lambda p: p.prefix_len),
        XStrFixedLenField("public_key", b"\0" * 32, 32),
        XStrFixedLenField("authority_key_id", b"\0" * 8, 8),
        XStrFixedLenField("authority_signature", b"\0" * 64, 64),
    ]


class DMSCTLVSpaAuthorization(DMSCTLV):
    """SPA_AUTHORIZATION (6.4), variable size because of the prefix."""

    name = "DMSC TLV SPA_AUTHORIZATION"
    fields_desc = [
        ShortEnumField("type", int(TlvType.SPA_AUTHORIZATION), TLV_NAMES),
        ShortField("length", None),
    ] + _spa_auth_fields()

    @classmethod
    def value_fits(cls, value: bytes) -> bool:
        if len(value) < _SPA_AUTH_BEFORE:
            return False
        return len(value) == _SPA_AUTH_BEFORE + value[_SPA_AUTH_BEFORE - 1] + _SPA_AUTH_AFTER


_TLV_CLASSES[int(TlvType.SPA_AUTHORIZATION)] = DMSCTLVSpaAuthorization


# ---------------------------------------------------------------------------
# Fixed header (section 3)
# ---------------------------------------------------------------------------

def _tlv_area(p: "DMSC") -> int:
    return max(0, (p.header_length or 0) - HEADER_LEN - (p.dst_len or 0) - (p.src_len or 0))


class DMSC(Packet):
    """The DMSC fixed header, names and TLVs; the payload is the next layer."""

    name = "DMSC"
    fields_desc = [
        ByteField("version", 1),
        ByteEnumField("type", int(PacketType.REQUEST), TYPE_NAMES),
        FlagsField("flags", 0, 8, _HEADER_FLAGS),
        ByteField("hop_limit", DEFAULT_HOP_LIMIT),
        ShortField("total_length", None),
        ShortField("header_length", None),
        IntField("flow_id", 0),
        IntField("seq", 0),
        ShortField("frag_index", 0),
        ShortField("frag_count", 1),
        XIntField("dst_hash", None),
        XIntField("src_hash", None),
        ByteField("dst_len", None),
        ByteField("src_len", None),
        ByteField("dst_ncomp", None),
        ByteField("src_ncomp", None),
        DMSCBoundsField("dst_bounds", None),
        DMSCNameField("dst", b"", length_from=lambda p: p.dst_len),
        DMSCNameField("src", b"", length_from=lambda p: p.src_len),
        PacketListField("tlvs", [], DMSCTLV, length_from=_tlv_area),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        dw = self.getfieldval("dst") or b""
        sw = self.getfieldval("src") or b""
        head = bytearray(pkt)
        if self.total_length is None:
            struct.pack_into("!H", head, 4, (len(pkt) + len(pay)) & 0xFFFF)
        if self.header_length is None:
            struct.pack_into("!H", head, 6, len(pkt) & 0xFFFF)
        if self.dst_hash is None:
            struct.pack_into("!I", head, 20, fnv1a32(dw))
        if self.src_hash is None:
            struct.pack_into("!I", head, 24, fnv1a32(sw))
        if self.dst_len is None:
            head[28] = len(dw) & 0xFF
        if self.src_len is None:
            head[29] = len(sw) & 0xFF
        if self.dst_ncomp is None:
            head[30] = len(_component_ends(dw)) & 0xFF
        if self.src_ncomp is None:
            head[31] = len(_component_ends(sw)) & 0xFF
        if self.dst_bounds is None:
            ends = [e for e in _component_ends(dw) if e <= 255][:8]
            head[32:40] = bytes(ends).ljust(8, b"\0")
        return bytes(head) + pay

    def extract_padding(self, s: bytes) -> Tuple[bytes, bytes]:
        """The payload ends at total_length; later bytes are Ethernet padding."""
        if self.total_length is None or self.header_length is None:
            return s, b""
        n = max(0, self.total_length - self.header_length)
        return s[:n], s[n:]

    def mysummary(self) -> str:
        return self.sprintf("DMSC %type% %dst% <- %src%")

    def hashret(self) -> bytes:
        return struct.pack("!II", self.flow_id, self.seq)

    def answers(self, other: Packet) -> int:
        return int(isinstance(other, DMSC) and other.flow_id == self.flow_id
                   and other.seq == self.seq and other.dst == self.src)


# ---------------------------------------------------------------------------
# Bodies (section 4 and 7)
# ---------------------------------------------------------------------------

class DMSCEcho(Packet):
    """Echo body (4.1), of ECHO_REQUEST and ECHO_REPLY."""

    name = "DMSC echo"
    fields_desc = [
        LongField("send_time_ns", 0),
        IntField("echo_id", 0),
        StrField("padding", b""),
    ]


class DMSCNack(Packet):
    """NACK body (4.2)."""

    name = "DMSC NACK"
    fields_desc = [
        ByteEnumField("reason", int(NackReason.NO_ROUTE), NACK_REASON_NAMES),
        ByteEnumField("refused_type", int(PacketType.REQUEST), TYPE_NAMES),
        FieldLenField("refused_dst_len", None, length_of="refused_dst", fmt="B"),
        DMSCNameField("refused_dst", b"", length_from=lambda p: p.refused_dst_len),
    ]


class DMSCHello(Packet):
    """Hello body (4.3)."""

    name = "DMSC hello"
    fields_desc = [
        ShortField("interval_ms", 0),
        ShortField("dead_ms", 0),
        ShortField("face_id", 0),
        FlagsField("flags", 0, 16, ["TWO_WAY"]),
    ]


class DMSCRegister(Packet):
    """REGISTER payload (7): flags, cost, optional JSON options."""

    name = "DMSC register"
    fields_desc = [
        FlagsField("flags", 0, 16, ["HTTP"]),
        ShortField("cost", 0),
        StrField("options", b""),
    ]


class DMSCRegisterResult(Packet):
    """REGISTER_RESULT payload (7): status then a UTF-8 message."""

    name = "DMSC register result"
    fields_desc = [
        ByteEnumField("status", 0, REGISTER_STATUS_NAMES),
        StrField("message", b""),
    ]


class DMSCLsaAdjacency(_Sub):
    """One adjacency of an LSA: cost, neighbour name."""

    name = "DMSC LSA adjacency"
    fields_desc = [
        ShortField("cost", 0),
        FieldLenField("name_len", None, length_of="neighbour", fmt="B"),
        DMSCNameField("neighbour", b"", length_from=lambda p: p.name_len),
    ]


class DMSCLsaPrefix(_Sub):
    """One advertised prefix of an LSA, with its SPA authorization bytes."""

    name = "DMSC LSA prefix"
    fields_desc = [
        ShortField("cost", 0),
        ShortField("flags", 0),
        FieldLenField("name_len", None, length_of="prefix", fmt="B"),
        DMSCNameField("prefix", b"", length_from=lambda p: p.name_len),
        FieldLenField("auth_len", None, length_of="authorization", fmt="H"),
        XStrLenField("authorization", b"", length_from=lambda p: p.auth_len),
    ]


class DMSCLsa(Packet):
    """Link-state advertisement body (4.4)."""

    name = "DMSC LSA"
    fields_desc = [
        LongField("lsa_seq", 0),
        ShortField("age_s", 0),
        FlagsField("flags", 0, 16, ["FLUSH"]),
        FieldLenField("n_adjacencies", None, count_of="adjacencies", fmt="H"),
        FieldLenField("n_prefixes", None, count_of="prefixes", fmt="H"),
        PacketListField("adjacencies", [], DMSCLsaAdjacency,
                        count_from=lambda p: p.n_adjacencies),
        PacketListField("prefixes", [], DMSCLsaPrefix, count_from=lambda p: p.n_prefixes),
    ]


class DMSCAckEntry(_Sub):
    """One acknowledged LSA: originator and LSA sequence number."""

    name = "DMSC ACK entry"
    fields_desc = [
        FieldLenField("name_len", None, length_of="originator", fmt="B"),
        DMSCNameField("originator", b"", length_from=lambda p: p.name_len),
        LongField("lsa_seq", 0),
    ]


class DMSCAck(Packet):
    """Acknowledgement body (4.5)."""

    name = "DMSC ACK"
    fields_desc = [
        FieldLenField("count", None, count_of="acks", fmt="H"),
        PacketListField("acks", [], DMSCAckEntry, count_from=lambda p: p.count),
    ]


# ---------------------------------------------------------------------------
# Bindings
# ---------------------------------------------------------------------------

bind_layers(Ether, DMSC, type=ETHERTYPE)
bind_bottom_up(UDP, DMSC, dport=UDP_PORT)
bind_bottom_up(UDP, DMSC, sport=UDP_PORT)
bind_layers(UDP, DMSC, sport=UDP_PORT, dport=UDP_PORT)

# Building DMSC()/DMSCEcho() sets type=ECHO_REQUEST; a reply dissects the same way.
bind_layers(DMSC, DMSCEcho, type=int(PacketType.ECHO_REQUEST))
bind_bottom_up(DMSC, DMSCEcho, type=int(PacketType.ECHO_REPLY))
bind_layers(DMSC, DMSCNack, type=int(PacketType.NACK))
bind_layers(DMSC, IP, type=int(PacketType.IPV4))  # 4.6: the payload is one IPv4 packet
bind_layers(DMSC, DMSCHello, type=int(PacketType.HELLO))
bind_layers(DMSC, DMSCLsa, type=int(PacketType.LSA))
bind_layers(DMSC, DMSCAck, type=int(PacketType.ACK))
bind_layers(DMSC, DMSCRegister, type=int(PacketType.REGISTER))
bind_layers(DMSC, DMSCRegisterResult, type=int(PacketType.REGISTER_RESULT))
