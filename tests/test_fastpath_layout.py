"""C and Python agree: fastpath.h vs layout.py, libbpf 1.1's headers vs libbpf.py's ctypes.

A host C probe (compiled with the system cc/clang against fastpath.h,
/usr/include/bpf/*.h and linux/bpf.h) prints sizes and offsets; the Python
side must match. Plus the pure-Python key/value helpers.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from ctypes import sizeof
from pathlib import Path

import pytest

from fastpath_helpers import build, layout, libbpf, packet, wire

HEADER = build.HERE / "fastpath.h"
CTYPES = (libbpf.bpf_test_run_opts, libbpf.bpf_map_batch_opts, libbpf.bpf_map_create_opts)

PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "fastpath.h"
#define S(t) printf("size %s %zu\n", #t, sizeof(struct t))
#define O(t, f) printf("off %s.%s %zu\n", #t, #f, offsetof(struct t, f))
int main(void) {
  @LAYOUT@
  @CTYPES@
  S(__sk_buff); O(__sk_buff, len); O(__sk_buff, mark); O(__sk_buff, priority);
  O(__sk_buff, ingress_ifindex); O(__sk_buff, ifindex); O(__sk_buff, gso_segs);
  O(__sk_buff, gso_size);
  S(bpf_prog_info); O(bpf_prog_info, type); O(bpf_prog_info, id); O(bpf_prog_info, jited_prog_len);
  O(bpf_prog_info, xlated_prog_len); O(bpf_prog_info, name); O(bpf_prog_info, verified_insns);
  S(bpf_map_info); O(bpf_map_info, type); O(bpf_map_info, id); O(bpf_map_info, key_size);
  O(bpf_map_info, value_size); O(bpf_map_info, max_entries); O(bpf_map_info, map_flags);
  O(bpf_map_info, name);
  printf("const FP_KEY_MAX %d\nconst FP_FLOWS_MAX %d\nconst FP_VERDICTS_MAX %d\n"
         "const FP_FLOW_PEER %d\nconst FP_V__COUNT %d\n",
         FP_KEY_MAX, FP_FLOWS_MAX, FP_VERDICTS_MAX, FP_FLOW_PEER, FP_V__COUNT);
  printf("const FP_PODS_MAX %d\nconst FP_L4_HDR_MAX %d\nconst FP_ACT_FORWARD %d\n"
         "const FP_ACT_DECAP %d\nconst FP_TYPE_IPV4 %d\nconst FP_HDR_LEN %d\n",
         FP_PODS_MAX, FP_L4_HDR_MAX, FP_ACT_FORWARD, FP_ACT_DECAP, FP_TYPE_IPV4, FP_HDR_LEN);
  printf("const FP_MARK_GATEWAY %u\nconst FP_VIP_NET %u\nconst FP_VIP_MASK %u\n",
         FP_MARK_GATEWAY, FP_VIP_NET, FP_VIP_MASK);
  return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not Path("/usr/include/bpf/libbpf.h").exists():
        pytest.skip("needs a host C compiler and libbpf-dev")
    d = tmp_path_factory.mktemp("probe")
    src = d / "probe.c"
    structs = []
    for name, fields in layout.OFFSETS.items():  # every struct and field layout.py knows
        structs.append(f"S({name});")
        structs += [f"O({name}, {f});" for f in fields]
    lines = []
    for cls in CTYPES:  # every field of every ctypes struct, generated
        lines.append(f"S({cls.__name__});")
        lines += [f"O({cls.__name__}, {f});" for f, *_ in cls._fields_]
    src.write_text(PROBE.replace("@CTYPES@", "\n  ".join(lines))
                   .replace("@LAYOUT@", "\n  ".join(structs)))
    exe = d / "probe"
    subprocess.run([cc, f"-I{build.HERE}", f"-I{build.multiarch_include()}", str(src), "-o",
                    str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    sizes, offs, consts = {}, {}, {}
    for line in out.splitlines():
        kind, name, val = line.split()
        {"size": sizes, "off": offs, "const": consts}[kind][name] = int(val)
    return sizes, offs, consts


def test_fp_structs_match_header(probe):
    sizes, offs, _ = probe
    assert set(layout.SIZES) == set(layout.OFFSETS)
    for name, size in layout.SIZES.items():
        assert sizes[name] == size, name
        for field, off in layout.OFFSETS[name].items():
            assert offs[f"{name}.{field}"] == off, f"{name}.{field}"
    # the struct formats pack fields at those offsets
    v = layout.flow_value(0x11111111, 0x2222, 0x3333333333, b"\xaa" * 6, b"\xbb" * 6, 0x4444,
                          0x55555555, layout.FLOW_PEER, 0x77777777)
    o = layout.OFFSETS["fp_flow"]
    assert int.from_bytes(v[o["in_ifindex"]:o["in_ifindex"] + 4], "little") == 0x55555555
    assert int.from_bytes(v[o["flags"]:o["flags"] + 2], "little") == layout.FLOW_PEER
    assert v[o["dst_mac"]:o["dst_mac"] + 6] == b"\xaa" * 6
    assert v[o["src_mac"]:o["src_mac"] + 6] == b"\xbb" * 6
    assert int.from_bytes(v[o["mtu"]:o["mtu"] + 2], "little") == 0x4444
    assert int.from_bytes(v[o["priority"]:o["priority"] + 4], "little") == 0x77777777
    assert int.from_bytes(v[o["gen"]:o["gen"] + 8], "little") == 0x3333333333
    assert int.from_bytes(v[o["action"]:o["action"] + 4], "little") == layout.ACT_FORWARD
    assert v[o["nat_addr"]:o["nat_addr"] + 4] == bytes(4)
    v = layout.flow_value(1, 2, 3, bytes(6), bytes(6), 1500, 4, action=layout.ACT_DECAP,
                          nat_addr="10.96.0.10")
    assert int.from_bytes(v[o["action"]:o["action"] + 4], "little") == layout.ACT_DECAP
    assert v[o["nat_addr"]:o["nat_addr"] + 4] == bytes([10, 96, 0, 10])   # network order


def test_l4_structs_pack_at_the_header_offsets(probe):
    sizes, offs, _ = probe
    o = layout.OFFSETS["fp_l4"]
    hdr = bytes(range(1, 61))
    v = layout.l4_value(0x11111111, 0x2222, 0x3333333333, b"\xaa" * 6, b"\xbb" * 6, 0x4444,
                        0x77777777, "192.0.2.9", hdr)
    assert len(v) == sizes["fp_l4"] == layout.L4_VALUE.size
    assert int.from_bytes(v[o["out_ifindex"]:o["out_ifindex"] + 4], "little") == 0x11111111
    assert int.from_bytes(v[o["flow_slot"]:o["flow_slot"] + 4], "little") == 0x2222
    assert int.from_bytes(v[o["gen"]:o["gen"] + 8], "little") == 0x3333333333
    assert v[o["dst_mac"]:o["dst_mac"] + 6] == b"\xaa" * 6
    assert v[o["src_mac"]:o["src_mac"] + 6] == b"\xbb" * 6
    assert int.from_bytes(v[o["mtu"]:o["mtu"] + 2], "little") == 0x4444
    assert int.from_bytes(v[o["priority"]:o["priority"] + 4], "little") == 0x77777777
    assert v[o["snat_addr"]:o["snat_addr"] + 4] == bytes([192, 0, 2, 9])
    assert int.from_bytes(v[o["hdr_len"]:o["hdr_len"] + 2], "little") == 60
    assert v[o["hdr"]:] == hdr + bytes(layout.FP_L4_HDR_MAX - 60)
    k = layout.l4_key("10.200.1.2", bytes([10, 96, 0, 10]), 40000, 8080, layout.IPPROTO_TCP)
    ko = layout.OFFSETS["fp_l4_key"]
    assert len(k) == sizes["fp_l4_key"]
    assert k[ko["saddr"]:ko["saddr"] + 4] == bytes([10, 200, 1, 2])
    assert k[ko["daddr"]:ko["daddr"] + 4] == bytes([10, 96, 0, 10])
    assert k[ko["sport"]:ko["sport"] + 2] == (40000).to_bytes(2, "big")   # as on the wire
    assert k[ko["dport"]:ko["dport"] + 2] == (8080).to_bytes(2, "big")
    assert k[ko["proto"]] == 6 and k[ko["pad"]:] == b"\0\0\0"
    p = layout.pod_value("10.200.1.2")
    po = layout.OFFSETS["fp_pod"]
    assert len(p) == sizes["fp_pod"]
    assert p[po["addr"]:po["addr"] + 4] == bytes([10, 200, 1, 2])
    st = layout.FLOW_STATS.pack(1, 2, 3, 4, 5, 6)
    so = layout.OFFSETS["fp_flow_stats"]
    assert [int.from_bytes(st[so[f]:so[f] + 8], "little") for f in layout.FlowStats._fields] == \
        [1, 2, 3, 4, 5, 6]
    assert sizes["fp_flow_stats"] == 64 and st[so["pad"]:] == bytes(16)   # one cache line


def test_constants_match_header(probe):
    _, _, c = probe
    python_side = {"FP_KEY_MAX": layout.FP_KEY_MAX, "FP_FLOWS_MAX": layout.FP_FLOWS_MAX,
                   "FP_VERDICTS_MAX": layout.FP_VERDICTS_MAX, "FP_FLOW_PEER": layout.FLOW_PEER,
                   "FP_V__COUNT": len(layout.VERDICTS),
                   "FP_PODS_MAX": layout.FP_PODS_MAX, "FP_L4_HDR_MAX": layout.FP_L4_HDR_MAX,
                   "FP_ACT_FORWARD": layout.ACT_FORWARD, "FP_ACT_DECAP": layout.ACT_DECAP,
                   "FP_TYPE_IPV4": layout.TYPE_IPV4, "FP_MARK_GATEWAY": layout.MARK_GATEWAY}
    assert {k: c[k] for k in python_side} == python_side
    assert layout.TYPE_IPV4 == int(wire.PacketType.IPV4)
    from forwarder.gateway.addresses import VIP_NET
    assert (c["FP_VIP_NET"], c["FP_VIP_MASK"]) == (layout.VIP_NET, layout.VIP_MASK) == (
        int(VIP_NET.network_address), int(VIP_NET.netmask))
    assert c["FP_HDR_LEN"] == layout.HDR_LEN


def test_verdict_names_follow_the_enum():
    text = HEADER.read_text()
    body = text[text.index("enum fp_verdict {"):text.index("FP_V__COUNT")]
    enum = [m.lower() for m in re.findall(r"^\s*FP_V_([A-Z0-9_]+)", body, re.M)]
    assert tuple(enum) == layout.VERDICTS
    # the indices the runtime already reads keep their places
    assert layout.VERDICTS[:15] == (
        "redirected", "not_dmsc", "short", "not_fast", "bad_length", "key_too_long",
        "unknown_face", "miss", "stale", "same_face", "out_down", "hop_limit", "too_big",
        "rewrite_error", "redirect_error")
    assert set(layout.PASSED_UP) | set(layout.HANDLED) | set(layout.DROPPED) == \
        set(layout.VERDICTS)


def test_libbpf_ctypes_match_headers(probe):
    sizes, offs, _ = probe
    for cls in CTYPES:
        name = cls.__name__
        assert sizeof(cls) == sizes[name], name
        for field, *_ in cls._fields_:
            assert getattr(cls, field).offset == offs[f"{name}.{field}"], f"{name}.{field}"
    assert sizes["__sk_buff"] == libbpf.SKB_CTX_SIZE
    skb = {"len": libbpf.SKB_OFF_LEN, "mark": libbpf.SKB_OFF_MARK,
           "priority": libbpf.SKB_OFF_PRIORITY, "ingress_ifindex": libbpf.SKB_OFF_INGRESS_IFINDEX,
           "ifindex": libbpf.SKB_OFF_IFINDEX, "gso_segs": libbpf.SKB_OFF_GSO_SEGS,
           "gso_size": libbpf.SKB_OFF_GSO_SIZE}
    assert {k: offs[f"__sk_buff.{k}"] for k in skb} == skb
    assert sizes["bpf_prog_info"] == libbpf.PROG_INFO_SIZE
    for f, off in libbpf.PROG_INFO_OFF.items():
        assert offs[f"bpf_prog_info.{f}"] == off, f
    assert sizes["bpf_map_info"] == libbpf.MAP_INFO_SIZE
    for f, off in libbpf.MAP_INFO_OFF.items():
        assert offs[f"bpf_map_info.{f}"] == off, f


def test_object_btf_matches_layout():
    """The compiled object's BTF (what the kernel sees) has the same struct sizes."""
    bpftool = shutil.which("bpftool")
    obj = build.object_path()
    if bpftool is None or not obj.exists():
        pytest.skip("needs bpftool and the built object")
    out = subprocess.run([bpftool, "btf", "dump", "file", str(obj)], capture_output=True,
                         text=True, check=True).stdout
    for name, size in layout.SIZES.items():
        m = re.search(rf"STRUCT '{name}' size=(\d+)", out)
        assert m and int(m.group(1)) == size, name


# ------------------------------------------------------------------ pure helpers
def test_flow_key_is_the_name_block():
    pkt = packet(dst="/svc/video", src="/host/a", payload=b"x" * 10)
    key = layout.flow_key(pkt)
    assert len(key) == layout.KEY.size == 260
    hlen = int.from_bytes(pkt[6:8], "big")
    assert key[:2] == (hlen - 20).to_bytes(2, "little") and key[2:4] == b"\0\0"
    assert layout.key_block(key) == pkt[20:hlen] == wire.flow_key(pkt)   # Python's flow key
    assert key[4 + hlen - 20:] == bytes(256 - (hlen - 20))
    assert layout.key_from_block(wire.flow_key(pkt)) == key
    assert layout.key_from_block(b"x" * 257) is None
    with pytest.raises(ValueError):
        layout.flow_key(pkt[:39])


def test_flow_value_roundtrip_and_checks():
    v = layout.flow_value(5, 9, 3, "02:00:00:00:00:01", bytes(6), 1500, 2, priority=4)
    f = layout.decode_flow(v)
    assert f == layout.Flow(5, 9, 3, bytes.fromhex("020000000001"), bytes(6), 1500, 0, 2, 4)
    for bad in (dict(flow_slot=layout.FP_FLOWS_MAX), dict(flags=0x2), dict(mtu=70000),
                dict(dst_mac=b"\0" * 5)):
        args = dict(out_ifindex=1, flow_slot=0, gen=0, dst_mac=bytes(6), src_mac=bytes(6),
                    mtu=1500, in_ifindex=3)
        args.update(bad)
        with pytest.raises(ValueError):
            layout.flow_value(**args)


def test_stats_decoders():
    # a flow's record is one for all CPUs; the verdicts are summed over CPUs
    assert layout.decode_flow_stats(layout.FLOW_STATS.pack(3, 30, 33, 900, 0x13, 2)) == \
        layout.FlowStats(3, 30, 33, 900, 0x13, 2)
    one = [0] * layout.FP_VERDICTS_MAX
    one[1], one[7] = 5, 2                                  # not_dmsc, miss
    other = list(one)
    other[7] = 10
    verdicts = layout.decode_verdicts([layout.VERDICT_COUNTS.pack(*one),
                                       layout.VERDICT_COUNTS.pack(*other)])
    assert verdicts[1] == 10 and verdicts[7] == 12 and verdicts[0] == 0
    assert layout.decode_verdicts([]) == [0] * layout.FP_VERDICTS_MAX
    d = layout.verdict_dict([1, 2])
    assert d["redirected"] == 1 and d["not_dmsc"] == 2 and d["miss"] == 0
    assert list(d) == list(layout.VERDICTS)


def test_flow_value_actions():
    assert layout.decode_flow(layout.flow_value(1, 2, 3, bytes(6), bytes(6), 1500, 4)) == \
        layout.Flow(1, 2, 3, bytes(6), bytes(6), 1500, 0, 4, 0, layout.ACT_FORWARD, bytes(4))
    f = layout.decode_flow(layout.flow_value(1, 2, 3, bytes(6), bytes(6), 1500, 4,
                                             action=layout.ACT_DECAP, nat_addr=b"\x0a\0\0\x07"))
    assert (f.action, f.nat_addr) == (layout.ACT_DECAP, bytes([10, 0, 0, 7]))
    f = layout.decode_flow(layout.flow_value(1, 2, 3, bytes(6), bytes(6), 1500, 4,
                                             action=layout.ACT_DECAP))
    assert f.nat_addr == bytes(4)                       # DECAP without DNAT
    base = (1, 0, 0, bytes(6), bytes(6), 1500, 0)
    for bad in (dict(action=2), dict(nat_addr="10.0.0.1"),            # FORWARD with a NAT
                dict(action=layout.ACT_DECAP, nat_addr="10.0.0"),
                dict(action=layout.ACT_DECAP, nat_addr=b"\0" * 5)):
        with pytest.raises(ValueError):
            layout.flow_value(*base, **bad)


def test_l4_key_value_pod_roundtrip_and_checks():
    k = layout.l4_key("10.200.1.2", "10.96.0.10", 40000, 8080, 6)
    assert layout.decode_l4_key(k) == layout.L4Key("10.200.1.2", "10.96.0.10", 40000, 8080, 6)
    assert layout.l4_key(bytes([10, 200, 1, 2]), bytes([10, 96, 0, 10]), 40000, 8080, 6) == k
    for bad in (("10.0.0.1", "10.0.0.2", 1, 2, 1),        # ICMP: not carried
                ("10.0.0.1", "10.0.0.2", 70000, 2, 6), ("10.0.0.1", "x", 1, 2, 17)):
        with pytest.raises(ValueError):
            layout.l4_key(*bad)
    hdr = packet(type_=6, dst="/svc/web", src="/pod/a")
    v = layout.l4_value(5, 6, 7, "02:00:00:00:00:01", bytes(6), 1500, 3, None, hdr)
    e = layout.decode_l4(v)
    assert e == layout.L4Flow(5, 6, 7, bytes.fromhex("020000000001"), bytes(6), 1500, 3,
                              bytes(4), hdr)
    assert layout.decode_l4(layout.l4_value(5, 6, 7, bytes(6), bytes(6), 1500, 0,
                                            "10.96.0.10", hdr)).snat_addr == bytes([10, 96, 0, 10])
    args = (5, 6, 7, bytes(6), bytes(6), 1500, 0, None)
    assert len(layout.l4_value(*args, bytes(40))) == 168            # the shortest header
    assert len(layout.l4_value(*args, bytes(128))) == 168           # the longest
    for header in (bytes(39), bytes(129), b""):
        with pytest.raises(ValueError):
            layout.l4_value(*args, header)
    with pytest.raises(ValueError):
        layout.l4_value(5, layout.FP_FLOWS_MAX, 7, bytes(6), bytes(6), 1500, 0, None, hdr)
    assert layout.decode_pod(layout.pod_value(bytes([10, 200, 1, 2]))) == "10.200.1.2"
    for bad in ("0.0.0.0", "10.0.0.256", bytes(3)):
        with pytest.raises(ValueError):
            layout.pod_value(bad)


def test_tcx_attach_type_matches_the_running_kernel():
    """BPF_TCX_INGRESS is newer than libbpf 1.1's headers: libbpf.py carries the number,
    checked here against the kernel's own BTF."""
    bpftool = shutil.which("bpftool")
    if bpftool is None or not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("needs bpftool and the kernel's BTF")
    out = subprocess.run([bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"'BPF_TCX_INGRESS' val=(\d+)", out)
    assert m and int(m.group(1)) == libbpf.BPF_TCX_INGRESS
