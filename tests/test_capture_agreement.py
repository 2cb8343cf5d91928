"""A live capture of real forwarder traffic: the codec, Scapy and the Lua dissector agree.

tcpdump records the link between a router and a gateway while routing runs, an
application calls a service and pings with telemetry, and a pod fetches a page
from another pod by name (IPV4 packets, docs/protocol.md 4.6); every DMSC frame
in the capture is then decoded by forwarder.wire, dissected by the Scapy layers
and by `tshark -X lua_script:tools/dmsc.lua`, and the three must give the same
fields, down to the carried IPv4 packet's addresses and ports.
"""
from __future__ import annotations

import shutil
import signal
import xml.etree.ElementTree as ET

import pytest

import sys

from forwarder.dataplane import wire
from forwarder.apps.client import Client
from forwarder.gateway import inet
from topologies.fwd_net import ForwarderNet, intf_between, wait_for
from topologies.pods import pod_mtu

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("tcpdump") is None,
                                 reason="tshark and tcpdump are needed (make setup)")]

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

from forwarder.dataplane import scapy_layers  # noqa: E402,F401  (binds EtherType 0x88B5)
from test_lua_dissector import dissect  # noqa: E402


def test_codec_scapy_and_lua_agree_on_a_live_capture(netns_net):
    for n in ("a", "r", "b"):
        netns_net.add_node(n)
    netns_net.add_link("a", "r")
    netns_net.add_link("r", "b")
    cpod = netns_net.add_pod("a", "cli")
    spod = netns_net.add_pod("b", "web1", services=["/shop/web"])
    pods = {"a": [cpod.forwarder_config(pod_mtu(), lambda p: None)],
            "b": [spod.forwarder_config(pod_mtu(), lambda p: None)]}
    fn = ForwarderNet(netns_net)
    for n in ("a", "r", "b"):
        fn.add(n, routing={"enabled": True}, **({"roles": ["sr"]} if n == "r" else {"pods": pods[n]}))
    pcap = netns_net.run_dir / "r-b.pcap"
    r_if = intf_between(netns_net, "r", "b")
    dump = netns_net.node("r").popen(["tcpdump", "-i", r_if, "-U", "--immediate-mode", "-w", str(pcap),
                                      "ether", "proto", "0x88b5"], "tcpdump")
    wait_for(lambda: pcap.exists() and pcap.stat().st_size >= 24, 60, what="tcpdump to start")
    fn.start_all()
    with Client(fn["b"].app_socket) as server, Client(fn["a"].app_socket, timeout=2) as cli:
        server.serve("/shop/cart", lambda p, r: b"ok:" + p)
        def converged():
            fibs = [{e["prefix"] for e in fn[n].api("GET", "/fib")["entries"]} for n in ("a", "r", "b")]
            return all({"/node/a", "/node/r", "/node/b", "/shop/cart"} <= f for f in fibs)
        wait_for(converged, 60, what="routing to converge")
        assert cli.call("/shop/cart/items", b"hello") == b"ok:hello"
        assert cli.call("/shop/cart/items", b"hello", priority=5) == b"ok:hello"
        assert cli.ping("/shop/cart")["responder"] == "/node/b"
        try:
            cli.call("/shop/none", b"x", retries=0)
        except Exception:
            pass
    netns_net.pod_popen(spod, [sys.executable, "-m", "topologies.podprobe", "http", "--port", "80",
                               "--name", "web1", "--blob-mb", "0.01"], "http")
    wait_for(lambda: netns_net.pod_cmd(spod, ["curl", "-sf", "-m", "2", "http://127.0.0.1/who"],
                                       check=False).returncode == 0, 20, what="the pod's server")
    wait_for(lambda: "/shop/web" in (fn["a"].status()["gateway"] or {})["services"], 10,
             what="the service address")
    got = netns_net.pod_cmd(cpod, ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{size_download}",
                                   "http://web.shop.dmsc/blob"])
    assert int(got.stdout) == 10485
    want = {wire.PacketType.HELLO, wire.PacketType.LSA, wire.PacketType.REQUEST,
            wire.PacketType.DATA, wire.PacketType.ECHO_REQUEST, wire.PacketType.ECHO_REPLY,
            wire.PacketType.IPV4}

    def written():
        """The kinds tcpdump has written so far (-U: record by record)."""
        try:
            return {wire.decode(bytes(p)[14:]).type for p in rdpcap(str(pcap))}
        except Exception:  # a record half written
            return set()
    # tcpdump lags behind on a busy machine: stop it once it has written every kind
    wait_for(lambda: want <= written(), 60, interval=0.1, what="tcpdump to write the exchange")
    dump.send_signal(signal.SIGINT)
    dump.wait(30)

    frames = [bytes(p) for p in rdpcap(str(pcap))]
    decoded = [wire.decode(f[14:]) for f in frames]
    kinds = {p.type for p in decoded}
    assert want <= kinds
    assert any(t == wire.TlvType.HOP_RECORD for p in decoded for t, _ in p.tlvs)

    scapy_pkts = rdpcap(str(pcap))
    lua = dissect(pcap)
    assert len(scapy_pkts) == len(lua) == len(decoded)
    for p, sp, lp in zip(decoded, scapy_pkts, lua):
        d = sp[scapy_layers.DMSC]
        assert (d.type, d.hop_limit, d.flow_id, d.seq, d.flags) == (p.type, p.hop_limit, p.flow_id,
                                                                     p.seq, p.flags)
        assert (d.dst, d.src) == (p.dst.text, p.src.text)
        assert bytes(d)[:d.total_length] == p.encode()
        assert lp.int("dmsc.type") == p.type
        assert lp.show("dmsc.dst") == p.dst.text and lp.show("dmsc.src") == p.src.text
        assert lp.int("dmsc.hop_limit") == p.hop_limit
        assert lp.int("dmsc.flow_id") == p.flow_id and lp.int("dmsc.seq") == p.seq
        assert lp.int("dmsc.dst_hash") == p.dst.hash32
        assert len(lp.tlvs) == len(p.tlvs)
        assert not lp.has("dmsc.malformed")
        if p.type == wire.PacketType.IPV4:   # the carried packet, as each of them reads it
            inner = inet.parse(p.payload)
            ip = d[IP]
            assert (ip.src, ip.dst, ip.proto, ip.len) == (inner.src, inner.dst, inner.proto,
                                                          inner.total_length)
            assert (ip[TCP].sport, ip[TCP].dport) == (inner.sport, inner.dport)
            assert (lp.ip("ip.src"), lp.ip("ip.dst")) == (inner.src, inner.dst)
            assert int(lp.ip("tcp.srcport")) == inner.sport
