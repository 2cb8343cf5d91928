"""The forwarding pipeline: a pure object fed with (face, bytes, time).

`Forwarder.receive` returns actions (Send, Control, Delivered, Registered) and
never touches a socket or a clock, so every decision it makes can be tested and
benchmarked without the kernel. The order of the stages follows the DMSC router
pipeline: validation, data flow table, forwarding strategy, FIB.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from . import wire
from .admission import AdmissionCheck, Refused
from .counters import Counters, PrefixCounters
from .facetable import ETHER, LOCAL, LOCAL_KINDS, POD, SELF, SELF_FACE, UDP, FaceInfo, FaceTable
from .fib import Fib, FibEntry
from .flows import DEFAULT_IDLE_TIMEOUT, FlowEntry, FlowTable
from .names import InvalidName, Name
from .rib import Rib, Route
from .strategy import Rule, StrategyTable
from .wire import (HEADER_LEN, DecodeError, NackReason, Packet, PacketType,
                   RegisterBody, RegisterResult)

_NACK_REASON_NAMES = {int(r): r.name.lower() for r in NackReason}
# (version, type, flags) of a packet the fast path may take: version 1, a forwarded type, no flags
_FAST_WORDS = frozenset((wire.VERSION << 16) | (t << 8) for t in wire.FORWARDED_TYPES)
PENDING_TIMEOUT = 30.0
APP_COMPONENT = b"_app"
POD_COMPONENT = b"_pod"


class Send(NamedTuple):
    face_id: int
    data: bytes
    priority: int = 0


class Control(NamedTuple):
    """A hello, LSA or ACK for the routing module."""
    face_id: int
    packet: Packet


class Delivered(NamedTuple):
    """A packet addressed to the node itself (echo replies, NACKs for its pings)."""
    packet: Packet
    time: float


class Registered(NamedTuple):
    """The set of locally originated prefixes changed (routing announces them)."""
    prefix: Name
    added: bool


class Noted(NamedTuple):
    """Something the node's operator and its experiments should know as an event
    (a registration refused by SPA): `kind` and JSON-able `detail`."""
    kind: str
    detail: dict


FORWARD, ENCAP, DECAP = "forward", "encap", "decap"


class Offload(NamedTuple):
    """The decision just carried out for this packet may be repeated by the kernel's
    fast path (forwarder.dataplane.fastpath) for every later packet whose bytes
    [20, header_length) equal `key` (names and TLVs alike), under no per-packet
    policy. `kind` FORWARD: network face to network face `flow.face_id`, hop limit
    - 1, nothing else changed; ENCAP: a pod's packet carried with `header` (the
    DMSC header this packet left with); DECAP: a carried packet delivered to the
    pod behind `flow.face_id`. The runtime installs it; the generation it was
    decided in is the pipeline's `generation`."""
    key: bytes
    flow: FlowEntry
    in_face: int
    kind: str = FORWARD
    header: bytes = b""


Action = Union[Send, Control, Delivered, Registered, Noted, Offload]


class _Decision(NamedTuple):
    """What the slow path decided for one packet, handed from stage to stage."""
    flow: FlowEntry
    out: FaceInfo
    prefix_counters: Optional[PrefixCounters]
    prefix_text: str
    carried_pin: Optional[int]   # INSTANCE the packet arrived with
    key: bytes                   # its flow key


class Forwarder:
    """One node's data plane. Roles: 'sg' accepts local applications, 'sr' routes."""

    def __init__(self, node_name: Union[str, Name], roles=("sg", "sr"),
                 hop_limit: int = wire.DEFAULT_HOP_LIMIT, flow_idle: float = DEFAULT_IDLE_TIMEOUT,
                 seed: Optional[int] = None, spa: Optional[AdmissionCheck] = None,
                 spa_enforce: bool = True,
                 nonce_source: Callable[[], bytes] = lambda: os.urandom(16)) -> None:
        """`spa` is the registration check (forwarder.spa.Validator): with it,
        registrations must prove an authorization."""
        self.name = Name.parse(node_name)
        if len(self.name) == 0:
            raise ValueError("the node name must have at least one component")
        self.roles = frozenset(roles)
        self.hop_limit = hop_limit
        self.faces = FaceTable()
        self.rib = Rib()
        self.fib = Fib()
        self.flows = FlowTable(flow_idle)
        self.strategy = StrategyTable(seed)
        self.counters = Counters()
        self.fib_changed_at: Optional[float] = None
        self._apps = 0
        self._flow_ids = 0
        self._pending: Dict[Tuple[bytes, int, int], Tuple[PrefixCounters, float]] = {}
        self._serving: Dict[Tuple[bytes, int, int], Tuple[PrefixCounters, float]] = {}
        self.names_seen: Dict[int, str] = {self.name.hash32: self.name.text}
        self.spa = spa
        self.spa_enforce = spa_enforce
        self._nonce_source = nonce_source
        self._nonces: Dict[int, bytes] = {}  # local face -> its registration challenge
        self._inst_hashes: Dict[str, int] = {}
        self._install(Route(self.name, SELF_FACE, cost=0, origin="connected",
                            instance=self.name.text), 0.0)

    # ------------------------------------------------------------------ faces
    def add_face(self, kind: str, name: str, mtu: int = 1500, **kw) -> FaceInfo:
        if kind not in (ETHER, UDP, LOCAL, POD):
            raise ValueError(f"unknown face kind {kind!r}")
        return self.faces.add(kind, name, mtu, **kw)

    def add_pod_face(self, name: str, index: int, mtu: int, now: float) -> FaceInfo:
        """A pod behind this gateway: a face whose application is an IP pod, named
        <node>/_pod/<index> (its connections' client names are below it)."""
        if "sg" not in self.roles:
            raise ValueError("only a Service Gateway has pods")
        face = self.faces.add(POD, name, mtu)
        face.app_name = self.name.append(POD_COMPONENT, str(index))
        self._install(Route(face.app_name, face.face_id, cost=0, origin="connected",
                            instance=self.name.text), now)
        return face

    def set_face_state(self, face_id: int, up: bool, now: float) -> None:
        """Carrier change: routes through a down face stay in the FIB but are skipped."""
        face = self.faces.get(face_id)
        if face is None or face.up == up:
            return
        face.up = up
        self.fib.generation += 1
        self.fib_changed_at = now

    def remove_face(self, face_id: int, now: float) -> List[Action]:
        face = self.faces.remove(face_id)
        self._nonces.pop(face_id, None)
        actions: List[Action] = []
        for prefix in self.rib.remove_face(face_id):
            self.fib.set(prefix, self.rib.routes(prefix))
            self.fib_changed_at = now
            if face is not None and face.kind in LOCAL_KINDS and prefix != face.app_name:
                actions.append(Registered(prefix, False))
        self.flows.remove_face(face_id)
        return actions

    # ----------------------------------------------------------------- routes
    def _install(self, route: Route, now: float) -> None:
        self.rib.add(route)
        self.fib.set(route.prefix, self.rib.routes(route.prefix))
        self.fib_changed_at = now

    def add_route(self, route: Route, now: float) -> None:
        if route.face_id not in self.faces:
            raise ValueError(f"no face {route.face_id}")
        self._install(route, now)

    def remove_route(self, prefix: Name, origin: str, face_id: int, now: float,
                     instance: Optional[str] = None) -> bool:
        if not self.rib.remove(prefix, origin, face_id, instance):
            return False
        self.fib.set(prefix, self.rib.routes(prefix))
        self.fib_changed_at = now
        return True

    def replace_routes(self, origin: str, routes: List[Route], now: float) -> None:
        """Install a whole routing-protocol run at once."""
        for prefix in self.rib.replace_origin(origin, routes):
            self.fib.set(prefix, self.rib.routes(prefix))
        self.fib_changed_at = now

    def set_rule(self, rule: Rule) -> None:
        self.strategy.set(rule)

    def remove_rule(self, prefix: Name) -> bool:
        return self.strategy.remove(prefix)

    @property
    def generation(self) -> int:
        return self.fib.generation + self.strategy.generation

    # -------------------------------------------------------------- receiving
    def receive(self, face_id: int, data, now: float) -> List[Action]:
        """Process one packet (without its Ethernet header) that arrived on a face."""
        face = self.faces.get(face_id)
        if face is not None and face.network:
            fast = self.fast_forward(face_id, data, now)
            if fast is not None:
                out = bytearray(data[:fast[2]])
                out[wire.OFF_HOP_LIMIT] = fast[1]
                return [Send(fast[0], bytes(out), 0)]
        n = len(data)
        fc = self.counters.faces[face_id]
        fc.rx_packets += 1
        fc.rx_bytes += n
        if face is None:
            self.counters.drop(face_id, "unknown_face")
            return []
        try:
            h = wire.validate(data, names_checked=self._known_names(data, n))
        except DecodeError as exc:
            self.counters.drop(face_id, exc.reason)
            return []
        t = h.type
        if t in wire.LOCAL_ONLY_TYPES:
            if face.kind not in LOCAL_KINDS:
                self.counters.drop(face_id, "local_only")
                return []
            return self._local_control(face, wire.decode(data), now)
        if t in wire.CONTROL_TYPES:
            if face.kind in LOCAL_KINDS:
                self.counters.drop(face_id, "control_from_app")
                return []
            return [Control(face_id, wire.decode(data))]
        if face.kind in LOCAL_KINDS and not self._source_allowed(face, data, h):
            self.counters.drop(face_id, "spoofed_source")
            return []
        return self._forward(face_id, data, h, now)

    def _known_names(self, data, n: int) -> bool:
        """True when the name block equals that of a flow already validated."""
        if n < HEADER_LEN:
            return False
        end = wire.names_end(data)
        return end <= n and bytes(data[wire.OFF_DST_HASH:end]) in self.flows

    def originate(self, packet: Packet, now: float) -> List[Action]:
        """Send a packet made by the node itself (a ping, a NACK, an echo reply)."""
        data = packet.encode()
        h = wire.validate(data)
        self.counters.faces[SELF_FACE].rx_packets += 1
        return self._forward(SELF_FACE, data, h, now)

    def next_flow_id(self) -> int:
        self._flow_ids = (self._flow_ids + 1) & 0xFFFFFFFF
        return self._flow_ids

    # -------------------------------------------------------------- fast path
    def fast_forward(self, face_id: int, data: bytes, now: float,
                     offset: int = 0) -> Optional[Tuple[int, int, int]]:
        """Flow-table hit from one network face to another: (out face, new hop limit, length).

        The packet starts at data[offset] (14 when data is a whole Ethernet frame).
        The caller writes the packet's `length` bytes with byte 3 replaced by the new
        hop limit. None means "take the full pipeline" (receive), never a drop:
        anything unusual (a miss, changed tables, telemetry, TLVs, hop limit, MTU, a
        rate limit) goes there.
        """
        n = len(data) - offset
        if n < HEADER_LEN:
            return None
        word, total, hlen, fidx, fcnt, dlen, slen = wire.FAST.unpack_from(data, offset)
        names_end = HEADER_LEN + dlen + slen
        if (word >> 8) not in _FAST_WORDS or hlen != names_end or total > n or hlen > total \
                or fidx >= fcnt:
            return None
        fe = self.flows.get(data[offset + wire.OFF_DST_HASH:offset + names_end])
        if fe is None or fe.generation != self.fib.generation + self.strategy.generation:
            return None
        out = fe.out
        hop = word & 0xFF
        if (out is None or not out.network or not out.up or out.face_id == face_id or hop <= 1
                or total > out.mtu or fe.rule is not None):
            return None
        fe.last_used = now
        fe.packets += 1
        fe.bytes += total
        pc = fe.prefix_counters
        if pc is not None:
            pc.packets += 1
            pc.bytes += total
        fc = self.counters.faces[face_id]
        fc.rx_packets += 1
        fc.rx_bytes += n
        return out.face_id, hop - 1, total

    # -------------------------------------------------------------- slow path
    def _forward(self, in_face: int, data, h: wire.Header, now: float) -> List[Action]:
        """The full pipeline for one validated packet: decide the next hop, keep the
        books (counters, the SCSC's latency samples), then rewrite and send."""
        d = self._decide(in_face, data, h, now)
        if type(d) is list:
            return d  # refused
        self._account(in_face, data, h, d, now)
        out_face = d.flow.face_id
        if d.out.kind == SELF or (h.type == PacketType.ECHO_REQUEST and d.out.kind in LOCAL_KINDS):
            return self._at_self(in_face, data, h, now)
        out = self._rewrite(in_face, data, h, d, now)
        if type(out) is list:
            return out  # refused
        fe = d.flow
        fe.last_used = now
        fe.packets += 1
        fe.bytes += h.total_length
        send = Send(out_face, out, fe.priority)
        kind = self._repeatable(in_face, h, d)
        if kind is not None:
            header = out[:wire.LENGTHS.unpack_from(out, wire.OFF_LENGTHS)[1]] if kind == ENCAP else b""
            return [send, Offload(bytes(data[wire.OFF_DST_HASH:h.header_length]), fe, in_face,
                                  kind, header)]
        return [send]

    def _repeatable(self, in_face: int, h: wire.Header, d: "_Decision") -> Optional[str]:
        """Could the kernel repeat this decision for later packets with the same header
        bytes [20, header_length)? Under no per-packet policy only (no deny or token
        bucket: priority and weights are decided per flow) and with no TELEMETRY (a hop
        record per packet):
          * FORWARD: Ethernet to Ethernet, nothing changed but the hop limit (no
            INSTANCE added here);
          * ENCAP: a pod's packet carried to an Ethernet face (the kernel puts this
            packet's header, INSTANCE and all, in front of the pod's later packets);
          * DECAP: a carried packet delivered to a pod.
        Hop limit and MTU are checked again by the kernel on every packet."""
        rule, fe = d.flow.rule, d.flow
        if h.flags != 0 or not (rule is None or (not rule.deny and rule.bucket is None)):
            return None
        in_kind, out_kind = self.faces.faces[in_face].kind, d.out.kind
        if in_kind == ETHER and out_kind == ETHER and (fe.pin is None or d.carried_pin is not None):
            return FORWARD
        if h.type == PacketType.IPV4 and in_kind == POD and out_kind == ETHER:
            return ENCAP
        if h.type == PacketType.IPV4 and in_kind == ETHER and out_kind == POD:
            return DECAP
        return None

    def _decide(self, in_face: int, data, h: wire.Header,
                now: float) -> Union["_Decision", List[Action]]:
        """Strategy, flow table and FIB: the flow entry to follow, or the refusal."""
        names_end = HEADER_LEN + h.dst_len + h.src_len
        key = bytes(data[wire.OFF_DST_HASH:names_end])
        dst_wire = bytes(data[HEADER_LEN:HEADER_LEN + h.dst_len])
        rule = self.strategy.lookup_wire(dst_wire, h.dst_bounds, h.dst_ncomp)
        entry = self.fib.lookup_wire(dst_wire, h.dst_bounds, h.dst_ncomp)
        prefix_text = entry.prefix.text if entry is not None else ""
        pc = self.counters.prefixes[prefix_text] if entry is not None else None

        if rule is not None and rule.deny:
            return self._refuse(in_face, data, h, NackReason.DENIED, now, prefix_text)
        if rule is not None and rule.bucket is not None and not rule.bucket.take(now):
            return self._refuse(in_face, data, h, NackReason.RATE_LIMITED, now, prefix_text)

        tlv_prio, carried_pin = self._tlv_info(data, h, names_end)
        pin = carried_pin
        fe = self.flows.get(key)
        gen = self.generation
        if fe is not None and fe.generation != gen:
            # Tables changed since the flow was pinned: keep the hop only if it is still
            # one the node would choose now. Merely "some route uses that face" is not
            # enough: after a failure, flows pinned to backup or detour routes would
            # keep a loop alive forever, each refreshing the others' entries.
            # A carried connection (IPV4) keeps the instance this node chose for it
            # whatever the weights say now: its TCP state lives in that instance.
            if h.type == PacketType.IPV4 and pin is None and fe.pin is not None:
                pin = fe.pin
                keep = self._still_reaches(fe.face_id, entry, in_face, pin)
            else:
                keep = self._still_chosen(fe.face_id, entry, in_face, rule, pin)
            if not keep:
                self.flows.discard(key)
                fe = None
            else:  # same hop; the policy (rule, priority) may have changed
                fe.generation, fe.rule = gen, rule
                fe.priority = rule.priority if rule is not None and rule.priority is not None \
                    else tlv_prio
        if fe is None or (fe.face_id == in_face and self.faces.faces[in_face].network):
            if entry is None:
                return self._refuse(in_face, data, h, NackReason.NO_ROUTE, now, "")
            cands = self._candidates(entry, in_face)
            if not cands:
                if any(r.face_id == in_face for r in entry.nexthops):
                    self.counters.drop(in_face, "loop", prefix_text)
                reason = (NackReason.INSTANCE_UNREACHABLE if entry.nexthops
                          else NackReason.NO_ROUTE)
                return self._refuse(in_face, data, h, reason, now, prefix_text)
            if pin is not None:  # the instance was chosen (upstream, or here for a
                # connection): keep heading there while it can be reached
                pinned = [r for r in cands if r.instance and self._instance_hash(r.instance) == pin]
                cands = pinned or cands
                if not pinned and carried_pin is None:
                    pin = None   # ours, and gone: choose again below
            route = self._choose(rule, cands, key)
            out_face = route.face_id
            prio = rule.priority if rule is not None and rule.priority is not None else tlv_prio
            if pin is None and route.instance and (
                    (rule is not None and rule.weights) or self.faces.faces[in_face].kind == POD):
                # we chose the instance (by weight, or for a pod's connection, which must
                # stay on one instance as long as it lives): tell the next hops
                pin = self._instance_hash(route.instance)
            fe = FlowEntry(out_face, gen, now, now, rule, prio, self.faces.faces[out_face], pc,
                           dst=Name.from_wire(dst_wire).text,
                           src=Name.from_wire(bytes(data[HEADER_LEN + h.dst_len:names_end])).text,
                           pin=pin)
            if h.type != PacketType.ECHO_REQUEST or self.faces.faces[out_face].kind not in LOCAL_KINDS:
                self.flows.put(key, fe)
        return _Decision(fe, self.faces.faces[fe.face_id], pc, prefix_text, carried_pin, key)

    def _account(self, in_face: int, data, h: wire.Header, d: "_Decision", now: float) -> None:
        """Prefix counters, and the request/response pairs whose delays the SCSC
        reads: calls made by local applications (latency) and calls served by
        instances hosted here (service time)."""
        pc, out = d.prefix_counters, d.out
        if pc is not None:
            pc.packets += 1
            pc.bytes += h.total_length
        in_kind = self.faces.faces[in_face].kind if in_face in self.faces else ""
        t = h.type
        if pc is not None and t == PacketType.REQUEST and (in_kind == LOCAL or out.kind == LOCAL):
            names_end = HEADER_LEN + h.dst_len + h.src_len
            src_wire = bytes(data[HEADER_LEN + h.dst_len:names_end])
            if in_kind == LOCAL:
                pc.requests += 1
                self._pending[(src_wire, h.flow_id, h.seq)] = (pc, now)
            if out.kind == LOCAL and h.frag_index == 0:
                # an instance hosted here starts serving: its service time is instance load
                pc.served += 1
                self._serving[(src_wire, h.flow_id, h.seq)] = (pc, now)
        elif t == PacketType.DATA and in_kind == LOCAL and self._serving:
            item = self._serving.pop((bytes(data[HEADER_LEN:HEADER_LEN + h.dst_len]),
                                      h.flow_id, h.seq), None)
            if item is not None:
                item[0].service_latency.observe((now - item[1]) * 1e6)
        if out.kind == LOCAL and t in (PacketType.DATA, PacketType.NACK) and self._pending:
            self._observe_response(data, h.dst_len, now)

    def _rewrite(self, in_face: int, data, h: wire.Header, d: "_Decision",
                 now: float) -> Union[bytes, List[Action]]:
        """The bytes that leave: hop limit, the INSTANCE pin and the hop record added
        on the way into the network; the refusal when the packet cannot go."""
        face, fe = d.out, d.flow
        if not face.network:
            return bytes(data[:h.total_length])
        if h.hop_limit <= 1:
            if in_face != SELF_FACE:
                # likely a loop through stale flow entries: choose afresh next time
                self.flows.discard(d.key)
            return self._refuse(in_face, data, h, NackReason.HOP_LIMIT_EXCEEDED, now,
                                d.prefix_text)
        out = bytearray(data[:h.total_length])
        out[wire.OFF_HOP_LIMIT] = h.hop_limit - 1
        if fe.pin is not None and d.carried_pin is None:
            _insert_tlv(out, wire.TLV_HEADER.pack(wire.TlvType.INSTANCE, 4)
                        + struct.pack("!I", fe.pin))
        if h.flags & wire.Flag.TELEMETRY:
            self._add_hop_record(out, in_face, fe.face_id, now)
        if len(out) > face.mtu:
            return self._refuse(in_face, data, h, NackReason.TOO_BIG, now, d.prefix_text)
        return bytes(out)

    def _candidates(self, entry: Optional[FibEntry], in_face: int) -> List[Route]:
        if entry is None:
            return []
        faces = self.faces.faces
        # Never back out of the network face a packet came in on (loop prevention);
        # the node itself and local applications may reach their own prefixes.
        skip = in_face if in_face in faces and faces[in_face].network else None
        return [r for r in entry.nexthops
                if r.face_id != skip and r.face_id in faces and faces[r.face_id].up]

    def _still_chosen(self, face_id: int, entry: Optional[FibEntry], in_face: int,
                      rule: Optional[Rule], pin: Optional[int]) -> bool:
        cands = self._candidates(entry, in_face)
        if pin is not None:
            cands = [r for r in cands if r.instance and self._instance_hash(r.instance) == pin] or cands
        if not cands:
            return False
        if rule is not None and rule.weights:
            ok = [r for r in cands if self.strategy.weight(rule, r, self._face_name) > 0]
            if ok:
                return any(r.face_id == face_id for r in ok)
        best = cands[0].rank
        return any(r.face_id == face_id and r.rank == best for r in cands)

    def _still_reaches(self, face_id: int, entry: Optional[FibEntry], in_face: int,
                       pin: int) -> bool:
        """Whether `face_id` is still a best hop towards the pinned instance."""
        cands = [r for r in self._candidates(entry, in_face)
                 if r.instance and self._instance_hash(r.instance) == pin]
        if not cands:
            return False
        best = cands[0].rank
        return any(r.face_id == face_id and r.rank == best for r in cands)

    def _choose(self, rule: Optional[Rule], cands: List[Route], key: bytes) -> Route:
        if rule is not None and rule.weights:
            picked = self.strategy.choose(rule, cands, self._face_name)
            if picked is not None:
                return picked
        best = cands[0].rank
        group = [r for r in cands if r.rank == best]
        if len(group) == 1:
            return group[0]
        return group[zlib.crc32(key) % len(group)]  # per (dst, src) flow, stable across runs

    def _face_name(self, face_id: int) -> str:
        f = self.faces.get(face_id)
        return f.name if f else str(face_id)

    @staticmethod
    def _tlv_info(data, h: wire.Header, names_end: int) -> Tuple[int, Optional[int]]:
        """(priority class, pinned instance hash) carried in the packet's TLVs."""
        prio, pin = 0, None
        if h.header_length > names_end:
            for t, v in wire.parse_tlvs(data, names_end, h.header_length):
                if t == wire.TlvType.PRIORITY:
                    prio = min(v[0], 7)
                elif t == wire.TlvType.INSTANCE:
                    pin = struct.unpack("!I", v)[0]
        return prio, pin

    def _instance_hash(self, instance: str) -> int:
        h = self._inst_hashes.get(instance)
        if h is None:
            h = self._inst_hashes[instance] = Name.parse(instance).hash32
        return h

    def _add_hop_record(self, out: bytearray, in_face: int, out_face: int, now: float) -> None:
        face = self.faces.faces.get(out_face)
        rec = wire.HopRecord(self.name.hash32, in_face, out_face, int(now * 1e9),
                             face.queued if face else 0, face.util_permille if face else 0)
        _insert_tlv(out, wire.TLV_HEADER.pack(wire.TlvType.HOP_RECORD, wire.HOP.size) + rec.encode())

    def _observe_response(self, data, dlen: int, now: float) -> None:
        t = data[wire.OFF_TYPE]
        flow, seq = wire.FLOW_SEQ.unpack_from(data, wire.OFF_FLOW_SEQ)
        item = self._pending.pop((bytes(data[HEADER_LEN:HEADER_LEN + dlen]), flow, seq), None)
        if item is None:
            return
        pc, start = item
        if t == PacketType.DATA:
            pc.responses += 1
            pc.latency.observe((now - start) * 1e6)
        else:
            pc.nacks += 1

    # ------------------------------------------------------------------ self
    def _at_self(self, in_face: int, data, h: wire.Header, now: float) -> List[Action]:
        pkt = wire.decode(data)
        self.names_seen.setdefault(pkt.src.hash32, pkt.src.text)
        if pkt.type == PacketType.ECHO_REQUEST:
            tlvs = [(t, v) for t, v in pkt.tlvs if t == wire.TlvType.HOP_RECORD]
            if pkt.flags & wire.Flag.TELEMETRY:
                tlvs.append((wire.TlvType.HOP_RECORD, wire.HopRecord(
                    self.name.hash32, in_face, wire.NO_FACE, int(now * 1e9)).encode()))
            reply = Packet(PacketType.ECHO_REPLY, dst=pkt.src, src=self.name,
                           payload=pkt.payload, flags=pkt.flags, hop_limit=self.hop_limit,
                           flow_id=pkt.flow_id, seq=pkt.seq, tlvs=tlvs)
            return self.originate(reply, now)
        if pkt.type == PacketType.REQUEST:
            return self._refuse(in_face, data, h, NackReason.NO_ROUTE, now, self.name.text)
        return [Delivered(pkt, now)]

    def _refuse(self, in_face: int, data, h: wire.Header, reason: NackReason, now: float,
                prefix: str) -> List[Action]:
        rname = _NACK_REASON_NAMES[int(reason)]
        self.counters.drop(in_face, rname, prefix)
        if h.type == PacketType.NACK or h.type in wire.CONTROL_TYPES:
            return []
        try:
            src = Name.from_wire(bytes(data[HEADER_LEN + h.dst_len:HEADER_LEN + h.dst_len + h.src_len]))
            dst = Name.from_wire(bytes(data[HEADER_LEN:HEADER_LEN + h.dst_len]))
        except InvalidName:
            return []
        if src == self.name and in_face == SELF_FACE and h.type != PacketType.ECHO_REQUEST:
            return []
        self.counters.nacks_sent[rname] += 1
        nack = Packet(PacketType.NACK, dst=src, src=self.name,
                      payload=wire.NackBody(int(reason), h.type, dst).encode(),
                      hop_limit=self.hop_limit, flow_id=h.flow_id, seq=h.seq)
        if src == self.name:  # our own ping was refused here
            return [Delivered(nack, now)]
        return self.originate(nack, now)

    # ------------------------------------------------------------- local apps
    def _source_allowed(self, face: FaceInfo, data, h: wire.Header) -> bool:
        app = face.app_name
        if app is None:
            return False
        src = Name.from_wire(bytes(data[HEADER_LEN + h.dst_len:HEADER_LEN + h.dst_len + h.src_len]))
        if app.is_prefix_of(src):
            return True
        return any(r.prefix.is_prefix_of(src) for r in self._app_routes(face.face_id))

    def _app_routes(self, face_id: int) -> List[Route]:
        return [r for r in self.rib if r.face_id == face_id and r.origin == "connected"]

    def _local_control(self, face: FaceInfo, pkt: Packet, now: float) -> List[Action]:
        if pkt.type == PacketType.ATTACH:
            if "sg" not in self.roles:
                self.counters.drop(face.face_id, "not_a_gateway")
                return []
            if face.app_name is None:
                self._apps += 1
                face.app_name = self.name.append(APP_COMPONENT, str(self._apps))
                self._install(Route(face.app_name, face.face_id, cost=0, origin="connected",
                                    instance=self.name.text), now)
            nonce = b""
            if self.spa is not None:
                nonce = self._nonces.setdefault(face.face_id, self._nonce_source())
            reply = Packet(PacketType.ATTACH, dst=face.app_name, src=wire.LOCAL_NAME,
                           seq=pkt.seq, payload=nonce)
            return [Send(face.face_id, reply.encode())]
        if face.app_name is None:
            self.counters.drop(face.face_id, "not_attached")
            return []
        if pkt.type == PacketType.REGISTER:
            status, msg = self._register(face, pkt, now)
            res = Packet(PacketType.REGISTER_RESULT, dst=face.app_name, src=pkt.dst,
                         seq=pkt.seq, payload=RegisterResult(status, msg).encode())
            actions: List[Action] = [Send(face.face_id, res.encode())]
            if status == RegisterResult.ACCEPTED:
                actions.append(Registered(pkt.dst, True))
            elif status == RegisterResult.UNAUTHORIZED:
                actions.append(Noted("registration_refused",
                                     {"prefix": pkt.dst.text, "face": face.face_id, "reason": msg}))
            return actions
        if pkt.type == PacketType.UNREGISTER:
            removed = self.remove_route(pkt.dst, "connected", face.face_id, now,
                                        instance=self.name.text)
            return [Registered(pkt.dst, False)] if removed else []
        self.counters.drop(face.face_id, "bad_type")
        return []

    def _register(self, face: FaceInfo, pkt: Packet, now: float) -> Tuple[int, str]:
        prefix = pkt.dst
        if prefix[0] == b"_dmsc" or (self.name.is_prefix_of(prefix) and len(prefix) > len(self.name)
                                     and prefix[len(self.name)] in (APP_COMPONENT, POD_COMPONENT)):
            return RegisterResult.RESERVED, f"{prefix.text} is reserved"
        try:
            body = RegisterBody.decode(pkt.payload)
        except DecodeError as exc:
            return RegisterResult.INVALID, str(exc)
        auth = pkt.tlv(wire.TlvType.SPA_AUTHORIZATION) or b""
        if self.spa is not None:
            try:
                self.spa.check_registration(auth, pkt.tlv(wire.TlvType.SPA_SIGNATURE) or b"",
                                            self._nonces.get(face.face_id, b""), prefix, now)
            except Refused as exc:
                self.counters.drop(face.face_id, f"spa_{exc.reason}", prefix.text)
                if self.spa_enforce:
                    return RegisterResult.UNAUTHORIZED, f"spa: {exc.reason}: {exc.detail}"
            except ValueError as exc:  # no challenge was issued on this face
                if self.spa_enforce:
                    return RegisterResult.UNAUTHORIZED, f"spa: bad_proof: {exc}"
        self._install(Route(prefix, face.face_id, cost=body.cost, origin="connected",
                            instance=self.name.text, authorization=auth), now)
        return RegisterResult.ACCEPTED, f"{prefix.text} registered on {self.name.text}"

    # ----------------------------------------------------------------- timers
    def tick(self, now: float) -> None:
        """Expire idle flows, stale pending requests and expired rules."""
        self.flows.expire(now)
        self.strategy.expire(now)
        limit = now - PENDING_TIMEOUT
        for table in (self._pending, self._serving):
            for k in [k for k, (_, t) in table.items() if t < limit]:
                del table[k]

    def local_prefixes(self) -> List[Route]:
        """Prefixes this node originates (registered by its applications)."""
        return [r for r in self.rib if r.origin == "connected" and r.face_id != SELF_FACE
                and not (self.faces.get(r.face_id) and self.faces.get(r.face_id).app_name == r.prefix)]


def _insert_tlv(out: bytearray, tlv: bytes) -> bool:
    """Append a TLV to the packet's header in place; False (unchanged) when there is no room."""
    total, hl = wire.LENGTHS.unpack_from(out, wire.OFF_LENGTHS)
    names_end = wire.names_end(out)
    if total + len(tlv) > wire.MAX_PACKET or \
            len(wire.parse_tlvs(out, names_end, hl)) >= wire.MAX_TLVS:
        return False  # forward unchanged rather than drop
    out[hl:hl] = tlv
    wire.LENGTHS.pack_into(out, wire.OFF_LENGTHS, total + len(tlv), hl + len(tlv))
    return True
