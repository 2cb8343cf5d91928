"""Unit tests of the Service Gateway's pod logic (forwarder.gateway): addresses,
IPv4 rewriting, connections, DNS, and the decisions for packets from and to pods.
Scapy checks what the gateway builds, independently of its own parser."""
from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from forwarder.dataplane import wire
from forwarder.dataplane.names import Name
from forwarder.dataplane.wire import NackBody, NackReason, Packet, PacketType
from forwarder.gateway import dns, inet
from forwarder.gateway.addresses import (VIP_NET, ServiceAddresses, client_name, parse_end,
                                         service_name)
from forwarder.gateway.conntrack import CLOSED_LINGER_S, TCP_IDLE_S, ConnTable
from forwarder.gateway.gateway import Dropped, Ignored, Inject, Pod, PodGateway, ToPod

N = Name.parse
POD_MAC, SG_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def tcp(src, dst, sport, dport, flags="S", seq=1000, ack=0, payload=b"") -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                            ack=ack) / payload)


def udp(src, dst, sport, dport, payload=b"q") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def frame(ip: bytes) -> bytes:
    return SG_MAC + POD_MAC + b"\x08\x00" + ip


# ------------------------------------------------------------------ addresses
def test_service_addresses_are_the_same_everywhere_and_inside_the_range():
    a, b = ServiceAddresses(), ServiceAddresses()
    prefixes = [N(f"/svc/s{i}") for i in range(300)]
    a.update(prefixes)
    b.update(list(reversed(prefixes)))
    assert a.items() == b.items() and len(a) == 300
    assert len({addr for _, addr in a.items()}) == 300
    import ipaddress
    assert all(ipaddress.IPv4Address(x) in VIP_NET for _, x in a.items())
    assert a.prefix_of(a.address_of(N("/svc/s7"))) == N("/svc/s7")
    assert not a.update(prefixes) and a.update(prefixes[:10])


def test_end_names_round_trip():
    c = client_name(N("/node/h1"), 3, inet.TCP, 40123)
    s = service_name(N("/shop/cart"), inet.UDP, 53)
    assert c == N("/node/h1/_pod/3/t40123") and s == N("/shop/cart/_l4/u53")
    assert parse_end(c) == (N("/node/h1/_pod/3"), inet.TCP, 40123)
    assert parse_end(s) == (N("/shop/cart"), inet.UDP, 53)
    assert parse_end(N("/shop/cart")) is None and parse_end(N("/shop/cart/_l4/x1")) is None


# ------------------------------------------------------------------ inet
def test_rewrite_keeps_checksums_valid():
    ip = tcp("10.200.1.2", "10.96.0.9", 40000, 80, "PA", payload=b"hello" * 100)
    out = inet.rewrite(ip, dst="10.200.2.5")
    assert inet.checksums_ok(out) and not inet.checksums_ok(out[:-1] + b"x")
    sc = IP(out)
    assert sc.dst == "10.200.2.5" and bytes(sc[TCP].payload) == b"hello" * 100
    del sc.chksum, sc[TCP].chksum
    assert bytes(IP(bytes(sc))) == out   # scapy computes the same checksums
    u = inet.rewrite(udp("10.200.1.2", "10.96.0.9", 5000, 53), src="10.96.0.1")
    assert inet.checksums_ok(u) and IP(u).src == "10.96.0.1"


def test_reset_and_icmp_are_what_a_stack_expects():
    syn = tcp("10.200.1.2", "10.96.0.9", 40000, 80, "S", seq=7)
    rst = IP(inet.tcp_reset(syn))
    assert (rst.src, rst.dst, rst[TCP].sport, rst[TCP].dport) == ("10.96.0.9", "10.200.1.2", 80, 40000)
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 8
    mid = tcp("10.200.1.2", "10.96.0.9", 40000, 80, "A", seq=100, ack=555)
    rst = IP(inet.tcp_reset(mid))
    assert rst[TCP].flags == "R" and rst[TCP].seq == 555
    assert inet.checksums_ok(bytes(rst))
    icmp = IP(inet.icmp_unreachable(syn, inet.HOST_UNREACHABLE, "169.254.1.1"))
    assert icmp.src == "169.254.1.1" and icmp.dst == "10.200.1.2"
    assert icmp[ICMP].type == 3 and icmp[ICMP].code == 1
    assert bytes(icmp[ICMP].payload)[:28] == syn[:28]


# ------------------------------------------------------------------ dns
def _query(name: str, qtype: int = dns.A) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def test_dns_answers_service_names_only():
    look = {"cart.shop.dmsc": "10.96.1.2"}.get
    r = dns.answer(dns.parse_query(_query("Cart.Shop.DMSC")), look)
    assert r[:2] == b"\x12\x34" and r[3] & 0x0F == dns.NOERROR and r[-4:] == socket.inet_aton("10.96.1.2")
    assert struct.unpack_from("!H", r, 6)[0] == 1
    r = dns.answer(dns.parse_query(_query("cart.shop.dmsc", dns.AAAA)), look)
    assert r[3] & 0x0F == dns.NOERROR and struct.unpack_from("!H", r, 6)[0] == 0
    assert dns.answer(dns.parse_query(_query("nope.shop.dmsc")), look)[3] & 0x0F == dns.NXDOMAIN
    assert dns.answer(dns.parse_query(_query("example.com")), look)[3] & 0x0F == dns.REFUSED
    assert dns.parse_query(b"\x00" * 5) is None


# ------------------------------------------------------------------ the gateway
@pytest.fixture
def gws():
    """A client SG (h1, pod 0 at 10.200.1.2) and a server SG (h2, pod 0 at 10.200.2.2)."""
    cli = PodGateway(N("/node/h1"))
    srv = PodGateway(N("/node/h2"))
    cli.add_pod(Pod(5, 0, "c", "10.200.1.2", POD_MAC, SG_MAC, 1372))
    srv.add_pod(Pod(7, 0, "s", "10.200.2.2", POD_MAC, SG_MAC, 1372))
    for g in (cli, srv):
        g.addresses.update([N("/shop/cart")])
    return cli, srv, cli.addresses.address_of(N("/shop/cart"))


def test_a_connection_carried_both_ways(gws):
    cli, srv, vip = gws
    syn = tcp("10.200.1.2", vip, 40000, 8080, "S")
    out = cli.from_pod(5, frame(syn), 1.0)
    assert isinstance(out, Inject) and out.face_id == 5
    pkt = wire.decode(out.packet)
    assert pkt.type == PacketType.IPV4 and pkt.payload == syn
    assert pkt.dst == N("/shop/cart/_l4/t8080") and pkt.src == N("/node/h1/_pod/0/t40000")
    # at the instance's SG: the destination rewritten to the pod, nothing else
    got = srv.to_pod(7, out.packet, 1.1)
    assert isinstance(got, ToPod) and got.frame[:12] == POD_MAC + SG_MAC
    ip = IP(got.frame[14:])
    assert (ip.src, ip.dst, ip[TCP].dport) == ("10.200.1.2", "10.200.2.2", 8080)
    assert inet.checksums_ok(got.frame[14:])
    # the pod answers its client: the source becomes the service address again
    synack = tcp("10.200.2.2", "10.200.1.2", 8080, 40000, "SA", seq=9, ack=1001)
    back = srv.from_pod(7, frame(synack), 1.2)
    assert isinstance(back, Inject)
    rp = wire.decode(back.packet)
    assert rp.dst == pkt.src and rp.src == pkt.dst and IP(rp.payload).src == vip
    # and the client's SG delivers it unchanged
    home = cli.to_pod(5, back.packet, 1.3)
    assert isinstance(home, ToPod) and home.frame[14:] == rp.payload
    assert len(cli.conns) == len(srv.conns) == 1


def test_refusals(gws):
    cli, srv, vip = gws
    # a packet whose source is not the pod's
    assert cli.from_pod(5, frame(tcp("10.200.1.99", vip, 1, 80)), 1.0) == Dropped("spoofed_source")
    # a service address nobody registered: ICMP host unreachable back to the pod
    out = cli.from_pod(5, frame(tcp("10.200.1.2", "10.96.0.77", 40001, 80)), 1.0)
    assert isinstance(out, ToPod) and IP(out.frame[14:])[ICMP].code == inet.HOST_UNREACHABLE
    # a segment of a connection nobody holds: a reset
    out = cli.from_pod(5, frame(tcp("10.200.1.2", vip, 40002, 80, "A", ack=5)), 1.0)
    assert isinstance(out, ToPod) and IP(out.frame[14:])[TCP].flags == "R"
    # not for the gateway: DNS to the SG, ARP
    assert cli.from_pod(5, frame(udp("10.200.1.2", "169.254.1.1", 5353, 53)), 1.0) == Ignored()
    assert cli.from_pod(5, SG_MAC + POD_MAC + b"\x08\x06" + bytes(28), 1.0) == Ignored()
    # at the server: an established segment for a connection it never saw is reset by name
    syn = cli.from_pod(5, frame(tcp("10.200.1.2", vip, 40003, 8080, "S")), 1.0)
    p = wire.decode(syn.packet)
    mid = Packet(PacketType.IPV4, p.dst, p.src, tcp("10.200.1.2", vip, 40003, 8080, "A", ack=3)).encode()
    out = srv.to_pod(7, mid, 2.0)
    assert isinstance(out, Inject)
    r = wire.decode(out.packet)
    assert r.dst == p.src and IP(r.payload)[TCP].flags == "R" and IP(r.payload).src == vip


def test_a_nack_becomes_an_icmp_error_the_pod_can_match(gws):
    cli, _, vip = gws
    syn = tcp("10.200.1.2", vip, 40010, 8080, "S", seq=4242)
    pkt = wire.decode(cli.from_pod(5, frame(syn), 1.0).packet)
    nack = Packet(PacketType.NACK, pkt.src, N("/node/r1"),
                  NackBody(int(NackReason.DENIED), PacketType.IPV4, pkt.dst).encode()).encode()
    out = cli.to_pod(5, nack, 1.1)
    icmp = IP(out.frame[14:])
    assert icmp[ICMP].code == inet.ADMIN_PROHIBITED
    quoted = IP(bytes(icmp[ICMP].payload))
    assert (quoted.src, quoted.dst) == ("10.200.1.2", vip)
    assert struct.unpack("!HHI", bytes(quoted.payload)[:8]) == (40010, 8080, 4242)


def test_connections_expire_when_idle_or_closed(gws):
    cli, _, vip = gws
    cli.from_pod(5, frame(tcp("10.200.1.2", vip, 1, 80, "S")), 0.0)
    cli.from_pod(5, frame(tcp("10.200.1.2", vip, 2, 80, "S")), 0.0)
    c2 = cli.conns.by_pod((inet.TCP, "10.200.1.2", 2, vip, 80))
    c2.saw(inet.TCP_RST, False, 40, 1.0)
    assert cli.conns.expire(1.0 + CLOSED_LINGER_S) == [c2]
    assert len(cli.conns) == 1 and not cli.conns.expire(TCP_IDLE_S - 1)
    assert len(cli.conns.expire(TCP_IDLE_S)) == 1 and len(cli.conns) == 0


def test_the_table_is_bounded():
    t = ConnTable(max_entries=10)
    g = PodGateway(N("/node/h1"), conns=t)
    g.add_pod(Pod(5, 0, "c", "10.200.1.2", POD_MAC, SG_MAC, 1372))
    g.addresses.update([N("/svc")])
    vip = g.addresses.address_of(N("/svc"))
    for port in range(1, 31):
        g.from_pod(5, frame(udp("10.200.1.2", vip, port, 53)), float(port))
    assert len(t) <= 10 and t.stats["evicted"] >= 20
    assert t.by_pod((inet.UDP, "10.200.1.2", 30, vip, 53)) is not None


def test_an_established_connection_that_lost_its_service_is_reset_at_its_next_segment(gws):
    """A NACK (no route / instance unreachable) for an established connection: the pod
    gets the ICMP error, which Linux keeps as a soft error on an established socket;
    its next segment is answered with a reset it accepts (seq = its own ack)."""
    cli, srv, vip = gws
    syn = cli.from_pod(5, frame(tcp("10.200.1.2", vip, 40020, 8080, "S", seq=10)), 1.0)
    pkt = wire.decode(syn.packet)
    synack = Packet(PacketType.IPV4, pkt.src, pkt.dst,
                    tcp(vip, "10.200.1.2", 8080, 40020, "SA", seq=500, ack=11)).encode()
    assert isinstance(cli.to_pod(5, synack, 1.1), ToPod)
    nack = Packet(PacketType.NACK, pkt.src, N("/node/r1"),
                  NackBody(int(NackReason.INSTANCE_UNREACHABLE), PacketType.IPV4, pkt.dst).encode()).encode()
    out = cli.to_pod(5, nack, 2.0)
    assert isinstance(out, ToPod) and IP(out.frame[14:])[ICMP].code == inet.HOST_UNREACHABLE
    assert out.conn.broken == "instance_unreachable"
    # the pod retransmits: a reset, from the service address, at the pod's own ack
    seg = tcp("10.200.1.2", vip, 40020, 8080, "PA", seq=11, ack=501, payload=b"GET")
    out = cli.from_pod(5, frame(seg), 2.3)
    assert isinstance(out, ToPod)
    rst = IP(out.frame[14:])
    assert (rst.src, rst.dst, rst[TCP].flags, rst[TCP].seq) == (vip, "10.200.1.2", "R", 501)
    assert cli.conns.by_pod((inet.TCP, "10.200.1.2", 40020, vip, 8080)).closed_at == 2.3
    # a connection still opening is not reset: its SYN gets the ICMP error, which is fatal
    syn2 = cli.from_pod(5, frame(tcp("10.200.1.2", vip, 40021, 8080, "S")), 3.0)
    p2 = wire.decode(syn2.packet)
    n2 = Packet(PacketType.NACK, p2.src, N("/node/r1"),
                NackBody(int(NackReason.NO_ROUTE), PacketType.IPV4, p2.dst).encode()).encode()
    assert cli.to_pod(5, n2, 3.1).conn.broken is None
