"""Pure pieces of the client library and the HTTP adapters (no gateway, no root).

Also a fake Service Gateway on a socketpair-like Unix socket, so the Client's
threading (ATTACH, concurrent calls, fragment reassembly, NACK retries,
serving) is exercised without the daemon.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from forwarder.dataplane import wire
from forwarder.apps.client import (CallTimeout, Client, DmscError, NackError, Reassembler,
                              RetryBudget, fragment, header_length, payload_budget,
                              split_payload)
from forwarder.apps.http_proxy import (HttpRequest, HttpResponse, decode_request, decode_response,
                                  destination, encode_request, encode_response, end_to_end,
                                  trace_from_traceparent)
from forwarder.dataplane.names import Name
from forwarder.dataplane.wire import NackBody, NackReason, Packet, PacketType


# ---------------------------------------------------------------- RetryBudget

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_budget_floor_then_ratio():
    clk = Clock()
    b = RetryBudget(ratio=0.5, min_retries_per_s=0.2, ttl=10, clock=clk)  # floor 2
    assert b.balance() == 2
    assert b.withdraw() and b.withdraw()
    assert not b.withdraw()
    for _ in range(4):
        b.deposit()  # +2
    assert b.balance() == 2
    assert b.withdraw() and b.withdraw() and not b.withdraw()


def test_budget_window_expires():
    clk = Clock()
    b = RetryBudget(ratio=0.0, min_retries_per_s=0.1, ttl=10, clock=clk)  # floor 1
    assert b.withdraw() and not b.withdraw()
    clk.t += 5
    assert not b.withdraw()
    clk.t += 6  # the withdrawal left the window
    assert b.withdraw()


def test_budget_thread_safe():
    b = RetryBudget(ratio=0.0, min_retries_per_s=10, ttl=10)  # 100 retries
    got = []

    def take():
        got.append(sum(b.withdraw() for _ in range(50)))

    ts = [threading.Thread(target=take) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sum(got) == 100


def test_budget_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryBudget(ttl=0)


# -------------------------------------------------------------- fragmentation

def _req(payload: bytes, **kw) -> Packet:
    return Packet(PacketType.REQUEST, dst=Name.parse("/shop/cart/items"),
                  src=Name.parse("/node/a/_app/1/c7"), payload=payload, flow_id=9, seq=42, **kw)


def test_split_payload():
    assert split_payload(b"", 10) == [b""]
    assert split_payload(b"abc", 10) == [b"abc"]
    assert split_payload(b"abcdefghij", 5) == [b"abcde", b"fghij"]
    assert split_payload(b"abcdefghijk", 5) == [b"abcde", b"fghij", b"k"]
    with pytest.raises(ValueError):
        split_payload(b"x", 0)


def test_fragments_fit_the_mtu_and_share_flow_and_seq():
    pkt = _req(os.urandom(5000), tlvs=[(wire.TlvType.PRIORITY, b"\x03")])
    frags = fragment(pkt, 1500)
    hl = header_length(pkt)
    assert len(frags) == -(-5000 // payload_budget(1500, hl))
    for i, f in enumerate(frags):
        data = f.encode()
        assert len(data) + wire.ETH_HEADER_LEN <= 1500
        d = wire.decode(data)
        assert (d.flow_id, d.seq, d.frag_index, d.frag_count) == (9, 42, i, len(frags))
        assert d.tlv(wire.TlvType.PRIORITY) == b"\x03"
    assert b"".join(f.payload for f in frags) == pkt.payload


def test_small_message_is_one_packet():
    frags = fragment(_req(b"hi"), 1500)
    assert len(frags) == 1 and frags[0].frag_count == 1 and frags[0].payload == b"hi"


def test_mtu_too_small_for_headers():
    with pytest.raises(ValueError):
        fragment(_req(b"x"), 60)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 20000), mtu=st.integers(200, 9000), seed=st.randoms())
def test_reassembly_any_order(size, mtu, seed):
    pkt = _req(bytes(i % 251 for i in range(size)))
    frags = [wire.decode(f.encode()) for f in fragment(pkt, mtu)]
    seed.shuffle(frags)
    r = Reassembler()
    outs = [r.add(f) for f in frags]
    assert all(o is None for o in outs[:-1])
    whole = outs[-1]
    assert whole.payload == pkt.payload and whole.frag_count == 1 and whole.seq == 42
    assert len(r) == 0 and r.buffered == 0


def test_reassembly_keys_by_source_flow_seq():
    a = fragment(_req(b"a" * 3000), 1500)
    b = [Packet(**{**f.__dict__, "src": Name.parse("/node/b/_app/1")}) for f in
         fragment(_req(b"b" * 3000), 1500)]
    r = Reassembler()
    for x, y in zip(a[:-1], b[:-1]):
        assert r.add(x) is None and r.add(y) is None
    assert r.add(a[-1]).payload == b"a" * 3000
    assert r.add(b[-1]).payload == b"b" * 3000


def test_reassembly_duplicates_and_timeout():
    clk = Clock()
    r = Reassembler(timeout=2.0, clock=clk)
    frags = fragment(_req(b"z" * 4000), 1500)
    assert r.add(frags[0]) is None
    assert r.add(frags[0]) is None  # duplicate ignored
    clk.t += 3
    r.expire()
    assert len(r) == 0 and r.expired == 1 and r.buffered == 0
    for f in frags[1:]:
        assert r.add(f) is None  # fragment 0 is gone: never completes
    assert len(r) == 1


def test_reassembly_byte_bound_evicts_oldest():
    r = Reassembler(max_bytes=5000)
    m1 = fragment(_req(b"1" * 6000), 1500)
    m2 = [Packet(**{**f.__dict__, "seq": 43}) for f in fragment(_req(b"2" * 6000), 1500)]
    for f in m1[:3]:
        r.add(f)
    assert r.buffered <= 5000
    for f in m2[:2]:
        r.add(f)
    assert r.buffered <= 5000 and r.dropped >= 1
    done = [r.add(f) for f in m2[2:]]
    assert all(d is None for d in done)  # 6000 bytes > bound: never completes
    assert r.buffered <= 5000


# ------------------------------------------------------------ HTTP payloads

def test_request_round_trip():
    req = HttpRequest("POST", "/items/3?x=1", [("Host", "cart.shop.dmsc"), ("Connection", "keep-alive, X-Hop"),
                                               ("X-Hop", "1"), ("Set-Thing", "a"), ("Set-Thing", "b"),
                                               ("Transfer-Encoding", "chunked"), ("Content-Length", "99")],
                      b"hello\r\n\r\nbody")
    data = encode_request(req)
    assert data.startswith(b"POST /items/3?x=1 HTTP/1.1\r\n")
    back = decode_request(data)
    assert back.method == "POST" and back.target == "/items/3?x=1"
    assert back.body == req.body
    assert back.headers == [("Host", "cart.shop.dmsc"), ("Set-Thing", "a"), ("Set-Thing", "b"),
                            ("Content-Length", "13")]


def test_get_without_body_has_no_content_length():
    data = encode_request(HttpRequest("GET", "/", [("Host", "x.dmsc")]))
    assert data == b"GET / HTTP/1.1\r\nHost: x.dmsc\r\n\r\n"


def test_response_round_trip_and_head():
    resp = HttpResponse(200, "OK", [("Content-Type", "text/plain"), ("Content-Length", "1234"),
                                    ("Keep-Alive", "timeout=5")], b"abc")
    back = decode_response(encode_response(resp))
    assert (back.status, back.reason, back.body) == (200, "OK", b"abc")
    assert back.headers == [("Content-Type", "text/plain"), ("Content-Length", "3")]
    head = decode_response(encode_response(resp, "HEAD"))
    assert head.body == b"" and head.header("content-length") == "1234"
    nc = decode_response(encode_response(HttpResponse(304, "", [("ETag", "x")], b"ignored")))
    assert nc.status == 304 and nc.reason == "" and nc.body == b""


@pytest.mark.parametrize("bad", [b"", b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nnocolon\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nHost: x"])
def test_malformed_request(bad):
    with pytest.raises(ValueError):
        decode_request(bad)


@pytest.mark.parametrize("bad", [b"HTTP/1.1 2000 OK\r\n\r\n", b"FOO 200 OK\r\n\r\n", b"HTTP/1.1 200 OK"])
def test_malformed_response(bad):
    with pytest.raises(ValueError):
        decode_response(bad)


def test_end_to_end_headers():
    h = [("Connection", "close, X-A"), ("X-A", "1"), ("TE", "trailers"), ("Upgrade", "h2c"),
         ("Proxy-Authorization", "x"), ("X-B", "2")]
    assert end_to_end(h) == [("X-B", "2")]


def test_destination_name():
    p = Name.parse("/shop/cart")
    assert destination(p, "/items/3?q=1") == Name.parse("/shop/cart/items/3")
    assert destination(p, "/") == p
    assert destination(p, "/a%2Fb/c") == Name((b"shop", b"cart", b"a/b", b"c"))
    assert destination(p, "/1/2/3/4/5/6/7") == p  # 9 components: prefix only
    assert destination(p, "/" + "x" * 64) == p


def test_traceparent():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    v = trace_from_traceparent(tp)
    assert len(v) == 25 and v[-1] == 1 and v[:16].hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_from_traceparent("garbage") is None
    assert trace_from_traceparent(None) is None


# ------------------------------------------------- Client against a fake SG

class FakeGateway:
    """Accepts one app, assigns /node/t/_app/1, and runs `behave(pkt, send)` per packet."""

    def __init__(self, path: Path, behave) -> None:
        self.path = str(path)
        self.behave = behave
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lsock.bind(self.path)
        self.lsock.listen(4)
        self.conns = []
        self.seen = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            return
        self.conns.append(conn)
        while True:
            try:
                data = conn.recv(70000)
            except OSError:
                return
            if not data:
                return
            pkt = wire.decode(data)
            self.seen.append(pkt)
            if pkt.type == PacketType.ATTACH:
                conn.send(Packet(PacketType.ATTACH, dst=Name.parse("/node/t/_app/1"),
                                 src=wire.LOCAL_NAME, seq=pkt.seq).encode())
            else:
                self.behave(pkt, lambda p: conn.send(p.encode()))

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.lsock.close()


def _echo_data(pkt, send, mtu=1500):
    if pkt.type != PacketType.REQUEST:
        return
    _echo_data.buf = getattr(_echo_data, "buf", None) or Reassembler()
    whole = _echo_data.buf.add(pkt)
    if whole is None:
        return
    reply = Packet(PacketType.DATA, dst=whole.src, src=Name.parse("/node/t/_app/9"),
                   payload=whole.payload[::-1], flow_id=whole.flow_id, seq=whole.seq)
    for f in fragment(reply, mtu):
        send(f)


@pytest.fixture
def sockpath(tmp_path):
    return tmp_path / "sg.sock"


def test_missing_socket_is_a_clear_error(sockpath):
    with pytest.raises(DmscError, match="no Service Gateway socket"):
        Client(str(sockpath))


def test_attach_timeout(sockpath):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(sockpath))
    s.listen(1)
    try:
        with pytest.raises(CallTimeout, match="ATTACH"):
            Client(str(sockpath), timeout=0.2)
    finally:
        s.close()


def test_concurrent_calls_with_fragments(sockpath):
    gw = FakeGateway(sockpath, _echo_data)
    try:
        with Client(str(sockpath), timeout=2.0) as c:
            assert c.name == Name.parse("/node/t/_app/1")
            results = {}

            def work(i):
                body = os.urandom(100 + i * 700)
                results[i] = (body, c.call("/shop/echo", body, flow=f"f{i}"))

            ts = [threading.Thread(target=work, args=(i,)) for i in range(16)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for i, (body, got) in results.items():
                assert got == body[::-1]
            assert len(results) == 16
            assert c.counters["calls"] == 16
        srcs = {p.src.text for p in gw.seen if p.type == PacketType.REQUEST}
        assert "/node/t/_app/1/f3" in srcs
    finally:
        gw.close()


def test_nack_retry_then_success(sockpath):
    state = {"n": 0}

    def behave(pkt, send):
        if pkt.type != PacketType.REQUEST:
            return
        state["n"] += 1
        if state["n"] == 1:
            send(Packet(PacketType.NACK, dst=pkt.src, src=Name.parse("/node/r"),
                        payload=NackBody(int(NackReason.INSTANCE_UNREACHABLE), 1, pkt.dst).encode(),
                        flow_id=pkt.flow_id, seq=pkt.seq))
        else:
            send(Packet(PacketType.DATA, dst=pkt.src, src=pkt.dst, payload=b"ok",
                        flow_id=pkt.flow_id, seq=pkt.seq))

    gw = FakeGateway(sockpath, behave)
    try:
        with Client(str(sockpath), retries=2) as c:
            assert c.call("/shop/x") == b"ok"
            assert c.counters["retries"] == 1
            assert c.counters["nacks"] == {"INSTANCE_UNREACHABLE": 1}
    finally:
        gw.close()


def test_nack_denied_not_retried_and_timeout(sockpath):
    def behave(pkt, send):
        if pkt.type == PacketType.REQUEST and pkt.dst == Name.parse("/deny"):
            send(Packet(PacketType.NACK, dst=pkt.src, src=Name.parse("/node/r"),
                        payload=NackBody(int(NackReason.DENIED), 1, pkt.dst).encode(),
                        flow_id=pkt.flow_id, seq=pkt.seq))

    gw = FakeGateway(sockpath, behave)
    try:
        with Client(str(sockpath), retries=3, timeout=0.1) as c:
            with pytest.raises(NackError) as ei:
                c.call("/deny")
            assert ei.value.reason_name == "DENIED" and ei.value.node == Name.parse("/node/r")
            t0 = time.monotonic()
            with pytest.raises(CallTimeout):
                c.call("/silent")
            assert time.monotonic() - t0 >= 0.35  # 1 + 3 retries of 0.1 s
            assert c.counters["timeouts"] == 4 and c.counters["retries"] == 3
    finally:
        gw.close()


def test_register_refused_and_serve(sockpath):
    out = []

    def behave(pkt, send):
        if pkt.type == PacketType.REGISTER:
            ok = pkt.dst != Name.parse("/_dmsc/x")
            send(Packet(PacketType.REGISTER_RESULT, dst=pkt.src, src=pkt.dst, seq=pkt.seq,
                        payload=wire.RegisterResult(0 if ok else 3, "nope" if not ok else "ok").encode()))
        elif pkt.type == PacketType.DATA:
            out.append(pkt)

    gw = FakeGateway(sockpath, behave)
    try:
        c = Client(str(sockpath))
        with pytest.raises(DmscError, match="nope"):
            c.register("/_dmsc/x")

        def handler(payload, req):
            if payload == b"boom":
                raise RuntimeError("boom")
            return payload.upper() * 1000

        c.serve("/svc", handler)
        conn = gw.conns[0]
        big = Packet(PacketType.REQUEST, dst=Name.parse("/svc/a"), src=Name.parse("/node/u/_app/4"),
                     payload=b"abc", flow_id=5, seq=77)
        conn.send(big.encode())
        conn.send(Packet(**{**big.__dict__, "seq": 78, "payload": b"boom"}).encode())
        deadline = time.time() + 3
        while time.time() < deadline and len({p.seq for p in out}) < 2:
            time.sleep(0.02)
        r = Reassembler()
        whole = [w for w in (r.add(p) for p in out) if w is not None]
        by_seq = {w.seq: w.payload for w in whole}
        assert by_seq[77] == b"ABC" * 1000 and by_seq[78] == b""
        assert c.counters["served"] == 1 and c.counters["handler_errors"] == 1
        c.close()
        # the gateway's thread records what it reads: poll, it may not have read it yet
        deadline = time.time() + 3
        while time.time() < deadline and not any(
                p.type == PacketType.UNREGISTER and p.dst == Name.parse("/svc") for p in gw.seen):
            time.sleep(0.02)
        assert any(p.type == PacketType.UNREGISTER and p.dst == Name.parse("/svc") for p in gw.seen)
    finally:
        gw.close()


def test_gateway_going_away_fails_waiters(sockpath):
    gw = FakeGateway(sockpath, lambda pkt, send: gw.conns[0].shutdown(socket.SHUT_RDWR)
                     if pkt.type == PacketType.REQUEST else None)
    try:
        c = Client(str(sockpath), timeout=2)
        with pytest.raises(DmscError, match="closed"):
            c.call("/x")
        with pytest.raises(DmscError, match="closed"):
            c.serve_forever()
        c.close()
    finally:
        gw.close()


# ------------------------------------ HTTP proxy + backend adapter, fake SG

def test_http_proxy_and_backend_through_fake_gateway(sockpath):
    """Proxy -> (fake SG) -> backend adapter -> a real HTTP server, and the error mapping."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from forwarder.dataplane.hostmap import HostMap
    from forwarder.apps.http_backend import BackendPool, HttpBackendHandler
    from forwarder.apps.http_proxy import ProxyServer

    class Origin(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out = f"{self.path}|{self.headers['Host']}|".encode() + body
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    backend = HttpBackendHandler(BackendPool("127.0.0.1", origin.server_address[1]))
    dead = HttpBackendHandler(BackendPool("127.0.0.1", 1))
    dsts = []

    def behave(pkt, send):
        if pkt.type != PacketType.REQUEST:
            return
        whole = behave.r.add(pkt)
        if whole is None:
            return
        dsts.append(whole.dst.text)
        top = whole.dst.components[1]
        nack = {b"rl": NackReason.RATE_LIMITED, b"none": NackReason.NO_ROUTE}.get(top)
        if nack is not None:
            send(Packet(PacketType.NACK, dst=whole.src, src=Name.parse("/node/r"),
                        payload=NackBody(int(nack), 1, whole.dst).encode(),
                        flow_id=whole.flow_id, seq=whole.seq))
            return
        if top == b"silent":
            return
        h = backend if top == b"web" else dead
        reply = Packet(PacketType.DATA, dst=whole.src, src=Name.parse("/node/s/_app/2"),
                       payload=h(whole.payload, whole), flow_id=whole.flow_id, seq=whole.seq)
        for f in fragment(reply, 1500):
            send(f)

    behave.r = Reassembler()
    gw = FakeGateway(sockpath, behave)
    proxy = ProxyServer(("127.0.0.1", 0), HostMap({"alias.test": "/shop/web"}),
                        lambda: Client(str(sockpath), timeout=10), timeout=10, retries=0)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.server_address[1], timeout=30)

        def post(host, path, body=b"x", absolute=False):
            target = f"http://{host}{path}" if absolute else path
            conn.request("POST", target, body=body, headers={"Host": host})
            r = conn.getresponse()
            return r.status, r.getheader("X-DMSC-Instance"), r.read()

        big = os.urandom(10000)
        st_, inst, body = post("web.shop.dmsc", "/a/b?q=1", big)
        assert st_ == 200 and inst == "/node/s/_app/2"
        assert body == b"/a/b?q=1|web.shop.dmsc|" + big
        st_, _, body = post("web.shop.dmsc", "/c", absolute=True)  # same keep-alive connection
        assert st_ == 200 and body.startswith(b"/c|")
        assert post("alias.test", "/")[0] == 200
        st_, _, body = post("example.com", "/")
        assert st_ == 400 and b".dmsc" in body
        st_, _, body = post("none.shop.dmsc", "/")
        assert st_ == 502 and b"NO_ROUTE" in body
        st_, _, body = post("rl.shop.dmsc", "/")
        assert st_ == 503 and b"RATE_LIMITED" in body
        proxy.call_timeout = 0.5  # nothing answers: the timeout's length is not the point
        assert post("silent.shop.dmsc", "/")[0] == 504
        proxy.call_timeout = 10
        st_, _, body = post("dead.shop.dmsc", "/")
        assert st_ == 502 and b"unreachable" in body
        assert dsts[:3] == ["/shop/web/a/b", "/shop/web/c", "/shop/web"]
        conn.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
        proxy.close_client()
        origin.shutdown()
        gw.close()
