"""The Wireshark Lua dissector (tools/dmsc.lua) against the struct codec.

Captures are made from codec bytes with Scapy's wrpcap, dissected by
`tshark -X lua_script:tools/dmsc.lua -T pdml`, and every dissected value is
compared with what the codec put in. Malformed frames must not crash tshark and
must carry the same drop reason as `forwarder.wire.decode`.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections import Counter
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (Debian package tshark); "
                           "the Lua dissector cannot be exercised")

pytest.importorskip("scapy", reason="scapy is not installed (make setup)")

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from forwarder.dataplane.names import fnv1a32, name  # noqa: E402
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
    RegisterBody,
    RegisterResult,
    decode,
    ethernet_frame,
)

LUA = Path(__file__).resolve().parent.parent / "tools" / "dmsc.lua"
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def run_tshark(pcap: Path, *args: str) -> subprocess.CompletedProcess:
    """tshark with only our dissector added; fails the test on a Lua load error."""
    proc = subprocess.run(
        [TSHARK, "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stderr
    # tshark reports Lua syntax/runtime errors on stderr but still exits 0.
    for line in proc.stderr.splitlines():
        assert "lua" not in line.lower() and "error" not in line.lower(), proc.stderr
    return proc


class Dissected:
    """The DMSC part of one PDML <packet>: fields by name, TLV subtrees, experts."""

    def __init__(self, packet: ET.Element) -> None:
        self.root: Optional[ET.Element] = packet.find("proto[@name='dmsc']")
        self.fields: Dict[str, List[ET.Element]] = {}
        # what other dissectors made of the rest (the IPv4 packet an IPV4 packet carries)
        self.after: Dict[str, str] = {}
        seen = False
        for proto in packet.findall("proto"):
            if proto is self.root:
                seen = True
            elif seen:
                for f in proto.iter("field"):
                    self.after.setdefault(f.get("name", ""), f.get("show", ""))
        self.tlvs: List[Dict[str, ET.Element]] = []
        if self.root is None:
            return
        for f in self.root.iter("field"):
            self.fields.setdefault(f.get("name", ""), []).append(f)
        for sub in self.root.iter("proto"):
            if (sub.get("showname") or "").startswith("TLV "):
                self.tlvs.append({f.get("name", ""): f for f in sub.iter("field")})

    def show(self, field: str, index: int = 0) -> str:
        return self.fields[field][index].get("show", "")

    def int(self, field: str, index: int = 0) -> int:
        return int(self.show(field, index), 0)

    def has(self, field: str) -> bool:
        return field in self.fields

    def ip(self, field: str) -> str:
        """A field of what follows the DMSC header (ip.src, tcp.srcport...)."""
        return self.after[field]


def dissect(pcap: Path) -> List[Dissected]:
    out = run_tshark(pcap, "-T", "pdml").stdout
    return [Dissected(p) for p in ET.fromstring(out).iter("packet")]


def info_column(pcap: Path) -> List[str]:
    out = run_tshark(pcap, "-T", "fields", "-e", "_ws.col.Info").stdout
    return out.rstrip("\n").split("\n")


# ---------------------------------------------------------------------------
# Packets
# ---------------------------------------------------------------------------

HOP = HopRecord(0xDEADBEEF, 2, 0xFFFF, 1_700_000_000_123_456_789, 5, 6)
TRACE = bytes(range(16)) + bytes(range(0xA0, 0xA8)) + b"\x01"

REQUEST = Packet(type=1, dst=name("/shop/cart"), src=name("/node/e1/_app/3"),
                 payload=b"GET /items", flags=1, hop_limit=7, flow_id=0xCAFE1234, seq=99,
                 frag_index=1, frag_count=3,
                 tlvs=[(1, HOP.encode()), (2, b"\x05"), (0x0077, b"opaque"), (3, TRACE)])
ECHO = Packet(type=3, dst=name("/svc/echo"), src=name("/node/c1"), flow_id=17, seq=4,
              payload=EchoBody(1_700_000_000_987_654_321, 4242, b"padding").encode())
NACK = Packet(type=5, dst=name("/node/e1/_app/3"), src=name("/node/r1"), flow_id=0xCAFE1234,
              seq=99, payload=NackBody(2, 1, name("/shop/cart")).encode())
HELLO = Packet(type=0x10, dst=name("/_dmsc/hello"), src=name("/node/r1"), hop_limit=1,
               payload=HelloBody(1000, 4000, 3, 1).encode())
LSA = Packet(type=0x11, dst=name("/_dmsc/lsa"), src=name("/node/r1"),
             payload=LsaBody(77, 5, 0, [(name("/node/r2"), 10)],
                             [LsaPrefix(name("/shop"), 3, 0, b"AUTH")]).encode())
ACK = Packet(type=0x12, dst=name("/_dmsc/ack"), src=name("/node/r2"),
             payload=AckBody([(name("/node/r1"), 77)]).encode())
ESCAPED = Packet(type=2, dst=name("/a%20b/%00"), src=name("/x"), payload=b"")
SMALL = Packet(type=1, dst=name("/a"), src=name("/b"))        # 44 bytes, padded to 60

SIGNATURE = b"K" * 8 + (1_700_000_000).to_bytes(8, "big") + b"S" * 64


def spa_authorization(prefix: bytes) -> bytes:
    """An SPA authorization value (6.4) with dummy keys: 130 + L bytes."""
    return (b"\x01" + (7).to_bytes(8, "big") + (100).to_bytes(8, "big")
            + (200).to_bytes(8, "big") + bytes((len(prefix),)) + prefix
            + b"P" * 32 + b"I" * 8 + b"A" * 64)


SIGNED = Packet(type=1, dst=name("/shop"), src=name("/node/c1"),
                tlvs=[(0x10, spa_authorization(name("/shop").wire)), (0x8011, SIGNATURE)])

PACKETS = [REQUEST, ECHO, NACK, HELLO, LSA, ACK, ESCAPED, SMALL, SIGNED]


def eth(data: bytes):
    return Ether(dst=MAC_A, src=MAC_B, type=0x88B5) / Raw(data)


def udp(data: bytes, sport: int = 6464, dport: int = 6464):
    return (Ether(dst=MAC_A, src=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2")
            / UDP(sport=sport, dport=dport) / Raw(data))


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, List[Packet]]:
    """Each packet over Ethernet, then each over UDP 6464 (one of them on sport only)."""
    frames, expected = [], []
    for p in PACKETS:
        if p is SMALL:
            frames.append(Ether(ethernet_frame(b"\x02" * 6, b"\x04" * 6, p.encode())))
        else:
            frames.append(eth(p.encode()))
        expected.append(p)
    for i, p in enumerate(PACKETS):
        frames.append(udp(p.encode(), dport=6464 if i else 40000))
        expected.append(p)
    path = tmp_path_factory.mktemp("lua") / "dmsc.pcap"
    wrpcap(str(path), frames)
    return path, expected


# ---------------------------------------------------------------------------
# Well-formed packets
# ---------------------------------------------------------------------------

def test_header_fields_and_names(capture: Tuple[Path, List[Packet]]) -> None:
    path, expected = capture
    dissected = dissect(path)
    assert len(dissected) == len(expected)
    for d, p in zip(dissected, expected):
        data = p.encode()
        assert d.root is not None, "no dmsc layer"
        assert d.int("dmsc.version") == 1
        assert d.int("dmsc.type") == p.type
        assert d.int("dmsc.flags") == p.flags
        assert d.int("dmsc.hop_limit") == p.hop_limit
        assert d.int("dmsc.total_length") == len(data)
        assert d.int("dmsc.header_length") == len(data) - len(p.payload)
        assert d.int("dmsc.flow_id") == p.flow_id
        assert d.int("dmsc.seq") == p.seq
        assert d.int("dmsc.frag_index") == p.frag_index
        assert d.int("dmsc.frag_count") == p.frag_count
        assert d.int("dmsc.dst_hash") == fnv1a32(p.dst.wire) == p.dst.hash32
        assert d.int("dmsc.src_hash") == p.src.hash32
        assert d.int("dmsc.dst_len") == len(p.dst.wire)
        assert d.int("dmsc.src_len") == len(p.src.wire)
        assert d.int("dmsc.dst_ncomp") == len(p.dst)
        assert d.int("dmsc.src_ncomp") == len(p.src)
        assert bytes.fromhex(d.fields["dmsc.dst_bounds"][0].get("value", "")) == \
            bytes(p.dst.bounds()).ljust(8, b"\0")
        assert d.show("dmsc.dst") == p.dst.text
        assert d.show("dmsc.src") == p.src.text
        assert not d.has("dmsc.malformed")
        assert not d.has("_ws.expert"), d.fields.get("_ws.expert")


def test_tlvs(capture: Tuple[Path, List[Packet]]) -> None:
    path, _ = capture
    for d in (dissect(path)[0], dissect(path)[len(PACKETS)]):   # over Ethernet, over UDP
        assert [int(t["dmsc.tlv.type"].get("show", ""), 0) for t in d.tlvs] == \
            [t for t, _ in REQUEST.tlvs]
        assert [int(t["dmsc.tlv.length"].get("show", "")) for t in d.tlvs] == \
            [len(v) for _, v in REQUEST.tlvs]
        hop, prio, unknown, trace = d.tlvs

        def val(tree: Dict[str, ET.Element], f: str) -> int:
            return int(tree[f].get("show", ""), 0)
        assert val(hop, "dmsc.tlv.hop.node_hash") == HOP.node_hash
        assert val(hop, "dmsc.tlv.hop.in_face") == HOP.in_face
        assert val(hop, "dmsc.tlv.hop.out_face") == HOP.out_face
        assert val(hop, "dmsc.tlv.hop.time") == HOP.time_ns
        assert val(hop, "dmsc.tlv.hop.queue") == HOP.queue
        assert val(hop, "dmsc.tlv.hop.util") == HOP.util_permille
        assert val(prio, "dmsc.tlv.priority") == 5
        assert bytes.fromhex(unknown["dmsc.tlv.value"].get("value", "")) == b"opaque"
        assert bytes.fromhex(trace["dmsc.tlv.trace.trace_id"].get("value", "")) == TRACE[:16]
        assert bytes.fromhex(trace["dmsc.tlv.trace.parent_id"].get("value", "")) == TRACE[16:24]
        assert val(trace, "dmsc.tlv.trace.flags") == 1
        assert bytes.fromhex(d.fields["dmsc.payload"][0].get("value", "")) == REQUEST.payload


def test_spa_tlvs(capture: Tuple[Path, List[Packet]]) -> None:
    path, _ = capture
    d = dissect(path)[PACKETS.index(SIGNED)]
    auth, sig = d.tlvs
    assert int(auth["dmsc.tlv.type"].get("show", ""), 0) == 0x10
    assert int(auth["dmsc.tlv.spa_auth.serial"].get("show", "")) == 7
    assert int(auth["dmsc.tlv.spa_auth.not_after"].get("show", "")) == 200
    assert auth["dmsc.tlv.spa_auth.prefix"].get("show") == "/shop"
    assert bytes.fromhex(auth["dmsc.tlv.spa_auth.public_key"].get("value", "")) == b"P" * 32
    assert bytes.fromhex(auth["dmsc.tlv.spa_auth.signature"].get("value", "")) == b"A" * 64
    assert int(sig["dmsc.tlv.type"].get("show", ""), 0) == 0x8011
    assert sig["dmsc.tlv.critical"].get("show") == "1"
    assert int(sig["dmsc.tlv.spa_sig.time"].get("show", "")) == 1_700_000_000
    assert bytes.fromhex(sig["dmsc.tlv.spa_sig.key_id"].get("value", "")) == b"K" * 8


def test_bodies(capture: Tuple[Path, List[Packet]]) -> None:
    path, _ = capture
    d = dissect(path)
    echo, nack, hello, lsa, ack = d[1], d[2], d[3], d[4], d[5]
    body = EchoBody.decode(ECHO.payload)
    assert echo.int("dmsc.echo.send_time") == body.send_time_ns
    assert echo.int("dmsc.echo.id") == body.echo_id
    assert bytes.fromhex(echo.fields["dmsc.echo.padding"][0].get("value", "")) == b"padding"
    assert nack.int("dmsc.nack.reason") == 2
    assert "HOP_LIMIT_EXCEEDED" in nack.fields["dmsc.nack.reason"][0].get("showname", "")
    assert nack.int("dmsc.nack.refused_type") == 1
    assert nack.show("dmsc.nack.refused_dst") == "/shop/cart"
    assert hello.int("dmsc.hello.interval") == 1000
    assert hello.int("dmsc.hello.dead_interval") == 4000
    assert hello.int("dmsc.hello.face_id") == 3
    assert hello.int("dmsc.hello.flags") == 1
    assert lsa.int("dmsc.lsa.seq") == 77 and lsa.int("dmsc.lsa.age") == 5
    assert lsa.show("dmsc.lsa.adj.neighbour") == "/node/r2"
    assert lsa.int("dmsc.lsa.adj.cost") == 10
    assert lsa.show("dmsc.lsa.prefix.name") == "/shop"
    assert bytes.fromhex(lsa.fields["dmsc.lsa.prefix.authorization"][0].get("value", "")) \
        == b"AUTH"
    assert ack.show("dmsc.ack.originator") == "/node/r1" and ack.int("dmsc.ack.lsa_seq") == 77


def test_info_column(capture: Tuple[Path, List[Packet]]) -> None:
    path, _ = capture
    info = info_column(path)
    assert info[0].startswith("REQUEST /shop/cart -> from /node/e1/_app/3")
    assert info[1].startswith("ECHO_REQUEST /svc/echo -> from /node/c1")
    assert info[2].startswith("NACK /node/e1/_app/3 -> from /node/r1")
    assert "HOP_LIMIT_EXCEEDED" in info[2]
    assert info[3].startswith("HELLO /_dmsc/hello -> from /node/r1")
    assert info[6].startswith("DATA /a%20b/%00 -> from /x")
    assert info[len(PACKETS)].startswith("REQUEST /shop/cart -> from /node/e1/_app/3")


def test_display_filters(capture: Tuple[Path, List[Packet]]) -> None:
    path, _ = capture
    out = run_tshark(path, "-Y", 'dmsc.dst == "/shop/cart" && dmsc.tlv.priority == 5',
                     "-T", "fields", "-e", "frame.number").stdout.split()
    assert out == ["1", str(len(PACKETS) + 1)]
    out = run_tshark(path, "-Y", "dmsc.nack.reason == 2", "-T", "fields",
                     "-e", "frame.number").stdout.split()
    assert out == ["3", str(len(PACKETS) + 3)]


# ---------------------------------------------------------------------------
# Malformed frames
# ---------------------------------------------------------------------------

def _codec_reason(data: bytes) -> Optional[str]:
    try:
        decode(data)
    except DecodeError as exc:
        return exc.reason
    return None


def test_malformed_frames_get_expert_info(tmp_path: Path) -> None:
    good = REQUEST.encode()
    bad_hash = bytearray(good)
    bad_hash[20] ^= 0xFF
    bad_tlv = bytearray(good)
    # The third TLV (0x0077, after HOP_RECORD and PRIORITY) becomes unknown critical 0x8077.
    bad_tlv[40 + len(REQUEST.dst.wire) + len(REQUEST.src.wire) + 28 + 5] = 0x80
    cases = [
        (bytes(bad_hash), "bad_hash"),
        (b"\x01\x01\x00", "truncated"),
        (good[:60], "truncated"),
        (b"\x02" + good[1:], "bad_version"),
        (bytes(bad_tlv), "bad_tlv"),
        (bytes(range(256)) * 2, None),   # garbage: whatever the codec says
        (Packet(type=1, dst=name("/a"), src=name("/b"),
                tlvs=[(0x10, spa_authorization(b"\x01a")[:-1])]).encode(), "bad_tlv"),
    ]
    frames = [eth(data) for data, _ in cases] + [udp(data) for data, _ in cases]
    path = tmp_path / "malformed.pcap"
    wrpcap(str(path), frames)
    dissected = dissect(path)
    assert len(dissected) == len(frames)
    for d, (data, reason) in zip(dissected, cases + cases):
        assert reason is None or _codec_reason(data) == reason
        assert d.root is not None
        assert d.show("dmsc.malformed") == _codec_reason(data)
        assert d.has("dmsc.expert.malformed")
        assert not d.has("dmsc.expert.dissector_error")
    info = info_column(path)
    assert info[0].startswith("[Malformed: bad_hash] REQUEST /shop/cart")


def test_bad_body_is_flagged(tmp_path: Path) -> None:
    short_nack = Packet(type=5, dst=name("/a"), src=name("/b"), payload=b"\x01\x01")
    short_hello = Packet(type=0x10, dst=name("/_dmsc/hello"), src=name("/b"), payload=bytes(4))
    path = tmp_path / "body.pcap"
    wrpcap(str(path), [eth(short_nack.encode()), eth(short_hello.encode())])
    for d in dissect(path):
        assert d.show("dmsc.malformed") == "bad_body"
        assert d.has("dmsc.expert.bad_body")


BODY_DECODERS = {3: EchoBody.decode, 4: EchoBody.decode, 5: NackBody.decode,
                 0x10: HelloBody.decode, 0x11: LsaBody.decode, 0x12: AckBody.decode,
                 0x20: RegisterBody.decode, 0x22: RegisterResult.decode}


def _body_reason(p: Packet) -> Optional[str]:
    decoder = BODY_DECODERS.get(p.type)
    if decoder is None:
        return None
    try:
        decoder(p.payload)
    except DecodeError as exc:
        return exc.reason
    return None


def _mutations(rng: random.Random, count: int) -> List[bytes]:
    seeds = [p.encode() for p in PACKETS]
    out = []
    for _ in range(count):
        b = bytearray(rng.choice(seeds))
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            off, size = rng.choice([(4, 2), (6, 2), (18, 2), (28, 1), (29, 1), (30, 1),
                                    (31, 1), (33, 1), (0, 1), (1, 1)])
            b[off:off + size] = rng.getrandbits(8 * size).to_bytes(size, "big")
        elif op == 2:
            del b[rng.randint(1, len(b)):]
        else:
            if len(b) > 40:
                b[rng.randrange(40, len(b))] = rng.choice([0, 1, 63, 64, 0x80, 0xFF])
        out.append(bytes(b))
    return out


def test_fuzzed_frames_match_codec_reasons(tmp_path: Path) -> None:
    """tshark survives mutated frames and reports the codec's reason for each."""
    datas = _mutations(random.Random(0x88B5), 1500)
    frames = [eth(d) if i % 2 else udp(d) for i, d in enumerate(datas)]
    path = tmp_path / "fuzz.pcap"
    wrpcap(str(path), frames)
    dissected = dissect(path)
    assert len(dissected) == len(frames)
    seen: Counter = Counter()
    for i, (d, data) in enumerate(zip(dissected, datas)):
        assert d.root is not None, i
        assert not d.has("dmsc.expert.dissector_error"), (i, data.hex())
        reason = _codec_reason(data)
        if reason is None:
            # A valid packet; its body is checked as its consumer would.
            expected = _body_reason(decode(data))
            if expected is None:
                assert not d.has("dmsc.malformed"), (i, data.hex())
            else:
                assert d.show("dmsc.malformed") == expected, (i, data.hex())
            assert d.show("dmsc.dst") == decode(data).dst.text
            reason = expected
        else:
            assert d.show("dmsc.malformed") == reason, (i, data.hex())
        seen[reason] += 1
    print(f"\nlua fuzz reasons: {dict(seen)}")
    assert {"truncated", "bad_length", "bad_name", "bad_hash", "bad_tlv", "bad_body",
            None} <= set(seen)
