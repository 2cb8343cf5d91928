"""The kernel fast path inside real forwarders: what it forwards, what it counts, and
that every change of the tables takes effect on flows it holds (docs/protocol.md 10.1).

Real forwarder processes with `dataplane: ebpf` on network namespaces; traffic is
real calls through the Service Gateways' client library, or raw frames of an
established flow sent from a packet socket. Nothing is timed: tests assert
which node answered, kernel verdict counts, queue counters and flow tables.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from forwarder.apps.client import Client, NackError
from forwarder.dataplane import wire
from forwarder.dataplane.names import Name
from topologies.fwd_net import ForwarderNet, intf_between, wait_for
from topologies.nsenter import socket_in

pytestmark = pytest.mark.netns
HANG_S = 30.0  # hang detector only
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (root: above rmem_max)


def _echo(tag: bytes):
    return lambda payload, request: tag + payload


def _fan(net, rules_r=(), idle=None):
    """a - r - b and r - c; /svc via b (cost 1) and c (cost 5) at r; SGs a, b, c."""
    for n in ("a", "r", "b", "c"):
        net.add_node(n)
    for l in (("a", "r"), ("r", "b"), ("r", "c")):
        net.add_link(*l)
    i = lambda p, q: intf_between(net, p, q)
    fn = ForwarderNet(net)
    back = [{"prefix": "/node/a", "face": i(n, "r")} for n in ("b", "c")]
    fn.add("a", dataplane="ebpf", routes=[{"prefix": "/svc", "face": i("a", "r")},
                                          {"prefix": "/node", "face": i("a", "r")}])
    extra = {"flow_idle_s": idle} if idle else {}
    fn.add("r", roles=["sr"], dataplane="ebpf", rules=list(rules_r), **extra, routes=[
        {"prefix": "/svc", "face": i("r", "b"), "cost": 1, "instance": "/node/b"},
        {"prefix": "/svc", "face": i("r", "c"), "cost": 5, "instance": "/node/c"},
        {"prefix": "/node/a", "face": i("r", "a")}, {"prefix": "/node/b", "face": i("r", "b")},
        {"prefix": "/node/c", "face": i("r", "c")}])
    fn.add("b", dataplane="ebpf", routes=[back[0]])
    fn.add("c", dataplane="ebpf", routes=[back[1]])
    fn.start_all()
    return fn


def _kernel(app) -> dict:
    return app.status()["dataplane"]


def _verdicts(app) -> dict:
    return _kernel(app)["verdicts"]


def _served(cli, n: int, name: str = "/svc/x", flow=None) -> dict:
    """n calls; how many each server answered (by the answer's tag)."""
    got = {}
    for k in range(n):
        tag = cli.call(name, b"%d" % k, flow=flow)[:1]
        got[tag] = got.get(tag, 0) + 1
    return got


@pytest.fixture
def fan(netns_net):
    fn = _fan(netns_net)
    with Client(fn["b"].app_socket) as b, Client(fn["c"].app_socket) as c, \
            Client(fn["a"].app_socket, timeout=2, retries=0) as cli:
        b.serve("/svc", _echo(b"B"))
        c.serve("/svc", _echo(b"C"))
        wait_for(lambda: all("/svc" in fn[n].status()["local_prefixes"] for n in "bc"), HANG_S,
                 what="registrations")
        yield fn, cli


def _hit_in_kernel(fn, cli, n: int = 50) -> None:
    """Calls of one flow until r's kernel forwards them (the first ones decide)."""
    before = _verdicts(fn["r"])["redirected"]
    assert _served(cli, n) == {b"B": n}
    assert _verdicts(fn["r"])["redirected"] - before >= n, _verdicts(fn["r"])


# ------------------------------------------------------------------- basics
def test_established_flows_leave_python_and_every_view_counts_them(fan):
    fn, cli = fan
    st = _kernel(fn["r"])
    assert st["mode"] == "ebpf" and st["configured"] == "ebpf", st
    assert sorted(st["attached"]) == ["1", "2", "3"]
    rx0 = fn["r"].counters()["faces"]
    _hit_in_kernel(fn, cli, 100)
    # both directions of the flow are in r's kernel; Python counts what the kernel did
    flows = {(f["dst"], f["src"]): f for f in fn["r"].api("GET", "/flows")["flows"]}
    fwd = flows[("/svc/x", "/node/a/_app/1")]
    assert fwd["packets"] >= 100 and fwd["face_name"] == intf_between(fn.net, "r", "b")
    c = fn["r"].counters()
    ra = intf_between(fn.net, "r", "a")
    assert c["faces"][ra]["rx_packets"] - rx0[ra]["rx_packets"] >= 100
    assert c["prefixes"]["/svc"]["packets"] >= 100
    metrics = fn["r"].api("GET", "/metrics")
    assert 'prefix="/svc"' in metrics


class _RawFlow:
    """DATA frames of the fan's flow (/svc/x from /node/a/_app/1), sent from `src`'s
    interface to r by a packet socket, and taken off b's interface as r forwarded them
    (hop limit one less) by b's packet socket (0x88B5). DATA: b delivers them without
    answering, so no traffic comes back."""

    def __init__(self, net, src: str, payload: bytes, seq: int) -> None:
        src_if, r_if = intf_between(net, src, "r"), intf_between(net, "r", src)
        self.pkt = wire.Packet(wire.PacketType.DATA, Name.parse("/svc/x"),
                               Name.parse("/node/a/_app/1"), payload, flow_id=99, seq=seq,
                               hop_limit=20).encode()
        mac = lambda node, intf: bytes.fromhex(net.node(node).mac(intf).replace(":", ""))
        self.frame = wire.ethernet_frame(mac("r", r_if), mac(src, src_if), self.pkt)
        self.sent = self.pkt[:3] + bytes([self.pkt[3] - 1]) + self.pkt[4:]
        self.rx = socket_in(net.node("b").netns, socket.AF_PACKET, socket.SOCK_RAW,
                            socket.htons(0x88B5))
        self.rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # all of them wait here
        self.rx.bind((intf_between(net, "b", "r"), 0x88B5))
        self.rx.settimeout(HANG_S)
        self.tx = socket_in(net.node(src).netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind((src_if, 0))

    def send(self, n: int = 1) -> None:
        for _ in range(n):
            self.tx.send(self.frame)

    def arrive(self, n: int) -> None:
        """Wait until n more of them reached b (the hang detector: HANG_S per frame)."""
        got = 0
        while got < n:
            data, addr = self.rx.recvfrom(2048)
            if addr[2] != socket.PACKET_OUTGOING and data[14:14 + len(self.sent)] == self.sent:
                got += 1

    def __enter__(self) -> "_RawFlow":
        return self

    def __exit__(self, *exc) -> None:
        self.rx.close()
        self.tx.close()


def test_counts_equal_a_known_number_of_frames(fan):
    """N raw frames of an established flow: the kernel forwards exactly N, and the flow,
    both faces and the prefix count exactly N more."""
    fn, cli = fan
    _hit_in_kernel(fn, cli, 5)
    ra, rb = intf_between(fn.net, "r", "a"), intf_between(fn.net, "r", "b")
    flows = lambda: {(f["dst"], f["src"]): f for f in fn["r"].api("GET", "/flows")["flows"]}
    f0, c0, v0 = flows()[("/svc/x", "/node/a/_app/1")], fn["r"].counters(), _verdicts(fn["r"])
    peer0 = _kernel(fn["r"])["redirected_to_peer"]
    n = 300
    with _RawFlow(fn.net, "a", b"raw-frame", 7) as raw:
        raw.send(n)
        raw.arrive(n)
    wait_for(lambda: _verdicts(fn["r"])["redirected"] - v0["redirected"] >= n, HANG_S,
             what="the kernel's count")
    v1 = _verdicts(fn["r"])
    assert v1["redirected"] - v0["redirected"] == n
    assert sum(v1.values()) - sum(v0.values()) == n, "r's kernel saw other frames meanwhile"
    # r -- b is a veth between two namespaces with no queue and no capture on r's side:
    # every frame went straight to b's ingress, and b's packet socket took it as sent
    assert _kernel(fn["r"])["redirected_to_peer"] - peer0 == n
    f1, c1 = flows()[("/svc/x", "/node/a/_app/1")], fn["r"].counters()
    total = len(raw.pkt)
    assert f1["packets"] - f0["packets"] == n and f1["bytes"] - f0["bytes"] == n * total
    assert c1["faces"][ra]["rx_packets"] - c0["faces"][ra]["rx_packets"] == n
    assert c1["faces"][rb]["tx_packets"] - c0["faces"][rb]["tx_packets"] == n
    assert c1["faces"][rb]["tx_bytes"] - c0["faces"][rb]["tx_bytes"] == n * total
    assert c1["prefixes"]["/svc"]["packets"] - c0["prefixes"]["/svc"]["packets"] == n


def test_a_flow_arriving_on_another_face_moves_its_entry_there(fan):
    """r's kernel holds the flow for the face it was decided on (from a). Its frames
    arriving from c go up (in_face) and are forwarded by Python; the forwarder moves the
    entry to c's face, and from then on r's kernel forwards them from there."""
    fn, cli = fan
    _hit_in_kernel(fn, cli, 5)
    rc = intf_between(fn.net, "r", "c")
    n = 50
    with _RawFlow(fn.net, "c", b"other-face", 8) as raw:
        v0, off0 = _verdicts(fn["r"]), _kernel(fn["r"])["offload"]
        raw.send()
        raw.arrive(1)
        wait_for(lambda: _kernel(fn["r"])["offload"]["reinstalled"] > off0["reinstalled"], HANG_S,
                 what="the entry to move to c's face")
        raw.send(n)
        raw.arrive(n)
    wait_for(lambda: _verdicts(fn["r"])["redirected"] - v0["redirected"] >= n, HANG_S,
             what="the kernel's count")
    v1 = _verdicts(fn["r"])
    assert (v1["in_face"] - v0["in_face"], v1["redirected"] - v0["redirected"]) == (1, n), v1
    c1 = fn["r"].counters()["faces"][rc]
    assert c1["rx_packets"] >= n + 1      # the kernel's n counted on c's face, with Python's one


# --------------------------------------------------------------- coherence
def test_a_better_route_takes_established_flows_at_once(fan):
    fn, cli = fan
    _hit_in_kernel(fn, cli)
    stale0 = _verdicts(fn["r"])["stale"]
    rc = intf_between(fn.net, "r", "c")
    fn["r"].api("POST", "/routes", {"prefix": "/svc", "face": rc, "cost": 0, "instance": "/node/c"})
    got = _served(cli, 20)
    assert got == {b"C": 20}, (got, _kernel(fn["r"]), fn["r"].api("GET", "/flows"))
    assert _verdicts(fn["r"])["stale"] > stale0


def test_a_face_going_down_moves_established_flows(fan):
    fn, cli = fan
    _hit_in_kernel(fn, cli)
    fn.net.link_down("r", "b")
    rb = intf_between(fn.net, "r", "b")
    wait_for(lambda: not {f["name"]: f for f in fn["r"].status()["faces"]}[rb]["up"], HANG_S,
             what="r to see the cut")
    assert _served(cli, 20) == {b"C": 20}
    fn.net.link_up("r", "b")


def test_a_frame_sent_into_a_link_that_just_went_down_is_routed_around_it(fan):
    """The window between a cut and the forwarder hearing of it, held open: r's forwarder
    is stopped (SIGSTOP), its interface to b goes down, and one call (no retry) reaches
    r's kernel, whose entry still says b. The program reads the interface's state,
    passes the request up instead of sending it into the down interface; once r runs
    again it takes the face down first, then routes the request to c, which answers."""
    from forwarder.dataplane.fastpath import kernel
    fn, cli = fan
    _hit_in_kernel(fn, cli)
    r = fn["r"]
    maps = kernel.FastPathMaps.open_pinned(_kernel(r)["pin_dir"])
    rb = intf_between(fn.net, "r", "b")
    got: dict = {}
    try:
        down0 = maps.read_verdicts()["out_down"]
        os.kill(r.proc.pid, signal.SIGSTOP)
        try:
            fn.net.node("r").cmd(["ip", "link", "set", "dev", rb, "down"])
            # the established flow (the fixture's client), one request, no retry
            t = threading.Thread(target=lambda: got.update(
                answer=cli.call("/svc/x", b"w", timeout=HANG_S)))
            t.start()
            wait_for(lambda: maps.read_verdicts()["out_down"] > down0, HANG_S,
                     what="r's kernel to pass the request up")
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        t.join(HANG_S)
        assert got.get("answer") == b"Cw", got
        assert maps.read_verdicts()["out_down"] - down0 == 1
        assert r.counters()["drops"].get("link_down", 0) == 0
    finally:
        maps.close_maps()
        fn.net.link_up("r", "b")


def test_deny_and_rate_limit_rules_apply_to_kernel_flows(fan):
    fn, cli = fan
    _hit_in_kernel(fn, cli)
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "deny": True})
    with pytest.raises(NackError) as exc:
        cli.call("/svc/x", b"no")
    assert exc.value.reason == wire.NackReason.DENIED
    # a rate limit: every packet of the flow takes the token bucket in Python, none the kernel
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "rate": 5, "burst": 5})
    red0 = _verdicts(fn["r"])["redirected"]
    ok = limited = 0
    for k in range(40):
        try:
            cli.call("/svc/x", b"%d" % k)
            ok += 1
        except NackError as e:
            assert e.reason == wire.NackReason.RATE_LIMITED
            limited += 1
    assert limited > 0 and ok + limited == 40
    assert fn["r"].counters()["drops"].get("rate_limited", 0) == limited
    # requests (a -> b) were limited in Python; only b's answers may have used the kernel
    flows = {(f["dst"], f["src"]): f for f in fn["r"].api("GET", "/flows")["flows"]}
    assert _verdicts(fn["r"])["redirected"] - red0 <= ok, "a rate-limited request left r's kernel"
    assert ("/svc/x", "/node/a/_app/1") in flows


def test_new_weights_move_kernel_flows(fan):
    fn, cli = fan
    _hit_in_kernel(fn, cli)
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "weights": {"/node/b": 0, "/node/c": 1}})
    assert _served(cli, 20) == {b"C": 20}
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "weights": {"/node/b": 1, "/node/c": 0}})
    assert _served(cli, 20) == {b"B": 20}


def _kernel_entries(app) -> dict:
    """The flow entries in a forwarder's kernel map, read through its pins: {key block: Flow}."""
    from forwarder.dataplane.fastpath import kernel, layout
    maps = kernel.FastPathMaps.open_pinned(_kernel(app)["pin_dir"])
    try:
        return {layout.key_block(k): maps.lookup(k) for k in maps.flow_keys()}
    finally:
        maps.close_maps()


def test_priority_class_is_kept_on_the_kernel_path(fan):
    """A critical prefix's flows keep skb->priority 7 on the kernel path, as the Python path
    sends them: the entry the kernel holds for the flow carries it (the program writes an
    entry's priority to skb->priority: test_fastpath_prog), and the kernel forwards them."""
    fn, cli = fan
    _hit_in_kernel(fn, cli, 20)
    pkt = wire.Packet(wire.PacketType.REQUEST, Name.parse("/svc/x"),
                      Name.parse("/node/a/_app/1")).encode()
    key = wire.flow_key(pkt)
    assert _kernel_entries(fn["r"])[key].priority == 0
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "priority": 7})
    _served(cli, 5)   # decided again under the new rule (stale), and installed again
    red0 = _verdicts(fn["r"])["redirected"]
    _served(cli, 50)
    assert _verdicts(fn["r"])["redirected"] - red0 >= 50
    entry = _kernel_entries(fn["r"])[key]
    assert entry.priority == 7 and entry.gen == _kernel(fn["r"])["generation"]
    # a class below 6 leaves as the Python path sends it too: priority 0
    fn["r"].api("POST", "/strategy", {"prefix": "/svc", "priority": 3})
    _served(cli, 5)
    assert _kernel_entries(fn["r"])[key].priority == 0


def test_idle_flows_leave_the_kernel_with_the_pipeline(netns_net):
    fn = _fan(netns_net, idle=1)
    with Client(fn["b"].app_socket) as b, Client(fn["a"].app_socket, timeout=2) as cli:
        b.serve("/svc", _echo(b"B"))
        wait_for(lambda: "/svc" in fn["b"].status()["local_prefixes"], HANG_S, what="registration")
        _hit_in_kernel(fn, cli, 20)
        assert _kernel(fn["r"])["kernel_flows"] >= 1
        wait_for(lambda: not fn["r"].api("GET", "/flows")["flows"]
                 and _kernel(fn["r"])["kernel_flows"] == 0, HANG_S, what="idle expiry")
        assert _kernel(fn["r"])["offload"]["deleted"] >= 1
        _hit_in_kernel(fn, cli, 20)   # the next call decides and installs again


# ------------------------------------------------------------------- crash
CRASHING = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from topologies.netns import NetnsNetwork
from topologies.fwd_net import ForwarderNet
net = NetnsNetwork(Path(sys.argv[1]))
for n in ("a", "b"):
    net.add_node(n)
net.add_link("a", "b")
fn = ForwarderNet(net)
for n in ("a", "b"):
    fn.add(n, dataplane="ebpf")
fn.start_all()
print(fn["a"].status()["dataplane"]["pin_dir"], flush=True)
time.sleep(3600)
"""


def test_make_clean_removes_pins_and_links_after_a_crash():
    from topologies.records import new_run_dir, read_records
    run_dir = new_run_dir("test-fastpath-crash")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    harness = subprocess.Popen([sys.executable, "-c", CRASHING, str(run_dir), repo],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pin_dir = harness.stdout.readline().strip()
        assert pin_dir and os.path.isdir(pin_dir), "the harness did not come up"
        entries = read_records(run_dir)
        assert {"kind": "bpf_pins", "path": pin_dir} in [
            {k: e.get(k) for k in ("kind", "path")} for e in entries if e["kind"] == "bpf_pins"]
        # the programs hang on tcx links pinned in the same folder
        assert [n for n in os.listdir(pin_dir) if n.startswith("link_")]
        # kill -9 the harness and its forwarders: nothing of theirs runs its cleanup
        os.killpg(harness.pid, signal.SIGKILL)
        for e in entries:
            if e["kind"] == "pid":
                try:
                    os.killpg(e["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        harness.wait(10)
        assert os.path.isdir(pin_dir)
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
            harness.wait(10)
    res = subprocess.run([sys.executable, "-m", "topologies.clean", str(run_dir)], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not os.path.exists(pin_dir)
    assert "pin folder" in res.stdout or "pin folder" in res.stderr
    ns = [e["name"] for e in read_records(run_dir) if e["kind"] == "netns"]
    assert ns and not any(os.path.exists(f"/run/netns/{n}") for n in ns)
