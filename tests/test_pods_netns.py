"""Pods behind Service Gateways: unmodified TCP programs reach services by name through
their SG, with no proxy (docs/protocol.md 13).

Real forwarders on network namespaces, pods as their own namespaces behind them
(topologies.pods), the programs in the pods plain curl, wrk and
topologies.podprobe. Each test runs with the Python data plane and with the kernel
fast path. Nothing is timed: tests assert who answered, bytes, counts and states.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys

import pytest

from forwarder.dataplane.fastpath import pins
from forwarder.spa import ServiceIdentity
from topologies import podprobe
from topologies.fwd_net import ForwarderNet, intf_between, wait_for
from topologies.pods import pod_mtu

pytestmark = [pytest.mark.netns, pytest.mark.dataplanes]
HANG_S = 60.0   # hang detector only
PROBE_PORT = 7000


# ------------------------------------------------------------------ building
def _no_identity(prefix):
    return None


def _serve(net, pod, name: str) -> None:
    """podprobe's HTTP server on :80 and echo server on :7000 in `pod`, answering `name`."""
    net.pod_popen(pod, [sys.executable, "-m", "topologies.podprobe", "http", "--port", "80",
                        "--name", name, "--blob-mb", "8"], "http")
    net.pod_popen(pod, [sys.executable, "-m", "topologies.podprobe", "serve", "--port",
                        str(PROBE_PORT), "--name", name], "echo")
    wait_for(lambda: net.pod_cmd(pod, ["curl", "-sf", "-m", "2", "http://127.0.0.1/who"],
                                 check=False).returncode == 0, HANG_S, what=f"{name}'s servers")


def _fan(net, servers=("b",), rules_r=(), **common):
    """client pod `cli` behind SG a; a - r; r - b and r - c; a server pod behind each
    SG in `servers`, serving /svc; static routes, /svc at r via b (cost 1) and c (5).
    `common`: configuration every node gets (an SCSC to report to)."""
    for n in ("a", "r", "b", "c"):
        net.add_node(n)
    for l in (("a", "r"), ("r", "b"), ("r", "c")):
        net.add_link(*l)
    i = lambda p, q: intf_between(net, p, q)
    cli = net.add_pod("a", "cli")
    pods = {s: net.add_pod(s, f"{s}1", services=["/svc"]) for s in servers}
    mtu = pod_mtu()
    fn = ForwarderNet(net)
    fn.add("a", pods=[cli.forwarder_config(mtu, _no_identity)], **common,
           routes=[{"prefix": "/svc", "face": i("a", "r")}, {"prefix": "/node", "face": i("a", "r")}])
    fn.add("r", roles=["sr"], rules=list(rules_r), **common, routes=[
        {"prefix": "/svc", "face": i("r", "b"), "cost": 1, "instance": "/node/b"},
        {"prefix": "/svc", "face": i("r", "c"), "cost": 5, "instance": "/node/c"},
        {"prefix": "/node/a", "face": i("r", "a")}, {"prefix": "/node/b", "face": i("r", "b")},
        {"prefix": "/node/c", "face": i("r", "c")}])
    for s in ("b", "c"):
        extra = {"pods": [pods[s].forwarder_config(mtu, _no_identity)]} if s in pods else {}
        fn.add(s, routes=[{"prefix": "/node/a", "face": i(s, "r")}], **extra, **common)
    fn.start_all()
    for s, pod in pods.items():
        _serve(net, pod, f"{s}1")
    wait_for(lambda: "/svc" in _gateway(fn["a"])["services"], HANG_S, what="a's service address")
    return fn, cli, pods


def _gateway(app) -> dict:
    return app.status()["gateway"]


def _kernel(app) -> dict:
    return app.status().get("dataplane") or {}


def _curl(net, pod, url: str, *extra: str, timeout: float = 10):
    return net.pod_cmd(pod, ["curl", "-sS", "-m", str(timeout), *extra, url], check=False,
                       timeout=timeout + 20)


def _who(net, pod) -> str:
    r = _curl(net, pod, "http://svc.dmsc/who")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _fail_node(fn, name: str) -> None:
    """A node failure: its forwarder killed (no goodbye) and every link of it down (an
    SG or SR whose kernel fast path outlived its process would otherwise still forward)."""
    fn[name].kill()
    for other in fn.apps:
        if other != name and _linked(fn.net, name, other):
            fn.net.link_down(name, other)


def _linked(net, a: str, b: str) -> bool:
    try:
        intf_between(net, a, b)
    except KeyError:
        return False
    return True


class Probe:
    """A podprobe client in a pod: one TCP connection, an echo every 20 ms."""

    def __init__(self, net, pod, host: str = "svc.dmsc", tag: str = "probe", fn=None) -> None:
        self.fn = fn
        self.proc = net.pod_popen(pod, [sys.executable, "-m", "topologies.podprobe", "connect",
                                        host, "--port", str(PROBE_PORT), "--timeout", "30"], tag)

    def events(self) -> list:
        return podprobe.read_events(str(self.proc.log))

    def echoes(self) -> list:
        return [e for e in self.events() if e["event"] == "echo"]

    def errors(self) -> list:
        return [e for e in self.events() if e["event"] == "error"]

    def wait_more(self, n: int, what: str) -> None:
        """Until `n` more echoes than now arrived (or an error ends the connection)."""
        start = len(self.echoes())
        wait_for(lambda: len(self.echoes()) >= start + n or self.errors(), HANG_S, what=what)
        assert not self.errors(), (self.errors(), self.state())

    def state(self) -> dict:
        """What the nodes say, for a failure's message."""
        out = {}
        for name, app in (self.fn.apps.items() if self.fn else ()):
            if app.running:
                st = app.status()
                out[name] = {"drops": st["drops"], "gateway": (st.get("gateway") or {}).get("drops"),
                             "verdicts": {k: v for k, v in (st.get("dataplane") or {}).get(
                                 "verdicts", {}).items() if v},
                             "flows": [(f["dst"], f["src"], f["face_name"], f["packets"])
                                       for f in app.api("GET", "/flows")["flows"]
                                       if "/_l4/" in f["dst"] or "/_pod/" in f["dst"]]}
        return out

    def peers(self) -> set:
        return {e["peer"] for e in self.echoes()}


# ------------------------------------------------------------------ tests
def test_a_pod_calls_a_pod_service_by_name_with_curl_and_wrk(netns_net):
    net = netns_net
    fn, cli, _ = _fan(net)
    assert net.pod_cmd(cli, ["getent", "hosts", "svc.dmsc"]).stdout.split()[0] == \
        _gateway(fn["a"])["services"]["/svc"]
    assert _who(net, cli) == "b1"
    # 200 requests on one keep-alive connection: with the kernel fast path, the SGs'
    # Python sees the connection's first packets only
    a0, b0 = _gateway(fn["a"])["python_packets"], _gateway(fn["b"])["python_packets"]
    k0 = _kernel(fn["a"]).get("verdicts", {})
    r = _curl(net, cli, "http://svc.dmsc/who", "-w", "%{http_code} %{num_connects}\\n",
              *(["http://svc.dmsc/who"] * 199), timeout=60)
    done = re.findall(r"^(\d{3}) (\d+)$", r.stdout, re.M)
    assert r.returncode == 0 and [c for c, _ in done] == ["200"] * 200, r.stderr
    assert sum(int(n) for _, n in done) == 1   # one connection
    a1, b1 = _gateway(fn["a"])["python_packets"], _gateway(fn["b"])["python_packets"]
    by_python = a1["from_pods"] - a0["from_pods"]
    if net.dataplane == "ebpf":
        enc = _kernel(fn["a"])["verdicts"]["encapsulated"] - k0.get("encapsulated", 0)
        assert enc >= 195 and by_python <= 5, (enc, by_python)
        assert b1["to_pods"] - b0["to_pods"] <= 5
        assert _kernel(fn["b"])["verdicts"]["decapsulated"] >= 195
    else:
        assert by_python >= 200
    # wrk: 16 keep-alive connections, every answer a 200, no socket errors
    opened = _gateway(fn["b"])["conntrack"]["opened"]
    w = net.pod_cmd(cli, ["wrk", "-t2", "-c16", "-d2s", "http://svc.dmsc/who"], timeout=60)
    m = re.search(r"(\d+) requests in", w.stdout)
    assert m and int(m.group(1)) > 0, w.stdout
    assert "Socket errors" not in w.stdout and "Non-2xx" not in w.stdout, w.stdout
    # keep-alive: 16 connections for every request (and the one wrk opens first to
    # check the address)
    assert _gateway(fn["b"])["conntrack"]["opened"] - opened in (16, 17)
    flows = fn["a"].api("GET", "/flows")["connections"]
    assert any(c["service"] == "/svc" and c["role"] == "client" for c in flows)


def test_the_bytes_that_leave_the_pod_are_the_bytes_that_arrive(netns_net, tmp_path):
    net = netns_net
    fn, cli, _ = _fan(net)
    got = net.pod_cmd(cli, ["sh", "-c", "curl -sS -m 60 http://svc.dmsc/blob | sha256sum"],
                      timeout=90).stdout.split()[0]
    assert got == hashlib.sha256(podprobe.blob(8)).hexdigest()
    up = tmp_path / "upload.bin"
    up.write_bytes(hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32))
    r = _curl(net, cli, "http://svc.dmsc/upload", "--data-binary", f"@{up}",
              "-H", "Content-Type: application/octet-stream", timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == hashlib.sha256(up.read_bytes()).hexdigest()
    assert not _gateway(fn["a"])["drops"] and not _gateway(fn["b"])["drops"]


def test_connections_spread_by_weight_and_one_connection_stays_on_its_instance(netns_net):
    net = netns_net
    fn, cli, _ = _fan(net, servers=("b", "c"))
    wait_for(lambda: len(fn["r"].api("GET", "/fib")["entries"]) and all(
        "/svc" in _gateway(fn[s])["services"] for s in "bc"), HANG_S, what="registrations")
    strategy = lambda w: fn["r"].api("POST", "/strategy", {"prefix": "/svc", "weights": w})
    strategy({"/node/b": 1, "/node/c": 1})
    seen = [_who(net, cli) for _ in range(40)]
    assert set(seen) == {"b1", "c1"}, seen   # each one 40 times by chance: 2 in 10^12
    strategy({"/node/b": 1, "/node/c": 0})
    probe = Probe(net, cli, fn=fn)
    probe.wait_more(10, "echoes")
    assert probe.peers() == {"b1"} and {_who(net, cli) for _ in range(10)} == {"b1"}
    strategy({"/node/b": 0, "/node/c": 1})
    assert {_who(net, cli) for _ in range(10)} == {"c1"}   # new connections move...
    probe.wait_more(20, "echoes after the change")
    assert probe.peers() == {"b1"}                          # ...the open one stays


def test_an_established_connection_survives_sr_failures_off_and_on_its_path(netns_net):
    """a and b joined by three SRs, link-state routing. One connection: the SR not on
    its path fails, then the one on it; the connection goes on through the last."""
    net = netns_net
    srs = ("r1", "r2", "r3")
    for n in ("a", "b") + srs:
        net.add_node(n)
    for r in srs:
        net.add_link("a", r)
        net.add_link(r, "b")
    cli = net.add_pod("a", "cli")
    srv = net.add_pod("b", "b1", services=["/svc"])
    fn = ForwarderNet(net)
    fn.add("a", routing={"enabled": True}, pods=[cli.forwarder_config(pod_mtu(), _no_identity)])
    fn.add("b", routing={"enabled": True}, pods=[srv.forwarder_config(pod_mtu(), _no_identity)])
    for r in srs:
        fn.add(r, roles=["sr"], routing={"enabled": True})
    fn.start_all()
    _serve(net, srv, "b1")
    wait_for(lambda: "/svc" in _gateway(fn["a"])["services"], HANG_S, what="routing to /svc")
    probe = Probe(net, cli, fn=fn)
    probe.wait_more(10, "echoes")

    def on_path():
        return [r for r in srs if r in fn.apps and fn[r].running and any(
            f"/_l4/t{PROBE_PORT}" in f["dst"] for f in fn[r].api("GET", "/flows")["flows"])]

    first = on_path()
    assert len(first) == 1, first
    off = next(r for r in srs if r not in first)
    _fail_node(fn, off)
    probe.wait_more(25, "echoes after an SR off the path failed")
    assert on_path() == first
    _fail_node(fn, first[0])
    probe.wait_more(25, "echoes after the SR on the path failed")
    last = next(r for r in srs if r not in (off, first[0]))
    assert on_path() == [last]
    assert probe.peers() == {"b1"} and len(probe.errors()) == 0


def test_a_connection_whose_instance_fails_is_reset_not_left_hanging(netns_net):
    """Two instances: the serving one's node fails; the other one's SG resets the
    connection (it never held it) and new connections go there. Then the last
    instance fails: the open connection is reset by its own SG, new ones are refused."""
    net = netns_net
    fn, cli, _ = _fan(net, servers=("b", "c"))
    probe = Probe(net, cli, fn=fn)
    probe.wait_more(5, "echoes")
    assert probe.peers() == {"b1"}   # the cheaper instance
    _fail_node(fn, "b")
    # a killed forwarder could not unpin its maps: its harness does (nothing is left)
    assert not os.path.exists(pins.pin_dir_for(fn["b"].workdir))
    wait_for(lambda: probe.errors(), HANG_S, what="the connection to fail")
    assert probe.errors()[0]["error"] == "ECONNRESET", probe.errors()
    assert _who(net, cli) == "c1"
    second = Probe(net, cli, tag="probe2", fn=fn)
    second.wait_more(5, "echoes from c")
    _fail_node(fn, "c")
    wait_for(lambda: second.errors(), HANG_S, what="the connection to the last instance to fail")
    assert second.errors()[0]["error"] == "ECONNRESET", second.errors()
    assert _gateway(fn["a"])["sent_to_pods"]["reset"] >= 1
    r = _curl(net, cli, "http://svc.dmsc/who", timeout=10)
    assert r.returncode == 7, (r.returncode, r.stderr)   # refused at once: ICMP unreachable


def test_spoofed_sources_denied_prefixes_and_unknown_addresses_are_refused(netns_net):
    net = netns_net
    fn, cli, _ = _fan(net)
    assert _who(net, cli) == "b1"
    conns_b = _gateway(fn["b"])["conntrack"]["opened"]
    net.pod_cmd(cli, ["ip", "addr", "add", "10.200.1.99/32", "dev", "eth0"])
    r = _curl(net, cli, "http://svc.dmsc/who", "--interface", "10.200.1.99", timeout=2)
    assert r.returncode != 0
    refused = _gateway(fn["a"])["drops"].get("spoofed_source", 0) + \
        _kernel(fn["a"]).get("verdicts", {}).get("spoofed", 0)
    assert refused >= 1
    assert _gateway(fn["b"])["conntrack"]["opened"] == conns_b
    # a deny rule at the SR refuses new connections: the pod gets an ICMP error at once
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "deny": True})
    r = _curl(net, cli, "http://svc.dmsc/who", timeout=10)
    assert r.returncode == 7, (r.returncode, r.stderr)
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "deny": False})
    assert _who(net, cli) == "b1"
    # an address in the service range that no service has
    r = _curl(net, cli, "http://10.96.0.1/who", timeout=10)
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert _gateway(fn["a"])["drops"].get("no_service", 0) >= 1


def test_state_expires_when_connections_close(netns_net):
    net = netns_net
    fn, cli, _ = _fan(net)
    for _ in range(3):
        assert _who(net, cli) == "b1"
    for n in "ab":
        wait_for(lambda: _gateway(fn[n])["connections"] == 0, HANG_S,
                 what=f"{n}'s closed connections to be forgotten")
        assert fn[n].api("GET", "/flows")["connections"] == []
        if net.dataplane == "ebpf":
            wait_for(lambda: _kernel(fn[n])["kernel_flows"] == 0, HANG_S,
                     what=f"{n}'s kernel entries to go")
    assert _gateway(fn["a"])["conntrack"]["closed"] == 3


def test_the_scsc_sees_the_gateways_connections(netns_net):
    """The gateways report their pods' connections to the SCSC with their telemetry."""
    from topologies.fwd_net import ScscNode
    net = netns_net
    mgmt = net.add_mgmt_network()
    scsc = ScscNode(net, mgmt).start()
    fn, cli, _ = _fan(net, scsc=scsc.southbound, telemetry_interval_s=0.2)
    for n in ("a", "r", "b", "c"):
        mgmt.attach(n)
    probe = Probe(net, cli, fn=fn)
    probe.wait_more(5, "echoes")

    def reported(node: str) -> dict:
        return scsc.rest.get(f"/telemetry?node=/node/{node}")["forwarders"].get(
            f"/node/{node}", {}).get("l4") or {}
    from controller.rest_client import ScscHttpError   # 404 until the node has reported
    wait_for(lambda: reported("a").get("open", 0) >= 1 and reported("b").get("open", 0) >= 1,
             HANG_S, what="the SCSC to hear of the open connection from both gateways",
             retry_on=(ScscHttpError,))
    assert reported("a")["opened"] >= 1 and reported("b")["packets_to_pods"] >= 1
    r = wait_for(lambda: scsc.rest.get("/telemetry?node=/node/r")["forwarders"]["/node/r"], HANG_S,
                 what="r's report", retry_on=(ScscHttpError,))
    assert "l4" not in r   # a router carries no connection of its own


def test_only_authorized_prefixes_get_an_address_and_revoked_ones_lose_it(netns_net, authority,
                                                                        tmp_path):
    net = netns_net
    auth, pub, crl = authority
    spa = {"trust": [str(pub)], "crl": str(crl)}
    for n in ("a", "r", "b"):
        net.add_node(n)
    net.add_link("a", "r")
    net.add_link("r", "b")
    cli = net.add_pod("a", "cli")
    srv = net.add_pod("b", "b1", services=["/svc", "/rogue"])
    ident = ServiceIdentity.generate()
    ident.authorization = auth.issue(ident.public_key, "/svc")
    ident.save(tmp_path / "svc.key")
    keys = {"/svc": str(tmp_path / "svc.key")}
    fn = ForwarderNet(net)
    fn.add("a", routing={"enabled": True}, spa=spa,
           pods=[cli.forwarder_config(pod_mtu(), _no_identity)])
    fn.add("r", roles=["sr"], routing={"enabled": True}, spa=spa)
    fn.add("b", routing={"enabled": True}, spa=spa,
           pods=[srv.forwarder_config(pod_mtu(), keys.get)])
    fn.start_all()
    _serve(net, srv, "b1")
    regs = _gateway(fn["b"])["registrations"]
    assert regs["/svc"] == "registered" and regs["/rogue"] != "registered", regs
    wait_for(lambda: "/svc" in _gateway(fn["a"])["services"], HANG_S, what="/svc's address")
    assert "/rogue" not in _gateway(fn["a"])["services"]
    assert net.pod_cmd(cli, ["getent", "hosts", "rogue.dmsc"], check=False).returncode != 0
    assert _who(net, cli) == "b1"
    auth.revoke(ident.authorization.serial)
    crl.write_bytes(auth.revocation_list())
    wait_for(lambda: "/svc" not in _gateway(fn["a"])["services"], HANG_S,
             what="the revoked prefix to lose its address")
    assert net.pod_cmd(cli, ["getent", "hosts", "svc.dmsc"], check=False).returncode != 0
