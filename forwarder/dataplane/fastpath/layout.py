"""The fast path's map layouts on the Python side: pure data, no I/O.

Twin of fastpath.h (the one place for the C side); tests/test_layout.py compiles
a probe against that header and checks every size and offset below. Integers
are in host byte order ('=' formats: native order, standard sizes, no
alignment) because the program reads them as plain C fields; MAC addresses and
key bytes are copied to and from the wire unchanged.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

# ---------------------------------------------------------------- constants (fastpath.h)
FP_KEY_MAX = 256
FP_KEY_SHORT = 60          # keys of at most this many bytes live in fp_flows_short
FP_FLOWS_MAX = 65536
FP_VERDICTS_MAX = 32
FP_PODS_MAX = 256
FP_L4_HDR_MAX = 128        # longest DMSC header an fp_l4 entry carries
FLOW_PEER = 0x1            # fp_flow.flags: the out face is a veth whose peer is in another namespace
FLOW_FLAGS = FLOW_PEER

ETHERTYPE = 0x88B5
ETH_HLEN = 14
HDR_LEN = 40
KEY_OFF = 20               # the flow key starts at dst_hash
MIN_FRAME = 60
TYPE_IPV4 = 6              # DMSC type 0x06: the payload is one IPv4 packet

# fp_flow.action
ACT_FORWARD = 0            # rewrite the DMSC frame, redirect it
ACT_DECAP = 1              # type 6: strip Ethernet + DMSC, (DNAT,) deliver the IPv4 packet
ACTIONS = (ACT_FORWARD, ACT_DECAP)

IPPROTO_TCP = 6
IPPROTO_UDP = 17

MARK_GATEWAY = 0xD35C0001  # skb->mark of what fp_pod_ingress passes up for the gateway
VIP_NET, VIP_MASK = 0x0A600000, 0xFFF00000   # 10.96.0.0/12 (forwarder.gateway.addresses)
PROG_NAME = "fp_ingress"          # SEC("tc") program for network faces
POD_PROG_NAME = "fp_pod_ingress"  # SEC("tc") program for pod-facing veths
PROG_NAMES = (PROG_NAME, POD_PROG_NAME)
MAP_NAMES = ("fp_flows", "fp_flows_short", "fp_gen", "fp_flow_stats", "fp_verdicts",
             "fp_pods", "fp_l4")

# fp_verdicts slots, in index order (enum fp_verdict). The three HANDLED ones are not
# counted by the kernel: a hit counts in its flow's record only, and user space adds
# them up by entry kind (forwarder.runtime.offload).
VERDICTS = (
    "redirected",      # 0: rewritten and redirected
    "not_dmsc",        # EtherType not 0x88B5, or a VLAN tag present
    "short",           # fewer than 14 + 40 bytes
    "not_fast",        # version != 1, type not 1..5 (control, unknown), flags != 0, bad fragment
    "bad_length",      # header_length < 40 + names, > total_length, total_length > bytes present
    "key_too_long",    # header_length - 20 > FP_KEY_MAX
    "unknown_face",    # fp_pod_ingress: ingress ifindex not in fp_pods
    "miss",            # flow key not installed
    "stale",           # entry gen != fp_gen
    "same_face",       # out_ifindex == ingress ifindex
    "out_down",        # out interface down or without carrier (the kernel's own state)
    "hop_limit",       # hop_limit <= 1
    "too_big",         # total_length > entry mtu
    "rewrite_error",   # bpf_skb_change_tail / bpf_skb_store_bytes failed
    "redirect_error",  # bpf_redirect did not return TC_ACT_REDIRECT
    "encapsulated",    # fp_pod_ingress: IPv4 packet put in a DMSC header and redirected
    "decapsulated",    # fp_ingress, DECAP entry: the inner IPv4 packet redirected to a pod
    "not_ipv4",        # fp_pod_ingress: EtherType not 0x0800, or a VLAN tag present
    "spoofed",         # fp_pod_ingress: source address is not the pod's: DROPPED
    "ip_fragment",     # fp_pod_ingress: MF flag or fragment offset set
    "not_l4",          # fp_pod_ingress: not TCP/UDP, or its header (20/8 bytes) past the packet
    "gso",             # fp_pod_ingress: skb->gso_segs > 1
    "bad_inner",       # not IPv4 (version, IHL >= 5), lengths inconsistent; DECAP of a type != 6
    "in_face",         # fp_ingress: the entry was decided for another in face
)
VERDICT = {name: i for i, name in enumerate(VERDICTS)}
# Frames the programs hand on (redirect) and frames they drop; the rest is passed up
# unchanged. rewrite_error/redirect_error: passed up by the FORWARD rewrite,
# dropped (TC_ACT_SHOT) after an encap/decap's first write.
HANDLED = ("redirected", "encapsulated", "decapsulated")
DROPPED = ("spoofed",)
PASSED_UP = tuple(v for v in VERDICTS if v not in HANDLED and v not in DROPPED)
assert len(VERDICTS) <= FP_VERDICTS_MAX

# ---------------------------------------------------------------- structs
U32 = struct.Struct("=I")                       # array/hash keys: slot, ifindex
U64 = struct.Struct("=Q")                       # fp_gen value
KEY = struct.Struct(f"=HH{FP_KEY_MAX}s")        # struct fp_key
KEY_SHORT = struct.Struct(f"=HH{FP_KEY_SHORT}s")  # struct fp_key_short
FLOW = struct.Struct("=IIQ6s6sHHIII4s")        # struct fp_flow
FLOW_STATS = struct.Struct("=6Q16x")            # struct fp_flow_stats
VERDICT_COUNTS = struct.Struct(f"={FP_VERDICTS_MAX}Q")  # struct fp_verdicts
POD = struct.Struct("=4s")                      # struct fp_pod
L4_KEY = struct.Struct("!4s4sHHB3x")            # struct fp_l4_key (all network order)
L4_VALUE = struct.Struct(f"=IIQ6s6sHHI4s{FP_L4_HDR_MAX}s")  # struct fp_l4

# What test_layout checks against the compiled header.
SIZES = {"fp_key": 260, "fp_key_short": 64, "fp_flow": 48, "fp_flow_stats": 64,
         "fp_verdicts": 256, "fp_pod": 4, "fp_l4_key": 16, "fp_l4": 168}
OFFSETS = {
    "fp_key": {"len": 0, "pad": 2, "bytes": 4},
    "fp_key_short": {"len": 0, "pad": 2, "bytes": 4},
    "fp_flow": {"out_ifindex": 0, "flow_slot": 4, "gen": 8, "dst_mac": 16, "src_mac": 22,
                "mtu": 28, "flags": 30, "in_ifindex": 32, "priority": 36,
                "action": 40, "nat_addr": 44},
    "fp_flow_stats": {"packets": 0, "bytes": 8, "rx_bytes": 16, "last_ns": 24, "tcp_flags": 32,
                      "peer_packets": 40, "pad": 48},
    "fp_verdicts": {"verdicts": 0},
    "fp_pod": {"addr": 0},
    "fp_l4_key": {"saddr": 0, "daddr": 4, "sport": 8, "dport": 10, "proto": 12, "pad": 13},
    "fp_l4": {"out_ifindex": 0, "flow_slot": 4, "gen": 8, "dst_mac": 16, "src_mac": 22,
              "mtu": 28, "hdr_len": 30, "priority": 32, "snat_addr": 36, "hdr": 40},
}
for _name, _st in (("fp_key", KEY), ("fp_key_short", KEY_SHORT), ("fp_flow", FLOW),
                   ("fp_flow_stats", FLOW_STATS), ("fp_verdicts", VERDICT_COUNTS), ("fp_pod", POD),
                   ("fp_l4_key", L4_KEY), ("fp_l4", L4_VALUE)):
    assert _st.size == SIZES[_name], _name

# map name -> (key size, value size, max_entries, per-CPU)
MAPS = {
    "fp_flows": (KEY.size, FLOW.size, FP_FLOWS_MAX, False),
    "fp_flows_short": (KEY_SHORT.size, FLOW.size, FP_FLOWS_MAX, False),
    "fp_gen": (U32.size, U64.size, 1, False),
    "fp_flow_stats": (U32.size, FLOW_STATS.size, FP_FLOWS_MAX, False),
    "fp_verdicts": (U32.size, VERDICT_COUNTS.size, 1, True),
    "fp_pods": (U32.size, POD.size, FP_PODS_MAX, False),
    "fp_l4": (L4_KEY.size, L4_VALUE.size, FP_FLOWS_MAX, False),
}
# the maps whose size follows FastPath(flows_max=...)
FLOW_SIZED_MAPS = ("fp_flows", "fp_flows_short", "fp_flow_stats", "fp_l4")


# ---------------------------------------------------------------- keys and values
def key_from_block(block: bytes) -> Optional[bytes]:
    """The fp_key for a name block (packet bytes [20, header_length)); None if too long.

    The Python flow table's key (wire.flow_key: bytes [20, 40 + dst_len + src_len))
    is such a block for packets without TLVs, the only ones its fast path takes.
    """
    block = bytes(block)
    if len(block) > FP_KEY_MAX:
        return None
    return KEY.pack(len(block), 0, block)


def flow_key(packet: bytes) -> Optional[bytes]:
    """The fp_key the program builds for a DMSC packet (no Ethernet header):
    bytes [20, header_length), zero padded. None when longer than FP_KEY_MAX.
    Raises ValueError when the packet is too short to have one."""
    if len(packet) < HDR_LEN:
        raise ValueError(f"{len(packet)} bytes: shorter than the fixed header")
    hlen = int.from_bytes(packet[6:8], "big")
    if hlen < HDR_LEN or hlen > len(packet):
        raise ValueError(f"header_length {hlen} with {len(packet)} bytes")
    return key_from_block(packet[KEY_OFF:hlen])


def key_block(key: bytes) -> bytes:
    """The name block inside an fp_key (inverse of key_from_block)."""
    ln, _, raw = KEY.unpack(key)
    return raw[:ln]


def kernel_key(key: bytes) -> Tuple[str, bytes]:
    """Where the program looks an fp_key up: (map name, the key as that map holds it).
    A block of at most FP_KEY_SHORT bytes is in fp_flows_short, as an fp_key_short."""
    ln, _, raw = KEY.unpack(key)
    if ln <= FP_KEY_SHORT:
        return "fp_flows_short", KEY_SHORT.pack(ln, 0, raw[:FP_KEY_SHORT])
    return "fp_flows", bytes(key)


def key_from_short(short: bytes) -> bytes:
    """The fp_key of an fp_flows_short key (inverse of kernel_key)."""
    ln, _, raw = KEY_SHORT.unpack(short)
    return KEY.pack(ln, 0, raw[:ln])


MacLike = Union[bytes, bytearray, str]


def mac_bytes(mac: MacLike) -> bytes:
    """6 bytes from bytes or 'aa:bb:cc:dd:ee:ff'."""
    if isinstance(mac, str):
        raw = bytes(int(p, 16) for p in mac.replace("-", ":").split(":"))
    else:
        raw = bytes(mac)
    if len(raw) != 6:
        raise ValueError(f"MAC address of {len(raw)} bytes")
    return raw


AddrLike = Union[bytes, bytearray, str]
NO_ADDR = bytes(4)


def ipv4_bytes(addr: Optional[AddrLike]) -> bytes:
    """4 bytes (network order) from bytes or '10.0.0.1'; None gives 0.0.0.0."""
    if addr is None:
        return NO_ADDR
    if isinstance(addr, str):
        try:
            return ipaddress.IPv4Address(addr).packed
        except ValueError:
            raise ValueError(f"not a dotted IPv4 address: {addr!r}") from None
    raw = bytes(addr)
    if len(raw) != 4:
        raise ValueError(f"IPv4 address of {len(raw)} bytes")
    return raw


def ipv4_str(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _check_slot(flow_slot: int, mtu: int) -> None:
    if not 0 <= flow_slot < FP_FLOWS_MAX:
        raise ValueError(f"flow_slot {flow_slot} outside 0..{FP_FLOWS_MAX - 1}")
    if not 0 <= mtu <= 0xFFFF:
        raise ValueError(f"mtu {mtu}")


class Flow(NamedTuple):
    """Decoded struct fp_flow."""
    out_ifindex: int
    flow_slot: int
    gen: int
    dst_mac: bytes
    src_mac: bytes
    mtu: int
    flags: int
    in_ifindex: int
    priority: int = 0
    action: int = ACT_FORWARD
    nat_addr: bytes = NO_ADDR   # 4 bytes, network order; 0.0.0.0: no DNAT


def flow_value(out_ifindex: int, flow_slot: int, gen: int, dst_mac: MacLike, src_mac: MacLike,
               mtu: int, in_ifindex: int, flags: int = 0, priority: int = 0,
               action: int = ACT_FORWARD, nat_addr: Optional[AddrLike] = None) -> bytes:
    """Pack a struct fp_flow. The slot must be below the map size (the program
    skips counting on an out-of-range slot; it still forwards).

    `in_ifindex`: the face the pipeline decided the flow for; its frames arriving
    on any other are passed up (verdict in_face). `flags`: FLOW_PEER when the out
    face is a veth with its peer in another namespace (a FORWARD frame may then go
    straight to the peer's ingress).
    ACT_FORWARD: rewrite and redirect the DMSC frame (types 1..6); `mtu` bounds
    its total_length. ACT_DECAP: a type-6 frame's IPv4 packet is delivered in
    an Ethernet header (dst_mac, src_mac, 0x0800) to out_ifindex (a pod-facing
    veth); `mtu` bounds the IPv4 packet; `nat_addr` (dotted string or 4 bytes),
    when given, replaces its destination address. A FORWARD entry ignores
    nat_addr: give none."""
    _check_slot(flow_slot, mtu)
    if action not in ACTIONS:
        raise ValueError(f"action {action}: not ACT_FORWARD or ACT_DECAP")
    if flags & ~FLOW_FLAGS:
        raise ValueError(f"unknown flow flags {flags:#x}")
    nat = ipv4_bytes(nat_addr)
    if action == ACT_FORWARD and nat != NO_ADDR:
        raise ValueError("nat_addr is for ACT_DECAP entries")
    return FLOW.pack(out_ifindex, flow_slot, gen, mac_bytes(dst_mac), mac_bytes(src_mac),
                     mtu, flags, in_ifindex, priority & 0xFFFFFFFF, action, nat)


def decode_flow(value: bytes) -> Flow:
    return Flow(*FLOW.unpack(value))


# ---------------------------------------------------------------- pods and L4 flows
def pod_value(addr: AddrLike) -> bytes:
    """Pack a struct fp_pod: the pod's one allowed source address."""
    raw = ipv4_bytes(addr)
    if raw == NO_ADDR:
        raise ValueError("a pod's address cannot be 0.0.0.0")
    return POD.pack(raw)


def decode_pod(value: bytes) -> str:
    """The pod's address as a dotted string."""
    return ipv4_str(POD.unpack(value)[0])


class L4Key(NamedTuple):
    """Decoded struct fp_l4_key."""
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int


def l4_key(saddr: AddrLike, daddr: AddrLike, sport: int, dport: int, proto: int) -> bytes:
    """Pack a struct fp_l4_key: the inner 5-tuple exactly as the pod sends it
    (before SNAT). proto is IPPROTO_TCP (6) or IPPROTO_UDP (17)."""
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        raise ValueError(f"proto {proto}: only TCP (6) and UDP (17) are carried")
    for p in (sport, dport):
        if not 0 <= p <= 0xFFFF:
            raise ValueError(f"port {p}")
    return L4_KEY.pack(ipv4_bytes(saddr), ipv4_bytes(daddr), sport, dport, proto)


def served_key(addr: AddrLike, port: int, proto: int) -> bytes:
    """The fp_l4 key of a served port: (pod address, port, proto) is the server end of
    carried connections; fp_pod_ingress passes its misses up for the gateway."""
    return l4_key(addr, "0.0.0.0", port, 0, proto)


def decode_l4_key(key: bytes) -> L4Key:
    s, d, sp, dp, proto = L4_KEY.unpack(key)
    return L4Key(ipv4_str(s), ipv4_str(d), sp, dp, proto)


class L4Flow(NamedTuple):
    """Decoded struct fp_l4 (header: the hdr_len bytes in use)."""
    out_ifindex: int
    flow_slot: int
    gen: int
    dst_mac: bytes
    src_mac: bytes
    mtu: int
    priority: int
    snat_addr: bytes            # 4 bytes, network order; 0.0.0.0: no SNAT
    header: bytes


def l4_value(out_ifindex: int, flow_slot: int, gen: int, dst_mac: MacLike, src_mac: MacLike,
             mtu: int, priority: int, snat_addr: Optional[AddrLike], header: bytes) -> bytes:
    """Pack a struct fp_l4. `header`: the DMSC header (40..FP_L4_HDR_MAX bytes)
    to put in front of the pod's IPv4 packet, every field final except
    total_length (bytes 4..5), which the program writes per packet. `mtu`
    bounds len(header) + the IPv4 total length. `snat_addr` (dotted string or
    4 bytes; None or 0.0.0.0: none) replaces the inner source address."""
    _check_slot(flow_slot, mtu)
    header = bytes(header)
    if not HDR_LEN <= len(header) <= FP_L4_HDR_MAX:
        raise ValueError(f"DMSC header of {len(header)} bytes: outside "
                         f"{HDR_LEN}..{FP_L4_HDR_MAX}")
    return L4_VALUE.pack(out_ifindex, flow_slot, gen, mac_bytes(dst_mac), mac_bytes(src_mac), mtu,
                         len(header), priority & 0xFFFFFFFF, ipv4_bytes(snat_addr), header)


SERVED_VALUE = bytes(L4_VALUE.size)   # a served port's value: only its key matters


def decode_l4(value: bytes) -> L4Flow:
    (out_ifindex, flow_slot, gen, dst, src, mtu, hlen, priority, snat,
     hdr) = L4_VALUE.unpack(value)
    return L4Flow(out_ifindex, flow_slot, gen, dst, src, mtu, priority, snat, hdr[:hlen])


# ---------------------------------------------------------------- per-CPU stats
# Per-CPU counters are summed modulo 2^64, as the kernel's u64 counters wrap.
M64 = (1 << 64) - 1

class FlowStats(NamedTuple):
    packets: int = 0
    bytes: int = 0       # sent: total_length (DECAP: the inner IPv4 length)
    rx_bytes: int = 0    # received: frame length - 14 (encap: the pod's IPv4 length)
    last_ns: int = 0     # CLOCK_MONOTONIC ns (time.monotonic_ns()), 0 if never hit
    tcp_flags: int = 0   # OR of the inner TCP flags bytes (encap, decap); 0 for FORWARD
    peer_packets: int = 0  # of `packets`, those handed straight to the neighbour's ingress


def decode_flow_stats(raw: bytes) -> FlowStats:
    """A flow slot's record (one for every CPU: the program counts it atomically)."""
    return FlowStats(*FLOW_STATS.unpack_from(raw))


def decode_verdicts(per_cpu: Iterable[bytes]) -> List[int]:
    """fp_verdicts summed over CPUs: the count of every verdict slot."""
    copies = [VERDICT_COUNTS.unpack_from(raw) for raw in per_cpu]
    if not copies:
        return [0] * FP_VERDICTS_MAX
    return [sum(v) & M64 for v in zip(*copies)]


def verdict_dict(counts: Sequence[int]) -> dict:
    """{verdict name: count} from the verdict slots in index order."""
    return {name: int(counts[i]) if i < len(counts) else 0 for i, name in enumerate(VERDICTS)}
