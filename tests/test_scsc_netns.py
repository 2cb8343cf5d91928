"""Integration tests of the Scheduling Center: real forwarders in namespaces, a real SCSC
process (`python -m controller`) in its own namespace, all joined by a management
bridge that lives in a namespace of its own (10.255.0.0/24, never the root namespace).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from topologies.fwd_net import ScscNode
from controller.rest_client import ScscHttpError
from forwarder.dataplane import wire
from forwarder.apps.client import CallTimeout, Client, NackError
from forwarder.dataplane.names import Name
from topologies.fwd_net import ForwarderNet, intf_between, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.dataplanes]

INTERVAL = 0.5


# --------------------------------------------------------------------- helpers
def _scsc_lab(net, names, lifetime=30.0):
    mgmt = net.add_mgmt_network()
    for n in names:
        net.add_node(n)
    scsc = ScscNode(net, mgmt, lifetime=lifetime).start()
    for n in names:
        mgmt.attach(n)
    return mgmt, scsc


def _fwd(fn, name, scsc, **cfg):
    return fn.add(name, scsc=scsc.southbound, telemetry_interval_s=INTERVAL, **cfg)


def _line(net, lifetime=30.0):
    """a - r - b, every forwarder reporting to the SCSC."""
    mgmt, scsc = _scsc_lab(net, ("a", "r", "b"), lifetime)
    net.add_link("a", "r")
    net.add_link("r", "b")
    i = lambda x, y: intf_between(net, x, y)
    fn = ForwarderNet(net)
    _fwd(fn, "a", scsc, routes=[{"prefix": p, "face": i("a", "r")}
                                for p in ("/shop", "/crit", "/be", "/node/r", "/node/b")])
    _fwd(fn, "r", scsc, roles=["sr"], routes=[
        {"prefix": "/shop", "face": i("r", "b")}, {"prefix": "/crit", "face": i("r", "b")},
        {"prefix": "/be", "face": i("r", "b")}, {"prefix": "/bulk", "face": i("r", "b")},
        {"prefix": "/node/a", "face": i("r", "a")}, {"prefix": "/node/b", "face": i("r", "b")}])
    _fwd(fn, "b", scsc, routes=[{"prefix": "/node/a", "face": i("b", "r")},
                                {"prefix": "/node/r", "face": i("b", "r")}])
    fn.start_all()
    return fn, scsc


def _echo(payload, request):
    return b"ok:" + payload[:16]


def _rules(app):
    return {r["prefix"]: r for r in app.api("GET", "/strategy")["rules"]}


def _scsc_rule(app, prefix):
    r = _rules(app).get(prefix)
    return r if r is not None and r["origin"] == "scsc" else None


def _connected(scsc, n):
    """n agents connected, their first report in and their first policy acknowledged."""
    try:
        h = scsc.rest.get("/health")
    except (OSError, ScscHttpError):
        return False
    return h["connected"] >= n and h["ready"] >= n and h["in_sync"] >= n


# ----------------------------------------------------------------- telemetry
def test_telemetry_topology_and_intents_reach_every_forwarder(netns_net):
    fn, scsc = _line(netns_net)
    wait_for(lambda: _connected(scsc, 3), 15, what="three agents connected")
    with Client(fn["b"].app_socket) as server, Client(fn["a"].app_socket, timeout=2) as cli:
        server.serve("/shop/cart", _echo)
        wait_for(lambda: "/shop/cart" in fn["b"].status()["local_prefixes"], 5, what="registration")
        for k in range(50):
            assert cli.call("/shop/cart", b"x", flow=f"f{k}") == b"ok:x"

        def reported():
            t = scsc.rest.get("/telemetry")["forwarders"]
            a = t.get("/node/a", {}).get("prefixes", {}).get("/shop", {})
            b = t.get("/node/b", {}).get("prefixes", {}).get("/shop/cart", {})
            return (set(t) == {"/node/a", "/node/r", "/node/b"} and all(v["reports"] >= 2 for v in t.values())
                    and (a.get("latency_p99_us") or 0) > 0 and (b.get("service_p50_us") or 0) > 0)
        # the requests are measured at a (latency) and at b (service time) within an interval or two
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and not reported():
            cli.call("/shop/cart", b"y")
            time.sleep(0.02)
        assert reported(), scsc.rest.get("/telemetry")
        t = scsc.rest.get("/telemetry?node=/node/r")["forwarders"]["/node/r"]
        assert t["faces"]["r-eth1"]["tx_pps"] >= 0 and "fib_digest" in t

    topo = scsc.rest.get("/topology")
    pairs = {frozenset((l["a"], l["b"])) for l in topo["links"]}
    assert pairs == {frozenset(("/node/a", "/node/r")), frozenset(("/node/r", "/node/b"))}
    prefixes = {p["prefix"]: p for p in scsc.rest.get("/prefixes")["prefixes"]}
    assert [i["instance"] for i in prefixes["/shop/cart"]["instances"]] == ["/node/b"]

    # an intent: class 7 on every forwarder, acknowledged by all three
    out = scsc.rest.post_intent({"kind": "critical", "prefix": "/crit"}, wait=5)
    assert out["applied"] and out["forwarders"] == 3, out
    for n in ("a", "r", "b"):
        r = _scsc_rule(fn[n], "/crit")
        assert r and r["priority"] == 7 and r["expires"] > time.time(), (n, r)
    pol = scsc.rest.get("/policy")["forwarders"]
    assert all(v["in_sync"] for v in pol.values())
    # a rate limit at the ingress gateways only
    scsc.rest.post_intent({"kind": "rate_limit", "prefix": "/shop", "rate": 1000, "burst": 100}, wait=5)
    assert _scsc_rule(fn["a"], "/shop")["rate"] == 1000 and _scsc_rule(fn["r"], "/shop") is None
    # invalid input: 400 with the reason, nothing pushed
    status, body = scsc.rest.request("POST", "/intents", {"kind": "critical", "prefix": "/crit", "class": 12})
    assert status == 400 and "class" in body["error"]
    status, body = scsc.rest.request("POST", "/intents", {"kind": "weights"})
    assert status == 400 and "kind" in body["error"]
    # withdrawn: removed everywhere
    scsc.rest.delete_intent("critical", "/crit", wait=5)
    assert all(_scsc_rule(fn[n], "/crit") is None for n in ("a", "r", "b"))
    took = scsc.stop()
    assert took is not None and took < 3.0, f"SIGTERM took {took} s"


# ------------------------------------------------------------ instance weights
def test_slow_instance_loses_weight_within_three_intervals_and_regains_it(netns_net):
    mgmt, scsc = _scsc_lab(netns_net, ("a", "d1", "d2"))
    netns_net.add_link("a", "d1")
    netns_net.add_link("a", "d2")
    i = lambda x, y: intf_between(netns_net, x, y)
    fn = ForwarderNet(netns_net)
    _fwd(fn, "a", scsc, routes=[
        {"prefix": "/svc", "face": i("a", "d1"), "instance": "/node/d1"},
        {"prefix": "/svc", "face": i("a", "d2"), "instance": "/node/d2"},
        {"prefix": "/node/d1", "face": i("a", "d1")}, {"prefix": "/node/d2", "face": i("a", "d2")}])
    for d in ("d1", "d2"):
        _fwd(fn, d, scsc, routes=[{"prefix": "/node/a", "face": i(d, "a")}])
    fn.start_all()
    wait_for(lambda: _connected(scsc, 3), 15, what="three agents connected")

    slow = {"d1": threading.Event(), "d2": threading.Event()}

    def handler(d):
        def h(payload, request):
            if slow[d].is_set():
                time.sleep(0.02)
            return d.encode()
        return h

    served = {"d1": 0, "d2": 0}
    failures = []
    stop = threading.Event()

    def load(cli):
        k = 0
        while not stop.is_set():
            k += 1
            try:  # every call a new flow: weights apply where a flow is created
                served[cli.call("/svc", b"q", flow=f"f{k}").decode()] += 1
            except (NackError, CallTimeout) as exc:
                failures.append(repr(exc))
            time.sleep(0.002)

    def weight_d1():
        r = _scsc_rule(fn["a"], "/svc")
        if not r or not r["weights"]:
            return None
        return r["weights"].get("/node/d1", 0) / sum(r["weights"].values())

    with Client(fn["d1"].app_socket) as s1, Client(fn["d2"].app_socket) as s2, \
            Client(fn["a"].app_socket, timeout=3) as cli:
        s1.serve("/svc", handler("d1"))
        s2.serve("/svc", handler("d2"))
        for d in ("d1", "d2"):
            wait_for(lambda: "/svc" in fn[d].status()["local_prefixes"], 5, what="registration")
        t = threading.Thread(target=load, args=(cli,))
        t.start()
        try:
            w = wait_for(lambda: (weight_d1() or 0) >= 0.4 and weight_d1(), 15, interval=0.05,
                         what="weights for /svc at a")
            assert 0.4 <= w <= 0.6
            before = dict(served)
            # d1 becomes slow: 20 ms per request instead of well under 1 ms
            slow["d1"].set()
            t0 = time.monotonic()
            wait_for(lambda: (weight_d1() or 1) <= 0.1, 10, interval=0.02, what="d1 losing its weight")
            lost_after = time.monotonic() - t0
            time.sleep(4 * INTERVAL)
            mid = dict(served)
            # recovery
            slow["d1"].clear()
            t1 = time.monotonic()
            wait_for(lambda: (weight_d1() or 0) >= 0.4, 20, interval=0.05, what="d1 regaining weight")
            regained_after = time.monotonic() - t1
        finally:
            stop.set()
            t.join(10)
    print(f"weight lost after {lost_after:.2f} s ({lost_after / INTERVAL:.1f} intervals), "
          f"regained after {regained_after:.2f} s ({regained_after / INTERVAL:.1f} intervals)")
    assert lost_after <= 3 * INTERVAL, f"took {lost_after:.2f} s = {lost_after / INTERVAL:.1f} intervals"
    assert not failures, failures[:5]
    # while it was slow, the new flows went mostly to d2
    d1 = mid["d1"] - before["d1"]
    d2 = mid["d2"] - before["d2"]
    assert d2 > 3 * d1, (d1, d2)
    pol = scsc.rest.get("/prefixes")["prefixes"]
    assert any(p["prefix"] == "/svc" and p["anycast"] for p in pol)


# ------------------------------------------------------------ critical class
def _trafgen_frame(dst_mac: bytes, src_mac: bytes, size: int) -> bytes:
    pkt = wire.Packet(wire.PacketType.REQUEST, Name.parse("/bulk/sink"), Name.parse("/node/g/bulk"),
                      b"\x5a" * size, flow_id=1, seq=1).encode()
    return dst_mac + src_mac + wire.ETHERTYPE.to_bytes(2, "big") + pkt


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _latencies(cli, name, n, pause=0.004, timeout=3.0):
    out = []
    for k in range(n):
        t = time.perf_counter()
        cli.call(name, b"c", timeout=timeout, retries=0)
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(pause)
    return out


def test_critical_prefix_keeps_its_latency_on_a_saturated_link(netns_net):
    fn, scsc = _line(netns_net)
    wait_for(lambda: _connected(scsc, 3), 15, what="three agents connected")
    r_out = intf_between(netns_net, "r", "b")
    r = netns_net.node("r")
    # r -> b shaped to 20 Mbit/s; inside it pfifo_fast serves skb priority 6-7 (band 0) first.
    # A critical packet still waits for the bulk frame ahead of it to pass the shaper
    # (non-preemptive: 1,350 bytes take 0.54 ms at 20 Mbit/s, 2.2 ms at 5 Mbit/s), a floor
    # that must stay below the unloaded latency for "within 2x" to measure the forwarders.
    r.cmd(["tc", "qdisc", "add", "dev", r_out, "root", "handle", "1:", "htb", "default", "1"])
    r.cmd(["tc", "class", "add", "dev", r_out, "parent", "1:", "classid", "1:1", "htb",
           "rate", "20mbit", "ceil", "20mbit"])
    r.cmd(["tc", "qdisc", "add", "dev", r_out, "parent", "1:1", "handle", "10:", "pfifo_fast"])
    out = scsc.rest.post_intent({"kind": "critical", "prefix": "/crit"}, wait=5)
    assert out["applied"], out

    a_if, r_if = intf_between(netns_net, "a", "r"), intf_between(netns_net, "r", "a")
    a_mac = bytes.fromhex(netns_net.node("a").mac(a_if).replace(":", ""))
    r_mac = bytes.fromhex(r.mac(r_if).replace(":", ""))
    conf = netns_net.run_dir / "bulk.cfg"
    frame = _trafgen_frame(r_mac, a_mac, 1300)
    conf.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")

    def qdisc():
        return r.cmd(["tc", "-s", "qdisc", "show", "dev", r_out]).stdout

    def backlog_packets():
        return int(qdisc().split("backlog")[1].split("b")[1].split("p")[0].strip())

    def start_load():
        # best-effort load above the shaped rate: 1,350-byte frames with a 250 us gap (about
        # 2,300 frames/s here, 25 Mbit/s): the queue fills, with little CPU taken from the rest
        gen = netns_net.node("a").popen(["trafgen", "--dev", a_if, "--conf", str(conf), "--cpus", "1",
                                         "--no-sock-mem", "--gap", "250us", "--num", "0"], "trafgen")
        wait_for(lambda: backlog_packets() >= 200, 15, interval=0.05,
                 what="the shaped link's queue to fill")
        return gen

    def stop_load(gen):
        # trafgen's worker is a child process: signal the whole group (its own session)
        for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(gen.pid, sig)
            except ProcessLookupError:
                return
            try:
                gen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        wait_for(lambda: backlog_packets() == 0, 15, interval=0.05, what="the queue to drain")

    unloaded, loaded, be_unloaded, be_loaded = [], [], [], []
    with Client(fn["b"].app_socket) as server, Client(fn["a"].app_socket, timeout=3) as cli:
        server.serve("/crit", _echo)
        server.serve("/be", _echo)
        for p in ("/crit", "/be"):
            wait_for(lambda: p in fn["b"].status()["local_prefixes"], 5, what="registration")
        _latencies(cli, "/crit", 50)  # warm up
        # alternate unloaded and loaded rounds, so that whatever else the machine does
        # weighs on both sides alike
        for k in range(4):
            unloaded += _latencies(cli, "/crit", 100)
            be_unloaded += _latencies(cli, "/be", 10)
            gen = start_load()
            try:
                loaded += _latencies(cli, "/crit", 100)
                t = time.perf_counter()
                try:
                    cli.call("/be", b"c", timeout=2, retries=0)
                    be_loaded.append((time.perf_counter() - t) * 1000)
                except CallTimeout:
                    be_loaded.append(2000.0)
                stats = qdisc()
                if k == 3:  # the SCSC sees the shaped link's capacity and its queue: congested
                    def congested():
                        return r_out in scsc.rest.get("/policy")["congested"].get("/node/r", [])
                    wait_for(congested, 5, interval=0.1, what=f"{r_out} reported congested")
                    face = scsc.rest.get("/telemetry?node=/node/r")["forwarders"]["/node/r"]["faces"]
                    assert face[r_out]["capacity_bps"] == 20_000_000, face
            finally:
                stop_load(gen)
    u99, l99 = _pct(unloaded, 0.99), _pct(loaded, 0.99)
    print(f"/crit p99 unloaded {u99:.2f} ms, loaded {l99:.2f} ms (p50 {_pct(unloaded, 0.5):.2f} / "
          f"{_pct(loaded, 0.5):.2f}); /be p50 unloaded {_pct(be_unloaded, 0.5):.2f} ms, "
          f"loaded {_pct(be_loaded, 0.5):.2f} ms\n{stats}")
    # the link really was saturated: best effort waits behind a full queue
    assert _pct(be_loaded, 0.5) > 20 * _pct(be_unloaded, 0.5), (be_unloaded, be_loaded)
    assert l99 <= 2 * u99, f"critical p99 {l99:.2f} ms loaded vs {u99:.2f} ms unloaded"


# ------------------------------------------------------------ fault tolerance
def test_scsc_death_keeps_forwarding_then_expiry_then_restart_restores(netns_net):
    lifetime = 6.0  # refreshed every 2 s
    fn, scsc = _line(netns_net, lifetime=lifetime)
    wait_for(lambda: _connected(scsc, 3), 15, what="three agents connected")
    out = scsc.rest.post_intent({"kind": "critical", "prefix": "/shop/cart"}, wait=5)
    assert out["applied"], out
    nodes = ("a", "r", "b")
    assert all(_scsc_rule(fn[n], "/shop/cart") for n in nodes)

    ok, failures = [0], []
    stop = threading.Event()

    def calls(cli):
        while not stop.is_set():
            try:
                assert cli.call("/shop/cart", b"x", timeout=2, retries=0) == b"ok:x"
                ok[0] += 1
            except (NackError, CallTimeout, AssertionError) as exc:
                failures.append(repr(exc))
            time.sleep(0.005)

    with Client(fn["b"].app_socket) as server, Client(fn["a"].app_socket) as cli:
        server.serve("/shop/cart", _echo)
        wait_for(lambda: "/shop/cart" in fn["b"].status()["local_prefixes"], 5, what="registration")
        t = threading.Thread(target=calls, args=(cli,))
        t.start()
        try:
            time.sleep(0.5)
            scsc.kill()  # a crash, not a clean stop
            killed = time.time()
            n0 = ok[0]
            # the last policy stays in force for its lifetime (at least 2/3 of it is left) ...
            time.sleep(0.5)
            assert all(_scsc_rule(fn[n], "/shop/cart") for n in nodes)
            # ... then the forwarders fall back to their routing defaults
            wait_for(lambda: all(_scsc_rule(fn[n], "/shop/cart") is None for n in nodes),
                     lifetime + 3, interval=0.1, what="scsc rules to expire")
            assert time.time() - killed >= lifetime * 2 / 3 - 0.5
            assert ok[0] > n0 + 20  # calls went on all the while
            # the SCSC comes back: it rebuilds from the forwarders (intents included)
            scsc.start()
            t_restart = time.monotonic()
            wait_for(lambda: all(_scsc_rule(fn[n], "/shop/cart") for n in nodes), 15, interval=0.05,
                     what="policy restored after the restart")
            restored_after = time.monotonic() - t_restart
            intents = scsc.rest.get("/intents")
            assert [c["prefix"] for c in intents["critical"]] == ["/shop/cart"]
            time.sleep(0.5)
        finally:
            stop.set()
            t.join(10)
    print(f"{ok[0]} calls, policy restored {restored_after:.2f} s after the restart")
    assert not failures, failures[:5]
    assert all(fn[n].proc.poll() is None for n in nodes)
    took = scsc.stop()
    assert took is not None and took < 3.0
