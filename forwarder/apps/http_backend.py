"""The Service Gateway's server-side adapter: serve a prefix with a plain HTTP server.

Run: ``python -m forwarder.apps.http_backend --socket PATH --prefix /shop/cart
--backend 127.0.0.1:9000 [--cost N]``

It registers the prefix at the gateway (flag HTTP, option ``{"http":
backend}``) and turns every REQUEST -- an HTTP request message in the format
documented in forwarder.apps.http_proxy -- into a request to the backend over a
small pool of keep-alive connections. The backend's response is de-chunked,
stripped of hop-by-hop headers, given a Content-Length and sent back as the
DATA payload. The backend being down is answered with an HTTP 502 message (the
DMSC exchange itself worked; the HTTP client sees why it failed), a slow
backend with 504. SIGTERM unregisters the prefix, lets requests in progress
finish, and exits.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import queue
import socket
import sys
import time
from typing import List, Optional, Tuple

from .client import Client, DmscError
from .http_proxy import (HttpResponse, StopFlag, decode_request, encode_response, end_to_end,
                         error_response, parse_hostport)
from ..dataplane.wire import Packet

log = logging.getLogger("dmsc.http_backend")

# Errors meaning "the pooled connection was stale", worth one retry on a fresh one.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          http.client.CannotSendRequest, http.client.BadStatusLine)


class _Connection(http.client.HTTPConnection):
    """TCP_NODELAY on every backend connection: http.client sends a request's headers
    and its body in two writes, and a body waiting (Nagle) for the backend to acknowledge
    the headers waits for a delayed ACK, ~40 ms. (http.client sets it too, but not as a
    documented promise.)"""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BackendPool:
    """Keep-alive HTTP/1.1 connections to one backend, shared by the handler threads."""

    def __init__(self, host: str, port: int, size: int = 8, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._idle: "queue.LifoQueue[http.client.HTTPConnection]" = queue.LifoQueue(maxsize=size)

    def _get(self) -> Tuple[http.client.HTTPConnection, bool]:
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            return _Connection(self.host, self.port, timeout=self.timeout), False

    def _put(self, conn: http.client.HTTPConnection) -> None:
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def _once(self, conn: http.client.HTTPConnection, method: str, target: str,
              headers: List[Tuple[str, str]], body: bytes) -> HttpResponse:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders(body if body else None)
        resp = conn.getresponse()
        data = resp.read()  # de-chunks
        out = HttpResponse(resp.status, resp.reason, list(resp.getheaders()), data)
        if resp.will_close:
            conn.close()
        else:
            self._put(conn)
        return out

    def forward(self, method: str, target: str, headers: List[Tuple[str, str]],
                body: bytes) -> HttpResponse:
        """Send one request; one retry on a fresh connection if a reused one was stale."""
        headers = end_to_end(headers)
        if body or method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        conn, reused = self._get()
        try:
            return self._once(conn, method, target, headers, body)
        except _STALE:
            conn.close()
            if not reused:
                raise
        except BaseException:
            conn.close()
            raise
        conn = _Connection(self.host, self.port, timeout=self.timeout)
        try:
            return self._once(conn, method, target, headers, body)
        except BaseException:
            conn.close()
            raise


class HttpBackendHandler:
    """The Client.serve handler: DMSC request payload -> backend -> DATA payload."""

    def __init__(self, pool: BackendPool, max_response: int = 16 << 20) -> None:
        self.pool = pool
        self.backend = f"{pool.host}:{pool.port}"
        self.max_response = max_response  # the caller's reassembly buffer is bounded too

    def __call__(self, payload: bytes, request: Packet) -> bytes:
        try:
            req = decode_request(payload)
        except ValueError as exc:
            return encode_response(error_response(400, f"malformed HTTP request payload: {exc}"))
        try:
            resp = self.pool.forward(req.method, req.target, req.headers, req.body)
        except socket.timeout:
            resp = error_response(504, f"backend {self.backend} did not answer within "
                                       f"{self.pool.timeout}s")
        except (OSError, http.client.HTTPException) as exc:
            resp = error_response(502, f"backend {self.backend} unreachable: "
                                       f"{type(exc).__name__}: {exc}")
        if len(resp.body) > self.max_response:
            resp = error_response(502, f"backend {self.backend} answered {len(resp.body)} bytes; "
                                       f"at most {self.max_response} fit a DMSC message here")
        return encode_response(resp, req.method)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m forwarder.apps.http_backend",
                                 description="Serve a DMSC prefix with a plain HTTP server.")
    ap.add_argument("--socket", required=True, help="the Service Gateway's local socket")
    ap.add_argument("--prefix", required=True, help="service prefix to register, e.g. /shop/cart")
    ap.add_argument("--backend", required=True, help="HOST:PORT of the HTTP server")
    ap.add_argument("--cost", type=int, default=0)
    ap.add_argument("--identity", help="SPA service identity file (spa_tool issue --new-service)")
    ap.add_argument("--workers", type=int, default=8, help="concurrent requests")
    ap.add_argument("--pool", type=int, default=8, help="idle keep-alive connections kept")
    ap.add_argument("--timeout", type=float, default=10.0, help="backend timeout, seconds")
    ap.add_argument("--mtu", type=int, default=1500, help="path MTU used to fragment")
    ap.add_argument("--max-response", type=int, default=16 << 20,
                    help="larger backend responses are answered with 502")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        host, port = parse_hostport(args.backend)
    except ValueError as exc:
        ap.error(str(exc))
    pool = BackendPool(host, port, size=args.pool, timeout=args.timeout)
    stop = StopFlag()
    try:
        identity = None
        if args.identity:
            from ..spa import ServiceIdentity
            identity = ServiceIdentity.load(args.identity)
        client = Client(args.socket, mtu=args.mtu, identity=identity)
        client.serve(args.prefix, HttpBackendHandler(pool, args.max_response), cost=args.cost,
                     workers=args.workers, http_backend=args.backend)
    except (DmscError, ValueError) as exc:
        print(f"http_backend: {exc}", file=sys.stderr)
        return 1
    print(f"http_backend: serving {args.prefix} from http://{args.backend} via {args.socket} "
          f"as {client.name.text}", flush=True)
    while not stop.set and not client.closed:
        time.sleep(0.2)
    lost = not stop.set
    client.close()
    pool.close()
    if lost:
        print("http_backend: the Service Gateway closed the connection", file=sys.stderr)
        return 1
    print("http_backend: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
