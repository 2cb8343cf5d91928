"""Link-state name routing and SPA with real forwarders in network namespaces.

Topology (6 nodes, redundant paths):

    s1 - a - b - d - s2
          \\  |  /
            c
"""
from __future__ import annotations

import dataclasses
import socket
import threading
import time

import pytest

from forwarder.dataplane import wire
from forwarder.apps.client import CallTimeout, Client, DmscError, NackError
from forwarder.dataplane.names import Name
from forwarder.spa import Authority, ServiceIdentity
from topologies.fwd_net import ForwarderNet, intf_between, wait_for
from topologies.lsa_flood import lsa_flood_frames, send_flood
from topologies.nsenter import socket_in

pytestmark = [pytest.mark.netns, pytest.mark.dataplanes]

NODES = ("s1", "a", "b", "c", "d", "s2")
LINKS = (("s1", "a"), ("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d"), ("d", "s2"))
SRS = ("a", "b", "c", "d")
# Waits are hang limits, ten times and more what they take on a loaded machine; a test
# goes on as soon as the state it polls for is reached. How long routing takes is
# measured by bench/bench_routing.py, not asserted here.
HANG_S = 60


def _build(netns_net, spa=None, extra=None):
    for n in NODES:
        netns_net.add_node(n)
    for l in LINKS:
        netns_net.add_link(*l)
    fn = ForwarderNet(netns_net)
    for n in NODES:
        cfg = {"routing": {"enabled": True}}
        if n in SRS:
            cfg["roles"] = ["sr"]
        if spa:
            cfg["spa"] = dict(spa)
        cfg.update((extra or {}).get(n, {}))
        fn.add(n, **cfg)
    fn.start_all()
    return fn


def _converged(fn, nodes=NODES):
    st = [fn[n].status() for n in nodes]
    digests = {s["routing"]["lsdb_digest"] for s in st}
    names = {f"/node/{n}" for n in nodes}
    return len(digests) == 1 and all(
        names <= {e["prefix"] for e in fn[n].api("GET", "/fib")["entries"]} for n in nodes)


def _fib_prefixes(app):
    return {e["prefix"] for e in app.api("GET", "/fib")["entries"]}


def _echo(payload, request):
    return b"echo:" + payload


def _read_packet(sock):
    """(frame, packet) of the next DMSC frame on a raw socket; None on its timeout
    or a frame that does not decode."""
    try:
        frame = sock.recv(65536)
    except socket.timeout:
        return None
    try:
        return frame, wire.decode(frame[14:])
    except wire.DecodeError:
        return None


def _longest_gap(times, start, end):
    """The longest stretch of [start, end] without one of `times` in it."""
    inside = [t for t in times if start <= t <= end]
    return max(b - a for a, b in zip([start] + inside, inside + [end]))


def test_converges_and_routes_every_node(netns_net):
    fn = _build(netns_net)
    wait_for(lambda: _converged(fn), HANG_S, what="every LSDB to agree")
    fib_a = {e["prefix"]: e for e in fn["a"].api("GET", "/fib")["entries"]}
    # a reaches d over two equal-cost paths (via b and via c)
    d_hops = [nh for nh in fib_a["/node/d"]["nexthops"] if nh["priority"] == 0]
    assert len({nh["face_name"] for nh in d_hops}) == 2
    trace = fn["s1"].api("POST", "/trace", {"name": "/node/s2"})
    assert trace["reached"] and len(trace["hops"]) == 4
    assert trace["hops"][0]["node"] == "/node/a" and trace["hops"][-1]["node"] == "/node/s2"
    st = fn["b"].status()
    assert {n["face"] for n in st["routing"]["neighbors"]} >= {"b-eth0", "b-eth1", "b-eth2"} or \
        len(st["routing"]["neighbors"]) == 3


def test_link_cut_costs_at_most_one_retried_request(netns_net):
    # The cut is found by carrier (asserted below), never by the dead interval: a long one
    # keeps a forwarder that a loaded machine leaves unscheduled for a few hundred ms from
    # losing its adjacencies, whose flap would cost calls that the cut did not.
    fn = _build(netns_net, extra={n: {"routing": {"enabled": True, "dead_ms": 5000}}
                                  for n in NODES})
    wait_for(lambda: _converged(fn), HANG_S, what="convergence")
    # A call is retried after 5 s without an answer: only a lost request or answer
    # is retried, not one that a busy machine was slow to carry (calls take milliseconds).
    with Client(fn["s2"].app_socket) as server, \
            Client(fn["s1"].app_socket, timeout=5, retries=2) as cli:
        server.serve("/svc", _echo)
        # every node on the way, not only s1: a router in its SPF back-off computes later
        # than s1 (CI saw a NO_ROUTE from a for the first call)
        wait_for(lambda: all("/svc" in _fib_prefixes(fn[n]) for n in NODES if n != "s2"),
                 HANG_S, what="/svc to reach every node")
        assert cli.call("/svc", b"0") == b"echo:0"
        # which of a's links carries the flow?
        flows = fn["a"].api("GET", "/flows")["flows"]
        face = next(f["face_name"] for f in flows if f["dst"] == "/svc")
        peer = "b" if face == intf_between(netns_net, "a", "b") else "c"
        failures, done = [], threading.Event()
        sent = {"n": 0}

        def stream():
            while not done.is_set():
                try:
                    assert cli.call("/svc", b"s") == b"echo:s"
                    sent["n"] += 1
                except (DmscError, AssertionError) as exc:
                    failures.append(repr(exc))
        t = threading.Thread(target=stream)
        retries0 = cli.counters["retries"]
        t.start()
        wait_for(lambda: sent["n"] >= 50, HANG_S, what="the stream to run")
        netns_net.link_down("a", peer)
        n_cut = sent["n"]
        wait_for(lambda: sent["n"] >= n_cut + 200 or failures, HANG_S, what="calls after the cut")
        done.set()
        t.join(10)
        assert not failures, failures[:3]
        assert cli.counters["retries"] - retries0 <= 1
    ev = fn["a"].status()["face_events"]
    assert ev[intf_between(netns_net, "a", peer)]["source"] == "netlink"
    wait_for(lambda: _converged(fn), HANG_S, what="re-convergence after the cut")


def test_dead_node_prefixes_are_withdrawn_everywhere(netns_net):
    fn = _build(netns_net)
    wait_for(lambda: _converged(fn), HANG_S, what="convergence")
    with Client(fn["s2"].app_socket) as server:
        server.serve("/svc/dies", _echo)
        wait_for(lambda: all("/svc/dies" in _fib_prefixes(fn[n]) for n in NODES if n != "s2"),
                 HANG_S, what="/svc/dies everywhere")
        fn["s2"].kill()  # kill -9: no goodbye, the neighbour's dead timer must notice
        wait_for(lambda: all("/svc/dies" not in _fib_prefixes(fn[n]) and
                             "/node/s2" not in _fib_prefixes(fn[n]) for n in NODES if n != "s2"),
                 HANG_S, what="the dead node's prefixes to be withdrawn")
    # ... and it was d's dead timer (the link stays up: no carrier event, no goodbye);
    # how soon is bench_routing.py's dead_node_withdrawal_ms
    log = (fn["d"].workdir / "forwarder.log").read_text()
    assert any("adjacency_down" in l and "/node/s2" in l and "'dead'" in l for l in log.splitlines()), \
        log[-2000:]
    # a graceful stop flushes at once
    with Client(fn["s1"].app_socket) as server:
        server.serve("/svc/bye", _echo)
        wait_for(lambda: "/svc/bye" in _fib_prefixes(fn["d"]), HANG_S, what="/svc/bye at d")
        server.unregister("/svc/bye")
        wait_for(lambda: "/svc/bye" not in _fib_prefixes(fn["d"]), HANG_S, what="withdrawal at d")


def test_anycast_prefix_has_one_route_per_instance(netns_net):
    fn = _build(netns_net)
    wait_for(lambda: _converged(fn), HANG_S, what="convergence")
    with Client(fn["s1"].app_socket) as one, Client(fn["s2"].app_socket) as two:
        one.serve("/shop/cart", _echo)
        two.serve("/shop/cart", _echo)

        def instances():
            e = next((e for e in fn["b"].api("GET", "/fib")["entries"] if e["prefix"] == "/shop/cart"), None)
            return e and {nh["instance"] for nh in e["nexthops"]}
        assert wait_for(lambda: instances() == {"/node/s1", "/node/s2"} and instances(), HANG_S,
                        what="two instances at b")


def test_instance_chosen_by_weight_is_kept_downstream(netns_net):
    """c - r - i1 and r - m - i2: r prefers the nearer i1; a weight rule at c picks i2,
    and the INSTANCE TLV keeps r from undoing that choice."""
    for n in ("c", "r", "m", "i1", "i2"):
        netns_net.add_node(n)
    for l in (("c", "r"), ("r", "i1"), ("r", "m"), ("m", "i2")):
        netns_net.add_link(*l)
    fn = ForwarderNet(netns_net)
    for n in ("c", "r", "m", "i1", "i2"):
        fn.add(n, routing={"enabled": True}, **({"roles": ["sr"]} if n in ("r", "m") else {}))
    fn.start_all()
    with Client(fn["i1"].app_socket) as one, Client(fn["i2"].app_socket) as two, \
            Client(fn["c"].app_socket, timeout=2) as cli:
        one.serve("/any", lambda p, r: b"i1")
        two.serve("/any", lambda p, r: b"i2")

        names = {f"/node/{n}" for n in ("c", "r", "m", "i1", "i2")}
        wait_for(lambda: all(names <= _fib_prefixes(fn[n]) for n in ("c", "r", "m", "i1", "i2")),
                 HANG_S, what="every node to reach every node")

        def both_known():
            for n in ("c", "r", "m"):
                e = next((e for e in fn[n].api("GET", "/fib")["entries"] if e["prefix"] == "/any"), None)
                if not e or {nh["instance"] for nh in e["nexthops"]} != {"/node/i1", "/node/i2"}:
                    return False
            return True
        wait_for(both_known, HANG_S, what="both instances at c, r and m")
        assert {cli.call("/any", b"x", flow=f"f{k}") for k in range(20)} == {b"i1"}  # nearest
        fn["c"].api("POST", "/strategy", {"prefix": "/any", "weights": {"/node/i1": 0, "/node/i2": 1}})
        answers = [cli.call("/any", b"x", flow=f"g{k}") for k in range(50)]
        assert set(answers) == {b"i2"}, answers


# ------------------------------------------------------------------------ SPA
def _identity(auth, prefix):
    ident = ServiceIdentity.generate()
    ident.authorization = auth.issue(ident.public_key, prefix)
    return ident


def _rejected(fn, reason):
    return {n: fn[n].status()["routing"]["stats"].get("rejected_prefixes", {}).get(reason, 0)
            for n in SRS}


def test_spa_rejects_bad_advertisements_at_every_sr(netns_net, authority):
    auth, pub, crl = authority
    spa = {"trust": [str(pub)], "crl": str(crl)}
    # s2 is a gateway that does not enforce SPA at registration: whatever its apps
    # claim goes into its advertisements, and the routers must catch it.
    fn = _build(netns_net, spa=spa, extra={"s2": {"spa": {**spa, "enforce": False}}})
    wait_for(lambda: _converged(fn), HANG_S, what="convergence")

    good = _identity(auth, "/shop/cart")
    with Client(fn["s1"].app_socket, identity=good) as honest:
        honest.serve("/shop/cart/v2", _echo)   # inside its subtree: accepted and routed
        wait_for(lambda: "/shop/cart/v2" in _fib_prefixes(fn["d"]), HANG_S, what="an authorized prefix")
        # the enforcing gateway refuses a registration outside the subtree
        with pytest.raises(DmscError, match="spa: out_of_subtree"):
            honest.serve("/shop/cartoon", _echo)

    forger_auth = Authority.generate()
    forger = _identity(forger_auth, "/shop/forged")
    outside = _identity(auth, "/shop/cart")
    revoked = _identity(auth, "/shop/revoked")
    tampered = _identity(auth, "/shop/tampered")
    sig = bytearray(tampered.authorization.signature)
    sig[0] ^= 1
    tampered.authorization = dataclasses.replace(tampered.authorization, signature=bytes(sig))
    expiring = ServiceIdentity.generate()
    expiring.authorization = auth.issue(expiring.public_key, "/shop/brief", valid_for_s=3)
    with Client(fn["s2"].app_socket, identity=forger) as c1, \
            Client(fn["s2"].app_socket, identity=outside) as c2, \
            Client(fn["s2"].app_socket, identity=revoked) as c3, \
            Client(fn["s2"].app_socket, identity=tampered) as c4, \
            Client(fn["s2"].app_socket, identity=expiring) as c5:
        c1.serve("/shop/forged", _echo)
        c2.serve("/shop/cartoon", _echo)
        c3.serve("/shop/revoked", _echo)
        c4.serve("/shop/tampered", _echo)
        c5.serve("/shop/brief", _echo)
        wait_for(lambda: all(v >= 1 for v in _rejected(fn, "tampered").values()), HANG_S,
                 what="every SR to reject the tampered authorization")
        wait_for(lambda: all(v >= 1 for v in _rejected(fn, "unauthorized").values()), HANG_S,
                 what="every SR to reject the forged authority")
        wait_for(lambda: all(v >= 1 for v in _rejected(fn, "out_of_subtree").values()), HANG_S,
                 what="every SR to reject the out-of-subtree prefix")
        wait_for(lambda: "/shop/revoked" in _fib_prefixes(fn["a"]), HANG_S, what="the not yet revoked prefix")
        auth.revoke(revoked.authorization.serial)
        crl.write_bytes(auth.revocation_list())
        wait_for(lambda: all(v >= 1 for v in _rejected(fn, "revoked").values()), HANG_S,
                 what="every SR to reject the revoked authorization")
        wait_for(lambda: all("/shop/revoked" not in _fib_prefixes(fn[n]) for n in SRS), HANG_S,
                 what="the revoked prefix to leave every FIB")
        # an authorization past its not_after stops producing routes (rechecked every 5 s)
        wait_for(lambda: all(v >= 1 for v in _rejected(fn, "expired").values()), HANG_S,
                 what="every SR to reject the expired authorization")
        for n in SRS:
            fib = _fib_prefixes(fn[n])
            assert not {"/shop/forged", "/shop/cartoon", "/shop/revoked", "/shop/tampered",
                        "/shop/brief"} & fib, (n, fib)
        with Client(fn["s1"].app_socket) as cli, pytest.raises(NackError) as exc:
            cli.call("/shop/forged", b"x")
        assert exc.value.reason == wire.NackReason.NO_ROUTE


def test_replayed_old_advertisement_is_ignored_at_every_sr(netns_net):
    fn = _build(netns_net)
    wait_for(lambda: _converged(fn), HANG_S, what="convergence")
    # capture s2's current LSA at d by listening on d's link to s2
    d_if = intf_between(netns_net, "d", "s2")
    sniff = socket_in(netns_net.node("d").netns, socket.AF_PACKET, socket.SOCK_RAW,
                      socket.htons(wire.ETHERTYPE))
    sniff.bind((d_if, wire.ETHERTYPE))
    sniff.settimeout(0.2)
    with Client(fn["s2"].app_socket) as server:
        server.serve("/svc/a", _echo)   # makes s2 originate a new LSA
        old = None
        deadline = time.monotonic() + HANG_S
        while old is None and time.monotonic() < deadline:
            got = _read_packet(sniff)
            if got is None:
                continue
            frame, p = got
            if p.type == wire.PacketType.LSA and p.src == Name.parse("/node/s2"):
                old = frame[14:14 + len(p.encode())]
        sniff.close()
        assert old is not None, "no LSA from s2 seen"
        server.serve("/svc/b", _echo)   # s2's LSA moves on: the captured one is now old
        wait_for(lambda: all("/svc/b" in _fib_prefixes(fn[n]) for n in SRS), HANG_S, what="/svc/b")
        before = {n: fn[n].status()["routing"]["stats"].get("lsas_old", 0) for n in SRS}
        for n in SRS:  # replay it on one link of every router
            peer = next(p for l in LINKS for p in l if n in l and p != n)
            pif = intf_between(netns_net, peer, n)
            mac = bytes.fromhex(netns_net.node(n).mac(intf_between(netns_net, n, peer)).replace(":", ""))
            tx = socket_in(netns_net.node(peer).netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
            tx.bind((pif, 0))
            tx.send((mac + b"\x02" * 6 + b"\x88\xb5" + old).ljust(60, b"\0"))
            tx.close()
        wait_for(lambda: all(fn[n].status()["routing"]["stats"].get("lsas_old", 0) > before[n]
                             for n in SRS), HANG_S, what="every SR to count the replayed LSA as old")
        for n in SRS:
            assert "/svc/b" in _fib_prefixes(fn[n])  # the replay changed nothing


def test_lsa_backlog_does_not_silence_hellos_and_acks(netns_net):
    """A forwarder far behind on LSAs (a big network coming up) must keep its
    timers: hellos that keep its adjacencies, ACKs that stop retransmissions.
    Here a stand-in neighbour ("t", a raw socket, no forwarder) floods x with
    LSAs faster than x can process them, while recording what x sends.

    What is asserted does not depend on how fast the machine is: x's hellos come
    between its ACKs all through the backlog (the bug this guards against sent none
    until the queue was empty), its adjacency to t never went down, and no silence of
    x reached the dead interval it advertises (3 s, 30 hello intervals: a hang
    limit). The longest gaps themselves are bench_routing.py's lsa_backlog figures."""
    netns_net.add_node("x")
    netns_net.add_node("t")
    netns_net.add_link("x", "t")
    fn = ForwarderNet(netns_net)
    dead_s = 3.0
    fn.add("x", roles=["sr"], routing={"enabled": True, "hello_ms": 100, "dead_ms": int(dead_s * 1000)})
    fn.start_all()
    t_if = intf_between(netns_net, "t", "x")
    x_mac = bytes.fromhex(netns_net.node("x").mac(intf_between(netns_net, "x", "t")).replace(":", ""))
    sock = socket_in(netns_net.node("t").netns, socket.AF_PACKET, socket.SOCK_RAW,
                     socket.htons(wire.ETHERTYPE))
    sock.bind((t_if, wire.ETHERTYPE))
    eth = x_mac + b"\x02" * 6 + b"\x88\xb5"
    me, x = Name.parse("/node/t"), Name.parse("/node/x")
    hello = eth + wire.Packet(wire.PacketType.HELLO, dst=wire.HELLO_NAME, src=me, hop_limit=1,
                              payload=wire.HelloBody(100, 5000, 1, wire.HelloBody.TWO_WAY).encode()
                              ).encode()
    heard = {"hello": [], "ack": []}
    events = []  # what x sent, in order: "hello" or "ack"
    stop = threading.Event()

    def listen():
        sock.settimeout(0.05)
        while not stop.is_set():
            got = _read_packet(sock)
            if got is None:
                continue
            p = got[1]
            if p.src == x and p.type == wire.PacketType.HELLO:
                heard["hello"].append(time.monotonic())
                events.append("hello")
            elif p.src == x and p.type == wire.PacketType.ACK:
                heard["ack"].append(time.monotonic())
                events.append("ack")

    def say_hello():
        while not stop.wait(0.1):
            sock.send(hello)

    threads = [threading.Thread(target=listen, daemon=True),
               threading.Thread(target=say_hello, daemon=True)]
    for th in threads:
        th.start()
    try:
        wait_for(lambda: any(n["state"] == "up" for n in fn["x"].status()["routing"]["neighbors"]),
                 HANG_S, what="x's adjacency to the stand-in neighbour")
        (up_since,) = [n["up_since"] for n in fn["x"].status()["routing"]["neighbors"]]
        n_before = len(events)
        # LSAs of t with rising sequence numbers: each one is news, none is merged; 30
        # prefixes each make them slow enough to process that a backlog always forms
        start = time.monotonic()
        send_flood(sock, lsa_flood_frames(eth, me, x))
        # x is behind from the first seconds of the flood until its queue is empty again
        # (tens of seconds on a busy machine: the limit only catches a hang)
        wait_for(lambda: fn["x"].status()["routing"]["lsa_queue"] == 0, 2 * HANG_S,
                 interval=0.05, what="x to work off its LSA queue")
        end = time.monotonic()
        routing = fn["x"].status()["routing"]
        seen = list(events[n_before:])
    finally:
        stop.set()
        for th in threads:
            th.join(2)
        sock.close()
    assert routing["lsa_queue_max"] >= 2000, f"no backlog formed ({routing['lsa_queue_max']} queued at most)"
    assert routing["lsa_queue_merged"] > 0  # copies of a queued LSA are not queued again
    # x's ACKs follow its progress through the queue; its hellos are interleaved with them
    # from the first to the last, not held back until the backlog is gone
    acks = [k for k, e in enumerate(seen) if e == "ack"]
    assert len(acks) >= 2, seen[:50]
    during = seen[acks[0]:acks[-1]].count("hello")
    assert during >= 3, f"{during} hellos between x's first and last ACK of the backlog"
    # the adjacency held throughout (x heard t's hellos in time) ...
    (nb,) = routing["neighbors"]
    assert nb["state"] == "up" and nb["up_since"] == up_since, nb
    # ... and x never fell silent for its dead interval (a hang limit, 30 hello intervals)
    gap = _longest_gap(heard["hello"], start, end)
    assert gap < dead_s, f"x sent no hello for {gap:.1f} s while behind on LSAs"
    gap = _longest_gap(heard["ack"], start, max(heard["ack"] or [start]))
    assert gap < dead_s, f"x acknowledged nothing for {gap:.1f} s while behind"
