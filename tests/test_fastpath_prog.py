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

from fastpath_helpers import (DST_MAC, Namespaces, Name, build, frame, ifindex, in_netns, kernel,
                        layout, libbpf, mac, names, packet, patch, pins, require_kernel, wire)

pytestmark = pytest.mark.netns

GEN = 7
FLOW_SLOT, IN_SLOT, OUT_SLOT, PREFIX_SLOT = 3, 1, 2, 5
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
        self.in_if = ifindex(self.ns, "in0")
        self.out_if = ifindex(self.ns, "out0")
        self.stranger_if = ifindex(self.ns, "in0p")  # not a face
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

    def value(self, **kw) -> bytes:
        args = dict(out_ifindex=self.out_if, flow_slot=FLOW_SLOT, gen=GEN, dst_mac=NEW_DST,
                    src_mac=NEW_SRC, mtu=1500, out_face_slot=OUT_SLOT, prefix_slot=PREFIX_SLOT,
                    priority=PRIORITY)
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
    """A clean state for each test: no flows, two faces, generation GEN, zero counters."""
    f = env.fp
    f.clear_flows()
    for ifidx in list(f.faces()):
        f.remove_face(ifidx)
    f.set_face(env.in_if, IN_SLOT)
    f.set_face(env.out_if, OUT_SLOT)
    f.set_generation(GEN)
    f.reset_verdicts()
    f.reset_face_stats(range(layout.FP_FACES_MAX))
    f.reset_flow_stats(range(16))
    f.reset_prefix_stats(range(16))
    return f


def verdict_delta(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


# ------------------------------------------------------------------ hits
def test_object_and_maps(env, fp):
    info = fp.prog_info()
    assert info.name == layout.PROG_NAME and info.type == 3  # BPF_PROG_TYPE_SCHED_CLS
    assert info.xlated_prog_len > 0 and info.verified_insns > 0
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
    assert fp.read_verdicts()["redirected"] == 1


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
    assert (fs.packets, fs.bytes) == (n, n * total)
    assert t0 <= fs.last_ns <= t1                    # bpf_ktime_get_ns is CLOCK_MONOTONIC
    faces = fp.read_face_stats()
    assert faces == {IN_SLOT: layout.FaceStats(n, n * (len(data) - 14), 0, 0),
                     OUT_SLOT: layout.FaceStats(0, 0, n, n * total)}
    assert fp.read_prefix_stats() == {PREFIX_SLOT: layout.PrefixStats(n, n * total)}
    v = fp.read_verdicts()
    assert v["redirected"] == n and sum(v.values()) == n
    # repeat= runs the program 50 times on the same skb in one syscall: each run
    # rewrites it again (hop limit 255 -> 205), and the counters follow
    with in_netns(env.ns):
        r = libbpf.test_run(fp.prog_fd, patch(data, 14 + 3, b"\xff"),
                            libbpf.skb_ctx(ifindex=env.in_if), repeat=50)
    assert r.retval == libbpf.TC_ACT_REDIRECT and r.data[14 + 3] == 205
    assert fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT].packets == n + 50


def test_no_prefix_slot_counts_nothing(env, fp):
    pkt = packet()
    env.install(pkt, prefix_slot=layout.NO_PREFIX)
    assert env.run(frame(pkt)).retval == libbpf.TC_ACT_REDIRECT
    assert fp.read_prefix_stats() == {}
    assert fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT].packets == 1


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
        ("bad_type_6", frame(with_hdr(type=6)), 0, key_ok, "not_fast"),
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
        ("unknown_ingress_ifindex", frame(good), env.stranger_if, key_ok, "unknown_face"),
        ("out_face_down", frame(good), 0,
         lambda f: (env.install(good), f.set_face_down(env.out_if, OUT_SLOT, True)), "out_down"),
        ("out_face_removed", frame(good), 0,
         lambda f: (env.install(good), f.remove_face(env.out_if)), "out_down"),
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
            "truncated_total", "bad_version", "bad_version_0", "bad_type_6", "bad_type_0",
            "bad_type_0x99", "control_hello_0x10", "local_only_register_0x20", "telemetry_flag",
            "reserved_flag", "bad_length_header_below_names", "bad_length_header_over_total",
            "bad_length_total_below_40", "bad_fragment_count_0", "bad_fragment_index",
            "hop_limit_1", "hop_limit_0", "over_mtu", "stale_generation",
            "older_generation_entry", "same_in_out_face", "unknown_ingress_ifindex",
            "out_face_down", "out_face_removed", "fnv_collision_not_installed",
            "forged_name_same_hashes"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_passed_up_unchanged(env, fp, case_id):
    cases = {c[0]: c for c in _cases(env)}
    assert set(cases) == set(CASE_IDS)
    _, data, ifidx, setup, verdict = cases[case_id]
    if setup is not None:
        setup(fp)
    before = fp.read_verdicts()
    r = env.run(data, ifidx)
    assert r.retval == libbpf.TC_ACT_OK
    assert r.data == data                                         # never modified
    assert libbpf.skb_field(r.ctx, libbpf.SKB_OFF_PRIORITY) == 0  # nor its priority
    assert verdict_delta(before, fp.read_verdicts()) == {verdict: 1}
    assert fp.read_face_stats() == {}
    assert fp.read_prefix_stats() == {}
    assert fp.read_flow_stats([FLOW_SLOT])[FLOW_SLOT] == layout.FlowStats()


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


# ------------------------------------------------------------------ the Python API
def test_map_api_and_pins(env, fp):
    pkt = packet(dst="/a/b/c")
    key = layout.flow_key(pkt)
    env.install(pkt, priority=3)
    assert fp.lookup(key) == layout.decode_flow(env.value(priority=3))
    assert fp.flow_keys() == [key]
    assert fp.faces() == {env.in_if: (IN_SLOT, 0), env.out_if: (OUT_SLOT, 0)}
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


def test_attach_detach_tc(env, fp):
    ns = env.ns
    with in_netns(ns):
        fp.attach([env.in_if])
        assert libbpf.tc_query(env.in_if) == fp.prog_id
    shown = os.popen(f"tc -n {ns} filter show dev in0 ingress").read()
    assert "fp_ingress" in shown and "direct-action" in shown
    # a clsact qdisc that was there before stays after detach
    os.system(f"tc -n {ns} qdisc add dev out0 clsact")
    with in_netns(ns):
        fp.attach([env.out_if])
        assert fp.attached() == sorted([env.in_if, env.out_if])
        fp.detach_all()
        assert libbpf.tc_query(env.in_if) is None
        assert libbpf.tc_query(env.out_if) is None
    assert "clsact" not in os.popen(f"tc -n {ns} qdisc show dev in0").read()  # ours: removed
    assert "clsact" in os.popen(f"tc -n {ns} qdisc show dev out0").read()      # not ours: kept
    os.system(f"tc -n {ns} qdisc del dev out0 clsact")


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
        fp.set_face(ra, 0)
        fp.set_face(rb, 1)
        fp.set_generation(1)
        pkt = packet(dst="/svc/e2e", src="/host/a", payload=b"e" * 40, hop_limit=16)
        fp.install(layout.flow_key(pkt), layout.flow_value(
            out_ifindex=rb, flow_slot=9, gen=1, dst_mac=mac(b, "b0"), src_mac=mac(r, "rb"),
            mtu=1500, out_face_slot=1, prefix_slot=layout.NO_PREFIX, priority=0))
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
        assert v["redirected"] == n and v["miss"] == 1
        st = fp.read_flow_stats([9])[9]
        assert (st.packets, st.bytes) == (n, n * len(pkt))
        assert 14 + len(pkt) > 60
        rx_bytes = n * len(pkt) + 16 * (n // 2)           # the padding is counted on rx
        assert fp.read_face_stats() == {0: layout.FaceStats(n, rx_bytes, 0, 0),
                                        1: layout.FaceStats(0, 0, n, n * len(pkt))}
        for s in (sa, sb, sr):
            s.close()
    finally:
        if fp is not None:
            with in_netns(r):
                fp.close()
        nets.cleanup()
