"""Helpers for the fast path tests: imports, skip rules, namespaces, frames."""
from __future__ import annotations

import json
import os
import struct
import subprocess
from typing import Dict, List, Optional

import pytest

from forwarder.dataplane import fastpath, names, wire  # noqa: F401 (the tests' imports)
from forwarder.dataplane.fastpath import build, kernel, layout, libbpf, pins  # noqa: F401
from topologies.nsenter import in_netns  # noqa: F401
from topologies.records import Records, new_run_dir

Name = names.Name
Packet = wire.Packet


# ------------------------------------------------------------------ skip rules
def why_not() -> Optional[str]:
    """None if the kernel tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (bpf(), tc, network namespaces)"
    ok, reason = kernel.available(str(build.object_path()))
    if not ok and "no BPF object" in reason:
        try:
            build.ensure_built()
        except build.BuildError as exc:
            return f"cannot build the BPF object: {exc}"
        ok, reason = kernel.available(str(build.object_path()))
    if not ok:
        return reason
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "ip netns unusable"
    return None


def require_kernel() -> None:
    reason = why_not()
    if reason:
        if os.environ.get("DMSC_NO_SKIP") == "1":
            pytest.fail(f"DMSC_NO_SKIP=1 but this test cannot run here: {reason}")
        pytest.skip(reason)


# ------------------------------------------------------------------ namespaces
def sh(*args: str, check: bool = True) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


class Namespaces:
    """Network namespaces and veth pairs this test made: recorded in a run folder
    before they exist (so `make clean` finds them after a crash), deleted by cleanup()."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"fpt{os.getpid()}{tag}"
        self.made: List[str] = []
        self.records = Records(new_run_dir(f"test-fastpath-{tag}"))
        self.records.owner()

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.records.netns(name)
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for key in ("all", "default"):  # no IPv6 chatter on our veths
            sh("ip", "netns", "exec", name, "sysctl", "-qw",
               f"net.ipv6.conf.{key}.disable_ipv6=1", check=False)
        return name

    def veth(self, ns1: str, if1: str, ns2: str, if2: str) -> None:
        """A veth pair if1@ns1 -- if2@ns2, both up (deleted with the namespaces)."""
        self.records.link(if1, ns1)
        self.records.link(if2, ns2)
        sh("ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2,
           "netns", ns2)
        sh("ip", "-n", ns1, "link", "set", if1, "up")
        sh("ip", "-n", ns2, "link", "set", if2, "up")

    def cleanup(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()
        self.records.done()


def link(ns: str, ifname: str) -> Dict:
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", ifname))[0]


def ifindex(ns: str, ifname: str) -> int:
    return int(link(ns, ifname)["ifindex"])


def mac(ns: str, ifname: str) -> bytes:
    return bytes.fromhex(link(ns, ifname)["address"].replace(":", ""))


# ------------------------------------------------------------------ packets
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


def packet(dst: str = "/svc/video", src: str = "/host/a", type_: int = 1, payload: bytes = b"",
           **kw) -> bytes:
    return Packet(type=type_, dst=Name.parse(dst), src=Name.parse(src), payload=payload,
                  **kw).encode()


def frame(pkt: bytes, pad_to: int = 60, ethertype: bytes = b"\x88\xb5") -> bytes:
    f = DST_MAC + SRC_MAC + ethertype + pkt
    return f.ljust(pad_to, b"\0")


def patch(pkt: bytes, offset: int, value: bytes) -> bytes:
    """The packet with bytes at `offset` replaced (offsets as in docs/protocol.md §3)."""
    b = bytearray(pkt)
    b[offset:offset + len(value)] = value
    return bytes(b)


# ------------------------------------------------------------------ IPv4 carried by name
def inet_csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: 0 when a checksummed block is right."""
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def addr(a) -> bytes:
    return layout.ipv4_bytes(a)


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + bytes([0, proto]) + length.to_bytes(2, "big")


def tcp_segment(src, dst, sport: int, dport: int, flags: int = 0x18, payload: bytes = b"",
                seq: int = 1, ack: int = 0) -> bytes:
    """A TCP header (20 bytes, no options) + payload with a correct checksum."""
    hdr = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0))
    seg = bytes(hdr) + payload
    c = inet_csum(_pseudo(addr(src), addr(dst), 6, len(seg)) + seg)
    hdr[16:18] = c.to_bytes(2, "big")
    return bytes(hdr) + payload


def udp_datagram(src, dst, sport: int, dport: int, payload: bytes = b"",
                 no_checksum: bool = False) -> bytes:
    """A UDP header + payload; checksum 0 (none) with `no_checksum`."""
    length = 8 + len(payload)
    hdr = bytearray(struct.pack("!HHHH", sport, dport, length, 0))
    if not no_checksum:
        c = inet_csum(_pseudo(addr(src), addr(dst), 17, length) + bytes(hdr) + payload)
        hdr[6:8] = (c or 0xFFFF).to_bytes(2, "big")
    return bytes(hdr) + payload


def ipv4_packet(src, dst, proto: int, body: bytes, *, frag: int = 0, ttl: int = 64,
                ident: int = 0x1234, options: bytes = b"", tot_len: Optional[int] = None,
                version: int = 4) -> bytes:
    """An IPv4 packet around `body` with a correct header checksum. `frag` is the
    flags + fragment offset field (0x2000: MF)."""
    ihl = 5 + len(options) // 4
    total = tot_len if tot_len is not None else ihl * 4 + len(body)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total, ident, frag, ttl,
                                proto, 0, addr(src), addr(dst)) + options)
    hdr[10:12] = inet_csum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + body


def tcp_packet(src, dst, sport: int, dport: int, flags: int = 0x18, payload: bytes = b"",
               **ip) -> bytes:
    return ipv4_packet(src, dst, 6, tcp_segment(src, dst, sport, dport, flags, payload), **ip)


def udp_packet(src, dst, sport: int, dport: int, payload: bytes = b"",
               no_checksum: bool = False, **ip) -> bytes:
    return ipv4_packet(src, dst, 17, udp_datagram(src, dst, sport, dport, payload, no_checksum),
                       **ip)


def checksums_ok(pkt: bytes) -> bool:
    """The IPv4 header checksum and the TCP/UDP checksum (pseudo-header) of `pkt` hold."""
    ihl = (pkt[0] & 0xF) * 4
    total = int.from_bytes(pkt[2:4], "big")
    if inet_csum(pkt[:ihl]) != 0:
        return False
    proto, src, dst, l4 = pkt[9], pkt[12:16], pkt[16:20], pkt[ihl:total]
    if proto == 17 and l4[6:8] == b"\0\0":
        return True                                    # UDP without a checksum
    if proto in (6, 17):
        return inet_csum(_pseudo(src, dst, proto, len(l4)) + l4) == 0
    return True


def eth_ipv4(ip_pkt: bytes, pad_to: int = 0, dst: bytes = DST_MAC, src: bytes = SRC_MAC,
             ethertype: bytes = b"\x08\x00") -> bytes:
    return (dst + src + ethertype + ip_pkt).ljust(pad_to, b"\0")


def dmsc_header(dst: str, src: str, **kw) -> bytes:
    """A DMSC header of type 6 (IPV4) for an fp_l4 entry: total_length left at
    header_length; the program writes the real one per packet."""
    return packet(dst=dst, src=src, type_=wire.PacketType.IPV4, payload=b"", **kw)


def with_total_length(header: bytes, total: int) -> bytes:
    return patch(header, 4, total.to_bytes(2, "big"))
