"""Plain TCP programs for pods, with no DMSC code in them (as an unmodified pod's):

* ``http``: a threaded HTTP/1.1 keep-alive server. ``GET /who`` answers its name,
  ``GET /blob`` a fixed pseudo-random body (``--blob-mb``), ``POST`` any path the
  SHA-256 of what it received; every answer carries ``X-Served-By``.
* ``serve`` / ``connect``: one long-lived TCP connection, watched. The client
  keeps one connection open and reports every answered message as a JSON line,
  which shows what happens to an *established* connection when the network under
  it changes (an SR fails on or off its path, the serving instance's node dies).
  The tests and the failure experiment read those lines, never a log sentence.

    python -m topologies.podprobe http --port 80 --name b1 [--blob-mb 16]
    python -m topologies.podprobe serve --port 7000 --name b1
    python -m topologies.podprobe connect HOST --port 7000 [--interval 0.02]
    python -m topologies.podprobe dial HOST --port 7000 [--interval 0.05]

* ``dial``: a new connection every ``--interval`` s (connect, one echo, close),
  each reported as a JSON line: ``{"event": "dial", "ok": true, "peer": "b1",
  "ms": 1.2, "t": ...}`` or ``{"event": "dial", "ok": false, "error":
  "EHOSTUNREACH", ...}``: when new connections fail and when they work again.

Client lines (stdout, one JSON object each, flushed):
    {"event": "connected", "t": ..., "local": 40112}
    {"event": "echo", "n": 17, "t": ..., "rtt_us": 412, "peer": "b1"}
    {"event": "error", "t": ..., "error": "ECONNRESET", "after": 17}
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import random
import socket
import sys
import threading
import time
from typing import List, Optional


def serve(port: int, name: str) -> None:
    """Echo every line back, prefixed with this server's name (one thread per connection)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)

    def one(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rf:
            for line in rf:
                conn.sendall(name.encode() + b" " + line)

    while True:
        c, _ = srv.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def blob(mb: float) -> bytes:
    """The body of GET /blob: the same bytes for the same size, everywhere."""
    return random.Random(1).randbytes(int(mb * 1024 * 1024))


def http(port: int, name: str, blob_mb: float) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    body_blob = blob(blob_mb)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Served-By", name)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/blob"):
                self._send(body_blob, "application/octet-stream")
            else:
                self._send(name.encode() + b"\n")

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length", "0"))
            h = hashlib.sha256()
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 16))
                if not chunk:
                    break
                h.update(chunk)
                n -= len(chunk)
            self._send(h.hexdigest().encode() + b"\n")

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def _emit(**fields) -> None:
    fields.setdefault("t", round(time.time(), 6))
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def connect(host: str, port: int, interval: float, timeout: float) -> int:
    """Send a numbered line every `interval` s and wait for its echo. Exits on the
    first error, saying which (a reset, a timeout after `timeout` s of silence)."""
    n = 0
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rf = s.makefile("rb")
        _emit(event="connected", local=s.getsockname()[1])
        while True:
            t0 = time.monotonic()
            s.sendall(b"%d\n" % n)
            line = rf.readline()
            if not line:
                raise ConnectionResetError(errno.ECONNRESET, "closed by the peer")
            peer, _, echoed = line.decode().strip().partition(" ")
            if echoed != str(n):
                raise ValueError(f"echo {echoed!r} for {n}")
            _emit(event="echo", n=n, rtt_us=int((time.monotonic() - t0) * 1e6), peer=peer)
            n += 1
            time.sleep(interval)
    except (OSError, ValueError) as exc:
        code = errno.errorcode.get(getattr(exc, "errno", None) or 0, "")
        if isinstance(exc, socket.timeout):
            code = "ETIMEDOUT"
        _emit(event="error", error=code or type(exc).__name__, detail=str(exc), after=n)
        return 1


def dial(host: str, port: int, interval: float, timeout: float) -> int:
    """New connections, one after another, until killed."""
    import ipaddress
    while True:
        t0 = time.monotonic()
        try:
            addr = host if _is_ip(host, ipaddress) else socket.gethostbyname(host)
            with socket.create_connection((addr, port), timeout=timeout) as s:
                s.sendall(b"0\n")
                line = s.makefile("rb").readline()
                if not line:
                    raise ConnectionResetError(errno.ECONNRESET, "closed by the peer")
                peer = line.decode().split(" ", 1)[0]
            _emit(event="dial", ok=True, peer=peer, ms=round((time.monotonic() - t0) * 1000, 2))
        except (OSError, ValueError) as exc:
            code = errno.errorcode.get(getattr(exc, "errno", None) or 0, "")
            if isinstance(exc, socket.timeout):
                code = "ETIMEDOUT"
            if isinstance(exc, socket.gaierror):
                code = "NAME_UNRESOLVED"
            _emit(event="dial", ok=False, error=code or type(exc).__name__,
                  ms=round((time.monotonic() - t0) * 1000, 2))
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))


def _is_ip(host: str, ipaddress) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def read_events(path: str) -> List[dict]:
    """The client's lines so far (a half-written last line is left for next time)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n") and line.startswith("{"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m topologies.podprobe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("http", help="HTTP/1.1 keep-alive server")
    h.add_argument("--port", type=int, default=80)
    h.add_argument("--name", default=socket.gethostname(), help="what GET /who answers")
    h.add_argument("--blob-mb", type=float, default=16.0, help="size of GET /blob")
    s = sub.add_parser("serve", help="echo server")
    s.add_argument("--port", type=int, default=7000)
    s.add_argument("--name", default=socket.gethostname(), help="prefix of every echo")
    c = sub.add_parser("connect", help="one connection, an echo every --interval s")
    c.add_argument("host")
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("--interval", type=float, default=0.02)
    c.add_argument("--timeout", type=float, default=30.0,
                   help="give up after this many seconds without an answer")
    d = sub.add_parser("dial", help="a new connection every --interval s, each reported")
    d.add_argument("host")
    d.add_argument("--port", type=int, default=7000)
    d.add_argument("--interval", type=float, default=0.05)
    d.add_argument("--timeout", type=float, default=1.0, help="per connection, seconds")
    a = ap.parse_args(argv)
    if a.cmd == "dial":
        return dial(a.host, a.port, a.interval, a.timeout)
    if a.cmd == "http":
        http(a.port, a.name, a.blob_mb)
        return 0
    if a.cmd == "serve":
        serve(a.port, a.name)
        return 0
    return connect(a.host, a.port, a.interval, a.timeout)


if __name__ == "__main__":
    sys.exit(main())
