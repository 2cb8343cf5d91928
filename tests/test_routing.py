"""Link-state routing (forwarder/routing.py, forwarder/spf.py) on a simulated network.

The router is a sans-IO object, so these tests wire several of them together
with an in-memory harness: every control packet is encoded to bytes, decoded
again (so the wire codec is exercised) and delivered to the peer one 10 ms
step later, on a virtual clock. Drops, cuts and carrier changes are injected
in the harness. Integration with real sockets lives in the namespace tests.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections import Counter
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from forwarder.routing import spf

from forwarder.dataplane import wire
from forwarder.dataplane.names import Name
from forwarder.dataplane.pipeline import Forwarder, Send
from forwarder.dataplane.facetable import ETHER
from forwarder.dataplane.rib import Route
from forwarder.routing.linkstate import LinkStateRouter, RoutesChanged, RoutingEvent, SendControl
from forwarder.dataplane.wire import LsaBody, PacketType

STEP = 0.01


def N(text: str) -> Name:
    return Name.parse(text)


def node(x: str) -> Name:
    return N(f"/node/{x}")


class Net:
    """Routers joined by point-to-point links, driven by a virtual clock."""

    def __init__(self, **router_kw) -> None:
        self.kw = router_kw
        self.routers: Dict[str, LinkStateRouter] = {}
        self.peer: Dict[Tuple[str, int], Tuple[str, int]] = {}
        self.cost: Dict[Tuple[str, int], int] = {}
        self.next_face: Dict[str, itertools.count] = {}
        self.steps = 0
        self.queue: List[Tuple[str, int, bytes]] = []  # delivered at the next step
        self.routes: Dict[str, List[Route]] = {}
        self.events: List[Tuple[float, str, RoutingEvent]] = []
        self.route_changes: Counter = Counter()
        self.cut: Set[frozenset] = set()
        self.drop: Optional[Callable[[str, int, wire.Packet], bool]] = None
        self.sent: List[Tuple[float, str, int, wire.Packet]] = []
        self.stopped: Set[str] = set()

    @property
    def now(self) -> float:
        return round(self.steps * STEP, 6)

    def add(self, x: str, **kw) -> LinkStateRouter:
        r = LinkStateRouter(node(x), **{**self.kw, **kw})
        self.routers[x] = r
        self.next_face.setdefault(x, itertools.count(1))
        self.routes.setdefault(x, [])
        return r

    def link(self, a: str, b: str, cost: int = 1, cost_ba: Optional[int] = None
             ) -> Tuple[int, int]:
        for x in (a, b):
            if x not in self.routers:
                self.add(x)
        fa, fb = next(self.next_face[a]), next(self.next_face[b])
        self.peer[(a, fa)] = (b, fb)
        self.peer[(b, fb)] = (a, fa)
        self.cost[(a, fa)] = cost
        self.cost[(b, fb)] = cost if cost_ba is None else cost_ba
        self.handle(a, self.routers[a].add_face(fa, self.cost[(a, fa)], self.now))
        self.handle(b, self.routers[b].add_face(fb, self.cost[(b, fb)], self.now))
        return fa, fb

    def face(self, a: str, b: str) -> int:
        """a's (first) face towards b."""
        return min(f for (x, f), (y, _) in self.peer.items() if x == a and y == b)

    def handle(self, x: str, actions: list) -> None:
        for act in actions:
            if isinstance(act, SendControl):
                assert act.packet.hop_limit == 1
                self.sent.append((self.now, x, act.face_id, act.packet))
                data = act.packet.encode()
                assert len(data) <= 1400
                if (x, act.face_id) not in self.peer:
                    continue
                if frozenset((x, self.peer[(x, act.face_id)][0])) in self.cut:
                    continue
                if self.drop is not None and self.drop(x, act.face_id, act.packet):
                    continue
                self.queue.append((x, act.face_id, data))
            elif isinstance(act, RoutesChanged):
                self.routes[x] = act.routes
                self.route_changes[x] += 1
            elif isinstance(act, RoutingEvent):
                self.events.append((self.now, x, act))
            else:  # pragma: no cover
                raise AssertionError(f"unknown action {act!r}")

    def step(self) -> None:
        self.steps += 1
        now = self.now
        queue, self.queue = self.queue, []
        for x, f, data in queue:
            if (x, f) not in self.peer:
                continue
            y, g = self.peer[(x, f)]
            if y in self.routers:
                self.handle(y, self.routers[y].on_packet(g, wire.decode(data), now))
        for x in sorted(self.routers):
            self.handle(x, self.routers[x].tick(now))

    def run(self, seconds: float) -> None:
        for _ in range(int(round(seconds / STEP))):
            self.step()

    def quiet(self) -> None:
        """Run until every back-off is back to its initial delay, as in a network that has
        been stable for a while before a real failure (RFC 8405 HOLDDOWN)."""
        self.run(max(max(r.spf_backoff.holddown, r.lsa_backoff.holddown)
                     for r in self.routers.values()))

    def run_until(self, pred: Callable[[], bool], timeout: float = 5.0) -> float:
        """Step until pred() holds; return the virtual time it took."""
        start = self.now
        while not pred():
            assert self.now - start < timeout, "did not converge in time"
            self.step()
        return self.now - start

    # --- views ---------------------------------------------------------------
    def converged(self, names: Optional[List[str]] = None) -> bool:
        names = [x for x in (names or self.routers) if x not in self.stopped]
        digests = {self.routers[x].lsdb_digest() for x in names}
        if len(digests) != 1:
            return False
        return all(self.reaches(x, y) for x in names for y in names if x != y)

    def reaches(self, x: str, y: str) -> bool:
        return any(r.prefix == node(y) and r.priority == 0 for r in self.routes[x])

    def prim(self, x: str, prefix: Name) -> List[Route]:
        return [r for r in self.routes[x] if r.prefix == prefix and r.priority == 0]

    def backups(self, x: str, prefix: Name) -> List[Route]:
        return [r for r in self.routes[x] if r.prefix == prefix and r.priority == 1]

    def kinds(self, x: str, kind: str) -> List[RoutingEvent]:
        return [e for _, y, e in self.events if y == x and e.kind == kind]


def six_nodes(**kw) -> Net:
    """Two rows of three with rungs and a diagonal: every node has 2+ disjoint paths."""
    net = Net(**kw)
    for a, b in [("a", "b"), ("b", "c"), ("d", "e"), ("e", "f"), ("a", "d"), ("b", "e"),
                 ("c", "f"), ("a", "e")]:
        net.link(a, b)
    return net


# ============================================================ adjacencies
def test_two_way_adjacency_forms_quickly():
    net = Net()
    net.link("a", "b")
    t = net.run_until(lambda: all(n["state"] == "up" for x in "ab"
                                  for n in net.routers[x].neighbors()))
    assert t <= 0.05  # hello, triggered two-way hello: two link delays
    (na,) = net.routers["a"].neighbors()
    assert na["neighbor"] == "/node/b" and na["peer_face"] == 1 and na["carrier"]
    assert [e.detail["neighbor"] for e in net.kinds("a", "adjacency_up")] == ["/node/b"]
    hello = next(p for _, x, _, p in net.sent if x == "a" and p.type == PacketType.HELLO)
    assert hello.dst == wire.HELLO_NAME and hello.src == node("a")
    body = wire.HelloBody.decode(hello.payload)
    assert (body.interval_ms, body.dead_ms) == (100, 300)


def test_one_way_link_never_comes_up():
    net = Net()
    net.drop = lambda x, f, p: x == "b"  # a never hears b; b hears a
    net.link("a", "b")
    net.run(1.0)
    assert net.routers["a"].neighbors()[0]["state"] == "down"
    assert net.routers["b"].neighbors()[0]["state"] == "init"  # a never says "I hear you"
    assert not net.events
    assert net.routes["a"] == net.routes["b"] == []


def test_dead_neighbour_detected_within_dead_interval():
    net = six_nodes()
    net.run_until(net.converged)
    net.run(0.05)
    t0 = net.now
    net.cut.add(frozenset("ab"))  # silent: no carrier loss, packets just vanish
    net.run_until(lambda: net.kinds("a", "adjacency_down"), timeout=1)
    when = [t for t, x, e in net.events if x == "a" and e.kind == "adjacency_down"][0]
    assert when - t0 <= 0.3 + STEP + 1e-9
    assert net.kinds("a", "adjacency_down")[0].detail == {
        "face": net.face("a", "b"), "neighbor": "/node/b", "reason": "dead"}
    net.run_until(lambda: all(r.face_id != net.face("a", "b") for r in net.routes["a"]))
    net.run_until(net.converged)
    assert net.prim("a", node("b"))[0].cost == 2


def test_carrier_loss_takes_adjacency_down_at_once():
    net = six_nodes()
    net.run_until(net.converged)
    a = net.routers["a"]
    net.quiet()
    fab = net.face("a", "b")
    acts = a.face_state(fab, False, net.now)
    assert [x.kind for x in acts if isinstance(x, RoutingEvent)] == ["adjacency_down"]
    assert a.neighbors()[0]["state"] == "down" and not a.neighbors()[0]["carrier"]
    net.handle("a", acts)
    # The new LSA and the new routes come from the next tick, due at once.
    assert a.next_tick() <= net.now
    acts = a.tick(net.now)
    lsas = [x for x in acts if isinstance(x, SendControl) and x.packet.type == PacketType.LSA]
    assert {x.face_id for x in lsas} == {net.face("a", "d"), net.face("a", "e")}
    assert node("b") not in [n for n, _ in LsaBody.decode(lsas[0].packet.payload).adjacencies]
    (changed,) = [x for x in acts if isinstance(x, RoutesChanged)]
    assert changed.routes and all(r.face_id != fab for r in changed.routes)
    net.handle("a", acts)
    # Carrier back: a hello goes out at once and the adjacency returns.
    net.handle("a", a.face_state(fab, True, net.now))
    # A second change within HOLDDOWN waits the short delay, for the LSA and for SPF.
    net.run_until(lambda: net.prim("a", node("b"))[0].face_id == fab,
                  timeout=0.2 + a.lsa_backoff.short + a.spf_backoff.short)


def test_neighbour_restart_resynchronises():
    """b restarts with its sequence numbers back at 1: it must jump past its old LSA."""
    net = six_nodes()
    net.run_until(net.converged)
    net.handle("b", net.routers["b"].set_prefixes([(N("/svc/b"), 0, b"")], net.now))
    net.run_until(lambda: net.prim("f", N("/svc/b")))
    old_seq = net.routers["b"]._seq
    assert old_seq >= 2
    b = net.add("b")  # a fresh process, same name and links
    for (x, f), _ in sorted(net.peer.items()):
        if x == "b":
            net.handle("b", b.add_face(f, 1, net.now))
    net.run_until(lambda: net.converged() and not net.prim("f", N("/svc/b")), timeout=2)
    assert b._seq > old_seq
    assert [e.kind for e in net.kinds("b", "seq_bumped")]


# ============================================================ convergence
def test_six_node_topology_converges():
    net = six_nodes()
    t = net.run_until(net.converged, timeout=2)
    assert t < 0.2
    for x in net.routers:
        prefixes = {r.prefix for r in net.routes[x]}
        assert prefixes == {node(y) for y in net.routers if y != x}
        assert all(r.origin == "routing" and r.instance for r in net.routes[x])
        assert net.routers[x].last_change is not None
        assert net.routers[x].stats["spf_runs"] <= net.steps  # at most one per tick
    lsdb = net.routers["a"].lsdb()
    json.dumps(lsdb), json.dumps(net.routers["a"].neighbors())
    assert [e["originator"] for e in lsdb["lsas"]] == [f"/node/{x}" for x in "abcdef"]
    assert lsdb["digest"] == net.routers["f"].lsdb_digest()
    # a -> f: a-e-f is the only path of cost 2.
    (r,) = net.prim("a", node("f"))
    assert (r.face_id, r.cost, r.instance) == (net.face("a", "e"), 2, "/node/f")


def test_stable_network_stays_quiet():
    net = six_nodes()
    net.run_until(net.converged)
    net.run(0.5)
    changes, stats = dict(net.route_changes), {x: dict(r.stats) for x, r in net.routers.items()}
    net.run(3.0)
    assert dict(net.route_changes) == changes  # no RoutesChanged without a change
    for x, r in net.routers.items():
        assert r.stats["spf_runs"] == stats[x]["spf_runs"]
        assert r.stats["lsas_sent"] == stats[x]["lsas_sent"]
        assert r.stats["hellos_sent"] >= stats[x]["hellos_sent"] + 29
        assert r.stats["lsas_retransmitted"] == 0
        assert all(n["lsas_awaiting_ack"] == 0 for n in r.neighbors())


def test_next_tick_reports_the_earliest_timer():
    net = six_nodes()
    net.run_until(net.converged)
    net.run(0.05)
    for r in net.routers.values():
        t = r.next_tick()
        assert net.now < t <= net.now + 0.1 + 1e-9
    assert LinkStateRouter(node("z")).next_tick() == float("inf")


def test_ecmp_on_a_square():
    net = Net()
    for a, b in [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")]:
        net.link(a, b)
    net.run_until(net.converged)
    routes = net.prim("a", node("d"))
    assert {r.face_id for r in routes} == {net.face("a", "b"), net.face("a", "c")}
    assert {r.cost for r in routes} == {2}
    assert len(net.prim("a", node("b"))) == 1


def test_parallel_links_are_equal_cost_paths():
    net = Net()
    f1, _ = net.link("a", "b")
    f2, _ = net.link("a", "b")
    net.run_until(net.converged)
    assert {r.face_id for r in net.prim("a", node("b"))} == {f1, f2}
    adj = LsaBody.decode([p for _, x, _, p in net.sent if x == "a" and p.src == node("a")
                          and p.type == PacketType.LSA][-1].payload).adjacencies
    assert adj == [(node("b"), 1)]


def test_asymmetric_costs_are_used_per_direction():
    net = Net()
    net.link("a", "b", cost=1, cost_ba=10)
    net.link("b", "c", cost=1)
    net.link("a", "c", cost=5)
    net.run_until(net.converged)
    assert [r.cost for r in net.prim("a", node("c"))] == [2]   # a-b-c
    assert [r.cost for r in net.prim("c", node("a"))] == [5]   # c-a direct; c-b-a is 11


# ==================================================================== LFA
def test_lfa_backup_on_a_triangle():
    net = Net()
    for a, b in [("a", "b"), ("b", "c"), ("a", "c")]:
        net.link(a, b)
    net.run_until(net.converged)
    (p,) = net.prim("a", node("c"))
    (b,) = net.backups("a", node("c"))
    assert (p.face_id, p.cost) == (net.face("a", "c"), 1)
    assert (b.face_id, b.cost, b.instance) == (net.face("a", "b"), 2, "/node/c")


def test_no_lfa_on_a_four_ring_for_the_adjacent_node():
    """a-b-c-d-a, unit costs: d's path to b may go back through a, so d is no LFA for b."""
    net = Net()
    for a, b in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]:
        net.link(a, b)
    net.run_until(net.converged)
    assert net.prim("a", node("b")) and not net.backups("a", node("b"))
    assert len(net.prim("a", node("c"))) == 2  # ECMP instead


def test_no_lfa_on_a_chain():
    net = Net()
    net.link("a", "b")
    net.link("b", "c")
    net.run_until(net.converged)
    assert not any(r.priority == 1 for x in "abc" for r in net.routes[x])


def test_lfa_takes_over_in_the_forwarding_core_when_the_face_goes_down():
    """The claim behind priority 1: the pipeline switches without a new SPF."""
    net = Net()
    for a, b in [("a", "b"), ("b", "c"), ("a", "c")]:
        net.link(a, b)
    net.run_until(net.converged)
    fwd = Forwarder(node("a"))
    for i in (1, 2):
        assert fwd.add_face(ETHER, f"eth{i}").face_id == i
    fwd.replace_routes("routing", net.routes["a"], net.now)
    ping = wire.Packet(PacketType.ECHO_REQUEST, dst=node("c"), src=node("a"),
                       payload=wire.EchoBody(0, 1).encode())
    out = [a for a in fwd.originate(ping, net.now) if isinstance(a, Send)]
    assert [a.face_id for a in out] == [net.face("a", "c")]
    fwd.set_face_state(net.face("a", "c"), False, net.now)
    out = [a for a in fwd.originate(ping, net.now) if isinstance(a, Send)]
    assert [a.face_id for a in out] == [net.face("a", "b")]


# ========================================================= prefixes, anycast
def test_anycast_gives_one_route_per_instance():
    net = six_nodes()
    for x in "cf":
        net.handle(x, net.routers[x].set_prefixes([(N("/svc/cache"), 3, b"auth")], net.now))
    net.run_until(lambda: net.converged() and len(
        {r.instance for r in net.prim("a", N("/svc/cache"))}) == 2)
    by_inst = {r.instance: r for r in net.prim("a", N("/svc/cache"))}
    assert by_inst["/node/c"].cost == 2 + 3 and by_inst["/node/f"].cost == 2 + 3
    assert by_inst["/node/f"].face_id == net.face("a", "e")
    # Nearer instance wins by cost at e: f is one hop away, c two.
    best = min(net.prim("e", N("/svc/cache")), key=lambda r: r.rank)
    assert best.instance == "/node/f"


def test_set_prefixes_withdrawal_removes_routes_everywhere():
    net = six_nodes()
    net.run_until(net.converged)
    c = net.routers["c"]
    net.handle("c", c.set_prefixes([(N("/svc/x"), 0, b""), (N("/svc/y"), 1, b"")], net.now))
    net.run_until(lambda: all(net.prim(x, N("/svc/y")) for x in "abdef"))
    seq = c._seq
    assert c.set_prefixes([(N("/svc/y"), 1, b""), (N("/svc/x"), 0, b"")], net.now) == []
    assert c._seq == seq  # same set in another order: no new LSA
    net.quiet()
    net.handle("c", c.set_prefixes([(N("/svc/y"), 1, b"")], net.now))
    t = net.run_until(lambda: not any(net.prim(x, N("/svc/x")) or net.backups(x, N("/svc/x"))
                                      for x in "abdef"))
    assert t <= 0.1
    assert all(net.prim(x, N("/svc/y")) for x in "abdef")


def test_shutdown_flushes_everything_before_the_dead_interval():
    net = six_nodes()
    net.handle("c", net.routers["c"].set_prefixes([(N("/svc/x"), 0, b"")], net.now))
    net.run_until(lambda: net.converged() and net.prim("a", N("/svc/x")))
    acts = net.routers["c"].shutdown(net.now)
    flushes = [LsaBody.decode(a.packet.payload) for a in acts
               if isinstance(a, SendControl) and a.packet.type == PacketType.LSA]
    assert len(flushes) == 2 and all(b.flags & LsaBody.FLUSH for b in flushes)
    net.handle("c", acts)
    net.stopped.add("c")
    t = net.run_until(lambda: not any(r.instance == "/node/c" for x in "abdef"
                                      for r in net.routes[x]))
    assert t < 0.3  # the flush, not the dead timers
    assert net.converged()
    entry = next(e for e in net.routers["a"].lsdb()["lsas"] if e["originator"] == "/node/c")
    assert entry["flush"] and entry["prefixes"] == []
    net.run(0.5)  # c keeps retransmitting only until the flush is acknowledged
    assert all(n["lsas_awaiting_ack"] == 0 for n in net.routers["c"].neighbors())
    assert net.routers["c"].next_tick() == float("inf")  # nothing left to do
    assert net.routers["c"].shutdown(net.now) == []


def test_shutdown_gives_up_on_a_silent_neighbour():
    net = Net()
    net.link("a", "b")
    net.run_until(net.converged)
    net.cut.add(frozenset("ab"))
    net.handle("a", net.routers["a"].shutdown(net.now))
    net.run(0.35)
    assert net.routers["a"].neighbors()[0]["lsas_awaiting_ack"] == 0
    assert net.routers["a"].next_tick() == float("inf")


def test_restart_after_shutdown_overrides_the_flush():
    net = six_nodes()
    net.run_until(net.converged)
    net.handle("c", net.routers["c"].shutdown(net.now))
    net.stopped.add("c")
    net.run_until(lambda: not any(net.reaches(x, "c") for x in "abdef"))
    flush_seq = next(e["seq"] for e in net.routers["a"].lsdb()["lsas"]
                     if e["originator"] == "/node/c")
    net.run(0.5)  # neighbours notice c's silence too
    c = net.add("c")
    net.stopped.discard("c")
    for (x, f), _ in sorted(net.peer.items()):
        if x == "c":
            net.handle("c", c.add_face(f, 1, net.now))
    net.run_until(net.converged, timeout=2)
    entry = next(e for e in net.routers["a"].lsdb()["lsas"] if e["originator"] == "/node/c")
    assert entry["seq"] > flush_seq and not entry["flush"]


def test_unreachable_node_is_purged():
    net = six_nodes()
    for r in net.routers.values():
        r.UNREACHABLE_PURGE_S = 1.0
    net.run_until(net.converged)
    for y in "bf":
        net.cut.add(frozenset(("c", y)))
    net.run_until(lambda: not net.reaches("a", "c"), timeout=1)
    assert any(e["originator"] == "/node/c" for e in net.routers["a"].lsdb()["lsas"])
    net.run(1.1)
    assert all(e["originator"] != "/node/c" for e in net.routers["a"].lsdb()["lsas"])
    assert net.kinds("a", "lsa_purged")[0].detail["reason"] == "unreachable"
    # Healing the partition brings it back through the database exchange.
    net.quiet()
    net.cut.clear()
    net.run_until(net.converged, timeout=2)


def test_refresh_keeps_lsas_alive_past_max_age():
    net = Net(lsa_refresh_s=2.0, max_age_s=5.0)
    net.link("a", "b")
    net.link("b", "c")
    net.run_until(net.converged)
    seq = net.routers["a"]._seq
    net.run(0.1)
    changes = net.route_changes["c"]
    net.run(12.0)
    assert net.routers["a"]._seq >= seq + 5
    assert net.converged() and not net.kinds("c", "lsa_purged")
    assert net.route_changes["c"] == changes  # refreshes change no route
    ages = [e["age"] for e in net.routers["c"].lsdb()["lsas"]]
    assert max(ages) <= 2


def test_constructor_checks_timers():
    with pytest.raises(ValueError):
        LinkStateRouter(node("a"), hello_interval=0.5, dead_interval=0.3)
    with pytest.raises(ValueError):
        LinkStateRouter(node("a"), lsa_refresh_s=10, max_age_s=5)
    with pytest.raises(ValueError):
        LinkStateRouter(node("a")).add_face(1, cost=0)


# ========================================================= reliable flooding
def _drop_first(at: str, ptype: int, n: int, lost: Counter):
    """A Net.drop that loses the first n packets of type ptype sent by `at` (counted in lost)."""
    def drop(x, f, p):
        if x == at and p.type == ptype and lost[at] < n:
            lost[at] += 1
            return True
        return False
    return drop


def test_lost_lsas_are_retransmitted():
    net = Net()
    lost = Counter()
    net.drop = _drop_first("a", PacketType.LSA, 3, lost)
    net.link("a", "b")
    t = net.run_until(lambda: any(e["originator"] == "/node/a"
                                  for e in net.routers["b"].lsdb()["lsas"]), timeout=2)
    assert lost["a"] == 3
    assert net.routers["a"].stats["lsas_retransmitted"] >= 3
    assert 0.4 < t < 1.0  # three retransmit intervals of 0.2 s
    net.run_until(net.converged, timeout=3)
    net.run(0.3)
    assert all(n["lsas_awaiting_ack"] == 0 for x in "ab" for n in net.routers[x].neighbors())


def test_lost_acks_cause_retransmission_then_duplicates_are_counted():
    net = Net()
    lost = Counter()
    net.drop = _drop_first("b", PacketType.ACK, 2, lost)
    net.link("a", "b")
    net.run_until(net.converged)
    net.run(0.6)
    assert net.routers["a"].stats["lsas_retransmitted"] >= 1
    assert net.routers["b"].stats["lsas_duplicate"] >= 1
    assert all(n["lsas_awaiting_ack"] == 0 for n in net.routers["a"].neighbors())


def test_acks_are_batched():
    net = Net()
    for y in "bcdefg":
        net.link("a", y)  # a star: a learns six LSAs at once and floods them on
    net.link("h", "a")
    net.run_until(net.converged)
    acks = [wire.AckBody.decode(p.payload) for _, x, _, p in net.sent
            if x == "h" and p.type == PacketType.ACK]
    assert max(len(a.acks) for a in acks) >= 3


def test_old_or_replayed_lsa_is_ignored_and_answered_with_the_newer_copy():
    net = six_nodes()
    net.run_until(net.converged)
    old = next(p for t, x, f, p in reversed(net.sent)
               if x == "b" and p.type == PacketType.LSA and p.src == node("b"))
    old_seq = LsaBody.decode(old.payload).seq
    net.handle("b", net.routers["b"].set_prefixes([(N("/svc/new"), 0, b"")], net.now))
    net.run_until(lambda: net.prim("f", N("/svc/new")))
    routes, digest = list(net.routes["f"]), net.routers["f"].lsdb_digest()
    f = net.routers["f"]
    face = net.face("f", "e")
    before = f.stats["lsas_old"]  # crossing floods during convergence also count
    acts = f.on_packet(face, old, net.now)
    assert f.stats["lsas_old"] == before + 1
    back = [a for a in acts if isinstance(a, SendControl)]
    assert [(a.face_id, a.packet.src) for a in back] == [(face, node("b"))]
    assert LsaBody.decode(back[0].packet.payload).seq > old_seq
    acts = f.tick(net.now)
    (ack,) = [a for a in acts if isinstance(a, SendControl) and a.packet.type == PacketType.ACK]
    assert ack.face_id == face and (node("b"), old_seq) in wire.AckBody.decode(
        ack.packet.payload).acks
    assert not any(isinstance(a, RoutesChanged) for a in acts)
    assert f.lsdb_digest() == digest and net.routes["f"] == routes
    # An exact duplicate of the current LSA is acknowledged and counted too.
    cur = next(p for t, x, _, p in reversed(net.sent)
               if x == "b" and p.type == PacketType.LSA and p.src == node("b"))
    assert f.on_packet(face, cur, net.now) == []
    assert f.stats["lsas_duplicate"] >= 1


def test_copies_differing_only_in_age_are_duplicates_and_others_are_decoded(monkeypatch):
    net = Net()
    net.link("a", "b")
    net.run_until(net.converged)
    b = net.routers["b"]
    face = net.face("b", "a")
    cur = next(p for t, x, _, p in reversed(net.sent)
               if x == "a" and p.type == PacketType.LSA and p.src == node("a"))
    body = LsaBody.decode(cur.payload)
    before = dict(b.stats)
    older = dataclasses.replace(cur, payload=body._replace(age_s=body.age_s + 7).encode())
    decoded = []
    real_decode = LsaBody.decode
    monkeypatch.setattr(LsaBody, "decode", classmethod(
        lambda cls, data: decoded.append(data) or real_decode(data)))
    assert b.on_packet(face, older, net.now) == []
    assert decoded == []  # recognised as a copy without decoding it
    assert b.stats["lsas_duplicate"] == before["lsas_duplicate"] + 1
    (ack,) = [a for a in b.tick(net.now) if a.packet.type == PacketType.ACK]
    assert (node("a"), body.seq) in wire.AckBody.decode(ack.packet.payload).acks
    # same seq and age but cut short: decoded (and refused), never taken for a copy
    truncated = dataclasses.replace(cur, payload=cur.payload[:-1])
    b.on_packet(face, truncated, net.now)
    assert len(decoded) == 1 and b.stats["dropped"].get("bad_body", 0) == 1
    padded = dataclasses.replace(cur, payload=cur.payload + b"\0")  # one encoding per LSA
    b.on_packet(face, padded, net.now)
    assert len(decoded) == 2 and b.stats["dropped"]["bad_body"] == 2
    assert b.stats["lsas_duplicate"] == before["lsas_duplicate"] + 1


def test_lsa_from_a_stranger_is_not_acknowledged():
    r = LinkStateRouter(node("a"))
    r.add_face(1, 1, 0.0)
    lsa = wire.Packet(PacketType.LSA, dst=wire.LSA_NAME, src=node("x"), hop_limit=1,
                      payload=LsaBody(1, 0, 0, [], []).encode())
    assert r.on_packet(1, lsa, 0.01) == []
    assert r.stats["dropped"] == {"lsa_from_non_neighbor": 1}
    assert r.on_packet(9, lsa, 0.01) == []  # unknown face
    bad = wire.Packet(PacketType.HELLO, dst=wire.HELLO_NAME, src=node("x"), payload=b"\0")
    r.on_packet(1, bad, 0.02)
    assert r.stats["dropped"]["bad_body"] == 1


def test_large_lsa_is_fragmented_and_reassembled_despite_loss():
    net = Net()
    lost = Counter()

    def drop(x, f, p):  # lose the second fragment of the first big LSA, once
        if x == "a" and p.type == PacketType.LSA and p.frag_count > 1 and p.frag_index == 1 \
                and not lost["frag"]:
            lost["frag"] += 1
            return True
        return False
    net.drop = drop
    net.link("a", "b")
    net.link("b", "c")
    net.run_until(net.converged)
    many = [(N(f"/svc/s{i:02d}"), i, bytes([i]) * 150) for i in range(30)]
    net.handle("a", net.routers["a"].set_prefixes(many, net.now))
    net.run_until(lambda: all(net.prim("c", p) for p, _, _ in many), timeout=2)
    assert lost["frag"] == 1
    assert max(p.frag_count for _, _, _, p in net.sent if p.type == PacketType.LSA) >= 4
    entry = next(e for e in net.routers["c"].lsdb()["lsas"] if e["originator"] == "/node/a")
    assert [p["authorization_bytes"] for p in entry["prefixes"][1:]] == [150] * 30
    assert net.prim("c", N("/svc/s07"))[0].cost == 2 + 7


# ============================================================== validation
def test_validator_rejects_prefixes_and_counts_reasons():
    calls = []

    def validator(prefix: Name, auth: bytes, origin: Name) -> Optional[str]:
        calls.append((prefix, auth, origin))
        if N("/evil").is_prefix_of(prefix):
            return "bad_signature"
        return None if auth == b"ok" else "no_authorization"

    net = Net(validator=validator)
    for a, b in [("a", "b"), ("b", "c")]:
        net.link(a, b)
    net.handle("c", net.routers["c"].set_prefixes(
        [(N("/evil/x"), 0, b"ok"), (N("/good/y"), 0, b"ok"), (N("/bare"), 0, b""),
         (N("/_dmsc/lsa"), 0, b"ok")], net.now))
    net.run_until(lambda: net.converged() and net.prim("a", N("/good/y")))
    net.run(0.1)
    for x in "ab":
        r = net.routers[x]
        assert not net.prim(x, N("/evil/x")) and not net.prim(x, N("/bare"))
        assert not any(rt.prefix == N("/_dmsc/lsa") for rt in net.routes[x])
        assert r.stats["rejected_prefixes"] == {"bad_signature": 1, "no_authorization": 1,
                                                "reserved": 1}
        ev = {e.detail["prefix"]: e.detail for e in net.kinds(x, "prefix_rejected")}
        assert ev["/evil/x"] == {"prefix": "/evil/x", "originator": "/node/c",
                                 "reason": "bad_signature"}
    assert (N("/good/y"), b"ok", node("c")) in calls
    assert not any(p == o for p, _, o in calls)  # node names skip the validator
    assert not any(p[0] == b"_dmsc" for p, _, _ in calls)
    lsdb = net.routers["a"].lsdb()
    entry = next(e for e in lsdb["lsas"] if e["originator"] == "/node/c")
    assert {p["prefix"]: p["rejected"] for p in entry["prefixes"]}["/evil/x"] == "bad_signature"
    # A refresh with the same content does not count the same rejection again.
    net.handle("c", net.routers["c"].set_prefixes(
        [(N("/evil/x"), 0, b"ok"), (N("/good/y"), 0, b"ok"), (N("/bare"), 0, b""),
         (N("/_dmsc/lsa"), 0, b"ok"), (N("/more"), 0, b"ok")], net.now))
    net.run_until(lambda: net.prim("a", N("/more")))
    assert net.routers["a"].stats["rejected_prefixes"]["bad_signature"] == 1


def test_revalidation_withdraws_revoked_and_expired_prefixes():
    revoked: Set[Name] = set()

    def validator(prefix, auth, origin):
        return "revoked" if prefix in revoked else None
    net = Net(validator=validator)
    net.link("a", "b")
    net.link("b", "c")
    net.handle("c", net.routers["c"].set_prefixes(
        [(N("/svc/x"), 0, b"x"), (N("/svc/y"), 0, b"y")], net.now))
    net.run_until(lambda: net.prim("a", N("/svc/x")) and net.prim("a", N("/svc/y")))
    net.quiet()
    # A new revocation list: the owner calls revalidate(); routes go at the next tick.
    revoked.add(N("/svc/x"))
    a = net.routers["a"]
    acts = a.revalidate(net.now)
    assert [e.detail["reason"] for e in acts if isinstance(e, RoutingEvent)] == ["revoked"]
    net.handle("a", acts)
    net.step()
    assert not net.prim("a", N("/svc/x")) and net.prim("a", N("/svc/y"))
    # Nobody calls revalidate() at b: the periodic recheck (an expiring
    # authorization looks the same) catches it within REVALIDATE_S.
    assert net.prim("b", N("/svc/x"))
    t = net.run_until(lambda: not net.prim("b", N("/svc/x")), timeout=6)
    assert t <= LinkStateRouter.REVALIDATE_S + STEP
    assert net.routers["b"].stats["rejected_prefixes"] == {"revoked": 1}
    revoked.clear()
    net.handle("a", a.revalidate(net.now))
    # Seconds after the revocation at a (within HOLDDOWN, past TIME_TO_LEARN): the SPF
    # run waits the long delay.
    net.run_until(lambda: net.prim("a", N("/svc/x")), timeout=a.spf_backoff.long + STEP)


def test_validator_exception_is_a_rejection():
    def validator(prefix, auth, origin):
        raise RuntimeError("boom")
    net = Net(validator=validator)
    net.link("a", "b")
    net.handle("b", net.routers["b"].set_prefixes([(N("/svc"), 0, b"")], net.now))
    net.run_until(lambda: net.converged() and net.routers["a"].stats["rejected_prefixes"])
    assert net.routers["a"].stats["rejected_prefixes"] == {"validator_error: RuntimeError": 1}
    assert not net.prim("a", N("/svc"))


# ========================================================= reference checks
def floyd(nodes: List[str], edges: Dict[Tuple[str, str], int]) -> Dict[Tuple[str, str], float]:
    inf = float("inf")
    d = {(u, v): (0 if u == v else edges.get((u, v), inf)) for u in nodes for v in nodes}
    for k in nodes:
        for i in nodes:
            for j in nodes:
                if d[i, k] + d[k, j] < d[i, j]:
                    d[i, j] = d[i, k] + d[k, j]
    return d


def random_connected(n: int, extra: int, rng: random.Random) -> List[Tuple[str, str, int]]:
    names = [f"n{i:02d}" for i in range(n)]
    links = []
    for i in range(1, n):  # a random spanning tree, then extra links
        links.append((names[rng.randrange(i)], names[i], rng.randint(1, 4)))
    pairs = {frozenset(l[:2]) for l in links}
    while len(links) < n - 1 + extra:
        a, b = rng.sample(names, 2)
        if frozenset((a, b)) not in pairs:
            pairs.add(frozenset((a, b)))
            links.append((a, b, rng.randint(1, 4)))
    return links


def _net_of(links):
    """A simulated network of these (a, b, cost) links, and its edge costs both ways."""
    net = Net()
    edges = {}
    for a, b, c in links:
        net.link(a, b, c)
        edges[a, b] = edges[b, a] = c
    return net, edges


def test_twenty_node_random_graph_matches_reference_dijkstra():
    rng = random.Random(20)
    links = random_connected(20, 14, rng)
    net, edges = _net_of(links)
    names = sorted(net.routers)
    t = net.run_until(net.converged, timeout=3)
    assert t < 0.5
    d = floyd(names, edges)
    for s in names:
        nbr_face = {y: f for (x, f), (y, _) in net.peer.items() if x == s}
        for dst in names:
            if dst == s:
                continue
            want = {nbr_face[n] for n in nbr_face if edges[s, n] + d[n, dst] == d[s, dst]}
            got = net.prim(s, node(dst))
            assert {r.face_id for r in got} == want, (s, dst)
            assert {r.cost for r in got} == {d[s, dst]}
            lfa = {nbr_face[n] for n in nbr_face if nbr_face[n] not in want
                   and d[n, dst] < d[n, s] + d[s, dst]}
            assert {r.face_id for r in net.backups(s, node(dst))} == lfa, (s, dst)
    # Fail a link in the middle: everybody reconverges to the new reference.
    a, b, c = links[len(links) // 2]
    net.cut.add(frozenset((a, b)))
    del edges[a, b], edges[b, a]
    d2 = floyd(names, edges)
    if all(d2[s, t2] < float("inf") for s in names for t2 in names):
        net.run_until(lambda: all(
            {r.cost for r in net.prim(s, node(t2))} == {d2[s, t2]}
            for s in names for t2 in names if s != t2), timeout=2)


def test_lossy_links_still_converge_to_the_reference():
    """10 % of every control packet lost, all the time: reliable flooding copes."""
    rng = random.Random(7)
    links = random_connected(12, 8, rng)
    net, edges = _net_of(links)
    net.drop = lambda x, f, p: rng.random() < 0.1
    names = sorted(net.routers)
    d = floyd(names, edges)

    def matches() -> bool:
        return net.converged() and all(
            {r.cost for r in net.prim(s, node(t))} == {d[s, t]}
            for s in names for t in names if s != t)
    net.run_until(matches, timeout=3)
    assert sum(r.stats["lsas_retransmitted"] for r in net.routers.values()) > 0


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 8), st.integers(0, 8), st.integers(0, 2**32 - 1))
def test_spf_matches_floyd_warshall(n, extra, seed):
    rng = random.Random(seed)
    extra = min(extra, n * (n - 1) // 2 - (n - 1))
    links = random_connected(n, extra, rng)
    names = sorted({x for l in links for x in l[:2]})
    edges = {}
    adj: Dict[str, List[Tuple[str, int]]] = {x: [] for x in names}
    for a, b, c in links:
        edges[a, b] = edges[b, a] = c
        adj[a].append((b, c))
        adj[b].append((a, c))
    graph = spf.two_way_graph(adj)
    d = floyd(names, edges)
    root = names[0]
    faces = {nb: frozenset([i]) for i, nb in enumerate(sorted(graph[root]))}
    dist, hops = spf.shortest_paths(graph, root, faces)
    assert dist == {x: d[root, x] for x in names if x != root}
    for x in dist:
        want = {i for nb, (i,) in faces.items() if edges[root, nb] + d[nb, x] == d[root, x]}
        assert hops[x] == want
    face_nb = {i: nb for nb, (i,) in faces.items()}
    primary = {x: frozenset(face_nb[i] for i in h) for x, h in hops.items()}
    alts = spf.loop_free_alternates(graph, root, dist, primary)
    for x in dist:
        want = {(nb, edges[root, nb] + d[nb, x]) for nb in graph[root]
                if nb not in primary[x] and d[nb, x] < d[nb, root] + d[root, x]}
        assert set(alts.get(x, ())) == want


def test_two_way_graph_drops_one_sided_links():
    g = spf.two_way_graph({"a": [("b", 1), ("c", 2)], "b": [("a", 3)], "c": []})
    assert g == {"a": {"b": 1}, "b": {"a": 3}, "c": {}}


def test_a_flapping_link_is_batched_by_the_spf_and_lsa_backoffs():
    """20 carrier flaps in 2 s: far fewer SPF runs and LSAs than flaps (RFC 8405),
    and the network still ends converged with the link up."""
    net = six_nodes()
    net.run_until(net.converged)
    net.quiet()
    a, f = net.routers["a"], net.routers["f"]
    fab = net.face("a", "b")
    spf0, orig0 = f.stats["spf_runs"], a.stats["lsas_originated"]
    for i in range(40):  # down, up, down, up ... every 50 ms
        net.handle("a", a.face_state(fab, i % 2 == 1, net.now))
        net.run(0.05)
    b = f.spf_backoff
    # the first at once, then the short delay until TIME_TO_LEARN, then the long delay
    bound = 1 + b.time_to_learn / b.short + (2.0 - b.time_to_learn) / b.long + 1
    assert f.stats["spf_runs"] - spf0 <= bound
    lb = a.lsa_backoff
    assert a.stats["lsas_originated"] - orig0 <= 1 + lb.time_to_learn / lb.short + \
        (2.0 - lb.time_to_learn) / lb.long + 1
    net.run_until(lambda: net.converged() and net.prim("a", node("b"))[0].face_id == fab,
                  timeout=b.long + lb.long + 1)


def test_database_exchange_sends_only_what_the_neighbour_lacks():
    """A link that comes back between two synchronised routers: the summaries (ACKs
    listing every LSA held) replace the whole-LSDB exchange; a new router joining gets
    everything."""
    net = six_nodes()
    net.run_until(net.converged)
    net.quiet()
    a = net.routers["a"]
    fab = net.face("a", "b")
    net.handle("a", a.face_state(fab, False, net.now))
    net.run(0.3)
    sent0 = len(net.sent)
    net.handle("a", a.face_state(fab, True, net.now))
    net.run_until(lambda: net.converged() and net.prim("a", node("b"))[0].face_id == fab, timeout=2)
    net.run(1.0)
    lsas = [(x, p.src) for _, x, f, p in net.sent[sent0:] if p.type == PacketType.LSA
            and (x, f) in ((("a", fab)), ("b", net.face("b", "a")))]
    # only the two ends' own new LSAs cross the link, not the six-entry databases
    assert sorted(set(lsas)) == [("a", node("a")), ("b", node("b"))]
    assert a.stats["lsas_retransmitted"] == 0
    # a newcomer knows nothing: it gets the whole database over its link
    net.link("g", "c")
    net.run_until(net.converged, timeout=3)
    assert len(net.routers["g"].lsdb()["lsas"]) == 7
