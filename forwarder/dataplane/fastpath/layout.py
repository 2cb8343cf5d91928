"""The fast path's map layouts on the Python side: pure data, no I/O.

Twin of fastpath.h (the one place for the C side); tests/test_layout.py compiles
a probe against that header and checks every size and offset below. Integers
are in host byte order ('=' formats: native order, standard sizes, no
alignment) because the program reads them as plain C fields; MAC addresses and
key bytes are copied to and from the wire unchanged.
"""
from __future__ import annotations

import struct
from typing import Iterable, NamedTuple, Optional, Sequence, Union

# ---------------------------------------------------------------- constants (fastpath.h)
FP_KEY_MAX = 256
FP_FLOWS_MAX = 65536
FP_FACES_MAX = 256
FP_PREFIXES_MAX = 4096
FP_VERDICTS_MAX = 16
NO_PREFIX = 0xFFFFFFFF
FACE_DOWN = 0x1            # fp_face.flags: not usable as an output face

ETHERTYPE = 0x88B5
ETH_HLEN = 14
HDR_LEN = 40
KEY_OFF = 20               # the flow key starts at dst_hash
MIN_FRAME = 60

PROG_NAME = "fp_ingress"   # SEC("tc") program
MAP_NAMES = ("fp_faces", "fp_flows", "fp_gen", "fp_flow_stats", "fp_face_stats",
             "fp_prefix_stats", "fp_verdicts")

# fp_verdicts slots, in index order (enum fp_verdict).
VERDICTS = (
    "redirected",      # 0: rewritten and redirected
    "not_dmsc",        # EtherType not 0x88B5, or a VLAN tag present
    "short",           # fewer than 14 + 40 bytes
    "not_fast",        # version != 1, type not 1..5 (control, unknown), flags != 0, bad fragment
    "bad_length",      # header_length < 40 + names, > total_length, total_length > bytes present
    "key_too_long",    # header_length - 20 > FP_KEY_MAX
    "unknown_face",    # ingress ifindex not in fp_faces
    "miss",            # flow key not installed
    "stale",           # entry gen != fp_gen
    "same_face",       # out_ifindex == ingress ifindex
    "out_down",        # out ifindex not in fp_faces, or flagged FACE_DOWN
    "hop_limit",       # hop_limit <= 1
    "too_big",         # total_length > entry mtu
    "rewrite_error",   # bpf_skb_change_tail / bpf_skb_store_bytes failed
    "redirect_error",  # bpf_redirect did not return TC_ACT_REDIRECT
)
VERDICT = {name: i for i, name in enumerate(VERDICTS)}
PASSED_UP = VERDICTS[1:]
assert len(VERDICTS) <= FP_VERDICTS_MAX

# ---------------------------------------------------------------- structs
U32 = struct.Struct("=I")                       # array/hash keys: slot, ifindex
U64 = struct.Struct("=Q")                       # fp_gen value, fp_verdicts value
KEY = struct.Struct(f"=HH{FP_KEY_MAX}s")        # struct fp_key
FACE = struct.Struct("=II")                     # struct fp_face
FLOW = struct.Struct("=IIQ6s6sHHII")            # struct fp_flow
FLOW_STATS = struct.Struct("=QQQ")              # struct fp_flow_stats
FACE_STATS = struct.Struct("=QQQQ")             # struct fp_face_stats
PREFIX_STATS = struct.Struct("=QQ")             # struct fp_prefix_stats

# What test_layout checks against the compiled header.
SIZES = {"fp_key": 260, "fp_face": 8, "fp_flow": 40, "fp_flow_stats": 24,
         "fp_face_stats": 32, "fp_prefix_stats": 16}
OFFSETS = {
    "fp_key": {"len": 0, "pad": 2, "bytes": 4},
    "fp_face": {"face_slot": 0, "flags": 4},
    "fp_flow": {"out_ifindex": 0, "flow_slot": 4, "gen": 8, "dst_mac": 16, "src_mac": 22,
                "mtu": 28, "out_face_slot": 30, "prefix_slot": 32, "priority": 36},
    "fp_flow_stats": {"packets": 0, "bytes": 8, "last_ns": 16},
    "fp_face_stats": {"rx_packets": 0, "rx_bytes": 8, "tx_packets": 16, "tx_bytes": 24},
    "fp_prefix_stats": {"packets": 0, "bytes": 8},
}
for _name, _st in (("fp_key", KEY), ("fp_face", FACE), ("fp_flow", FLOW),
                   ("fp_flow_stats", FLOW_STATS), ("fp_face_stats", FACE_STATS),
                   ("fp_prefix_stats", PREFIX_STATS)):
    assert _st.size == SIZES[_name], _name

# map name -> (key size, value size, max_entries, per-CPU)
MAPS = {
    "fp_faces": (U32.size, FACE.size, FP_FACES_MAX, False),
    "fp_flows": (KEY.size, FLOW.size, FP_FLOWS_MAX, False),
    "fp_gen": (U32.size, U64.size, 1, False),
    "fp_flow_stats": (U32.size, FLOW_STATS.size, FP_FLOWS_MAX, True),
    "fp_face_stats": (U32.size, FACE_STATS.size, FP_FACES_MAX, True),
    "fp_prefix_stats": (U32.size, PREFIX_STATS.size, FP_PREFIXES_MAX, True),
    "fp_verdicts": (U32.size, U64.size, FP_VERDICTS_MAX, True),
}


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


class Flow(NamedTuple):
    """Decoded struct fp_flow."""
    out_ifindex: int
    flow_slot: int
    gen: int
    dst_mac: bytes
    src_mac: bytes
    mtu: int
    out_face_slot: int
    prefix_slot: int = NO_PREFIX
    priority: int = 0


def flow_value(out_ifindex: int, flow_slot: int, gen: int, dst_mac: MacLike, src_mac: MacLike,
               mtu: int, out_face_slot: int, prefix_slot: int = NO_PREFIX,
               priority: int = 0) -> bytes:
    """Pack a struct fp_flow. Slots must be below the map sizes (the program
    skips counting on an out-of-range slot; it still forwards)."""
    if not 0 <= flow_slot < FP_FLOWS_MAX:
        raise ValueError(f"flow_slot {flow_slot} outside 0..{FP_FLOWS_MAX - 1}")
    if not 0 <= out_face_slot < FP_FACES_MAX:
        raise ValueError(f"out_face_slot {out_face_slot} outside 0..{FP_FACES_MAX - 1}")
    if prefix_slot != NO_PREFIX and not 0 <= prefix_slot < FP_PREFIXES_MAX:
        raise ValueError(f"prefix_slot {prefix_slot} outside 0..{FP_PREFIXES_MAX - 1}")
    if not 0 <= mtu <= 0xFFFF:
        raise ValueError(f"mtu {mtu}")
    return FLOW.pack(out_ifindex, flow_slot, gen, mac_bytes(dst_mac), mac_bytes(src_mac),
                     mtu, out_face_slot, prefix_slot, priority & 0xFFFFFFFF)


def decode_flow(value: bytes) -> Flow:
    return Flow(*FLOW.unpack(value))


def face_value(face_slot: int, flags: int = 0) -> bytes:
    if not 0 <= face_slot < FP_FACES_MAX:
        raise ValueError(f"face_slot {face_slot} outside 0..{FP_FACES_MAX - 1}")
    return FACE.pack(face_slot, flags)


# ---------------------------------------------------------------- per-CPU stats
class FlowStats(NamedTuple):
    packets: int = 0
    bytes: int = 0
    last_ns: int = 0     # CLOCK_MONOTONIC ns (time.monotonic_ns()), 0 if never hit


class FaceStats(NamedTuple):
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0


class PrefixStats(NamedTuple):
    packets: int = 0
    bytes: int = 0


def decode_flow_stats(per_cpu: Iterable[bytes]) -> FlowStats:
    """Sum packets and bytes over CPUs; last_ns is the latest of them."""
    p = b = t = 0
    for raw in per_cpu:
        cp, cb, ct = FLOW_STATS.unpack_from(raw)
        p += cp
        b += cb
        t = max(t, ct)
    return FlowStats(p, b, t)


def decode_face_stats(per_cpu: Iterable[bytes]) -> FaceStats:
    tot = [0, 0, 0, 0]
    for raw in per_cpu:
        for i, v in enumerate(FACE_STATS.unpack_from(raw)):
            tot[i] += v
    return FaceStats(*tot)


def decode_prefix_stats(per_cpu: Iterable[bytes]) -> PrefixStats:
    p = b = 0
    for raw in per_cpu:
        cp, cb = PREFIX_STATS.unpack_from(raw)
        p += cp
        b += cb
    return PrefixStats(p, b)


def decode_u64_sum(per_cpu: Iterable[bytes]) -> int:
    return sum(U64.unpack_from(raw)[0] for raw in per_cpu)


def verdict_dict(counts: Sequence[int]) -> dict:
    """{verdict name: count} from the fp_verdicts slots in index order."""
    return {name: int(counts[i]) if i < len(counts) else 0 for i, name in enumerate(VERDICTS)}
