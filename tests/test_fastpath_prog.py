"""The tc fast path program on the real kernel: BPF_PROG_TEST_RUN on crafted frames,
and one end-to-end run through veths (a -- r -- b). No mocks.

Needs root, bpf() and ip netns; skipped with the reason otherwise (fails instead
with DMSC_NO_SKIP=1). Namespaces are named fpt<pid>..., pins live under
/run/dmsc/bpf/fpt<pid>-*; both are removed at the end.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Dict, List

import pytest

from fastpath_helpers import (DST_MAC, Namespaces, Name, addr, build, checksums_ok, dmsc_header,
                              eth_ipv4, frame, ifindex, in_netns, ipv4_packet, kernel, layout,
                              libbpf, mac, packet, patch, pins, require_kernel, sh,
                              tcp_packet, udp_packet, wire, with_total_length)

pytestmark = pytest.mark.netns

GEN = 7
FLOW_SLOT = 3
PRIORITY = 6
NEW_DST = bytes.fromhex("0a0000000b0b")
NEW_SRC = bytes.fromhex("0a0000000a0a")


# ------------------------------------------------------------------ fixtures
class Env:
    def __init__(self) -> None:
        self.nets = Namespaces("p")
        self.ns = ""
        self.fp = None
        self.mounted_root = False

    def setup(self) -> "Env":
        self.mounted_root = not pins.is_bpffs(pins.PIN_ROOT)
        self.ns = self.nets.add("t")
        self.nets.veth(self.ns, "in0", self.ns, "in0p")
        self.nets.veth(self.ns, "out0", self.ns, "out0p")
        self.nets.veth(self.ns, "pod0", self.ns, "pod0p")   # pod0: an SG's pod-facing veth
        self.in_if = ifindex(self.ns, "in0")
        self.out_if = ifindex(self.ns, "out0")
        self.pod_if = ifindex(self.ns, "pod0")
        self.stranger_if = ifindex(self.ns, "in0p")  # not a face
        # an ifindex the namespace had and no longer has (an out interface removed)
        self.nets.veth(self.ns, "gone0", self.ns, "gone0p")
        self.gone_if = ifindex(self.ns, "gone0")
        sh("ip", "-n", self.ns, "link", "del", "gone0")  # its peer with it
        self.downed: List[str] = []                  # links a test set down (fp restores)
        self.pin_dir = os.path.join(pins.PIN_ROOT, f"fpt{os.getpid()}-prog")
        self.fp = kernel.FastPath(self.pin_dir)      # default map sizes: the real object
        return self

    def teardown(self) -> None:
        try:
            if self.fp is not None:
                with in_netns(self.ns):
                    self.fp.close()
        finally:
            self.nets.cleanup()
            if self.mounted_root:
                pins.unmount_pin_root(pins.PIN_ROOT)

    def run(self, data: bytes, ifidx: int = 0) -> libbpf.TestRun:
        with in_netns(self.ns):
            return self.fp.test_run(data, ifidx or self.in_if)

    def run_pod(self, data: bytes, ifidx: int = 0, **ctx) -> libbpf.TestRun:
        """fp_pod_ingress on a frame from the pod behind pod0."""
        with in_netns(self.ns):
            return self.fp.test_run_pod(data, ifidx or self.pod_if, **ctx)

    def link_down(self, ifname: str) -> None:
        """Set a link of the test namespace down (the kernel's own state); the fp
        fixture sets it up again after the test."""
        self.downed.append(ifname)
        sh("ip", "-n", self.ns, "link", "set", ifname, "down")

    def value(self, **kw) -> bytes:
        args = dict(out_ifindex=self.out_if, flow_slot=FLOW_SLOT, gen=GEN, dst_mac=NEW_DST,
                    src_mac=NEW_SRC, mtu=1500, in_ifindex=self.in_if, priority=PRIORITY)
        args.update(kw)
        return layout.flow_value(**args)

    def install(self, pkt: bytes, **kw) -> None:
        self.fp.install(layout.flow_key(pkt), self.value(**kw))


@pytest.fixture(scope="module")
def env():
    require_kernel()
    e = Env()
    try:
        yield e.setup()
    finally:
        e.teardown()


@pytest.fixture
def fp(env):
    """A clean state for each test: no flows, no pods, generation GEN, zero counters;
    afterwards, every link the test set down is up again."""
    f = env.fp
    f.clear_flows()
    f.clear_l4()
    for ifidx in list(f.pods()):
        f.remove_pod(ifidx)
    f.set_generation(GEN)
    f.reset_verdicts()
    f.reset_flow_stats(range(32))
    try:
        yield f
    finally:
        while env.downed:
            sh("ip", "-n", env.ns, "link", "set", env.downed.pop(), "up")


def verdict_delta(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def no_hits_in_verdicts(v: Dict[str, int]) -> bool:
    """The kernel counts a hit in its flow's record only: the HANDLED verdicts read 0."""
    return all(v[k] == 0 for k in layout.HANDLED)


# ------------------------------------------------------------------ hits
def test_object_and_maps(env, fp):
    info = fp.prog_info()
    assert info.name == layout.PROG_NAME and info.type == 3  # BPF_PROG_TYPE_SCHED_CLS
    assert info.xlated_prog_len > 0 and info.verified_insns > 0
    pod = fp.pod_prog_info()
    assert pod.name == layout.POD_PROG_NAME and pod.type == 3 and pod.verified_insns > 0
    for name, (ks, vs, n, _percpu) in layout.MAPS.items():
        mi = libbpf.map_info(fp.fds[name])
        assert (mi.key_size, mi.value_size, mi.max_entries) == (ks, vs, n), name
        assert os.path.exists(os.path.join(env.pin_dir, name))


def test_hit_rewrites_and_redirects(env, fp):
    pkt = packet(dst="/s", src="/h", hop_limit=9, flow_id=77, seq=3)  # the smallest: 44 bytes
    total = len(pkt)
    assert 14 + total == 58
    env.install(pkt)
    data = frame(pkt, pad_to=120)                     # padded past the minimum
    r = env.run(data)
    assert r.retval == libbpf.TC_ACT_REDIRECT
    out = r.data
    assert len(out) == 60                             # max(60, 14 + total)
    assert out[0:6] == NEW_DST and out[6:12] == NEW_SRC and out[12:14] == b"\x88\xb5"
    assert out[14 + 3] == 8                           # hop limit - 1
    assert out[14:14 + total] == patch(pkt, 3, bytes([8]))
    assert out[14 + total:] == data[14 + total:60]    # the kept padding is the original's
    assert libbpf.skb_field(r.ctx, libbpf.SKB_OFF_PRIORITY) == PRIORITY
    decoded = wire.decode(out[14:])
    assert decoded.hop_limit == 8 and decoded.flow_id == 77 and decoded.seq == 3
    fs = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert (fs.packets, fs.bytes, fs.rx_bytes, fs.peer_packets) == (1, total, len(data) - 14, 0)
    v = fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0


@pytest.mark.parametrize("dst,payload,pad_to,expect_len", [
    ("/svc/video", b"x" * 300, 14 + 57 + 300 + 30, 14 + 357),  # trailing bytes: trimmed to 14+total
    ("/svc/video", b"x" * 300, 0, 14 + 357),                   # exactly 14 + total: unchanged
    ("/s", b"", 0, 58),                                        # under 60, unpadded: not extended
    ("/s", b"", 60, 60),                                       # padded to exactly 60: unchanged
    ("/s", b"", 61, 60),                                       # one byte more: trimmed to 60
    ("/svc/video", b"", 1514, 14 + 57),                        # padded to a full MTU frame
])
def test_hit_lengths(env, fp, dst, payload, pad_to, expect_len):
    pkt = packet(dst=dst, src="/h" if dst == "/s" else "/host/a", payload=payload)
    env.install(pkt)
    data = frame(pkt, pad_to=pad_to)
    r = env.run(data)
    assert r.retval == libbpf.TC_ACT_REDIRECT
    assert len(r.data) == expect_len
    assert r.data[14:14 + len(pkt)] == patch(pkt, 3, bytes([pkt[3] - 1]))


def test_counters_after_n_frames(env, fp):
    n = 7
    pkt = packet(payload=b"z" * 100)
    total = len(pkt)
    env.install(pkt)
    data = frame(pkt, pad_to=14 + total + 10)        # 10 bytes of padding: counted in rx
    t0 = time.monotonic_ns()
    for _ in range(n):
        assert env.run(data).retval == libbpf.TC_ACT_REDIRECT
    t1 = time.monotonic_ns()
    fs = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    # sent: total_length; received: the frame past Ethernet, padding included
    assert fs == layout.FlowStats(n, n * total, n * (len(data) - 14), fs.last_ns, 0, 0)
    assert t0 <= fs.last_ns <= t1                    # bpf_ktime_get_ns is CLOCK_MONOTONIC
    v = fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0   # a hit counts in its flow only
    # repeat= runs the program 50 times on the same skb in one syscall: each run
    # rewrites it again (hop limit 255 -> 205), and the counters follow
    with in_netns(env.ns):
        r = libbpf.test_run(fp.prog_fd, patch(data, 14 + 3, b"\xff"),
                            libbpf.skb_ctx(ifindex=env.in_if), repeat=50)
    assert r.retval == libbpf.TC_ACT_REDIRECT and r.data[14 + 3] == 205
    fs = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert (fs.packets, fs.bytes) == (n + 50, (n + 50) * total)


def test_key_with_tlvs_and_at_the_limit(env, fp):
    # the key is [20, header_length): TLVs are part of it
    with_tlv = packet(tlvs=[(wire.TlvType.PRIORITY, b"\x03")], payload=b"q")
    env.install(with_tlv)
    assert env.run(frame(with_tlv)).retval == libbpf.TC_ACT_REDIRECT
    # same names, no TLV: a different key (what Python's fast path also refuses)
    r = env.run(frame(packet(payload=b"q")))
    assert r.retval == libbpf.TC_ACT_OK
    # header_length - 20 == 256 exactly: handled; 257: passed up as key_too_long
    dst = "/" + "/".join(c * 63 for c in "abc")      # 3 x 64 = 192 bytes
    at_limit = packet(dst=dst, src="/" + "s" * 43)   # + 44 = 236 -> header 276, key 256
    assert layout.flow_key(at_limit) is not None and len(layout.key_block(layout.flow_key(at_limit))) == 256
    env.install(at_limit, flow_slot=4)
    assert env.run(frame(at_limit)).retval == libbpf.TC_ACT_REDIRECT
    over = packet(dst=dst, src="/" + "s" * 44)       # key 257
    assert layout.flow_key(over) is None
    before = fp.read_verdicts()
    r = env.run(frame(over))
    assert r.retval == libbpf.TC_ACT_OK and r.data == frame(over)
    assert verdict_delta(before, fp.read_verdicts()) == {"key_too_long": 1}


@pytest.mark.parametrize("klen", [layout.FP_KEY_SHORT, layout.FP_KEY_SHORT + 1])
def test_short_and_long_keys_each_in_their_map(env, fp, klen):
    """A block of at most FP_KEY_SHORT bytes is looked up in fp_flows_short, a longer one
    in fp_flows: either way a hit, and the entry where the program looks for it."""
    src = "/" + "s" * (klen - 20 - 2 - 1)            # 20 fixed bytes + "/d" + src
    pkt = packet(dst="/d", src=src)
    key = layout.flow_key(pkt)
    assert len(layout.key_block(key)) == klen
    env.install(pkt)
    r = env.run(frame(pkt))
    assert r.retval == libbpf.TC_ACT_REDIRECT
    want = "fp_flows_short" if klen <= layout.FP_KEY_SHORT else "fp_flows"
    assert layout.kernel_key(key)[0] == want
    assert libbpf.map_lookup(fp.fds[want], layout.kernel_key(key)[1], layout.FLOW.size,
                             want) is not None
    assert fp.flow_keys() == [key]
    assert fp.delete(key) and fp.flow_keys() == []
    r = env.run(frame(pkt))
    assert r.retval == libbpf.TC_ACT_OK


# ------------------------------------------------------------------ passed up
# Two different 6-byte components whose names /svc/<c> have the same FNV-1a 32 hash
# (0x01b8519a). Found by brute force: random 6-character components (random.Random(1),
# [a-z0-9]) hashed as the binary name until two collided, after 188031 tries. (All
# 4-byte suffixes are collision-free: FNV-1a is injective on them.)
COLLISION = (b"7o8n3i", b"vu098r")


def _fnv_collision():
    c1, c2 = COLLISION
    h1, h2 = (Name.parse("/svc/" + c.decode()).hash32 for c in COLLISION)
    assert c1 != c2 and h1 == h2 == 0x01B8519A
    return c1, c2


def _cases(env) -> List[tuple]:
    """(id, frame, ingress ifindex or 0, setup(fp) or None, expected verdict)."""
    good = packet(payload=b"g" * 20, hop_limit=5)
    key_ok = lambda f: env.install(good)  # noqa: E731  (the key is installed: only the check refuses)
    total = len(good)

    def with_hdr(**fields):
        # rewrite fixed-header fields of `good` without re-encoding (section 3 offsets)
        h = list(wire.HEADER.unpack_from(good))
        idx = {n: i for i, n in enumerate(wire.Header._fields)}
        for k, v in fields.items():
            h[idx[k]] = v
        return wire.HEADER.pack(*h) + good[wire.HEADER_LEN:]

    cases = [
        ("miss", frame(good), 0, None, "miss"),
        ("not_0x88b5", frame(good, ethertype=b"\x08\x00"), 0, key_ok, "not_dmsc"),
        ("vlan_ethertype", frame(good, ethertype=b"\x81\x00"), 0, key_ok, "not_dmsc"),
        ("ethernet_only", frame(b"", pad_to=14), 0, key_ok, "short"),
        ("truncated_header", frame(good[:30], pad_to=0), 0, key_ok, "short"),
        ("truncated_total", frame(good[:total - 5], pad_to=0), 0, key_ok, "bad_length"),
        ("bad_version", frame(with_hdr(version=2)), 0, key_ok, "not_fast"),
        ("bad_version_0", frame(with_hdr(version=0)), 0, key_ok, "not_fast"),
        ("bad_type_7", frame(with_hdr(type=7)), 0, key_ok, "not_fast"),
        ("bad_type_0", frame(with_hdr(type=0)), 0, key_ok, "not_fast"),
        ("bad_type_0x99", frame(with_hdr(type=0x99)), 0, key_ok, "not_fast"),
        ("control_hello_0x10", frame(with_hdr(type=0x10)), 0, key_ok, "not_fast"),
        ("local_only_register_0x20", frame(with_hdr(type=0x20)), 0, key_ok, "not_fast"),
        ("telemetry_flag", frame(with_hdr(flags=wire.Flag.TELEMETRY)), 0, key_ok, "not_fast"),
        ("reserved_flag", frame(with_hdr(flags=0x80)), 0, key_ok, "not_fast"),
        ("bad_length_header_below_names", frame(with_hdr(header_length=wire.HEADER_LEN + 3)),
         0, None, "bad_length"),
        ("bad_length_header_over_total", frame(with_hdr(header_length=total + 1)), 0, None,
         "bad_length"),
        ("bad_length_total_below_40", frame(with_hdr(total_length=30)), 0, None, "bad_length"),
        ("bad_fragment_count_0", frame(with_hdr(frag_count=0)), 0, key_ok, "not_fast"),
        ("bad_fragment_index", frame(with_hdr(frag_index=2, frag_count=2)), 0, key_ok,
         "not_fast"),
        ("hop_limit_1", frame(with_hdr(hop_limit=1)), 0, key_ok, "hop_limit"),
        ("hop_limit_0", frame(with_hdr(hop_limit=0)), 0, key_ok, "hop_limit"),
        ("over_mtu", frame(good), 0, lambda f: env.install(good, mtu=total - 1), "too_big"),
        ("stale_generation", frame(good), 0,
         lambda f: (env.install(good), f.set_generation(GEN + 1)), "stale"),
        ("older_generation_entry", frame(good), 0, lambda f: env.install(good, gen=GEN - 1),
         "stale"),
        ("same_in_out_face", frame(good), 0, lambda f: env.install(good, out_ifindex=env.in_if),
         "same_face"),
        # the entry was decided for in0: the same flow arriving anywhere else is not its
        # (not one of our faces; the entry's own out face, checked before same_face)
        ("other_in_face_not_a_face", frame(good), env.stranger_if, key_ok, "in_face"),
        ("other_in_face_the_out_face", frame(good), env.out_if, key_ok, "in_face"),
        ("out_interface_down", frame(good), 0,
         lambda f: (env.install(good), env.link_down("out0")), "out_down"),
        ("out_interface_no_carrier", frame(good), 0,
         lambda f: (env.install(good), env.link_down("out0p")), "out_down"),
        ("out_interface_removed", frame(good), 0,
         lambda f: env.install(good, out_ifindex=env.gone_if), "out_down"),
    ]
    # two name blocks with the same hashes and lengths: only the installed one hits
    c1, c2 = _fnv_collision()
    a = packet(dst="/svc/" + c1.decode(), payload=b"c")
    b = packet(dst="/svc/" + c2.decode(), payload=b"c")
    assert a[20:32] == b[20:32] and a != b           # same dst/src hash, lengths, counts
    wire.validate(a), wire.validate(b)              # both well-formed packets
    cases.append(("fnv_collision_not_installed", frame(b), 0, lambda f: env.install(a),
                  "miss"))
    # a crafted block: the same hash fields, different name bytes
    forged = patch(good, wire.HEADER_LEN + 1, b"X")
    cases.append(("forged_name_same_hashes", frame(forged), 0, key_ok, "miss"))
    return cases


CASE_IDS = ["miss", "not_0x88b5", "vlan_ethertype", "ethernet_only", "truncated_header",
            "truncated_total", "bad_version", "bad_version_0", "bad_type_7", "bad_type_0",
            "bad_type_0x99", "control_hello_0x10", "local_only_register_0x20", "telemetry_flag",
            "reserved_flag", "bad_length_header_below_names", "bad_length_header_over_total",
            "bad_length_total_below_40", "bad_fragment_count_0", "bad_fragment_index",
            "hop_limit_1", "hop_limit_0", "over_mtu", "stale_generation",
            "older_generation_entry", "same_in_out_face", "other_in_face_not_a_face",
            "other_in_face_the_out_face", "out_interface_down", "out_interface_no_carrier",
            "out_interface_removed", "fnv_collision_not_installed",
            "forged_name_same_hashes"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_passed_up_unchanged(env, fp, case_id):
    cases = {c[0]: c for c in _cases(env)}
    assert set(cases) == set(CASE_IDS)
    _, data, ifidx, setup, verdict = cases[case_id]
    if setup is not None:
        setup(fp)
    before = fp.read_verdicts()
    assert_untouched(env, fp, env.run(data, ifidx), data, before, verdict)


def test_collision_partner_installed_hits(env, fp):
    """The other direction of the collision case: each block hits only its own entry."""
    c1, c2 = _fnv_collision()
    a = packet(dst="/svc/" + c1.decode())
    b = packet(dst="/svc/" + c2.decode())
    env.install(a, flow_slot=1, priority=11)
    env.install(b, flow_slot=2, priority=22)
    ra, rb = env.run(frame(a)), env.run(frame(b))
    assert (ra.retval, rb.retval) == (libbpf.TC_ACT_REDIRECT,) * 2
    assert libbpf.skb_field(ra.ctx, libbpf.SKB_OFF_PRIORITY) == 11
    assert libbpf.skb_field(rb.ctx, libbpf.SKB_OFF_PRIORITY) == 22
    st = fp.read_flow_stats([1, 2])
    assert st[1].packets == 1 and st[2].packets == 1


def test_generation_bump_then_reinstall(env, fp):
    pkt = packet()
    env.install(pkt)
    assert env.run(frame(pkt)).retval == libbpf.TC_ACT_REDIRECT
    fp.set_generation(GEN + 1)
    assert fp.generation() == GEN + 1
    assert env.run(frame(pkt)).retval == libbpf.TC_ACT_OK
    env.install(pkt, gen=GEN + 1)                    # Python re-installs it
    assert env.run(frame(pkt)).retval == libbpf.TC_ACT_REDIRECT
    assert fp.delete(layout.flow_key(pkt)) is True
    assert fp.delete(layout.flow_key(pkt)) is False
    assert env.run(frame(pkt)).retval == libbpf.TC_ACT_OK


# ------------------------------------------------------------------ IPv4 carried by name
L4_SLOT = 8
POD_ADDR = "10.200.1.2"       # the pod behind pod0
PEER_ADDR = "10.200.2.2"      # a pod behind another SG
VIP = "10.96.0.10"
CPORT, SPORT = 40000, 8080
POD_MAC = bytes.fromhex("0a0000000c0c")
SG_MAC = bytes.fromhex("0a0000000d0d")
HDR = dmsc_header("/svc/web", "/pod/a", hop_limit=32, flow_id=5)


def header_of(length: int) -> bytes:
    """A type-6 DMSC header of exactly `length` bytes (names made to measure)."""
    extra = length - 44                      # name bytes past "/d" and "/s"
    if extra <= 62:
        dst = "/d" + "x" * extra
    else:                                    # a component holds 63 bytes at most
        dst = "/" + "d" * 63 + "/" + "x" * (extra - 63)
    hdr = dmsc_header(dst, "/s")
    assert len(hdr) == length, len(hdr)
    return hdr


@pytest.fixture
def pod_fp(env, fp):
    """fp plus the pod behind pod0: in fp_pods (POD_ADDR)."""
    fp.set_pod(env.pod_if, POD_ADDR)
    return fp


def l4v(env, **kw) -> bytes:
    args = dict(out_ifindex=env.out_if, flow_slot=L4_SLOT, gen=GEN, dst_mac=NEW_DST,
                src_mac=NEW_SRC, mtu=1500, priority=PRIORITY, snat_addr=None, header=HDR)
    args.update(kw)
    return layout.l4_value(**args)


def l4_key_of(ip: bytes) -> bytes:
    """The fp_l4_key of an IPv4 TCP/UDP packet (what the program builds)."""
    ihl = (ip[0] & 0xF) * 4
    return layout.l4_key(ip[12:16], ip[16:20], int.from_bytes(ip[ihl:ihl + 2], "big"),
                         int.from_bytes(ip[ihl + 2:ihl + 4], "big"), ip[9])


def install_l4_for(env, ip: bytes, **kw) -> None:
    env.fp.install_l4(l4_key_of(ip), l4v(env, **kw))


def tcp_of_len(src, dst, sport, dport, length: int, flags: int = 0x18, **ip) -> bytes:
    """A TCP/IPv4 packet of exactly `length` bytes."""
    pkt = tcp_packet(src, dst, sport, dport, flags, bytes(i % 251 for i in range(length - 40)),
                     **ip)
    assert len(pkt) == length
    return pkt


def masked(ip: bytes, *fields) -> bytes:
    """`ip` with the named fields zeroed: 'src', 'dst', 'ipsum', 'l4sum'."""
    b = bytearray(ip)
    ihl = (b[0] & 0xF) * 4
    spans = {"src": (12, 16), "dst": (16, 20), "ipsum": (10, 12),
             "l4sum": (ihl + 16, ihl + 18) if b[9] == 6 else (ihl + 6, ihl + 8)}
    for f in fields:
        lo, hi = spans[f]
        b[lo:hi] = bytes(hi - lo)
    return bytes(b)


def assert_untouched(env, fp, r, data: bytes, before: Dict[str, int], verdict: str) -> None:
    assert r.retval == libbpf.TC_ACT_OK
    assert r.data == data                                         # never modified
    assert libbpf.skb_field(r.ctx, libbpf.SKB_OFF_PRIORITY) == 0  # nor its priority
    assert verdict_delta(before, fp.read_verdicts()) == {verdict: 1}
    assert fp.read_flow_stats([FLOW_SLOT, L4_SLOT]) == {FLOW_SLOT: layout.FlowStats(),
                                                        L4_SLOT: layout.FlowStats()}


# -- encap (fp_pod_ingress) ---------------------------------------------------
@pytest.mark.parametrize("hdr_len,ip_len,pad_to", [
    (len(HDR), 45, 60),       # 59-byte frame padded to 60: the padding is dropped
    (len(HDR), 45, 0),        # unpadded
    (len(HDR), 1000, 1100),   # 86 bytes of trailing junk
    (40 + 4, 40, 0),          # the shortest header two names allow
    (128, 1372, 0),           # the longest header, a full pod-MTU packet
])
def test_encap_hit(env, pod_fp, hdr_len, ip_len, pad_to):
    hdr = header_of(hdr_len)
    ip = tcp_of_len(POD_ADDR, VIP, CPORT, SPORT, ip_len, flags=0x02, frag=0x4000)  # DF: fine
    install_l4_for(env, ip, header=hdr)
    data = eth_ipv4(ip, pad_to=pad_to)
    t0 = time.monotonic_ns()
    r = env.run_pod(data)
    assert r.retval == libbpf.TC_ACT_REDIRECT
    total = hdr_len + ip_len
    # new Ethernet + the template with total_length patched + the IPv4 packet, byte for byte
    assert r.data == NEW_DST + NEW_SRC + b"\x88\xb5" + with_total_length(hdr, total) + ip
    assert libbpf.skb_field(r.ctx, libbpf.SKB_OFF_PRIORITY) == PRIORITY
    d = wire.decode(r.data[14:])                     # a well-formed type-6 DMSC packet
    assert d.type == wire.PacketType.IPV4 and d.payload == ip and d.hop_limit == 32
    fs = pod_fp.read_flow_stats([L4_SLOT])[L4_SLOT]
    # sent: the new total_length; received: the pod's IPv4 packet (not its padding)
    assert fs == layout.FlowStats(1, total, ip_len, fs.last_ns, 0x02, 0) and fs.last_ns >= t0
    v = pod_fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0


def l4_of_kind(kind: str, src: str, dst: str, sport: int, dport: int, tcp_flags: int,
               body: bytes) -> bytes:
    """A TCP (kind tcp*, with IP options for tcp_ip_options) or UDP packet (no checksum
    for udp_no_checksum)."""
    if kind.startswith("tcp"):
        opts = dict(options=bytes([1, 1, 1, 0])) if kind == "tcp_ip_options" else {}
        return tcp_packet(src, dst, sport, dport, tcp_flags, body, **opts)
    return udp_packet(src, dst, sport, dport, body, no_checksum=kind == "udp_no_checksum")


def recv_all(sock) -> bytes:
    """Everything a TCP socket receives until its peer shuts its side down."""
    chunks = []
    while True:
        b = sock.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


@pytest.mark.parametrize("svc", ["/svc/web", "/svc/webx"])   # headers of even and odd length
@pytest.mark.parametrize("kind", ["tcp", "udp", "udp_no_checksum", "tcp_ip_options"])
def test_encap_snat_keeps_checksums(env, pod_fp, kind, svc):
    """The instance's reply: source POD_ADDR -> VIP; both checksums still hold, whatever
    the parity of the header put in front (the rewrite happens before the move)."""
    ip = l4_of_kind(kind, POD_ADDR, PEER_ADDR, SPORT, CPORT, 0x12, bytes(range(256)) * 2 + b"odd")
    assert checksums_ok(ip)
    hdr = dmsc_header("/pod/a", svc)
    assert len(hdr) % 2 == (svc == "/svc/webx")
    install_l4_for(env, ip, snat_addr=VIP, header=hdr)
    r = env.run_pod(eth_ipv4(ip))
    assert r.retval == libbpf.TC_ACT_REDIRECT
    assert r.data[:14 + len(hdr)] == NEW_DST + NEW_SRC + b"\x88\xb5" + \
        with_total_length(hdr, len(hdr) + len(ip))
    out = r.data[14 + len(hdr):]
    assert len(out) == len(ip) and out[12:16] == addr(VIP) and out[16:20] == addr(PEER_ADDR)
    assert checksums_ok(out)
    assert masked(out, "src", "ipsum", "l4sum") == masked(ip, "src", "ipsum", "l4sum")
    if kind == "udp_no_checksum":
        assert out[20 + 6:20 + 8] == b"\0\0"             # a UDP checksum of 0 stays 0
    fs = pod_fp.read_flow_stats([L4_SLOT])[L4_SLOT]
    assert fs.tcp_flags == (0x12 if kind.startswith("tcp") else 0)


def test_encap_spoofed_source_is_dropped(env, pod_fp):
    ip = tcp_packet("10.200.1.99", VIP, CPORT, SPORT, 0x02)
    install_l4_for(env, ip)                           # even with an entry for its tuple
    before = pod_fp.read_verdicts()
    r = env.run_pod(eth_ipv4(ip))
    assert r.retval == libbpf.TC_ACT_SHOT
    assert verdict_delta(before, pod_fp.read_verdicts()) == {"spoofed": 1}
    assert pod_fp.read_flow_stats([L4_SLOT])[L4_SLOT] == layout.FlowStats()


def _pod_cases(env) -> List[tuple]:
    """(id, frame, ingress ifindex or 0, setup(fp) or None, ctx, expected verdict)."""
    good = tcp_packet(POD_ADDR, VIP, CPORT, SPORT, 0x18, b"p" * 30)
    ok = lambda f: install_l4_for(env, good)  # noqa: E731 (only the check refuses)

    def mangle(ip: bytes, off: int, val: bytes) -> bytes:
        return patch(ip, off, val)

    icmp = ipv4_packet(POD_ADDR, VIP, 1, bytes([8, 0, 0xf7, 0xff, 0, 0, 0, 0]))
    frag_mf = tcp_packet(POD_ADDR, VIP, CPORT, SPORT, 0x18, b"f" * 16, frag=0x2000)
    frag_off = tcp_packet(POD_ADDR, VIP, CPORT, SPORT, 0x18, b"f" * 16, frag=0x0003)
    short_tcp = ipv4_packet(POD_ADDR, VIP, 6, good[20:39])          # 19 bytes of TCP header
    short_udp = ipv4_packet(POD_ADDR, VIP, 17, good[20:27])         # 7 bytes of UDP header
    bad_hdr_len = lambda n: lambda f: f.install_l4(  # noqa: E731 (packed by hand: l4_value refuses it)
        l4_key_of(good), layout.L4_VALUE.pack(env.out_if, L4_SLOT, GEN, NEW_DST, NEW_SRC, 1500,
                                             n, 0, bytes(4),
                                             HDR.ljust(layout.FP_L4_HDR_MAX, b"\0")))
    return [
        ("miss", eth_ipv4(good), 0, None, {}, "miss"),
        ("other_port_miss", eth_ipv4(tcp_packet(POD_ADDR, VIP, CPORT, SPORT + 1)), 0, ok, {},
         "miss"),
        ("stale_generation", eth_ipv4(good), 0,
         lambda f: (ok(f), f.set_generation(GEN + 1)), {}, "stale"),
        ("older_generation_entry", eth_ipv4(good), 0,
         lambda f: install_l4_for(env, good, gen=GEN - 1), {}, "stale"),
        ("ip_fragment_mf", eth_ipv4(frag_mf), 0, lambda f: install_l4_for(env, frag_mf), {},
         "ip_fragment"),
        ("ip_fragment_offset", eth_ipv4(frag_off), 0, lambda f: install_l4_for(env, frag_off),
         {}, "ip_fragment"),
        ("icmp", eth_ipv4(icmp), 0, ok, {}, "not_l4"),
        ("tcp_header_truncated", eth_ipv4(short_tcp), 0, ok, {}, "not_l4"),
        ("udp_header_truncated", eth_ipv4(short_udp), 0, ok, {}, "not_l4"),
        ("too_big", eth_ipv4(good), 0,
         lambda f: install_l4_for(env, good, mtu=len(HDR) + len(good) - 1), {}, "too_big"),
        ("entry_hdr_len_39", eth_ipv4(good), 0, bad_hdr_len(39), {}, "too_big"),
        ("entry_hdr_len_129", eth_ipv4(good), 0, bad_hdr_len(129), {}, "too_big"),
        ("unknown_pod_face", eth_ipv4(good), env.in_if, ok, {}, "unknown_face"),
        ("ipv6_ethertype", eth_ipv4(good, ethertype=b"\x86\xdd"), 0, ok, {}, "not_ipv4"),
        ("arp_ethertype", eth_ipv4(bytes(28), ethertype=b"\x08\x06"), 0, ok, {}, "not_ipv4"),
        ("vlan_ethertype", eth_ipv4(good, ethertype=b"\x81\x00"), 0, ok, {}, "not_ipv4"),
        ("dmsc_from_a_pod", frame(packet()), 0, ok, {}, "not_ipv4"),
        ("ip_version_6", eth_ipv4(mangle(good, 0, b"\x65")), 0, ok, {}, "bad_inner"),
        ("ihl_4", eth_ipv4(mangle(good, 0, b"\x44")), 0, ok, {}, "bad_inner"),
        ("total_length_past_frame", eth_ipv4(mangle(good, 2, (len(good) + 1).to_bytes(2, "big"))),
         0, ok, {}, "bad_inner"),
        ("total_length_below_ihl", eth_ipv4(mangle(good, 2, (19).to_bytes(2, "big"))), 0, ok, {},
         "bad_inner"),
        ("spoofed_and_malformed", eth_ipv4(mangle(mangle(good, 12, addr("10.9.9.9")), 0, b"\x44")),
         0, ok, {}, "bad_inner"),                     # malformed first: passed up, not dropped
        ("gso_super_packet", eth_ipv4(good), 0, ok, dict(gso_segs=2, gso_size=1000), "gso"),
        ("out_interface_down", eth_ipv4(good), 0, lambda f: (ok(f), env.link_down("out0")),
         {}, "out_down"),
        ("out_interface_no_carrier", eth_ipv4(good), 0,
         lambda f: (ok(f), env.link_down("out0p")), {}, "out_down"),
        ("out_interface_removed", eth_ipv4(good), 0,
         lambda f: install_l4_for(env, good, out_ifindex=env.gone_if), {}, "out_down"),
    ]


POD_CASE_IDS = ["miss", "other_port_miss", "stale_generation", "older_generation_entry",
                "ip_fragment_mf", "ip_fragment_offset", "icmp", "tcp_header_truncated",
                "udp_header_truncated", "too_big", "entry_hdr_len_39", "entry_hdr_len_129",
                "unknown_pod_face", "ipv6_ethertype", "arp_ethertype", "vlan_ethertype",
                "dmsc_from_a_pod", "ip_version_6", "ihl_4", "total_length_past_frame",
                "total_length_below_ihl",
                "spoofed_and_malformed", "gso_super_packet", "out_interface_down",
                "out_interface_no_carrier", "out_interface_removed"]


@pytest.mark.parametrize("case_id", POD_CASE_IDS)
def test_encap_passed_up_unchanged(env, pod_fp, case_id):
    cases = {c[0]: c for c in _pod_cases(env)}
    assert set(cases) == set(POD_CASE_IDS)
    _, data, ifidx, setup, ctx, verdict = cases[case_id]
    if setup is not None:
        setup(pod_fp)
    before = pod_fp.read_verdicts()
    r = env.run_pod(data, ifidx, **ctx)
    assert_untouched(env, pod_fp, r, data, before, verdict)


def test_encap_mtu_boundary_and_one_segment_gso(env, pod_fp):
    ip = tcp_packet(POD_ADDR, VIP, CPORT, SPORT, 0x10, b"m" * 100)
    install_l4_for(env, ip, mtu=len(HDR) + len(ip))          # exactly the MTU: carried
    assert env.run_pod(eth_ipv4(ip)).retval == libbpf.TC_ACT_REDIRECT
    r = env.run_pod(eth_ipv4(ip), gso_segs=1, gso_size=1000)  # one segment: carried whole
    assert r.retval == libbpf.TC_ACT_REDIRECT
    fs = pod_fp.read_flow_stats([L4_SLOT])[L4_SLOT]
    assert (fs.packets, fs.bytes, fs.rx_bytes) == (2, 2 * (len(HDR) + len(ip)), 2 * len(ip))
    v = pod_fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0


def test_the_pod_program_marks_what_the_gateway_needs(env, pod_fp):
    """Misses are passed up; the gateway's socket takes those marked for it: what may
    start or concern a carried connection. A TCP segment between pods' own
    addresses (direct routing) is not marked unless it leaves a served port."""
    def mark(ip: bytes) -> int:
        r = env.run_pod(eth_ipv4(ip))
        assert r.retval == libbpf.TC_ACT_OK
        return libbpf.skb_field(r.ctx, libbpf.SKB_OFF_MARK)

    misses = pod_fp.read_verdicts()["miss"]
    ack = tcp_packet(POD_ADDR, PEER_ADDR, SPORT, CPORT, 0x10, b"reply")
    assert mark(ack) == 0
    assert mark(tcp_packet(POD_ADDR, PEER_ADDR, SPORT, CPORT, 0x02)) == layout.MARK_GATEWAY
    assert mark(tcp_packet(POD_ADDR, PEER_ADDR, SPORT, CPORT, 0x14)) == layout.MARK_GATEWAY
    assert mark(tcp_packet(POD_ADDR, VIP, CPORT, SPORT, 0x10)) == layout.MARK_GATEWAY
    assert mark(udp_packet(POD_ADDR, PEER_ADDR, SPORT, CPORT, b"u")) == layout.MARK_GATEWAY
    pod_fp.install_l4(layout.served_key(POD_ADDR, SPORT, 6), layout.SERVED_VALUE)
    assert mark(ack) == layout.MARK_GATEWAY
    assert mark(tcp_packet(POD_ADDR, PEER_ADDR, SPORT + 1, CPORT, 0x10)) == 0  # another port
    assert pod_fp.read_verdicts()["miss"] - misses == 7


# -- decap (fp_ingress, DECAP entries) ----------------------------------------
def carried(ip: bytes, dst: str = "/svc/web", src: str = "/pod/a", **kw) -> bytes:
    """A type-6 DMSC packet carrying `ip`."""
    return packet(dst=dst, src=src, type_=wire.PacketType.IPV4, payload=ip, **kw)


def install_decap(env, pkt: bytes, **kw) -> None:
    args = dict(out_ifindex=env.pod_if, flow_slot=FLOW_SLOT, gen=GEN, dst_mac=POD_MAC,
                src_mac=SG_MAC, mtu=1372, in_ifindex=env.in_if, priority=PRIORITY,
                action=layout.ACT_DECAP, nat_addr=None)
    args.update(kw)
    env.fp.install(layout.flow_key(pkt), layout.flow_value(**args))


@pytest.mark.parametrize("inner,pad", [
    ("tcp_40", 0), ("tcp_40", 30), ("udp_29", 0), ("ip_options_no_l4_24", 0),
    ("tcp_2047", 0), ("tcp_2048", 0), ("tcp_2049", 7), ("tcp_3000", 0),
])
def test_decap_hit(env, pod_fp, inner, pad):
    """Output: Ethernet (entry MACs, 0x0800) + the inner packet exactly, nothing after it."""
    n = int(inner.rsplit("_", 1)[1])
    if inner.startswith("tcp"):
        ip = tcp_of_len(PEER_ADDR, POD_ADDR, CPORT, SPORT, n)
    elif inner.startswith("udp"):
        ip = udp_packet(PEER_ADDR, POD_ADDR, CPORT, SPORT, b"u" * (n - 28))
    else:
        ip = ipv4_packet(PEER_ADDR, POD_ADDR, 253, b"", options=bytes([1, 1, 1, 0]))
    assert len(ip) == n
    pkt = carried(ip)
    install_decap(env, pkt, mtu=4000)
    data = frame(pkt, pad_to=14 + len(pkt) + pad)
    t0 = time.monotonic_ns()
    r = env.run(data)
    assert r.retval == libbpf.TC_ACT_REDIRECT
    assert r.data == POD_MAC + SG_MAC + b"\x08\x00" + ip
    assert libbpf.skb_field(r.ctx, libbpf.SKB_OFF_PRIORITY) == PRIORITY
    fs = pod_fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    # sent: the inner IPv4 packet; received: the frame past Ethernet, padding included
    assert (fs.packets, fs.bytes, fs.rx_bytes, fs.peer_packets) == (1, n, len(data) - 14, 0)
    assert fs.last_ns >= t0
    assert fs.tcp_flags == (0x18 if inner.startswith("tcp") else 0)
    v = pod_fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0


@pytest.mark.parametrize("kind", ["tcp", "udp", "udp_no_checksum", "tcp_ip_options",
                                  "tcp_later_fragment"])
def test_decap_dnat_keeps_checksums(env, pod_fp, kind):
    """The client's packet to the VIP: destination VIP -> the instance pod's address."""
    body = bytes(range(256)) * 3 + b"odd"
    if kind == "tcp_later_fragment":           # no L4 header here: only the IPv4 checksum moves
        ip = ipv4_packet(PEER_ADDR, VIP, 6, body, frag=0x0010)
    else:
        ip = l4_of_kind(kind, PEER_ADDR, VIP, CPORT, SPORT, 0x02, body)
    pkt = carried(ip)
    install_decap(env, pkt, nat_addr=POD_ADDR)
    r = env.run(frame(pkt))
    assert r.retval == libbpf.TC_ACT_REDIRECT
    assert r.data[:14] == POD_MAC + SG_MAC + b"\x08\x00"
    out = r.data[14:]
    assert len(out) == len(ip) and out[16:20] == addr(POD_ADDR) and out[12:16] == ip[12:16]
    if kind == "tcp_later_fragment":
        assert out[20:] == ip[20:]                     # payload bytes untouched
        assert masked(out, "dst", "ipsum") == masked(ip, "dst", "ipsum")
        from fastpath_helpers import inet_csum
        assert inet_csum(out[:20]) == 0
    else:
        assert checksums_ok(out)
        assert masked(out, "dst", "ipsum", "l4sum") == masked(ip, "dst", "ipsum", "l4sum")
    if kind == "udp_no_checksum":
        assert out[20 + 6:20 + 8] == b"\0\0"


def test_decap_ors_tcp_flags(env, pod_fp):
    sizes = []
    pkts = []
    for flags in (0x02, 0x18, 0x01):                   # SYN, then ACK|PSH, then FIN
        ip = tcp_packet(PEER_ADDR, VIP, CPORT, SPORT, flags, b"d" * 10)
        pkts.append(carried(ip))
        sizes.append(len(ip))
    install_decap(env, pkts[0], nat_addr=POD_ADDR)     # one flow: the same name block
    assert len({layout.flow_key(p) for p in pkts}) == 1
    for p in pkts:
        assert env.run(frame(p)).retval == libbpf.TC_ACT_REDIRECT
    fs = pod_fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert (fs.packets, fs.bytes, fs.tcp_flags) == (3, sum(sizes), 0x1B)


def _decap_cases(env) -> List[tuple]:
    """(id, frame, ingress ifindex or 0, setup(fp), expected verdict); the frame's name
    block is installed."""
    good = tcp_packet(PEER_ADDR, VIP, CPORT, SPORT, 0x18, b"q" * 40)

    def case(cid, ip, verdict, dmsc=None, ingress=0, **entry):
        pkt = dmsc if dmsc is not None else carried(ip)
        return (cid, frame(pkt), ingress, lambda f: install_decap(env, pkt, **entry), verdict)

    return [
        case("inner_length_plus_1", patch(good, 2, (len(good) + 1).to_bytes(2, "big")),
             "bad_inner"),
        case("inner_length_minus_1", patch(good, 2, (len(good) - 1).to_bytes(2, "big")),
             "bad_inner"),
        case("inner_ipv6", patch(good, 0, b"\x60"), "bad_inner"),
        case("inner_not_ip", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_inner"),
        case("inner_shorter_than_20", good[:19], "bad_inner"),
        case("inner_empty", b"", "bad_inner"),
        case("inner_ihl_4", patch(good, 0, b"\x44"), "bad_inner"),
        case("inner_ihl_past_packet", ipv4_packet(PEER_ADDR, VIP, 253, b"",
                                                  options=bytes(4), tot_len=20), "bad_inner"),
        case("inner_tcp_header_truncated", ipv4_packet(PEER_ADDR, VIP, 6, good[20:36]),
             "bad_inner"),
        case("inner_udp_header_truncated", ipv4_packet(PEER_ADDR, VIP, 17, good[20:27]),
             "bad_inner"),
        case("decap_entry_type_1", None, "bad_inner",
             dmsc=packet(dst="/svc/web", src="/pod/a", payload=good)),
        case("decap_too_big", good, "too_big", mtu=len(good) - 1),
        case("decap_stale", good, "stale", gen=GEN - 1),
        case("decap_other_in_face", good, "in_face", ingress=env.out_if),
        case("decap_out_interface_removed", good, "out_down", out_ifindex=env.gone_if),
        ("decap_out_interface_down", frame(carried(good)), 0,
         lambda f: (install_decap(env, carried(good)), env.link_down("pod0")), "out_down"),
        ("decap_out_interface_no_carrier", frame(carried(good)), 0,
         lambda f: (install_decap(env, carried(good)), env.link_down("pod0p")), "out_down"),
        ("decap_unknown_action", frame(carried(good)), 0,
         lambda f: f.install(layout.flow_key(carried(good)), layout.FLOW.pack(
             env.pod_if, FLOW_SLOT, GEN, POD_MAC, SG_MAC, 1500, 0, env.in_if, 0, 2,
             bytes(4))), "miss"),
    ]


DECAP_CASE_IDS = ["inner_length_plus_1", "inner_length_minus_1", "inner_ipv6", "inner_not_ip",
                  "inner_shorter_than_20", "inner_empty", "inner_ihl_4", "inner_ihl_past_packet",
                  "inner_tcp_header_truncated", "inner_udp_header_truncated",
                  "decap_entry_type_1", "decap_too_big", "decap_stale", "decap_other_in_face",
                  "decap_out_interface_removed", "decap_out_interface_down",
                  "decap_out_interface_no_carrier", "decap_unknown_action"]


@pytest.mark.parametrize("case_id", DECAP_CASE_IDS)
def test_decap_passed_up_unchanged(env, pod_fp, case_id):
    cases = {c[0]: c for c in _decap_cases(env)}
    assert set(cases) == set(DECAP_CASE_IDS)
    _, data, ifidx, setup, verdict = cases[case_id]
    setup(pod_fp)
    before = pod_fp.read_verdicts()
    r = env.run(data, ifidx)
    assert_untouched(env, pod_fp, r, data, before, verdict)


def test_decap_mtu_boundary_and_hop_limit_ignored(env, pod_fp):
    ip = tcp_packet(PEER_ADDR, POD_ADDR, CPORT, SPORT, 0x10, b"b" * 60)
    pkt = carried(ip, hop_limit=1)                  # the packet ends here: no hop limit check
    install_decap(env, pkt, mtu=len(ip))
    r = env.run(frame(pkt))
    assert r.retval == libbpf.TC_ACT_REDIRECT and r.data[14:] == ip


def test_type6_forward_entry_is_forwarded(env, fp):
    """A router between SGs: a type-6 packet on a FORWARD entry is forwarded like types 1..5."""
    ip = tcp_packet(PEER_ADDR, VIP, CPORT, SPORT, 0x18, b"r" * 20)
    pkt = carried(ip, hop_limit=9)
    env.install(pkt)
    r = env.run(frame(pkt))
    assert r.retval == libbpf.TC_ACT_REDIRECT
    assert r.data == NEW_DST + NEW_SRC + b"\x88\xb5" + patch(pkt, 3, bytes([8]))
    v = fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0
    fs = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert (fs.packets, fs.bytes, fs.rx_bytes) == (1, len(pkt), len(frame(pkt)) - 14)
    assert fs.tcp_flags == 0                           # FORWARD: not counted


def test_l4_and_pod_api(env, pod_fp):
    ip = tcp_packet(POD_ADDR, VIP, CPORT, SPORT)
    key = l4_key_of(ip)
    assert key == layout.l4_key(POD_ADDR, VIP, CPORT, SPORT, layout.IPPROTO_TCP)
    install_l4_for(env, ip, snat_addr="10.96.0.1")
    assert pod_fp.l4_keys() == [key]
    e = pod_fp.lookup_l4(key)
    assert e.header == HDR and e.snat_addr == addr("10.96.0.1") and e.out_ifindex == env.out_if
    assert pod_fp.pods() == {env.pod_if: POD_ADDR}
    with pytest.raises(ValueError):
        pod_fp.install_l4(key[:-1], l4v(env))
    with pytest.raises(ValueError):
        pod_fp.install_l4(key, l4v(env)[:-1])
    assert pod_fp.delete_l4(key) is True and pod_fp.delete_l4(key) is False
    assert pod_fp.remove_pod(env.pod_if) is True and pod_fp.remove_pod(env.pod_if) is False
    other = kernel.FastPathMaps.open_pinned(env.pin_dir)   # the new maps are pinned too
    try:
        other.set_pod(env.pod_if, bytes([10, 0, 0, 1]))
        assert pod_fp.pods() == {env.pod_if: "10.0.0.1"}
    finally:
        other.close_maps()


# ------------------------------------------------------------------ the Python API
def test_map_api_and_pins(env, fp):
    pkt = packet(dst="/a/b/c")
    key = layout.flow_key(pkt)
    env.install(pkt, priority=3)
    assert fp.lookup(key) == layout.decode_flow(env.value(priority=3))
    assert (fp.lookup(key).in_ifindex, fp.lookup(key).flags) == (env.in_if, 0)
    assert fp.flow_keys() == [key]
    # another process (here: another set of fds) opens the same maps through the pins
    other = kernel.FastPathMaps.open_pinned(env.pin_dir)
    try:
        assert other.generation() == GEN
        assert other.lookup(key) is not None
        other.set_generation(GEN + 5)
        assert fp.generation() == GEN + 5
    finally:
        other.close_maps()
    with pytest.raises(ValueError):
        fp.install(key[:-1], env.value())
    with pytest.raises(ValueError):
        fp.install(key, env.value()[:-1])
    with pytest.raises(ValueError):
        layout.flow_value(1, layout.FP_FLOWS_MAX, 0, DST_MAC, DST_MAC, 1500, 0)
    with pytest.raises(libbpf.BpfError) as ei:
        libbpf.map_update(fp.fds["fp_gen"], layout.U32.pack(1), layout.U64.pack(0))  # index 1
    assert "bpf_map_update_elem" in str(ei.value) and ei.value.errno == 7  # E2BIG for arrays


def test_verifier_rejection_shows_log(tmp_path):
    """A program the verifier refuses: the exception carries the verifier's log."""
    require_kernel()
    import subprocess
    src = tmp_path / "bad.bpf.c"
    src.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                   'SEC("tc") int bad(struct __sk_buff *skb) {\n'
                   '  unsigned char *data = (unsigned char *)(long)skb->data;\n'
                   '  return data[0]; }  /* no bounds check against data_end */\n'
                   'char LICENSE[] SEC("license") = "Dual BSD/GPL";\n')
    obj = tmp_path / "bad.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I{build.multiarch_include()}",
                    "-c", str(src), "-o", str(obj)], check=True)
    with libbpf.BpfObject(str(obj)) as o:
        with pytest.raises(libbpf.BpfError) as ei:
            o.load()
    msg = str(ei.value)
    assert msg.startswith("bpf_object__load(") and "Permission denied" in msg
    assert "invalid access to packet" in msg        # the verifier's own words
    assert ei.value.errno == 13 and any("processed" in line for line in ei.value.log)


def test_attach_detach_tcx(env, fp):
    """Programs hang on tcx links pinned beside the maps; detach removes only ours."""
    ns = env.ns
    with in_netns(ns):
        fp.attach([env.in_if])
        assert libbpf.tcx_query(env.in_if) == [fp.prog_id]
        assert os.path.exists(os.path.join(fp.pin_dir, f"link_{env.in_if}"))
        fp.attach([env.pod_if])
        fp.attach_pods([env.pod_if])          # the later call's program, on the same link
        assert libbpf.tcx_query(env.pod_if) == [fp.pod_prog_id]
    assert "clsact" not in os.popen(f"tc -n {ns} qdisc show dev in0").read()   # no tc qdisc
    with in_netns(ns):
        assert fp.detach(env.pod_if) is True
        assert libbpf.tcx_query(env.pod_if) == []
        assert not os.path.exists(os.path.join(fp.pin_dir, f"link_{env.pod_if}"))
        assert fp.detach(env.pod_if) is False
        # somebody else's program at tcx ingress of out0 stays after we detach ours
        theirs = libbpf.tcx_link(env.out_if, fp.pod_prog_fd)
        try:
            fp.attach([env.out_if])
            assert libbpf.tcx_query(env.out_if) == [fp.pod_prog_id, fp.prog_id]
            assert fp.attached() == sorted([env.in_if, env.out_if])
            fp.detach_all()
            assert fp.attached() == []
            assert libbpf.tcx_query(env.in_if) == []
            assert libbpf.tcx_query(env.out_if) == [fp.pod_prog_id]
        finally:
            os.close(theirs)                  # its only reference: it detaches
        assert libbpf.tcx_query(env.out_if) == []


# ------------------------------------------------------------------ end to end
def _sock(ns: str, ifname: str, proto: int) -> socket.socket:
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        s.bind((ifname, proto))
    s.setblocking(False)
    return s


def _drain(s: socket.socket, want: int, timeout: float) -> List[bytes]:
    out: List[bytes] = []
    end = time.monotonic() + timeout
    while len(out) < want:
        left = end - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            break
        out.append(s.recv(65535))
    return out


def test_end_to_end_triangle(env):
    """a -- r -- b: r runs the program with one flow; b receives exactly N rewritten
    frames; r's AF_PACKET socket for 0x88B5 receives none of them, but a miss."""
    require_kernel()
    nets = Namespaces("e")
    fp = r = None
    try:
        a, r, b = nets.add("a"), nets.add("r"), nets.add("b")
        nets.veth(a, "a0", r, "ra")
        nets.veth(r, "rb", b, "b0")
        ra, rb = ifindex(r, "ra"), ifindex(r, "rb")
        fp = kernel.FastPath(os.path.join(pins.PIN_ROOT, f"fpt{os.getpid()}-e2e"), flows_max=1024)
        with in_netns(r):
            fp.attach([ra, rb])
        fp.set_generation(1)
        pkt = packet(dst="/svc/e2e", src="/host/a", payload=b"e" * 40, hop_limit=16)
        fp.install(layout.flow_key(pkt), layout.flow_value(
            out_ifindex=rb, flow_slot=9, gen=1, dst_mac=mac(b, "b0"), src_mac=mac(r, "rb"),
            mtu=1500, in_ifindex=ra, priority=0))
        sb = _sock(b, "b0", wire.ETHERTYPE)
        sr = _sock(r, "ra", wire.ETHERTYPE)
        sa = _sock(a, "a0", wire.ETHERTYPE)
        n = 25
        head = mac(r, "ra") + mac(a, "a0") + b"\x88\xb5"
        sent = []
        for i in range(n):
            p = bytearray(pkt)
            struct.pack_into("!I", p, 12, i)       # seq: which frame it is
            sent.append(bytes(p))
            # odd frames carry 16 bytes of trailing padding: the program trims it on a real skb
            sa.send(head + bytes(p) + bytes(16 * (i % 2)))
        miss = packet(dst="/svc/other", src="/host/a", payload=b"m")
        miss_frame = (head + miss).ljust(80, b"\0")
        sa.send(miss_frame)

        got_b = _drain(sb, n, 5.0)
        assert len(_drain(sb, 1, 0.3)) == 0, "b received more than N frames"
        assert len(got_b) == n
        seqs = set()
        for f in got_b:
            assert f[0:6] == mac(b, "b0") and f[6:12] == mac(r, "rb") and f[12:14] == b"\x88\xb5"
            assert len(f) == max(60, 14 + len(pkt))
            d = wire.decode(f[14:])
            assert d.hop_limit == 15 and d.dst == Name.parse("/svc/e2e")
            seqs.add(d.seq)
            assert f[14:14 + len(pkt)] == patch(sent[d.seq], 3, b"\x0f")
        assert seqs == set(range(n))

        got_r = _drain(sr, n + 1, 1.0)
        dmsc = [f for f in got_r if f[12:14] == b"\x88\xb5"]
        assert [f for f in dmsc if wire.decode(f[14:]).dst == Name.parse("/svc/e2e")] == []
        assert dmsc == [miss_frame]            # the miss reached r's socket, unchanged
        v = fp.read_verdicts()
        assert v["miss"] == 1 and no_hits_in_verdicts(v)
        st = fp.read_flow_stats([9])[9]
        assert 14 + len(pkt) > 60
        rx_bytes = n * len(pkt) + 16 * (n // 2)           # the padding is counted on rx
        # not flagged FLOW_PEER: every frame through rb's transmit path
        assert st == layout.FlowStats(n, n * len(pkt), rx_bytes, st.last_ns, 0, 0)
        for s in (sa, sb, sr):
            s.close()
    finally:
        if fp is not None:
            with in_netns(r):
                fp.close()
        nets.cleanup()


def _serve_once(ls: socket.socket, result: dict, reply: bytes) -> None:
    """Accept one connection, read to EOF, answer `reply`, close (the pod's server)."""
    try:
        conn, peer = ls.accept()
        with conn:
            conn.settimeout(30)
            result["got"] = recv_all(conn)
            result["peer"] = peer
            conn.sendall(reply)
    except Exception as exc:  # reported by the test thread
        result["error"] = exc


def _connection_frames(frames: List[bytes], ports) -> List[bytes]:
    """The frames of the TCP connection between `ports`, bare IPv4 or carried by name."""
    out = []
    for f in frames:
        ip = None
        if f[12:14] == b"\x08\x00":
            ip = f[14:]
        elif f[12:14] == b"\x88\xb5":
            try:
                p = wire.decode(f[14:])
            except Exception:
                continue
            if p.type == wire.PacketType.IPV4:
                ip = p.payload
        if ip is None or len(ip) < 24 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0xF) * 4
        if {int.from_bytes(ip[ihl:ihl + 2], "big"), int.from_bytes(ip[ihl + 2:ihl + 4], "big")} \
                == set(ports):
            out.append(f)
    return out


def test_end_to_end_pods_through_two_sgs(env):
    """podA -- sgA -- sgB -- podB with both programs and hand-installed entries for
    both directions of one TCP connection: podA connects to the VIP, podB's server
    accepts on its own address; 1 MB each way arrives intact, and no frame of the
    connection reaches the SGs' packet sockets (the Python side)."""
    require_kernel()
    nets = Namespaces("l")
    fps: Dict[str, kernel.FastPath] = {}
    socks: List[socket.socket] = []
    POD_A, POD_B, GW, NET_MTU, POD_MTU = "10.200.1.2", "10.200.2.2", "169.254.1.1", 1500, 1372
    try:
        pa, sa, sb, pb = nets.add("pa"), nets.add("sa"), nets.add("sb"), nets.add("pb")
        nets.veth(pa, "eth0", sa, "sa_pod")
        nets.veth(sa, "sa_net", sb, "sb_net")
        nets.veth(pb, "eth0", sb, "sb_pod")
        for pod, addr_, sg, sg_if in ((pa, POD_A, sa, "sa_pod"), (pb, POD_B, sb, "sb_pod")):
            sh("ip", "-n", pod, "link", "set", "eth0", "mtu", str(POD_MTU))
            sh("ip", "-n", sg, "link", "set", sg_if, "mtu", str(POD_MTU))
            sh("ip", "-n", pod, "addr", "add", f"{addr_}/32", "dev", "eth0")
            sh("ip", "-n", pod, "route", "add", GW, "dev", "eth0", "scope", "link")
            sh("ip", "-n", pod, "route", "add", "default", "via", GW, "dev", "eth0")
            sh("ip", "-n", pod, "neigh", "replace", GW, "lladdr", mac(sg, sg_if).hex(":"),
               "dev", "eth0", "nud", "permanent")
            sh("ip", "netns", "exec", pod, "ethtool", "-K", "eth0", "tso", "off", "gso", "off",
               "tx", "off")
        for sg, ifs in ((sa, ("sa_pod", "sa_net")), (sb, ("sb_pod", "sb_net"))):
            for i in ifs:
                sh("ip", "netns", "exec", sg, "ethtool", "-K", i, "gro", "off")
        idx = {n: ifindex(ns, n) for ns, n in ((sa, "sa_pod"), (sa, "sa_net"), (sb, "sb_pod"),
                                               (sb, "sb_net"))}
        for sg, tag, pod_if, net_if in ((sa, "a", "sa_pod", "sa_net"),
                                        (sb, "b", "sb_pod", "sb_net")):
            fp = fps[tag] = kernel.FastPath(
                os.path.join(pins.PIN_ROOT, f"fpt{os.getpid()}-l4{tag}"), flows_max=64)
            with in_netns(sg):
                fp.attach([idx[net_if]])
                fp.attach_pods([idx[pod_if]])
            fp.set_pod(idx[pod_if], POD_A if tag == "a" else POD_B)
            fp.set_generation(1)
        # names: the service (requests) and the client pod (replies)
        to_svc = dmsc_header("/svc/web", "/pod/a", flow_id=1)
        to_client = dmsc_header("/pod/a", "/svc/web", flow_id=1)
        # sgA: podA's packets to the VIP go out by name; replies by name come in
        fps["a"].install_l4(layout.l4_key(POD_A, VIP, CPORT, SPORT, 6), layout.l4_value(
            idx["sa_net"], 1, 1, mac(sb, "sb_net"), mac(sa, "sa_net"), NET_MTU, 0, None, to_svc))
        fps["a"].install(layout.flow_key(to_client), layout.flow_value(
            idx["sa_pod"], 2, 1, mac(pa, "eth0"), mac(sa, "sa_pod"), POD_MTU, idx["sa_net"],
            action=layout.ACT_DECAP))
        # sgB: requests by name come in and are DNATed to podB; podB's replies are SNATed
        fps["b"].install(layout.flow_key(to_svc), layout.flow_value(
            idx["sb_pod"], 2, 1, mac(pb, "eth0"), mac(sb, "sb_pod"), POD_MTU, idx["sb_net"],
            action=layout.ACT_DECAP, nat_addr=POD_B))
        fps["b"].install_l4(layout.l4_key(POD_B, POD_A, SPORT, CPORT, 6), layout.l4_value(
            idx["sb_net"], 1, 1, mac(sa, "sa_net"), mac(sb, "sb_net"), NET_MTU, 0, VIP, to_client))
        # what the Python side would read: packet sockets after tc ingress
        caps = [_sock(sa, "sa_pod", 0x0800), _sock(sa, "sa_net", wire.ETHERTYPE),
                _sock(sb, "sb_pod", 0x0800), _sock(sb, "sb_net", wire.ETHERTYPE)]
        socks += caps
        with in_netns(pb):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(ls)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((POD_B, SPORT))
        ls.listen(1)
        ls.settimeout(30)
        with in_netns(pa):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(c)
        c.bind((POD_A, CPORT))
        c.settimeout(30)
        request, reply = os.urandom(1 << 20), os.urandom(1 << 20)
        import threading
        result: dict = {}
        t = threading.Thread(target=_serve_once, args=(ls, result, reply), daemon=True)
        t.start()
        try:
            c.connect((VIP, SPORT))
        except OSError as exc:          # say what the programs did with the SYN
            raise AssertionError(f"connect: {exc}; verdicts sgA {fps['a'].read_verdicts()}, "
                                 f"sgB {fps['b'].read_verdicts()}") from exc
        assert c.getpeername() == (VIP, SPORT)         # the client only ever sees the VIP
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        got = recv_all(c)
        t.join(30)
        assert "error" not in result, result.get("error")
        assert result["peer"] == (POD_A, CPORT)        # the server sees the client's address
        assert result["got"] == request
        assert got == reply

        seen = []
        for s in caps:
            seen += _drain(s, 100000, 0.2)
        assert _connection_frames(seen, (CPORT, SPORT)) == []
        va, vb = fps["a"].read_verdicts(), fps["b"].read_verdicts()
        for v in (va, vb):        # nothing passed up or dropped; hits count in their flows
            bad = {k: n for k, n in v.items() if n}
            assert bad == {}, bad
        # every packet of the connection went through the kernel entries, both ways
        a_out, a_in = fps["a"].read_flow_stats([1])[1], fps["a"].read_flow_stats([2])[2]
        b_in, b_out = fps["b"].read_flow_stats([2])[2], fps["b"].read_flow_stats([1])[1]
        assert a_out.packets == b_in.packets > 0
        assert b_out.packets == a_in.packets > 0
        assert a_out.bytes - a_out.packets * len(to_svc) == b_in.bytes > len(request)
        assert b_out.bytes - b_out.packets * len(to_client) == a_in.bytes > len(reply)
        # received: the pod's IPv4 packets (encap), the frames past Ethernet (decap)
        assert a_out.rx_bytes == b_in.bytes and b_in.rx_bytes == a_out.bytes
        assert b_out.rx_bytes == a_in.bytes and a_in.rx_bytes == b_out.bytes
        for st in (a_out, b_in, b_out, a_in):           # SYN, ACK, FIN seen each way
            assert st.tcp_flags & 0x13 == 0x13, hex(st.tcp_flags)
            assert st.peer_packets == 0                 # encap/decap: never to the peer
    finally:
        for s in socks:
            s.close()
        for tag, fp in fps.items():
            with in_netns(nets.made[1] if tag == "a" else nets.made[2]):
                fp.close()
        nets.cleanup()


# ------------------------------------------------------------------ the out interface
def _set_link(env, ifname: str, state: str, ns: str = "") -> None:
    sh("ip", "-n", ns or env.ns, "link", "set", ifname, state)


def test_an_out_interface_down_in_the_kernel_passes_the_frame_up_untouched(env, fp):
    """The entry is current (user space has not heard of the cut yet: same generation),
    but its out interface is down (admin, as `ip link set down`) or has lost its carrier
    (the peer down): nothing is rewritten, nothing counted but the verdict."""
    pkt = packet(dst="/s", src="/h", hop_limit=9, flow_id=77, seq=3)
    env.install(pkt)
    data = frame(pkt)
    for down in ("out0", "out0p"):
        fp.reset_verdicts()
        _set_link(env, down, "down")
        try:
            r = env.run(data)
        finally:
            _set_link(env, down, "up")
        assert r.retval == libbpf.TC_ACT_OK and r.data == data, down
        assert verdict_delta({k: 0 for k in layout.VERDICTS}, fp.read_verdicts()) == \
            {"out_down": 1}, down
        assert fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT] == layout.FlowStats(), down
    r = env.run(data)                                  # up again: a hit
    assert r.retval == libbpf.TC_ACT_REDIRECT
    assert fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT].packets == 1


def test_a_carried_packet_is_not_sent_into_a_down_interface_either(env, pod_fp):
    """The pod program's out face (a network face) down in the kernel: passed up."""
    fp = pod_fp
    pkt = tcp_packet(POD_ADDR, PEER_ADDR, 40000, 80, flags=0x10)
    install_l4_for(env, pkt)
    _set_link(env, "out0", "down")
    try:
        r = env.run_pod(eth_ipv4(pkt))
    finally:
        _set_link(env, "out0", "up")
    assert r.retval == libbpf.TC_ACT_OK and r.data == eth_ipv4(pkt)
    assert fp.read_verdicts()["out_down"] == 1
    assert fp.read_flow_stats([L4_SLOT])[L4_SLOT] == layout.FlowStats()


PEER_PKT = packet(dst="/s", src="/h", hop_limit=9, flow_id=77, seq=3)


def _install_peer_flow(env, flags: int) -> None:
    env.install(PEER_PKT, out_ifindex=env.peer_if, flags=flags)


@pytest.fixture
def peer_face(env, fp):
    """x0: a veth of the test namespace whose peer x0p lives in a second namespace; a
    flow towards it flagged FLOW_PEER (it may redirect to the peer). Its frame."""
    if not getattr(env, "peer_if", None):
        ns2 = env.nets.add("u")
        env.nets.veth(env.ns, "x0", ns2, "x0p")
        env.peer_if, env.ns2 = ifindex(env.ns, "x0"), ns2
    _install_peer_flow(env, layout.FLOW_PEER)
    return frame(PEER_PKT)


def _via_peer(env, fp, data: bytes) -> int:
    """Run one hit; 1 if it went to the peer's ingress, 0 if through the interface."""
    before = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    r = env.run(data)
    assert r.retval == libbpf.TC_ACT_REDIRECT
    after = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert after.packets == before.packets + 1
    return after.peer_packets - before.peer_packets


def test_a_forwarded_frame_goes_to_the_peer_only_where_nothing_would_see_it_leave(env, fp,
                                                                                   peer_face):
    assert _via_peer(env, fp, peer_face) == 1          # noqueue, no capture: straight there
    _install_peer_flow(env, 0)                         # not known as a veth with a peer
    assert _via_peer(env, fp, peer_face) == 0
    _install_peer_flow(env, layout.FLOW_PEER)
    # a shaper (tbf) on the out interface: through it, so that it shapes
    sh("ip", "netns", "exec", env.ns, "tc", "qdisc", "replace", "dev", "x0", "root", "tbf",
       "rate", "100mbit", "burst", "32kbit", "latency", "50ms")
    try:
        assert _via_peer(env, fp, peer_face) == 0
    finally:
        sh("ip", "netns", "exec", env.ns, "tc", "qdisc", "del", "dev", "x0", "root")
    assert _via_peer(env, fp, peer_face) == 1
    # a capture on the out interface, then on every interface of the namespace
    for bind_to in ("x0", ""):
        with in_netns(env.ns):
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        try:
            if bind_to:
                cap.bind((bind_to, 0))
            assert _via_peer(env, fp, peer_face) == 0, bind_to or "any"
        finally:
            cap.close()
        assert _via_peer(env, fp, peer_face) == 1
    fs = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert (fs.packets, fs.peer_packets) == (8, 4)
    v = fp.read_verdicts()
    assert no_hits_in_verdicts(v) and sum(v.values()) == 0


def test_a_decapsulated_packet_never_goes_to_the_peer(env, fp, peer_face):
    """The EtherType changes: the receiving side must parse the frame again, which only
    the interface's transmit path does."""
    pkt = carried(tcp_of_len(PEER_ADDR, POD_ADDR, CPORT, SPORT, 40))
    install_decap(env, pkt, out_ifindex=env.peer_if, flags=layout.FLOW_PEER)
    r = env.run(frame(pkt))
    assert r.retval == libbpf.TC_ACT_REDIRECT
    fs = fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT]
    assert (fs.packets, fs.bytes, fs.peer_packets) == (1, 40, 0)
    assert no_hits_in_verdicts(fp.read_verdicts())
