"""No HTTP server or client of the project waits for a delayed ACK.

Python's http.server writes a response's head and its body in two writes, and
http.client a request's head and body; without TCP_NODELAY the second write
waits (Nagle) for the peer to acknowledge the first, which a keep-alive peer
delays by about 40 ms: the shop's cart answered about 250 requests/s through the
lab's HTTP proxy for that reason alone. The cause is checked here, without a
clock: each server's responses are counted as they are written on the accepted
socket (one write per response), on a keep-alive connection carrying several
requests, and the sockets' TCP_NODELAY option is read back.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest

from forwarder.dataplane.names import Name


class CountingSocket:
    """A real socket whose send/sendall calls (the writes) are recorded, each with
    whether TCP_NODELAY was set on it at that moment."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.writes: list = []
        self.nodelay: list = []

    def _record(self, data) -> None:
        self.writes.append(bytes(data))
        if self._sock.family != socket.AF_UNIX:
            self.nodelay.append(nodelay(self._sock))

    def sendall(self, data, *args):
        self._record(data)
        return self._sock.sendall(data, *args)

    def send(self, data, *args):
        self._record(data)
        return self._sock.send(data, *args)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def recording(server_cls):
    """server_cls whose accepted connections are CountingSockets, kept in .accepted."""
    class Recording(server_cls):
        def get_request(self):
            sock, addr = super().get_request()
            wrapped = CountingSocket(sock)
            self.accepted.append(wrapped)
            return wrapped, addr
    Recording.accepted = []
    return Recording


def nodelay(sock) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _serve(server):
    server.accepted = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def _stop(server):
    server.shutdown()
    server.server_close()


def _keepalive(port, requests):
    """Send the (method, path, body, headers) requests on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for method, path, body, headers in requests:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            out.append((r.status, r.read(), r.getheader("Connection")))
    finally:
        conn.close()
    return out


def _one_write_per_response(sock: CountingSocket, n: int) -> None:
    assert len(sock.writes) == n, [w[:40] for w in sock.writes]
    for w in sock.writes:  # each is a whole response: status line, headers, body
        head, sep, body = w.partition(b"\r\n\r\n")
        assert w.startswith(b"HTTP/1.1 ") and sep and body, w[:200]


# ----------------------------------------------------------------- servers
def test_shop_http_service_answers_in_one_write_with_nodelay():
    from topologies.shop.services import Shop
    server = _serve(recording(ThreadingHTTPServer)(("127.0.0.1", 0), Shop("cart", "h1").http_handler()))
    try:
        got = _keepalive(server.server_address[1], [
            ("GET", "/items?user=u", None, {}),
            ("POST", "/items?user=u", json.dumps({"item": 2}).encode(), {"Content-Type": "application/json"}),
            ("GET", "/items?user=u", None, {})])
    finally:
        _stop(server)
    assert [s for s, _, _ in got] == [200, 200, 200]
    assert json.loads(got[2][1])["items"] == [2]
    (sock,) = server.accepted  # three requests, one connection
    assert sock.nodelay and all(sock.nodelay)
    _one_write_per_response(sock, 3)


class _FakeGatewayClient:
    """What the proxy's handler needs of a Client: request() -> reply, closed."""
    closed = False

    def request(self, dst, payload, **kw):
        from forwarder.apps.http_proxy import HttpResponse, decode_request, encode_response
        req = decode_request(payload)
        body = f"{dst.text} {req.method} {len(req.body)}".encode()
        reply = encode_response(HttpResponse(200, "OK", [("Content-Type", "text/plain")], body))
        return type("Reply", (), {"payload": reply, "src": Name.parse("/node/s/_app/1")})()

    def close(self):
        pass


def test_http_proxy_answers_in_one_write_with_nodelay():
    from forwarder.dataplane.hostmap import HostMap
    from forwarder.apps.http_proxy import ProxyServer
    server = _serve(recording(ProxyServer)(("127.0.0.1", 0), HostMap(), _FakeGatewayClient))
    try:
        host = {"Host": "cart.shop.dmsc"}
        got = _keepalive(server.server_address[1], [
            ("GET", "/items", None, host), ("POST", "/items", b"x" * 5000, host),
            ("HEAD", "/items", None, host),
            ("GET", "/items", None, {"Host": "example.com"})])  # not a .dmsc host: 400
    finally:
        _stop(server)
    assert [s for s, _, _ in got] == [200, 200, 200, 400]
    assert got[1][1] == b"/shop/cart/items POST 5000"
    (sock,) = server.accepted
    assert sock.nodelay and all(sock.nodelay)
    assert len(sock.writes) == 4
    for w in sock.writes[:2] + sock.writes[3:]:
        assert w.startswith(b"HTTP/1.1 ") and w.partition(b"\r\n\r\n")[2], w[:200]
    assert sock.writes[2].startswith(b"HTTP/1.1 200") and sock.writes[2].endswith(b"\r\n\r\n")  # HEAD


class _FakeApi:
    def handle(self, method, path, query, body):
        return 200, {"method": method, "path": path, "body": body}


def test_management_endpoint_answers_in_one_write_over_unix_and_tcp(tmp_path):
    from forwarder.mgmt.ctl import _UnixHTTPConnection
    from forwarder.mgmt.endpoint import _TcpServer, _UnixServer, _make_handler
    handler = _make_handler(_FakeApi())
    path = str(tmp_path / "mgmt.sock")
    unix = _serve(recording(_UnixServer)(path, handler))
    tcp = _serve(recording(_TcpServer)(("127.0.0.1", 0), handler))
    try:
        conn = _UnixHTTPConnection(path, 30)
        for _ in range(2):
            conn.request("POST", "/x", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["body"] == {"a": 1}
        conn.close()
        got = _keepalive(tcp.server_address[1], [("GET", "/status", None, {})] * 2)
        assert [s for s, _, _ in got] == [200, 200]
    finally:
        _stop(unix)
        _stop(tcp)
    _one_write_per_response(unix.accepted[0], 2)
    _one_write_per_response(tcp.accepted[0], 2)
    assert all(tcp.accepted[0].nodelay)


def test_scsc_rest_server_sets_nodelay():
    """wsgiref writes the head and the body apart (and closes after each response):
    TCP_NODELAY keeps the body from waiting on the head's acknowledgement."""
    from wsgiref.simple_server import make_server

    from controller.northbound import _QuietHandler, _ThreadingWSGIServer

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "ok"}\n']
    server = _serve(make_server("127.0.0.1", 0, app, server_class=recording(_ThreadingWSGIServer),
                                handler_class=_QuietHandler))
    try:
        got = _keepalive(server.server_address[1], [("GET", "/health", None, {})])
    finally:
        _stop(server)
    assert got[0][0] == 200
    writes = server.accepted[0].nodelay
    assert writes and all(writes)


# ----------------------------------------------------------------- clients
def test_backend_pool_connections_have_nodelay():
    """The SG's http_backend adapter keeps connections to the service: TCP_NODELAY on them,
    so that a POST's body does not wait for the service to acknowledge the headers."""
    from topologies.shop.services import Shop
    from forwarder.apps.http_backend import BackendPool
    server = _serve(recording(ThreadingHTTPServer)(("127.0.0.1", 0), Shop("cart", "h1").http_handler()))
    pool = BackendPool("127.0.0.1", server.server_address[1])
    try:
        for item in (1, 2):
            resp = pool.forward("POST", "/items?user=p", [("Host", "cart.shop.dmsc")],
                                json.dumps({"item": item}).encode())
            assert resp.status == 200
        assert json.loads(resp.body)["items"] == [1, 2]
        (conn,) = list(pool._idle.queue)  # one kept-alive connection, reused
        assert nodelay(conn.sock)
    finally:
        pool.close()
        _stop(server)
    assert len(server.accepted) == 1 and all(server.accepted[0].nodelay)
    _one_write_per_response(server.accepted[0], 2)


@pytest.mark.netns
def test_clients_opened_in_a_namespace_have_nodelay(netns_net):
    """The lab's SCSC client (DmscLab.scsc_api) and the SCSC REST client open their
    sockets inside a namespace, where http.client's own connect() does not run."""
    from controller.rest_client import _Conn
    from topologies.lab.net import netns_http_connection
    from topologies.nsenter import socket_in
    ns = netns_net.add_node("h").netns
    listener = socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    try:
        for conn in (netns_http_connection(ns, "127.0.0.1", port, 10), _Conn("127.0.0.1", port, ns, 10)):
            conn.connect()
            try:
                assert nodelay(conn.sock)
            finally:
                conn.close()
    finally:
        listener.close()
