"""The Service Gateway's client-side HTTP adapter (and the HTTP payload format).

Run: ``python -m forwarder.apps.http_proxy --socket PATH --listen 127.0.0.1:8080
[--map host=prefix ...] [--timeout 5] [--retries 1]``

An HTTP/1.1 client (curl, a browser, an unmodified micro-service) sends its
request here, either as a plain request whose ``Host`` names the service or in
proxy form (``GET http://cart.shop.dmsc/x HTTP/1.1``, what ``curl -x`` sends).
The host maps to a prefix (forwarder.dataplane.hostmap: ``cart.shop.dmsc`` ->
``/shop/cart``); the destination name is that prefix plus the URL path's
components (``/shop/cart/items/3``), or the prefix alone when the path would
break the name limits. Each TCP connection is one DMSC flow (source
``<proxy app name>/c<n>``), so a keep-alive connection sticks to one service
instance while separate connections spread.

Payload format (both directions, one DMSC message each, fragmented by the
client library when large): an HTTP/1.1 message as on the wire --

* request:  ``METHOD SP origin-form-target SP HTTP/1.1 CRLF``, header lines
  ``Name: value CRLF``, ``CRLF``, body;
* response: ``HTTP/1.1 SP status SP reason CRLF``, headers, ``CRLF``, body.

The body is always everything after the empty line: never chunked, no
trailers. Hop-by-hop headers (Connection and the headers it lists,
Keep-Alive, Transfer-Encoding, TE, Trailer, Upgrade, Proxy-*) are removed and
``Content-Length`` is set to the body length -- except in responses that have
no body by definition (to HEAD, 1xx, 204, 304), where the origin's
Content-Length is kept. The Host header travels unchanged.

Errors: unknown host -> 400; NACK -> 502 naming the reason (503 for
RATE_LIMITED); timeout -> 504; an empty or malformed answer -> 502.
"""
from __future__ import annotations

import argparse
import io
import itertools
import logging
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Tuple
from urllib.parse import unquote_to_bytes, urlsplit

from .client import CallTimeout, Client, DmscError, NackError
from ..dataplane.hostmap import HostMap
from ..dataplane.names import InvalidName, Name

log = logging.getLogger("dmsc.http_proxy")

HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"))
Headers = List[Tuple[str, str]]


# ---------------------------------------------------------------------------
# Payload format
# ---------------------------------------------------------------------------

@dataclass
class HttpRequest:
    method: str
    target: str  # origin form: /path?query
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        return _get(self.headers, name)


@dataclass
class HttpResponse:
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        return _get(self.headers, name)


def _get(headers: Headers, name: str) -> Optional[str]:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def end_to_end(headers: Headers, keep_length: bool = False) -> Headers:
    """Drop hop-by-hop headers, those named by Connection, and Content-Length (unless kept)."""
    listed = set()
    for k, v in headers:
        if k.lower() == "connection":
            listed.update(t.strip().lower() for t in v.split(",") if t.strip())
    out = []
    for k, v in headers:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in listed or (lk == "content-length" and not keep_length):
            continue
        out.append((k, v))
    return out


def _head_lines(start: str, headers: Headers) -> bytes:
    lines = [start] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_request(req: HttpRequest) -> bytes:
    headers = end_to_end(req.headers)
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(req.body))))
    return _head_lines(f"{req.method} {req.target} HTTP/1.1", headers) + req.body


def bodyless(status: int, method: str = "") -> bool:
    """Responses that carry no body whatever their Content-Length says (RFC 9112 6.3)."""
    return method == "HEAD" or 100 <= status < 200 or status in (204, 304)


def encode_response(resp: HttpResponse, method: str = "") -> bytes:
    if bodyless(resp.status, method):
        headers, body = end_to_end(resp.headers, keep_length=True), b""
    else:
        headers, body = end_to_end(resp.headers), resp.body
        headers.append(("Content-Length", str(len(body))))
    reason = resp.reason or _REASONS.get(resp.status, "")
    return _head_lines(f"HTTP/1.1 {resp.status} {reason}", headers) + body


def _split(data: bytes) -> Tuple[str, Headers, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise ValueError("no end of header block")
    head = data[:end].decode("latin-1").split("\r\n")
    headers: Headers = []
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line!r}")
        headers.append((name, value.strip()))
    return head[0], headers, data[end + 4:]


def decode_request(data: bytes) -> HttpRequest:
    """Parse a request payload; ValueError if malformed."""
    start, headers, body = _split(data)
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0]:
        raise ValueError(f"malformed request line {start!r}")
    return HttpRequest(parts[0], parts[1], headers, body)


def decode_response(data: bytes) -> HttpResponse:
    """Parse a response payload; ValueError if malformed."""
    start, headers, body = _split(data)
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not re.fullmatch(r"\d{3}", parts[1]):
        raise ValueError(f"malformed status line {start!r}")
    return HttpResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body)


def error_response(status: int, message: str) -> HttpResponse:
    body = (message.rstrip("\n") + "\n").encode()
    return HttpResponse(status, _REASONS.get(status, ""),
                        [("Content-Type", "text/plain; charset=utf-8")], body)


def send_whole_response(handler: BaseHTTPRequestHandler, status: int, headers: Headers,
                        body: bytes = b"", reason: Optional[str] = None, *,
                        bare: bool = False) -> None:
    """Status line, headers and body of a response in one write.

    BaseHTTPRequestHandler writes the head at end_headers() and the body after it:
    two writes, and unless TCP_NODELAY is set the second waits (Nagle) until the
    client acknowledges the first, which a keep-alive client delays by about 40 ms
    (delayed ACK). Here the head is collected and leaves with the body. With bare,
    no Server and Date headers (send_response_only)."""
    real, head = handler.wfile, io.BytesIO()
    handler.wfile = head
    try:
        (handler.send_response_only if bare else handler.send_response)(status, reason)
        for k, v in headers:
            handler.send_header(k, v)
        handler.end_headers()
    finally:
        handler.wfile = real
    real.write(head.getvalue() + body)


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


# ---------------------------------------------------------------------------
# Mapping a request to a destination
# ---------------------------------------------------------------------------

def destination(prefix: Name, target: str) -> Name:
    """prefix + the path's components, or the prefix alone if that breaks a name limit."""
    path = urlsplit(target).path
    comps = [unquote_to_bytes(s) for s in path.split("/") if s]
    try:
        return Name(prefix.components + tuple(comps))
    except InvalidName:
        return prefix


def trace_from_traceparent(value: Optional[str]) -> Optional[bytes]:
    """W3C traceparent ``00-<32 hex>-<16 hex>-<2 hex>`` -> the 25-byte TRACE_CONTEXT value."""
    if not value:
        return None
    m = re.fullmatch(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", value.strip())
    if not m:
        return None
    return bytes.fromhex(m.group(1) + m.group(2) + m.group(3))


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------

class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: Tuple[str, int], hostmap: HostMap,
                 client_factory: Callable[[], Client], *, timeout: float = 5.0,
                 retries: int = 1, max_body: int = 16 << 20, access_log: bool = False) -> None:
        super().__init__(addr, ProxyHandler)
        self.hostmap = hostmap
        self.call_timeout = timeout
        self.retries = retries
        self.max_body = max_body
        self.access_log = access_log
        self._factory = client_factory
        self._client: Optional[Client] = None
        self._client_lock = threading.Lock()
        self.conn_ids = itertools.count(1)

    def client(self) -> Client:
        """The shared gateway attachment, re-attached if the gateway dropped it."""
        with self._client_lock:
            if self._client is None or self._client.closed:
                if self._client is not None:
                    self._client.close()
                self._client = self._factory()
            return self._client

    def close_client(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dmsc-http-proxy"
    timeout = 120  # idle keep-alive connections are closed after this
    # A response leaves in one write (send_whole_response); TCP_NODELAY as well, so that
    # no write of the standard library's (an error page from send_error) waits for an ACK.
    disable_nagle_algorithm = True
    server: ProxyServer

    def setup(self) -> None:
        super().setup()
        self.conn_id = next(self.server.conn_ids)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.access_log:
            super().log_message(format, *args)

    def _send(self, resp: HttpResponse, extra: Headers = ()) -> None:
        method = self.command
        if bodyless(resp.status, method):
            headers = end_to_end(resp.headers, keep_length=True)
            body = b""
        else:
            headers = end_to_end(resp.headers)
            headers.append(("Content-Length", str(len(resp.body))))
            body = resp.body
        headers = list(headers) + list(extra)
        if self.close_connection:
            headers.append(("Connection", "close"))
        send_whole_response(self, resp.status, headers, body, resp.reason or None, bare=True)
        self.log_request(resp.status, len(body))

    def _fail(self, status: int, message: str) -> None:
        self._send(error_response(status, message))

    def _read_body(self) -> Optional[bytes]:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        limit = self.server.max_body
        if "chunked" in te:
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers are dropped
                    return b"".join(chunks)
                total += size
                if total > limit:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _proxy(self) -> None:
        target = self.path
        host = self.headers.get("Host")
        if "://" in target and not target.startswith("/"):
            parts = urlsplit(target)
            if parts.scheme != "http":
                self.close_connection = True
                self._fail(400, f"only http:// URLs can be proxied, not {parts.scheme}://")
                return
            host = parts.netloc.rpartition("@")[2]
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._fail(400, "malformed chunked body")
            return
        if body is None:
            self.close_connection = True
            self._fail(413, f"request body over {self.server.max_body} bytes")
            return
        try:
            prefix = self.server.hostmap.lookup(host or "")
        except ValueError as exc:
            self._fail(400, f"cannot map host to a DMSC service: {exc}")
            return
        # Expect: 100-continue was answered here; the body travels complete.
        headers = [(k, v) for k, v in self.headers.items() if k.lower() != "expect"]
        if host and _get(headers, "host") is None:
            headers.insert(0, ("Host", host))
        headers.append(("X-Forwarded-For", self.client_address[0]))
        payload = encode_request(HttpRequest(self.command, target, headers, body))
        dst = destination(prefix, target)
        idempotent = self.command in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
        try:
            reply = self.server.client().request(
                dst, payload, timeout=self.server.call_timeout, retries=self.server.retries,
                flow=f"c{self.conn_id}", trace=trace_from_traceparent(self.headers.get("traceparent")),
                idempotent=idempotent)
        except NackError as exc:
            status = 503 if exc.reason_name == "RATE_LIMITED" else 502
            self._fail(status, f"DMSC network refused {dst.text}: {exc.reason_name} "
                               f"(NACK from {exc.node.text})")
            return
        except CallTimeout:
            self._fail(504, f"no answer from {dst.text} within {self.server.call_timeout}s")
            return
        except DmscError as exc:
            self._fail(502, f"DMSC error for {dst.text}: {exc}")
            return
        if not reply.payload:
            self._fail(502, f"empty answer from {reply.src.text} for {dst.text} "
                            "(the service's handler failed)")
            return
        try:
            resp = decode_response(reply.payload)
        except ValueError as exc:
            self._fail(502, f"malformed HTTP answer from {reply.src.text}: {exc}")
            return
        self._send(resp, [("X-DMSC-Instance", reply.src.text)])

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _proxy

    def do_CONNECT(self) -> None:
        self.close_connection = True
        self._fail(405, "CONNECT is not supported by the DMSC HTTP proxy")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_hostport(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class StopFlag:
    """Set by SIGTERM/SIGINT; polled by the main loop (a signal handler must not block)."""

    def __init__(self) -> None:
        self.set = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.set = True


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m forwarder.apps.http_proxy",
                                 description="HTTP/1.1 proxy into DMSC services (*.dmsc hosts).")
    ap.add_argument("--socket", required=True, help="the Service Gateway's local socket")
    ap.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (port 0: any)")
    ap.add_argument("--map", action="append", default=[], metavar="HOST=PREFIX",
                    help="explicit host to prefix mapping (repeatable)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt")
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--mtu", type=int, default=1500, help="path MTU used to fragment")
    ap.add_argument("--max-body", type=int, default=16 << 20)
    ap.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        hostmap = HostMap.from_args(args.map)
        addr = parse_hostport(args.listen)
    except ValueError as exc:
        ap.error(str(exc))

    def factory() -> Client:
        return Client(args.socket, mtu=args.mtu, timeout=args.timeout, retries=args.retries)

    stop = StopFlag()
    try:
        server = ProxyServer(addr, hostmap, factory, timeout=args.timeout,
                             retries=args.retries, max_body=args.max_body,
                             access_log=args.access_log)
    except OSError as exc:
        print(f"http_proxy: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    try:
        name = server.client().name.text
    except DmscError as exc:
        server.server_close()
        print(f"http_proxy: {exc}", file=sys.stderr)
        return 1
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                          name="http-proxy", daemon=True)
    th.start()
    host, port = server.server_address[:2]
    print(f"http_proxy: listening on http://{host}:{port} -> DMSC via {args.socket} "
          f"as {name}", flush=True)
    while not stop.set:
        time.sleep(0.2)
    server.shutdown()
    server.server_close()
    server.close_client()
    print("http_proxy: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
