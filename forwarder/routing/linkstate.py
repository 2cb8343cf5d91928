"""Link-state routing for DMSC names: hellos, reliable LSA flooding, SPF, LFA.

A sans-IO core like the forwarding pipeline: `LinkStateRouter` is fed with
(face, packet, time) and clock ticks and returns actions (`SendControl`,
`RoutesChanged`, `RoutingEvent`). It never opens a socket, starts a thread or
reads a clock, so every timer and every protocol rule can be tested on a
simulated network with a virtual clock. The rules are described in
docs/protocol.md section 12.

The computed routes are handed over whole (`RoutesChanged.routes`, to be
installed with `Forwarder.replace_routes("routing", ...)`): primaries with
priority 0 over every equal-cost first hop, loop-free alternates with
priority 1. The forwarding core already skips next hops whose face is down,
so a backup takes over locally as soon as a link fails.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import (Callable, Dict, FrozenSet, List, NamedTuple, Optional, Set,
                    Tuple, Union)

from . import spf

from ..dataplane import wire
from .backoff import Backoff
from ..dataplane.names import Name
from ..dataplane.rib import Route
from ..dataplane.wire import (ACK_NAME, HELLO_NAME, LSA_NAME, AckBody, DecodeError, HelloBody, LsaBody,
                   LsaPrefix, Packet, PacketType)


class SendControl(NamedTuple):
    """Send this control packet on this network face (it is link-local)."""
    face_id: int
    packet: wire.Packet


class RoutesChanged(NamedTuple):
    """The complete new set of origin="routing" routes."""
    routes: List[Route]


class RoutingEvent(NamedTuple):
    """Something an operator wants in the log: adjacency_up, adjacency_down,
    prefix_rejected, lsa_purged, seq_bumped."""
    kind: str
    detail: dict


Action = Union[SendControl, RoutesChanged, RoutingEvent]
Validator = Callable[[Name, bytes, Name], Optional[str]]

DOWN, INIT, UP = "down", "init", "up"
EPS = 1e-9                # float slack for "is this timer due" (virtual clocks step in 0.01)
PACKET_BUDGET = 1400      # bytes of one control packet: fits Ethernet and UDP over IPv4/6
MAX_FRAGMENTS = 64        # an LSA of more fragments than this is refused
MAX_REASSEMBLIES = 256    # incomplete fragmented LSAs held per face
INFINITY = float("inf")


@dataclass
class _Face:
    """One network face = one point-to-point link and at most one adjacency."""
    face_id: int
    cost: int
    carrier: bool = True
    state: str = DOWN
    neighbor: Optional[Name] = None
    peer_face: Optional[int] = None
    last_heard: float = 0.0
    hold: float = 0.3
    next_hello: float = 0.0
    up_since: Optional[float] = None
    # originator -> (seq sent, time last sent): LSAs awaiting an ACK on this link
    pending: Dict[Name, Tuple[int, float]] = field(default_factory=dict)
    # never later than the earliest retransmission due in `pending`: a whole LSDB
    # awaits an ACK after a database exchange, and every packet asks when to wake up
    rtx_due: float = INFINITY
    # (originator -> seq) the neighbour said it holds before the adjacency was up: its
    # database summary, so the exchange sends only what it lacks (section 12)
    peer_has: Dict[Name, int] = field(default_factory=dict)
    unsent: Set[Name] = field(default_factory=set)  # pending, waiting for the summary
    acks: List[Tuple[Name, int]] = field(default_factory=list)
    # (originator, header seq) -> (first fragment time, {index: bytes}, count)
    frags: Dict[Tuple[Name, int], Tuple[float, Dict[int, bytes], int]] = field(default_factory=dict)


@dataclass
class _Lsa:
    """One LSDB entry: the newest LSA of an originator, as received."""
    originator: Name
    body: LsaBody
    received_at: float
    age_at_receipt: int
    raw: bytes                 # the body as received (or made): flooded as it is, age aside
    content: bytes             # digest of everything but the age: equal seq => equal content
    accepted: List[LsaPrefix]  # prefixes that passed validation
    rejected: Dict[Name, Tuple[bytes, str]]  # prefix -> (authorization, reason)
    text: str = ""             # the originator's text form: the routes' instance

    def __post_init__(self) -> None:
        self.text = self.originator.text

    @property
    def seq(self) -> int:
        return self.body.seq

    @property
    def flushed(self) -> bool:
        return bool(self.body.flags & LsaBody.FLUSH)

    def age(self, now: float) -> float:
        return self.age_at_receipt + max(0.0, now - self.received_at)


AGE = struct.Struct("!H")
AGE_AT = 8  # offset of age_s in an encoded LSA body (after the 8-byte seq)


def _content(raw: bytes) -> bytes:
    return hashlib.sha256(raw[:AGE_AT] + b"\0\0" + raw[AGE_AT + 2:]).digest()[:16]


def _same_but_age(a: bytes, b: bytes) -> bool:
    """Byte-equal LSA bodies apart from their age: a copy of one already decoded."""
    return len(a) == len(b) and a[:AGE_AT] == b[:AGE_AT] and a[AGE_AT + 2:] == b[AGE_AT + 2:]


def _own_entry(node: Name, body: LsaBody, now: float, accepted: List[LsaPrefix]) -> "_Lsa":
    raw = body.encode()
    return _Lsa(node, body, now, 0, raw, _content(raw), accepted, {})


class LinkStateRouter:
    """One node's link-state routing process (see the module docstring)."""

    # Tunables that are not part of the constructor (set on the instance to change).
    UNREACHABLE_PURGE_S = 60.0   # drop the LSA of a node unreachable for this long
    FLUSH_HOLD_S = 60.0          # keep a flush marker this long so stale copies lose
    REASSEMBLY_TIMEOUT_S = 2.0   # give up on an incomplete fragmented LSA
    REVALIDATE_S = 5.0           # recheck every prefix this often (authorizations expire)

    def __init__(self, node: Name, *, hello_interval: float = 0.1, dead_interval: float = 0.3,
                 retransmit_interval: float = 0.2, lsa_refresh_s: float = 600.0,
                 max_age_s: float = 3600.0, validator: Optional[Validator] = None,
                 spf_backoff: Optional[Backoff] = None,
                 lsa_backoff: Optional[Backoff] = None, ack_delay: float = 0.0) -> None:
        self.node = Name.parse(node)
        if len(self.node) == 0:
            raise ValueError("the node name must have at least one component")
        if not 0 < hello_interval < dead_interval:
            raise ValueError("need 0 < hello_interval < dead_interval")
        if not 0 < lsa_refresh_s < max_age_s <= 0xFFFF:
            raise ValueError("need 0 < lsa_refresh_s < max_age_s <= 65535")
        if retransmit_interval <= 0:
            raise ValueError("retransmit_interval must be positive")
        if not 0 <= ack_delay < retransmit_interval:
            raise ValueError("need 0 <= ack_delay < retransmit_interval")
        # ACKs wait this long so that one packet acknowledges a burst of LSAs
        self.ack_delay = ack_delay
        # how long a new adjacency waits for the neighbour's database summary
        self.sync_wait = ack_delay + retransmit_interval / 4
        self.hello_interval = hello_interval
        self.dead_interval = dead_interval
        self.retransmit_interval = retransmit_interval
        self.lsa_refresh_s = lsa_refresh_s
        self.max_age_s = max_age_s
        self.validator = validator
        # RFC 8405 back-offs: the first change after a quiet period is acted on at
        # once, a storm of them (a network coming up, a flapping link) is batched.
        self.spf_backoff = spf_backoff if spf_backoff is not None else Backoff()
        self.lsa_backoff = lsa_backoff if lsa_backoff is not None else Backoff()
        self.last_change: Optional[float] = None
        self.stats: dict = {
            "hellos_sent": 0, "hellos_recv": 0, "lsas_sent": 0, "lsas_recv": 0,
            "lsas_retransmitted": 0, "lsas_originated": 0, "lsas_installed": 0,
            "lsas_duplicate": 0, "lsas_old": 0, "lsas_purged": 0, "acks_sent": 0,
            "acks_recv": 0, "ack_entries_sent": 0, "ack_entries_recv": 0,
            "spf_runs": 0, "rejected_prefixes": {}, "dropped": {}}
        self._faces: Dict[int, _Face] = {}
        self._lsdb: Dict[Name, _Lsa] = {}
        self._prefixes: List[LsaPrefix] = []
        self._seq = 0
        self._originated_at: Optional[float] = None  # when our current LSA was made
        self._originate_due: Optional[float] = None  # a new own LSA is wanted at this time
        self._stopped = False
        self._spf_due: Optional[float] = None
        self._ack_due: Optional[float] = None
        self._routes: List[Route] = []
        self._route_set: Set[Route] = set()
        self._unreachable_since: Dict[Name, float] = {}
        # Never later than the earliest LSDB expiry (max age, flush hold, unreachable
        # purge): ticks skip the O(LSDB) scan until then.
        self._expire_due = INFINITY
        self._now = 0.0
        self._validated_at = -INFINITY

    # ================================================================= faces
    def add_face(self, face_id: int, cost: int = 1, now: float = 0.0) -> List[Action]:
        """Start running the protocol on a network face; on a known face, change its cost."""
        if not 1 <= cost <= 0xFFFF:
            raise ValueError("a link cost is 1..65535")
        acts: List[Action] = []
        f = self._faces.get(face_id)
        if f is not None:
            if f.cost != cost:
                f.cost = cost
                if f.state == UP:
                    self._adjacencies_changed(now)
            return self._finish(now, acts)
        f = self._faces[face_id] = _Face(face_id, cost, hold=self.dead_interval)
        self._send_hello(f, now, acts)
        return self._finish(now, acts)

    def remove_face(self, face_id: int, now: float) -> List[Action]:
        acts: List[Action] = []
        f = self._faces.get(face_id)
        if f is not None:
            self._lose(f, "removed", now, acts, DOWN)
            del self._faces[face_id]
        return self._finish(now, acts)

    def face_state(self, face_id: int, up: bool, now: float) -> List[Action]:
        """Carrier change from the kernel. Loss drops the adjacency at once
        instead of waiting for the dead interval."""
        acts: List[Action] = []
        f = self._faces.get(face_id)
        if f is None or f.carrier == up:
            return self._finish(now, acts)
        f.carrier = up
        if up:
            self._send_hello(f, now, acts)
        else:
            self._lose(f, "carrier", now, acts, DOWN)
        return self._finish(now, acts)

    def set_prefixes(self, prefixes: List[Tuple[Name, int, bytes]], now: float) -> List[Action]:
        """Set the prefixes this node originates besides its own name (re-originates if changed)."""
        seen: Dict[Name, LsaPrefix] = {}
        for prefix, cost, auth in prefixes:
            prefix = Name.parse(prefix)
            if prefix != self.node:
                seen[prefix] = LsaPrefix(prefix, int(cost), 0, bytes(auth))
        new = sorted(seen.values(), key=lambda p: p.prefix)
        if new != self._prefixes:
            self._prefixes = new
            self._reoriginate(now)
        return self._finish(now, [])

    # ================================================================ packets
    def on_packet(self, face_id: int, packet: wire.Packet, now: float) -> List[Action]:
        """A HELLO, LSA or ACK that arrived on a network face."""
        acts: List[Action] = []
        f = self._faces.get(face_id)
        if f is None or not f.carrier:
            self._drop("unknown_or_down_face")
        elif packet.src == self.node and packet.type != PacketType.LSA:
            self._drop("own_packet")  # a looped link
        else:
            try:
                if packet.type == PacketType.HELLO:
                    if not self._stopped:
                        self._on_hello(f, packet, now, acts)
                elif packet.type == PacketType.LSA:
                    if not self._stopped:
                        self._on_lsa_fragment(f, packet, now, acts)
                elif packet.type == PacketType.ACK:
                    self._on_ack(f, AckBody.decode(packet.payload))
                else:
                    self._drop("not_control")
            except DecodeError as exc:
                self._drop(exc.reason)
        return self._finish(now, acts)

    def _on_hello(self, f: _Face, packet: Packet, now: float, acts: List[Action]) -> None:
        body = HelloBody.decode(packet.payload)
        self.stats["hellos_recv"] += 1
        if f.neighbor is not None and f.neighbor != packet.src:
            self._lose(f, "neighbor_changed", now, acts, DOWN)
        f.neighbor = packet.src
        f.peer_face = body.face_id
        f.last_heard = now
        # The sender says how long to wait for it (IS-IS holding time semantics).
        f.hold = body.dead_ms / 1000.0 if body.dead_ms else self.dead_interval
        two_way = bool(body.flags & HelloBody.TWO_WAY)
        if f.state == DOWN:
            f.state = INIT
            if two_way:
                self._adjacency_up(f, now, acts)
            else:
                self._send_hello(f, now, acts, reschedule=False)  # let it see us at once
        elif f.state == INIT and two_way:
            self._adjacency_up(f, now, acts)
        elif f.state == UP and not two_way:
            # It lost us (restarted, or its dead timer fired): resynchronise from scratch.
            self._lose(f, "one_way", now, acts, INIT)
            self._send_hello(f, now, acts, reschedule=False)

    def _on_ack(self, f: _Face, body: AckBody) -> None:
        self.stats["acks_recv"] += 1
        for orig, seq in body.acks:
            self.stats["ack_entries_recv"] += 1
            p = f.pending.get(orig)
            if p is not None and p[0] <= seq:
                del f.pending[orig]
            if f.state != UP and len(f.peer_has) < 4 * MAX_REASSEMBLIES * MAX_FRAGMENTS:
                f.peer_has[orig] = max(seq, f.peer_has.get(orig, 0))  # a summary, early

    def _on_lsa_fragment(self, f: _Face, packet: Packet, now: float,
                         acts: List[Action]) -> None:
        """Reassemble (section 8) when the LSA did not fit one packet."""
        if packet.frag_count == 1:
            self._on_lsa(f, packet.src, bytes(packet.payload), now, acts)
            return
        if packet.frag_count > MAX_FRAGMENTS:
            self._drop("lsa_too_many_fragments")
            return
        key = (packet.src, packet.seq)
        if key not in f.frags and len(f.frags) >= MAX_REASSEMBLIES:
            self._drop("lsa_reassembly_full")
            return
        start, parts, count = f.frags.get(key, (now, {}, packet.frag_count))
        if count != packet.frag_count:
            start, parts, count = now, {}, packet.frag_count
        parts[packet.frag_index] = packet.payload
        if len(parts) < count:
            f.frags[key] = (start, parts, count)
            return
        f.frags.pop(key, None)
        data = b"".join(parts[i] for i in range(count))
        self._on_lsa(f, packet.src, data, now, acts)

    def _on_lsa(self, f: _Face, orig: Name, data: bytes, now: float,
                acts: List[Action]) -> None:
        cur = self._lsdb.get(orig)
        if cur is not None and _same_but_age(data, cur.raw):
            # A router hears most LSAs once per link: only the first copy is news,
            # and the others need no decoding (the cost of a big network's flood).
            body: Optional[LsaBody] = None
            seq, age = cur.seq, AGE.unpack_from(data, AGE_AT)[0]
        else:
            body = LsaBody.decode(data)
            seq, age = body.seq, body.age_s
        self.stats["lsas_recv"] += 1
        if f.state == DOWN:
            # Not a neighbour yet: no ACK, it will retransmit once we have heard it.
            self._drop("lsa_from_non_neighbor")
            return
        self._ack(f, orig, seq, now)
        if age >= self.max_age_s:
            self._drop("lsa_max_age")
            return
        p = f.pending.get(orig)
        if p is not None and p[0] <= seq:
            del f.pending[orig]  # implied acknowledgement: it already has this one
        if body is None:
            self.stats["lsas_duplicate"] += 1
            return
        if orig == self.node:
            self._on_own_lsa(f, body, data, now, acts)
            return
        if cur is None or body.seq > cur.seq:
            self._install(orig, body, data, now, acts)
            for g in self._faces.values():
                if g.state == UP and g is not f:
                    self._send_lsa(g, orig, now, acts)
        elif body.seq == cur.seq:
            self.stats["lsas_duplicate"] += 1
        else:
            # A replay or a stale copy: ignore it and teach the sender the newer one.
            self.stats["lsas_old"] += 1
            self._send_lsa(f, orig, now, acts)

    def _on_own_lsa(self, f: _Face, body: LsaBody, raw: bytes, now: float,
                    acts: List[Action]) -> None:
        """Our own LSA came back: if the network holds a newer or different
        instance (left from before a restart, or a flush), jump past it."""
        own = self._lsdb.get(self.node)
        if own is None or body.seq > own.seq or (
                body.seq == own.seq and _content(raw) != own.content):
            if body.seq >= self._seq and not self._stopped:
                self._seq = body.seq
                self._reoriginate(now)
                self._event(acts, "seq_bumped", seq=body.seq, face=f.face_id)
        elif body.seq == own.seq:
            self.stats["lsas_duplicate"] += 1
        else:
            self.stats["lsas_old"] += 1
            self._send_lsa(f, self.node, now, acts)

    def _install(self, orig: Name, body: LsaBody, raw: bytes, now: float,
                 acts: List[Action]) -> None:
        old = self._lsdb.get(orig)
        entry = _Lsa(orig, body, now, body.age_s, raw, _content(raw), [], {})
        self._check_prefixes(entry, old.rejected if old else {}, acts)
        self._lsdb[orig] = entry
        self._expire_due = min(self._expire_due, self._expiry(entry))
        self.stats["lsas_installed"] += 1
        if old is None or (old.body.flags, old.body.adjacencies, old.accepted) != (
                body.flags, body.adjacencies, entry.accepted):
            self._spf_needed(now)

    def revalidate(self, now: float) -> List[Action]:
        """Check every prefix in the LSDB again: call it when the validator's
        answers may have changed (a new SPA revocation list, section 11.5).
        tick() also does it every REVALIDATE_S, so that authorizations past
        their not_after stop producing routes."""
        acts: List[Action] = []
        self._revalidate(now, acts)
        return self._finish(now, acts)

    def _revalidate(self, now: float, acts: List[Action]) -> None:
        self._validated_at = now
        for orig, e in self._lsdb.items():
            if orig == self.node or e.flushed:
                continue
            before = e.accepted
            self._check_prefixes(e, e.rejected, acts)
            if e.accepted != before:
                self._spf_needed(now)

    def _check_prefixes(self, e: _Lsa, known: Dict[Name, Tuple[bytes, str]],
                        acts: List[Action]) -> None:
        """Fill e.accepted/e.rejected; count and report only rejections not
        already known, so refreshes and rechecks do not inflate the counters."""
        if e.flushed:
            e.accepted, e.rejected = [], {}
            return
        e.accepted, e.rejected = self._validate(e.originator, e.body)
        for prefix, (auth, reason) in e.rejected.items():
            if known.get(prefix) != (auth, reason):
                bucket = self.stats["rejected_prefixes"]
                bucket[reason] = bucket.get(reason, 0) + 1
                self._event(acts, "prefix_rejected", prefix=prefix.text,
                            originator=e.text, reason=reason)

    def _validate(self, orig: Name, body: LsaBody
                  ) -> Tuple[List[LsaPrefix], Dict[Name, Tuple[bytes, str]]]:
        accepted: Dict[Name, LsaPrefix] = {}
        rejected: Dict[Name, Tuple[bytes, str]] = {}
        for p in body.prefixes:
            if p.prefix == orig:
                reason = None  # a node's own name needs no authorization
            elif len(p.prefix) and p.prefix[0] == wire.CONTROL[0]:
                reason = "reserved"
            elif self.validator is None:
                reason = None
            else:
                try:
                    reason = self.validator(p.prefix, p.authorization, orig)
                except Exception as exc:  # a broken validator must not stop routing
                    reason = f"validator_error: {type(exc).__name__}"
            if reason is None:
                if p.prefix not in accepted or p.cost < accepted[p.prefix].cost:
                    accepted[p.prefix] = p
            else:
                rejected[p.prefix] = (p.authorization, reason)
        return sorted(accepted.values(), key=lambda p: p.prefix), rejected

    # ================================================================= timers
    def tick(self, now: float) -> List[Action]:
        """Run everything that is due: hellos, dead neighbours, refresh, ageing,
        purges, retransmissions, SPF and the batched ACKs."""
        acts: List[Action] = []
        self._finish(now, acts)
        if not self._stopped:
            for f in list(self._faces.values()):
                if f.state != DOWN and f.carrier and f.last_heard + f.hold <= now + EPS:
                    self._lose(f, "dead", now, acts, DOWN)
                if f.carrier and f.next_hello <= now + EPS:
                    self._send_hello(f, now, acts)
                for key, (start, _, _) in list(f.frags.items()):
                    if start + self.REASSEMBLY_TIMEOUT_S <= now + EPS:
                        del f.frags[key]
                        self._drop("lsa_reassembly_timeout")
            self._expire(now, acts)
            if (self.validator is not None
                    and self._validated_at + self.REVALIDATE_S <= now + EPS):
                self._revalidate(now, acts)
            if (self._originated_at is not None
                    and self._originated_at + self.lsa_refresh_s <= now + EPS
                    and self._originate_due is None):
                self._originate_due = now  # a refresh is not a change: no back-off
            if self._originate_due is not None and self._originate_due <= now + EPS:
                self._originate(now, acts)
        for f in self._faces.values():
            if f.state != UP:
                continue
            if self._stopped and f.last_heard + f.hold <= now + EPS:
                f.pending.clear()  # we no longer listen to hellos: give up on silent peers
            if f.rtx_due > now + EPS:
                continue
            f.rtx_due = INFINITY
            for orig, (seq, sent) in list(f.pending.items()):
                if sent + self.retransmit_interval <= now + EPS:
                    first = orig in f.unsent
                    if self._send_lsa(f, orig, now, acts) and not first:
                        self.stats["lsas_retransmitted"] += 1
                else:
                    f.rtx_due = min(f.rtx_due, sent + self.retransmit_interval)
        if not self._stopped and self._spf_due is not None and self._spf_due <= now + EPS:
            self._run_spf(now, acts)
        if self._ack_due is not None and self._ack_due <= now + EPS:
            self._flush_acks(acts)
        return acts

    def next_tick(self) -> float:
        """Earliest time something is due, for the caller's event loop (inf: nothing)."""
        due = [self._ack_due] if self._ack_due is not None else []
        for f in self._faces.values():
            if f.state == UP and f.pending:
                due.append(f.rtx_due)
            if self._stopped or not f.carrier:
                continue
            due.append(f.next_hello)
            if f.state != DOWN:
                due.append(f.last_heard + f.hold)
            due.extend(s + self.REASSEMBLY_TIMEOUT_S for s, _, _ in f.frags.values())
        if self._stopped:
            return min(due, default=INFINITY)
        if self._spf_due is not None:
            due.append(self._spf_due)
        if self.validator is not None:
            due.append(self._validated_at + self.REVALIDATE_S)
        if self._originate_due is not None:
            due.append(self._originate_due)
        elif self._originated_at is not None:
            due.append(self._originated_at + self.lsa_refresh_s)
        due.append(self._expire_due)
        return min(due, default=INFINITY)

    def shutdown(self, now: float) -> List[Action]:
        """Withdraw everything: flood a flush of our LSA. Afterwards the router
        only retransmits that flush until it is acknowledged (or the neighbour's
        hold time runs out). Idempotent."""
        acts: List[Action] = []
        if self._stopped:
            return acts
        self._stopped = True
        self._spf_due = None
        self._originate_due = None
        self._seq += 1
        body = LsaBody(self._seq, 0, LsaBody.FLUSH, [], [])
        self._lsdb[self.node] = _own_entry(self.node, body, now, [])
        self.stats["lsas_originated"] += 1
        for f in self._faces.values():
            if f.state == UP:
                self._send_lsa(f, self.node, now, acts)
        self._flush_acks(acts)
        return acts

    # ========================================================= observability
    def lsdb_digest(self) -> str:
        """Same value on two nodes <=> same LSAs (originator, seq, content; not age)."""
        h = hashlib.sha256()
        for orig in sorted(self._lsdb):
            e = self._lsdb[orig]
            h.update(orig.wire + b"\0" + struct.pack("!Q", e.seq) + e.content)
        return h.hexdigest()[:16]

    def lsdb(self) -> dict:
        now = self._now
        out = []
        for orig in sorted(self._lsdb):
            e = self._lsdb[orig]
            out.append({
                "originator": orig.text, "seq": e.seq, "age": int(e.age(now)),
                "flush": e.flushed,
                "unreachable_since": self._unreachable_since.get(orig),
                "adjacencies": [{"neighbor": n.text, "cost": c} for n, c in e.body.adjacencies],
                "prefixes": [{"prefix": p.prefix.text, "cost": p.cost,
                              "authorization_bytes": len(p.authorization),
                              "rejected": e.rejected.get(p.prefix, (b"", None))[1]}
                             for p in e.body.prefixes]})
        return {"node": self.node.text, "digest": self.lsdb_digest(),
                "last_change": self.last_change, "lsas": out}

    def neighbors(self) -> List[dict]:
        return [{"face": f.face_id, "cost": f.cost, "carrier": f.carrier, "state": f.state,
                 "neighbor": f.neighbor.text if f.neighbor else None,
                 "peer_face": f.peer_face, "up_since": f.up_since,
                 "last_heard": f.last_heard if f.state != DOWN else None,
                 "dead_at": f.last_heard + f.hold if f.state != DOWN else None,
                 "lsas_awaiting_ack": len(f.pending)}
                for f in sorted(self._faces.values(), key=lambda f: f.face_id)]

    @property
    def routes(self) -> List[Route]:
        """The route set last announced with RoutesChanged."""
        return list(self._routes)

    # ============================================================== internals
    def _finish(self, now: float, acts: List[Action]) -> List[Action]:
        """End of every public call: remember the time; make sure we originate once."""
        self._now = max(self._now, now)
        if self._validated_at == -INFINITY:
            self._validated_at = now
        if self._originated_at is None and self._originate_due is None:
            self._reoriginate(now)
        return acts

    def _reoriginate(self, now: float) -> None:
        """Ask for a new own LSA at the next tick. Every change within one tick
        (eight adjacencies coming up together) then costs one LSA, not eight,
        and the back-off spaces LSAs out while adjacencies keep changing."""
        if self._stopped:
            return
        delay = self.lsa_backoff.event(now)
        if self._originate_due is None:
            self._originate_due = now if self._originated_at is None else now + delay

    def _own_adjacencies(self) -> List[Tuple[Name, int]]:
        best: Dict[Name, int] = {}
        for f in self._faces.values():
            if f.state == UP and f.neighbor is not None:
                best[f.neighbor] = min(f.cost, best.get(f.neighbor, f.cost))
        return sorted(best.items())

    def _originate(self, now: float, acts: List[Action]) -> None:
        self._originate_due = None
        self._seq += 1
        prefixes = [LsaPrefix(self.node, 0, 0, b"")] + self._prefixes
        body = LsaBody(self._seq, 0, 0, self._own_adjacencies(), prefixes)
        old = self._lsdb.get(self.node)
        self._lsdb[self.node] = _own_entry(self.node, body, now, prefixes)
        self._originated_at = now
        self.stats["lsas_originated"] += 1
        if old is None or old.body.adjacencies != body.adjacencies or old.flushed:
            self._spf_needed(now)
        for f in self._faces.values():
            if f.state == UP:
                self._send_lsa(f, self.node, now, acts)

    def _adjacency_up(self, f: _Face, now: float, acts: List[Action]) -> None:
        f.state = UP
        f.up_since = now
        self._event(acts, "adjacency_up", face=f.face_id, neighbor=f.neighbor.text,
                    cost=f.cost)
        self._adjacencies_changed(now)
        # Database synchronisation (section 12.4). Our summary -- an ACK listing every
        # LSA we hold -- tells it what not to send us; its summary does the same for us.
        # Every LSA its summary does not cover goes out reliably after `sync_wait`
        # (sooner if the summary came already), so an adjacency that flaps or forms
        # late in a big network costs a few ACK packets instead of the whole LSDB.
        # Our own LSA follows at the next tick, re-originated with the new adjacency.
        self._send_hello(f, now, acts, reschedule=False)  # it sees two-way at once
        f.acks.extend((orig, e.seq) for orig, e in sorted(self._lsdb.items()))
        self._ack_due = now
        wait = 0.0 if f.peer_has else self.sync_wait
        for orig in sorted(self._lsdb):
            if orig == self.node or f.peer_has.get(orig, -1) >= self._lsdb[orig].seq:
                continue
            if wait:
                f.pending[orig] = (self._lsdb[orig].seq, now + wait - self.retransmit_interval)
                f.unsent.add(orig)
                f.rtx_due = min(f.rtx_due, now + wait)
            else:
                self._send_lsa(f, orig, now, acts)
        f.peer_has.clear()

    def _lose(self, f: _Face, reason: str, now: float, acts: List[Action], state: str) -> None:
        was_up = f.state == UP
        f.state = state
        f.pending.clear()
        f.acks.clear()
        f.frags.clear()
        f.peer_has.clear()
        f.unsent.clear()
        if was_up:
            f.up_since = None
            self._event(acts, "adjacency_down", face=f.face_id,
                        neighbor=f.neighbor.text if f.neighbor else None, reason=reason)
            self._adjacencies_changed(now)
        if state == DOWN and reason != "dead":
            f.neighbor = f.peer_face = None

    def _adjacencies_changed(self, now: float) -> None:
        self._reoriginate(now)
        self._spf_needed(now)

    def _spf_needed(self, now: float) -> None:
        delay = self.spf_backoff.event(now)
        if self._spf_due is None:
            self._spf_due = now + delay

    def _send_hello(self, f: _Face, now: float, acts: List[Action],
                    reschedule: bool = True) -> None:
        if self._stopped:
            return
        flags = HelloBody.TWO_WAY if f.state in (INIT, UP) else 0
        body = HelloBody(int(self.hello_interval * 1000), int(self.dead_interval * 1000),
                         f.face_id & 0xFFFF, flags)
        acts.append(SendControl(f.face_id, Packet(PacketType.HELLO, dst=HELLO_NAME,
                                                  src=self.node, hop_limit=1,
                                                  payload=body.encode())))
        self.stats["hellos_sent"] += 1
        if reschedule:
            f.next_hello = now + self.hello_interval

    def _send_lsa(self, f: _Face, orig: Name, now: float, acts: List[Action]) -> bool:
        """Send our current copy of orig's LSA on f and expect an ACK for it."""
        e = self._lsdb.get(orig)
        if e is None:
            f.pending.pop(orig, None)
            return False
        age = min(int(e.age(now)), 0xFFFF)
        data = e.raw[:AGE_AT] + AGE.pack(age) + e.raw[AGE_AT + 2:]
        budget = PACKET_BUDGET - wire.HEADER_LEN - len(LSA_NAME.wire) - len(orig.wire)
        chunks = [data[i:i + budget] for i in range(0, len(data), budget)] or [b""]
        if len(chunks) > MAX_FRAGMENTS:
            self._drop("lsa_too_big")
            f.pending.pop(orig, None)
            return False
        for i, chunk in enumerate(chunks):
            acts.append(SendControl(f.face_id, Packet(
                PacketType.LSA, dst=LSA_NAME, src=orig, hop_limit=1, payload=chunk,
                seq=e.seq & 0xFFFFFFFF, frag_index=i, frag_count=len(chunks))))
        f.pending[orig] = (e.seq, now)
        f.unsent.discard(orig)
        f.rtx_due = min(f.rtx_due, now + self.retransmit_interval)
        self.stats["lsas_sent"] += 1
        return True

    def _ack(self, f: _Face, orig: Name, seq: int, now: float) -> None:
        f.acks.append((orig, seq))
        if self._ack_due is None:
            self._ack_due = now + self.ack_delay

    def _flush_acks(self, acts: List[Action]) -> None:
        """Send the queued ACKs, as few packets as fit the packet budget."""
        self._ack_due = None
        budget = PACKET_BUDGET - wire.HEADER_LEN - len(ACK_NAME.wire) - len(self.node.wire) - 2
        for f in self._faces.values():
            batch: List[Tuple[Name, int]] = []
            size = 0
            for orig, seq in dict.fromkeys(f.acks):
                item = 1 + len(orig.wire) + 8
                if batch and size + item > budget:
                    self._send_ack(f, batch, acts)
                    batch, size = [], 0
                batch.append((orig, seq))
                size += item
            if batch:
                self._send_ack(f, batch, acts)
            f.acks.clear()

    def _send_ack(self, f: _Face, batch: List[Tuple[Name, int]], acts: List[Action]) -> None:
        acts.append(SendControl(f.face_id, Packet(PacketType.ACK, dst=ACK_NAME, src=self.node,
                                                  hop_limit=1,
                                                  payload=AckBody(batch).encode())))
        self.stats["acks_sent"] += 1
        self.stats["ack_entries_sent"] += len(batch)

    def _expiry(self, e: _Lsa) -> float:
        """When this entry leaves the LSDB unless something newer replaces it."""
        return e.received_at + (self.FLUSH_HOLD_S if e.flushed
                                else self.max_age_s - e.age_at_receipt)

    def _expire(self, now: float, acts: List[Action]) -> None:
        """Max age, flush markers past their hold time, nodes unreachable too long."""
        if now + EPS < self._expire_due:
            return
        due = INFINITY
        for orig, e in list(self._lsdb.items()):
            if orig == self.node:
                continue
            reason = None
            if e.flushed and e.received_at + self.FLUSH_HOLD_S <= now + EPS:
                reason = "flush_done"
            elif not e.flushed and e.age(now) >= self.max_age_s - EPS:
                reason = "max_age"
            elif (orig in self._unreachable_since
                  and self._unreachable_since[orig] + self.UNREACHABLE_PURGE_S <= now + EPS):
                reason = "unreachable"
            if reason is None:
                due = min(due, self._expiry(e), self._unreachable_since.get(orig, INFINITY)
                          + self.UNREACHABLE_PURGE_S)
                continue
            del self._lsdb[orig]
            self._unreachable_since.pop(orig, None)
            for f in self._faces.values():
                f.pending.pop(orig, None)
            self.stats["lsas_purged"] += 1
            self._event(acts, "lsa_purged", originator=orig.text, seq=e.seq, reason=reason)
            if not e.flushed:
                self._spf_needed(now)
        self._expire_due = due

    def _run_spf(self, now: float, acts: List[Action]) -> None:
        self._spf_due = None
        self.stats["spf_runs"] += 1
        routes = self._compute_routes(now)
        if routes != self._route_set:
            self._route_set = routes
            self._routes = sorted(routes, key=lambda r: (r.prefix.components, r.priority,
                                                         r.cost, r.face_id, r.instance or ""))
            self.last_change = now
            acts.append(RoutesChanged(list(self._routes)))

    def _compute_routes(self, now: float) -> Set[Route]:
        """SPF from here, from each neighbour (for LFAs), then routes per prefix.

        The graph is keyed by the names' binary forms: bytes hash and compare
        much faster than Name objects, and SPF is the hot loop of convergence.
        """
        me = self.node.wire
        by_wire = {o.wire: e for o, e in self._lsdb.items() if not e.flushed}
        adjacency = {w: [(n.wire, c) for n, c in e.body.adjacencies]
                     for w, e in by_wire.items()}
        adjacency[me] = [(n.wire, c) for n, c in self._own_adjacencies()]  # the live view
        graph = spf.two_way_graph(adjacency)
        faces_to: Dict[bytes, FrozenSet[int]] = {}
        for nb, cost in graph.get(me, {}).items():
            faces_to[nb] = frozenset(f.face_id for f in self._faces.values()
                                     if f.state == UP and f.neighbor is not None
                                     and f.neighbor.wire == nb and f.cost == cost)
        dist, hops = spf.shortest_paths(graph, me, faces_to)
        face_nb = {fid: nb for nb, fids in faces_to.items() for fid in fids}
        primary = {d: frozenset(face_nb[fid] for fid in h) for d, h in hops.items()}
        # one neighbour is the primary next hop of everything: no alternate can
        # exist, so a leaf SG skips the Dijkstra run the search would cost
        alternates = (spf.loop_free_alternates(graph, me, dist, primary)
                      if len(graph.get(me, ())) > 1 else {})

        for orig in self._lsdb:
            if orig == self.node:
                continue
            if orig.wire in dist:
                self._unreachable_since.pop(orig, None)
            elif orig not in self._unreachable_since:
                self._unreachable_since[orig] = now
                self._expire_due = min(self._expire_due, now + self.UNREACHABLE_PURGE_S)

        routes: Set[Route] = set()
        for dest, d in dist.items():
            e = by_wire[dest]
            inst = e.text
            alts = alternates.get(dest, ())
            for p in e.accepted:
                for fid in hops[dest]:
                    routes.add(Route(p.prefix, fid, d + p.cost, 0, "routing", inst))
                for nb, via in alts:
                    for fid in faces_to[nb]:
                        routes.add(Route(p.prefix, fid, via + p.cost, 1, "routing", inst))
        return routes

    def _event(self, acts: List[Action], kind: str, **detail) -> None:
        acts.append(RoutingEvent(kind, detail))

    def _drop(self, reason: str) -> None:
        d = self.stats["dropped"]
        d[reason] = d.get(reason, 0) + 1


__all__ = ["LinkStateRouter", "SendControl", "RoutesChanged", "RoutingEvent", "Action",
           "Validator"]
