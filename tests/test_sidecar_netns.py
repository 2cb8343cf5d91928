"""The sidecar mesh's proxies on two namespaces: a -- b, a client pod in a, a service pod in b.

b runs the app (a Python HTTP server on 127.0.0.1 that counts what reaches it)
and a sidecar with an inbound listener on b's address; a runs a sidecar with an
outbound listener on 127.0.0.1 that routes Host svc.test to b's inbound one.
The app listens on b's loopback only, so a request from a reaches it through
both proxies or not at all. Both proxies of experiments/sidecar_mesh.py's
interface are run: nginx's Sidecar and HaproxySidecar. Nothing here asserts a
rate or a latency.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sys
import textwrap
from types import SimpleNamespace

import pytest

from experiments.common import ProcSet
from experiments.sidecar_haproxy import HaproxyConfigError, HaproxySidecar
from experiments.sidecar_mesh import Sidecar, run_wrk, wait_listening
from topologies.measure import wait_for
from topologies.nsenter import socket_in

A_IP, B_IP = "10.0.0.1", "10.0.0.2"
APP_PORT, IN_PORT, OUT_PORT = 9102, 15100, 15001
HOST = "svc.test"
WRK_CONNS = 16

# The app: 200 "ok" to every request; GET /__seen answers what it saw (not counted).
APP = textwrap.dedent("""
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    lock = threading.Lock()
    seen = {"requests": 0, "connections": 0, "hosts": {}}

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        counted = False

        def do_GET(self):
            if self.path == "/__seen":
                with lock:
                    body = json.dumps(seen).encode()
            else:
                with lock:
                    seen["requests"] += 1
                    if not self.counted:
                        self.counted = True
                        seen["connections"] += 1
                    h = self.headers.get("Host", "")
                    seen["hosts"][h] = seen["hosts"].get(h, 0) + 1
                body = b"ok\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")

SIDECARS = {"nginx": Sidecar, "haproxy": HaproxySidecar}


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed; run make setup"
        if os.environ.get("DMSC_NO_SKIP") == "1":
            pytest.fail(f"DMSC_NO_SKIP=1 but this test cannot run here: {reason}")
        pytest.skip(reason)


class NsConnection(http.client.HTTPConnection):
    """http.client over a TCP socket opened in a namespace."""

    def __init__(self, netns: str, host: str, port: int, timeout: float = 10.0) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        s = socket_in(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((self.host, self.port))
        self.sock = s


@pytest.fixture
def two_pods(netns_net):
    """a -- b with 10.0.0.1/30 and 10.0.0.2/30, the app in b, and what ProcSet needs of a lab."""
    a, b = netns_net.add_node("a"), netns_net.add_node("b")
    link = netns_net.add_link("a", "b")
    a.add_addr(link.intf_a, f"{A_IP}/30")
    b.add_addr(link.intf_b, f"{B_IP}/30")
    lab = SimpleNamespace(netns={"a": a.netns, "b": b.netns}, run_dir=netns_net.run_dir,
                          records=netns_net.records, python=sys.executable)
    procs = ProcSet(lab)
    try:
        procs.start("b", "app", [sys.executable, "-c", APP, str(APP_PORT)])
        wait_listening(lab, "b", "127.0.0.1", APP_PORT, 20)
        yield lab, procs
    finally:
        procs.stop()


def app_seen(lab) -> dict:
    c = NsConnection(lab.netns["b"], "127.0.0.1", APP_PORT)
    try:
        c.request("GET", "/__seen")
        r = c.getresponse()
        assert r.status == 200
        return json.loads(r.read())
    finally:
        c.close()


def established(lab, node: str, sport: int) -> int:
    from topologies.proc import run
    out = run(["ss", "-Htn", "state", "established", f"( sport = :{sport} )"],
              netns=lab.netns[node]).stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


@pytest.mark.netns
@pytest.mark.parametrize("kind", sorted(SIDECARS))
def test_two_sidecars_carry_keepalive_traffic(two_pods, kind):
    _need("haproxy", "nginx", "wrk", "ss")
    lab, procs = two_pods
    cls = SIDECARS[kind]
    server = cls(procs, "b", "sc-svc", inbound=(B_IP, IN_PORT, APP_PORT), out_port=None,
                 services={})
    client = cls(procs, "a", "sc-client", inbound=None, out_port=OUT_PORT,
                 services={HOST: [(B_IP, IN_PORT)]})
    for sc in (server, client):
        assert sc.dir == lab.run_dir / sc.node / sc.name and sc.conf.parent == sc.dir
        assert sc.pid is not None and sc.proc.running
    wait_listening(lab, "b", B_IP, IN_PORT, 20)
    wait_listening(lab, "a", "127.0.0.1", OUT_PORT, 20)

    # 1. one client connection, 50 requests back to back: one connection on every hop
    conn = NsConnection(lab.netns["a"], "127.0.0.1", OUT_PORT)
    try:
        first = None
        for i in range(50):
            conn.request("GET", f"/k{i}", headers={"Host": HOST})
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b"ok\n")
            assert not r.will_close, f"request {i}: the outbound sidecar closes the connection"
            first = first or conn.sock
            assert conn.sock is first, f"request {i} went on a new client connection"
        seen = app_seen(lab)
        assert seen["requests"] == 50
        assert seen["connections"] == 1, seen        # b's sidecar -> app: one kept connection
        assert established(lab, "b", IN_PORT) == 1   # a's sidecar -> b's: one kept connection
    finally:
        conn.close()

    # 2. wrk, 16 keep-alive connections: only 2xx, no socket error, all through both proxies
    res, _ = run_wrk(lab, "a", f"http://127.0.0.1:{OUT_PORT}/", HOST, threads=1,
                     conns=WRK_CONNS, duration=2)
    raw = res.pop("raw")
    assert res["requests"], raw
    assert res["non_2xx"] == 0, raw
    assert sum(res["socket_errors"].values()) == 0, raw
    # every request wrk counted reached the app (and a few more: wrk does not count the
    # responses that arrive while it stops)
    wait_for(lambda: app_seen(lab)["requests"] >= 50 + res["requests"], 10, 0.1,
             "the app to count wrk's requests")
    seen = app_seen(lab)
    assert seen["hosts"] == {HOST: seen["requests"]}   # the Host header crossed both proxies

    if kind == "haproxy":
        # the proxies' own counters agree with the app: each request crossed both. (Their
        # req_tot also counts connections closed before a request, as wait_listening's.)
        def counters():
            a = {(r["pxname"], r["svname"]): r for r in client.stat()}
            b = {(r["pxname"], r["svname"]): r for r in server.stat()}
            return (int(a[("out", "FRONTEND")]["hrsp_2xx"]), int(b[("in", "FRONTEND")]["hrsp_2xx"]),
                    app_seen(lab)["requests"])
        try:
            wait_for(lambda: len(set(counters())) == 1, 10, 0.1,
                     "the sidecars' 2xx counters to match the app's count")
        except TimeoutError as e:
            raise AssertionError(f"{e}: a out, b in, app = {counters()}") from None
        # no 5xx; 4xx only for connections closed before a whole request (a 400 logged, none sent)
        for sc, px in ((client, "out"), (server, "in")):
            row = next(r for r in sc.stat() if (r["pxname"], r["svname"]) == (px, "FRONTEND"))
            assert row["hrsp_5xx"] == "0" and row["hrsp_4xx"] == row["ereq"], row
        # a Host that names no service: HAProxy's 503, nothing reaches the app
        before = app_seen(lab)["requests"]
        conn = NsConnection(lab.netns["a"], "127.0.0.1", OUT_PORT)
        try:
            conn.request("GET", "/", headers={"Host": "other.test"})
            assert conn.getresponse().status == 503
        finally:
            conn.close()
        assert app_seen(lab)["requests"] == before
        pidfile = (client.dir / "haproxy.pid").read_text().split()
        assert pidfile == [str(client.pid)]
        assert os.path.realpath(f"/proc/{client.pid}/exe") == os.path.realpath(shutil.which("haproxy"))
        assert "Nbthread: 1" in client.admin("show info")


def test_haproxy_refuses_a_bad_config_with_its_own_message(tmp_path):
    _need("haproxy")
    procs = ProcSet(SimpleNamespace(run_dir=tmp_path))
    with pytest.raises(HaproxyConfigError) as e:
        HaproxySidecar(procs, "b", "sc-bad", inbound=(B_IP, 70000, APP_PORT), out_port=None,
                       services={})
    msg = str(e.value)
    assert "[ALERT]" in msg and "invalid port '70000'" in msg, msg
    assert str(tmp_path / "b" / "sc-bad" / "haproxy.cfg") in msg
    assert procs.procs == []                  # nothing was started


def test_haproxy_config_of_an_in_and_out_pod_is_valid(tmp_path):
    _need("haproxy")
    from experiments.sidecar_haproxy import check_config, haproxy_config
    services = {"cart.exp.dmsc": [("10.200.0.3", 15101), ("10.200.0.4", 15100)],
                "null.exp.dmsc": [("10.200.0.3", 15100)]}
    text = haproxy_config(("10.200.0.3", 15100, 9102), 15001, services)
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    assert "[WARNING]" not in check_config(conf)
    for line in ("nbthread 1", "mode http", "option http-keep-alive", "http-reuse always",
                 "timeout connect 5s", "timeout client 120s", "timeout server 120s",
                 "bind 10.200.0.3:15100", "server app 127.0.0.1:9102", "bind 127.0.0.1:15001",
                 "use_backend out_cart.exp.dmsc if { req.hdr(host),host_only -i cart.exp.dmsc }",
                 "server s1 10.200.0.4:15100"):
        assert line in text
    settings = [ln.split("#")[0].split() for ln in text.splitlines()]
    words = {w for ws in settings for w in ws}
    for absent in ("httpclose", "check", "master-worker", "daemon", "/dev/log"):
        assert absent not in words
    logs = [ws for ws in settings if ws[:1] == ["log"]]
    assert logs == [["log", "stderr", "format", "raw", "local0", "info"], ["log", "global"]]
    with pytest.raises(ValueError):
        haproxy_config(None, 15001, {"bad host": [("10.0.0.2", 1)]})
    with pytest.raises(ValueError):
        haproxy_config(None, None, {})
