"""Scapy layers (forwarder/scapy_layers.py) against the struct codec.

The codec is the reference: whatever Scapy builds must be byte-identical to
`Packet.encode()`, and whatever Scapy dissects from codec bytes must show the
same values. Captures round-trip through wrpcap/rdpcap over Ethernet and UDP.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

pytest.importorskip("scapy", reason="scapy is not installed (make setup)")

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import NoPayload, Padding, Raw  # noqa: E402
from scapy.utils import rdpcap, wrpcap  # noqa: E402

from forwarder.dataplane.names import Name, fnv1a32, name  # noqa: E402
from forwarder.dataplane.scapy_layers import (  # noqa: E402
    DMSC,
    DMSCAck,
    DMSCAckEntry,
    DMSCEcho,
    DMSCHello,
    DMSCLsa,
    DMSCLsaAdjacency,
    DMSCLsaPrefix,
    DMSCNack,
    DMSCRegister,
    DMSCRegisterResult,
    DMSCTLV,
    DMSCTLVHopRecord,
    DMSCTLVPriority,
    DMSCTLVSpaAuthorization,
    DMSCTLVSpaSignature,
    DMSCTLVTraceContext,
)
from forwarder.dataplane.wire import (  # noqa: E402
    AckBody,
    DecodeError,
    EchoBody,
    HelloBody,
    HopRecord,
    LsaBody,
    LsaPrefix,
    NackBody,
    Packet,
    PacketType,
    RegisterBody,
    RegisterResult,
    TlvType,
    decode,
    ethernet_frame,
)

# ---------------------------------------------------------------------------
# Strategies (a compact copy of test_wire's: valid packets of every kind)
# ---------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2 ** 64 - 1)
component = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=10).map(str.encode),
    st.binary(min_size=1, max_size=63),
)
packet_names = st.lists(component, min_size=1, max_size=8).filter(
    lambda cs: sum(1 + len(c) for c in cs) <= 255).map(Name)
FIXED = {1: 24, 2: 1, 3: 25, 0x11: 80}
hop_records = st.builds(HopRecord, u32, u16, u16, u64, u32, u16)


def spa_authorization(prefix: Name, fill: int = 0) -> bytes:
    """An SPA authorization value (6.4) with dummy key material."""
    return (bytes((1,)) + (7).to_bytes(8, "big") + (100).to_bytes(8, "big")
            + (200).to_bytes(8, "big") + bytes((len(prefix.wire),)) + prefix.wire
            + bytes((fill,)) * 32 + bytes((fill + 1,)) * 8 + bytes((fill + 2,)) * 64)


@st.composite
def tlvs(draw: Callable) -> Tuple[int, bytes]:
    kind = draw(st.sampled_from(["hop", "fixed", "spa_auth", "unknown"]))
    critical = draw(st.booleans()) * 0x8000
    if kind == "hop":
        return (1 | critical, draw(hop_records).encode())
    if kind == "fixed":
        t = draw(st.sampled_from(sorted(FIXED)))
        return (t | critical, draw(st.binary(min_size=FIXED[t], max_size=FIXED[t])))
    if kind == "spa_auth":
        return (0x10 | critical, spa_authorization(draw(packet_names)))
    t = draw(st.integers(0, 0x7FFF).filter(lambda x: x not in {int(v) for v in TlvType}))
    return (t, draw(st.binary(max_size=40)))


@st.composite
def packets(draw: Callable) -> Packet:
    frag_count = draw(st.integers(1, 0xFFFF))
    return Packet(
        type=int(draw(st.sampled_from(list(PacketType)))),
        dst=draw(packet_names), src=draw(packet_names),
        payload=draw(st.binary(max_size=300)),
        flags=draw(st.integers(0, 255)), hop_limit=draw(st.integers(0, 255)),
        flow_id=draw(u32), seq=draw(u32),
        frag_index=draw(st.integers(0, frag_count - 1)), frag_count=frag_count,
        tlvs=draw(st.lists(tlvs(), max_size=32)),
    )


def scapy_of(p: Packet) -> DMSC:
    """The DMSC layer built field by field from a codec Packet."""
    layer = DMSC(type=p.type, flags=p.flags, hop_limit=p.hop_limit, flow_id=p.flow_id,
                 seq=p.seq, frag_index=p.frag_index, frag_count=p.frag_count,
                 dst=p.dst.text, src=p.src.text,
                 tlvs=[DMSCTLV(type=t, value=v) for t, v in p.tlvs])
    return layer / Raw(p.payload) if p.payload else layer


def assert_same(d: DMSC, p: Packet, data: bytes) -> None:
    """Every header field of the dissected layer equals the codec's view."""
    dw, sw = p.dst.wire, p.src.wire
    header_length = len(data) - len(p.payload)
    assert d.version == 1
    assert d.type == p.type
    assert int(d.flags) == p.flags
    assert d.hop_limit == p.hop_limit
    assert d.total_length == len(data)
    assert d.header_length == header_length
    assert (d.flow_id, d.seq) == (p.flow_id, p.seq)
    assert (d.frag_index, d.frag_count) == (p.frag_index, p.frag_count)
    assert d.dst_hash == fnv1a32(dw) and d.src_hash == fnv1a32(sw)
    assert (d.dst_len, d.src_len) == (len(dw), len(sw))
    assert (d.dst_ncomp, d.src_ncomp) == (len(p.dst), len(p.src))
    assert d.dst_bounds == p.dst.bounds() + [0] * (8 - len(p.dst))
    assert d.dst == p.dst.text and d.src == p.src.text
    assert name(d.dst) == p.dst and name(d.src) == p.src
    assert [(t.type, t.tlv_value()) for t in d.tlvs] == p.tlvs
    assert payload_bytes(d) == p.payload


def payload_bytes(d: DMSC) -> bytes:
    """The DMSC payload without any Ethernet padding that follows it."""
    if isinstance(d.payload, (NoPayload, Padding)):
        return b""
    return d.payload.do_build()


# ---------------------------------------------------------------------------
# Build and dissect against the codec
# ---------------------------------------------------------------------------

def test_minimal_build_equals_codec() -> None:
    built = bytes(DMSC(type=1, dst="/shop/cart", src="/node/a"))
    assert built == Packet(type=1, dst=name("/shop/cart"), src=name("/node/a")).encode()


def test_names_accept_text_name_objects_and_binary_form() -> None:
    a = bytes(DMSC(dst="/shop/cart", src="/node/a"))
    b = bytes(DMSC(dst=name("/shop/cart"), src=name("/node/a")))
    c = bytes(DMSC(dst=name("/shop/cart").wire, src=name("/node/a").wire))
    assert a == b == c
    d = DMSC(type="ECHO_REQUEST", dst="/shop/cart", src="/node/a")
    assert d.type == PacketType.ECHO_REQUEST


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_build_equals_codec_encode(p: Packet) -> None:
    assert bytes(scapy_of(p)) == p.encode()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_dissect_codec_bytes(p: Packet) -> None:
    data = p.encode()
    d = DMSC(data)
    assert_same(d, p, data)
    assert bytes(d) == data
    # Dissect, clear the computed fields, rebuild: post_build fills them again.
    d2 = DMSC(data)
    for f in ("total_length", "header_length", "dst_hash", "src_hash", "dst_len", "src_len",
              "dst_ncomp", "src_ncomp", "dst_bounds"):
        setattr(d2, f, None)
    for t in d2.tlvs:
        t.length = None
    assert bytes(d2) == data


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_dissected_bytes_decode_in_the_codec(p: Packet) -> None:
    assert decode(bytes(DMSC(p.encode()))) == p


# ---------------------------------------------------------------------------
# TLVs
# ---------------------------------------------------------------------------

@given(hop_records)
def test_hop_record_tlv(h: HopRecord) -> None:
    built = DMSCTLVHopRecord(node_hash=h.node_hash, in_face=h.in_face, out_face=h.out_face,
                             time_ns=h.time_ns, queue=h.queue, util_permille=h.util_permille)
    assert bytes(built) == b"\x00\x01\x00\x18" + h.encode()
    p = Packet(type=1, dst=name("/a"), src=name("/b"), tlvs=[(1, h.encode())])
    tl = DMSC(p.encode()).tlvs[0]
    assert isinstance(tl, DMSCTLVHopRecord)
    assert HopRecord(tl.node_hash, tl.in_face, tl.out_face, tl.time_ns, tl.queue,
                     tl.util_permille) == h
    assert tl.reserved == 0


def test_known_tlvs_are_decoded() -> None:
    trace = bytes(range(16)) + bytes(range(100, 108)) + b"\x01"
    sig = bytes((9,)) * 8 + (1234).to_bytes(8, "big") + bytes((7,)) * 64
    auth = spa_authorization(name("/shop"), fill=3)
    p = Packet(type=1, dst=name("/a"), src=name("/b"),
               tlvs=[(2, b"\x05"), (3, trace), (0x11, sig), (0x8010, auth), (0x10, b"short"),
                     (0x1234, b"opaque")])
    tl = DMSC(p.encode()).tlvs
    assert isinstance(tl[0], DMSCTLVPriority) and tl[0].priority == 5
    assert isinstance(tl[1], DMSCTLVTraceContext)
    assert (tl[1].trace_id, tl[1].parent_id, tl[1].trace_flags) == (trace[:16], trace[16:24], 1)
    assert isinstance(tl[2], DMSCTLVSpaSignature)
    assert (tl[2].key_id, tl[2].signing_time, tl[2].signature) == (sig[:8], 1234, sig[16:])
    assert isinstance(tl[3], DMSCTLVSpaAuthorization) and tl[3].type == 0x8010
    assert (tl[3].version, tl[3].serial, tl[3].not_before, tl[3].not_after) == (1, 7, 100, 200)
    assert tl[3].prefix == "/shop" and tl[3].public_key == bytes((3,)) * 32
    assert tl[3].authority_key_id == bytes((4,)) * 8
    assert tl[3].authority_signature == bytes((5,)) * 64
    # An SPA_AUTHORIZATION that does not parse, and unknown TLVs, stay opaque.
    assert type(tl[4]) is DMSCTLV and tl[4].value == b"short"
    assert type(tl[5]) is DMSCTLV and tl[5].value == b"opaque"
    assert [(t.type, t.tlv_value()) for t in tl] == p.tlvs


def test_decoded_tlv_layers_build_like_the_codec() -> None:
    trace = bytes(range(25))
    layer = DMSC(type=1, dst="/a", src="/b", tlvs=[
        DMSCTLVPriority(priority=7),
        DMSCTLVTraceContext(trace_id=trace[:16], parent_id=trace[16:24], trace_flags=trace[24]),
        DMSCTLVSpaAuthorization(serial=7, not_before=100, not_after=200, prefix="/shop",
                                public_key=b"\3" * 32, authority_key_id=b"\4" * 8,
                                authority_signature=b"\5" * 64),
        DMSCTLVSpaSignature(key_id=b"k" * 8, signing_time=9, signature=b"s" * 64),
    ])
    expected = Packet(type=1, dst=name("/a"), src=name("/b"), tlvs=[
        (2, b"\x07"), (3, trace), (0x10, spa_authorization(name("/shop"), fill=3)),
        (0x11, b"k" * 8 + (9).to_bytes(8, "big") + b"s" * 64)]).encode()
    assert bytes(layer) == expected


# ---------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------

def _codec(t: PacketType, body: bytes) -> bytes:
    return Packet(type=int(t), dst=name("/d/x"), src=name("/s"), payload=body,
                  flow_id=5, seq=6).encode()


@given(u64, u32, st.binary(max_size=40), st.sampled_from([PacketType.ECHO_REQUEST,
                                                           PacketType.ECHO_REPLY]))
def test_echo_body(t: int, i: int, pad: bytes, kind: PacketType) -> None:
    data = _codec(kind, EchoBody(t, i, pad).encode())
    echo = DMSC(data)[DMSCEcho]
    assert (echo.send_time_ns, echo.echo_id, echo.padding) == (t, i, pad)
    built = DMSC(type=int(kind), dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCEcho(
        send_time_ns=t, echo_id=i, padding=pad)
    assert bytes(built) == data


def test_echo_layer_sets_the_type() -> None:
    assert (DMSC(dst="/a", src="/b") / DMSCEcho()).type == PacketType.ECHO_REQUEST


@given(st.integers(1, 7), st.sampled_from(list(PacketType)), packet_names)
def test_nack_body(reason: int, t: int, dst: Name) -> None:
    data = _codec(PacketType.NACK, NackBody(reason, int(t), dst).encode())
    nack = DMSC(data)[DMSCNack]
    assert (nack.reason, nack.refused_type, nack.refused_dst) == (reason, t, dst.text)
    assert nack.refused_dst_len == len(dst.wire)
    built = DMSC(dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCNack(
        reason=reason, refused_type=int(t), refused_dst=dst.text)
    assert built.type == PacketType.NACK
    assert bytes(built) == data


def test_nack_reason_names() -> None:
    data = _codec(PacketType.NACK, NackBody(2, 1, name("/x")).encode())
    assert "HOP_LIMIT_EXCEEDED" in DMSC(data).show(dump=True)


@given(u16, u16, u16, st.integers(0, 1))
def test_hello_body(interval: int, dead: int, face: int, flags: int) -> None:
    data = _codec(PacketType.HELLO, HelloBody(interval, dead, face, flags).encode())
    hello = DMSC(data)[DMSCHello]
    assert (hello.interval_ms, hello.dead_ms, hello.face_id, int(hello.flags)) == \
        (interval, dead, face, flags)
    built = DMSC(dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCHello(
        interval_ms=interval, dead_ms=dead, face_id=face, flags=flags)
    assert bytes(built) == data


def test_register_and_result_bodies() -> None:
    reg = _codec(PacketType.REGISTER, RegisterBody(1, 10, b'{"http": "127.0.0.1:8080"}').encode())
    r = DMSC(reg)[DMSCRegister]
    assert (int(r.flags), r.cost, r.options) == (1, 10, b'{"http": "127.0.0.1:8080"}')
    assert bytes(DMSC(dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCRegister(
        flags="HTTP", cost=10, options=b'{"http": "127.0.0.1:8080"}')) == reg
    res = _codec(PacketType.REGISTER_RESULT, RegisterResult(3, "reserved name").encode())
    rr = DMSC(res)[DMSCRegisterResult]
    assert (rr.status, rr.message) == (3, b"reserved name")
    assert bytes(DMSC(dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCRegisterResult(
        status=3, message=b"reserved name")) == res


lsa_prefixes = st.builds(LsaPrefix, packet_names, u16, u16, st.binary(max_size=50))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(u64, u16, st.integers(0, 1), st.lists(st.tuples(packet_names, u16), max_size=4),
       st.lists(lsa_prefixes, max_size=4))
def test_lsa_body(seq: int, age: int, flags: int, adj: List[Tuple[Name, int]],
                  pfx: List[LsaPrefix]) -> None:
    data = _codec(PacketType.LSA, LsaBody(seq, age, flags, adj, pfx).encode())
    lsa = DMSC(data)[DMSCLsa]
    assert (lsa.lsa_seq, lsa.age_s, int(lsa.flags)) == (seq, age, flags)
    assert (lsa.n_adjacencies, lsa.n_prefixes) == (len(adj), len(pfx))
    assert [(a.neighbour, a.cost) for a in lsa.adjacencies] == [(n.text, c) for n, c in adj]
    assert [(q.prefix, q.cost, q.flags, q.authorization) for q in lsa.prefixes] == \
        [(q.prefix.text, q.cost, q.flags, q.authorization) for q in pfx]
    built = DMSC(dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCLsa(
        lsa_seq=seq, age_s=age, flags=flags,
        adjacencies=[DMSCLsaAdjacency(cost=c, neighbour=n.text) for n, c in adj],
        prefixes=[DMSCLsaPrefix(cost=q.cost, flags=q.flags, prefix=q.prefix,
                                authorization=q.authorization) for q in pfx])
    assert bytes(built) == data


@given(st.lists(st.tuples(packet_names, u64), max_size=6))
def test_ack_body(acks: List[Tuple[Name, int]]) -> None:
    data = _codec(PacketType.ACK, AckBody(acks).encode())
    ack = DMSC(data)[DMSCAck]
    assert ack.count == len(acks)
    assert [(e.originator, e.lsa_seq) for e in ack.acks] == [(n.text, s) for n, s in acks]
    built = DMSC(dst="/d/x", src="/s", flow_id=5, seq=6) / DMSCAck(
        acks=[DMSCAckEntry(originator=n, lsa_seq=s) for n, s in acks])
    assert bytes(built) == data


@pytest.mark.parametrize("t", [PacketType.REQUEST, PacketType.DATA, PacketType.UNREGISTER,
                               PacketType.ATTACH])
def test_other_types_carry_raw_payload(t: PacketType) -> None:
    d = DMSC(_codec(t, b"application bytes"))
    assert isinstance(d.payload, Raw) and d.payload.load == b"application bytes"


def test_short_body_falls_back_to_raw() -> None:
    d = DMSC(_codec(PacketType.ECHO_REQUEST, b"short"))
    assert isinstance(d.payload, Raw) and bytes(d.payload) == b"short"


# ---------------------------------------------------------------------------
# Captures: Ethernet and UDP, through wrpcap/rdpcap
# ---------------------------------------------------------------------------

# Explicit addresses, so Scapy does not try to resolve a next hop.
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _sample_packets() -> List[Packet]:
    return [
        Packet(type=1, dst=name("/shop/cart"), src=name("/node/e1/_app/3"), payload=b"GET",
               flags=1, hop_limit=7, flow_id=1234, seq=99,
               tlvs=[(1, HopRecord(0xDEADBEEF, 2, 0xFFFF, 1_700_000_000_123_456_789, 5, 6)
                      .encode()), (2, b"\x05"), (0x77, b"abc")]),
        Packet(type=3, dst=name("/x"), src=name("/y"), payload=EchoBody(1, 42, b"pad").encode()),
        Packet(type=5, dst=name("/node/e1/_app/3"), src=name("/node/r1"),
               payload=NackBody(1, 1, name("/shop/cart")).encode(), flow_id=1234, seq=99),
        Packet(type=0x10, dst=name("/_dmsc/hello"), src=name("/node/r1"), hop_limit=1,
               payload=HelloBody(1000, 4000, 3, 1).encode()),
        Packet(type=1, dst=name("/a"), src=name("/b")),   # 44 bytes: padded over Ethernet
    ]


def test_ethernet_pcap_round_trip(tmp_path: Path) -> None:
    pkts = _sample_packets()
    frames = [Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / DMSC(p.encode())
              for p in pkts]
    frames.append(Ether(ethernet_frame(b"\x02" * 6, b"\x04" * 6, pkts[-1].encode())))
    path = tmp_path / "eth.pcap"
    wrpcap(str(path), frames)
    back = rdpcap(str(path))
    assert len(back) == len(frames)
    for frame, p in zip(back, pkts + [pkts[-1]]):
        assert frame[Ether].type == 0x88B5
        assert frame.haslayer(DMSC)
        data = p.encode()
        assert_same(frame[DMSC], p, data)
        assert bytes(frame[DMSC])[:len(data)] == data
    # The padded 60-byte frame: the 14 + 44 bytes, then Ethernet padding.
    assert len(back[-1]) == 60 and back[-1].haslayer(Padding)
    assert bytes(back[-1][Padding]) == b"\0\0"


@pytest.mark.parametrize("sport, dport", [(6464, 6464), (40000, 6464), (6464, 40000)])
def test_udp_pcap_round_trip(tmp_path: Path, sport: int, dport: int) -> None:
    pkts = _sample_packets()
    frames = [Ether(dst=MAC_A, src=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=dport)
              / Raw(p.encode()) for p in pkts]
    path = tmp_path / "udp.pcap"
    wrpcap(str(path), frames)
    for frame, p in zip(rdpcap(str(path)), pkts):
        assert frame.haslayer(DMSC), frame.summary()
        assert_same(frame[DMSC], p, p.encode())
        assert bytes(frame[UDP].payload) == p.encode()


def test_building_over_udp_and_ethernet_sets_the_bindings() -> None:
    layer = DMSC(dst="/a", src="/b")
    udp = IP() / UDP() / layer
    assert udp[UDP].sport == 6464 and udp[UDP].dport == 6464
    assert (Ether() / layer).type == 0x88B5
    again = Ether(bytes(Ether(dst=MAC_A, src=MAC_B) / IP() / UDP() / layer))
    assert again[DMSC].dst == "/a"


def test_other_udp_ports_are_not_dmsc() -> None:
    data = Packet(type=1, dst=name("/a"), src=name("/b")).encode()
    frame = Ether(bytes(Ether(dst=MAC_A, src=MAC_B) / IP() / UDP(sport=5000, dport=5001) / Raw(data)))
    assert not frame.haslayer(DMSC)


# ---------------------------------------------------------------------------
# show() and malformed packets
# ---------------------------------------------------------------------------

HEADER_FIELDS = ["version", "type", "flags", "hop_limit", "total_length", "header_length",
                 "flow_id", "seq", "frag_index", "frag_count", "dst_hash", "src_hash",
                 "dst_len", "src_len", "dst_ncomp", "src_ncomp", "dst_bounds", "dst", "src",
                 "tlvs"]


def test_layer_has_every_spec_field() -> None:
    assert [f.name for f in DMSC.fields_desc] == HEADER_FIELDS


@pytest.mark.parametrize("method", ["show", "show2"])
def test_show_prints_every_field(method: str) -> None:
    p = _sample_packets()[0]
    frame = Ether() / DMSC(p.encode())
    out = getattr(frame, method)(dump=True)
    for field in HEADER_FIELDS:
        assert field in out, field
    for field in ("node_hash", "in_face", "out_face", "time_ns", "queue", "util_permille",
                  "priority", "value"):
        assert field in out, field
    assert "/shop/cart" in out and "/node/e1/_app/3" in out
    assert "REQUEST" in out and "TELEMETRY" in out and "HOP_RECORD" in out
    assert "[5, 10, 0, 0, 0, 0, 0, 0]" in out


@pytest.mark.parametrize("p, body_fields", [
    (_sample_packets()[1], ["send_time_ns", "echo_id", "padding"]),
    (_sample_packets()[2], ["reason", "refused_type", "refused_dst_len", "refused_dst",
                            "NO_ROUTE"]),
    (_sample_packets()[3], ["interval_ms", "dead_ms", "face_id", "TWO_WAY"]),
])
def test_show_prints_body_fields(p: Packet, body_fields: List[str]) -> None:
    out = DMSC(p.encode()).show(dump=True)
    for field in HEADER_FIELDS + body_fields:
        assert field in out, field


def test_show_before_build_computes_fields() -> None:
    out = DMSC(type=1, dst="/shop/cart", src="/node/a").show2(dump=True)
    assert "dst_hash  = 0x%08x" % fnv1a32(name("/shop/cart").wire) in out


def test_malformed_names_are_shown_not_hidden() -> None:
    data = bytearray(Packet(type=1, dst=name("/shop/cart"), src=name("/b")).encode())
    data[40] = 0x30  # first component length now overruns the name
    d = DMSC(bytes(data))
    assert d.dst == bytes(data[40:50])
    assert "malformed name" in d.show(dump=True)
    assert bytes(d) == bytes(data)


@pytest.mark.parametrize("over, reason", [
    (dict(dst_hash=0), "bad_hash"),
    (dict(dst_bounds=[1, 2, 3, 0, 0, 0, 0, 0]), "bad_bounds"),
    (dict(dst_ncomp=3), "bad_name"),
    (dict(version=2), "bad_version"),
    (dict(frag_count=0), "bad_fragment"),
    (dict(header_length=20), "bad_length"),
    (dict(tlvs=[DMSCTLV(type=0x8077, value=b"")]), "bad_tlv"),
    (dict(tlvs=[DMSCTLV(type=1, value=b"x")]), "bad_tlv"),
])
def test_crafting_malformed_packets(over: Dict[str, Any], reason: str) -> None:
    fields: Dict[str, Any] = dict(type=1, dst="/shop/cart", src="/node/a")
    fields.update(over)
    with pytest.raises(DecodeError) as info:
        decode(bytes(DMSC(**fields)))
    assert info.value.reason == reason


def test_dissecting_mutated_frames_never_raises() -> None:
    rng = random.Random(6464)
    seeds = [p.encode() for p in _sample_packets()]
    eth_head = bytes(Ether(type=0x88B5))
    udp_head = bytes(Ether(dst=MAC_A, src=MAC_B) / IP() / UDP(sport=6464, dport=6464))
    for _ in range(3000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        b = b[:rng.randint(0, len(b))]
        for head in (eth_head, udp_head):
            frame = Ether(head + bytes(b))
            frame.show(dump=True)
            frame.summary()
            assert bytes(frame)[:len(head)] == head
