"""The demo shop's microservices.

Run one per process, inside a Service Gateway's host:

    python -m topologies.shop.services --app catalog --socket SG/app.sock --node h3 \
        [--identity spa/services/catalog-h3.key]
    python -m topologies.shop.services --app cart --http 127.0.0.1:9001 --node h5

* ``frontend`` and ``catalog`` use the client library (Client.serve on
  /shop/frontend, /shop/catalog). They answer both raw DMSC requests (JSON)
  and HTTP-format requests (what the SG's HTTP proxy sends for
  ``curl -x SG_PROXY http://catalog.shop.dmsc/``), in the same format.
* ``cart`` and ``payment`` are plain HTTP servers (http.server); the SG
  publishes them with ``http_services`` (its http_backend adapter), so they
  know nothing about DMSC.
* ``frontend`` calls catalog over DMSC (JSON) and cart and payment over DMSC
  with HTTP-format payloads, exactly as the HTTP proxy would.

A client-library service reconnects and registers again when its gateway
restarts, so ``dmsc fail`` / ``dmsc restore`` of a node brings it back.
Every answer names the instance that produced it (``"instance": "/node/h3"``),
which is how the lab sees anycast and policy at work.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from forwarder.apps.client import Client, DmscError, NackError
from forwarder.apps.http_proxy import (HttpRequest, HttpResponse, decode_request, decode_response,
                                  encode_request, encode_response, send_whole_response)
from forwarder.dataplane.wire import Packet


log = logging.getLogger("shop")

CATALOG = [
    {"id": 1, "name": "name-routed teapot", "price": 12.5},
    {"id": 2, "name": "prefix-matched mug", "price": 7.0},
    {"id": 3, "name": "anycast spoon", "price": 3.2},
]


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


class Shop:
    """State and handlers of one instance."""

    def __init__(self, app: str, node: str, prefix: str = "") -> None:
        self.app = app
        self.depth = len([c for c in (prefix or f"/shop/{app}").split("/") if c])
        self.instance = f"/node/{node}"
        self.client: Optional[Client] = None
        self.carts: Dict[str, list] = {}
        self.lock = threading.Lock()
        self.served = 0

    # ------------------------------------------------------- client-library apps
    def handle(self, payload: bytes, request: Packet) -> bytes:
        """Client.serve handler: JSON in/out, or HTTP message in/out (via the HTTP proxy)."""
        http: Optional[HttpRequest] = None
        if payload[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE"):
            try:
                http = decode_request(payload)
            except ValueError:
                http = None
        path = "/" + "/".join(c.decode(errors="replace") for c in request.dst.components[self.depth:])
        body = http.body if http is not None else payload
        try:
            args = json.loads(body) if body.strip() else {}
            if not isinstance(args, dict):
                args = {"value": args}
        except ValueError:
            args = {"text": body.decode(errors="replace")}
        with self.lock:
            self.served += 1
        status, result = 200, None
        try:
            if self.app == "catalog":
                result = self.catalog(path)
            elif self.app == "frontend":
                result = self.frontend(path, args)
            else:
                result = {"echo": args, "path": path}
        except Exception as exc:  # reported to the caller, not a crash of the service
            log.exception("request %s failed", request.dst.text)
            status, result = 500, {"error": f"{type(exc).__name__}: {exc}"}
        result = dict(result or {})
        result.setdefault("service", self.app)
        result.setdefault("instance", self.instance)
        if http is None:
            return _json(result)
        return encode_response(HttpResponse(status, "", [("Content-Type", "application/json")],
                                            _json(result) + b"\n"), http.method)

    def catalog(self, path: str) -> dict:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "items":
            item = next((i for i in CATALOG if str(i["id"]) == parts[1]), None)
            return {"item": item} if item else {"error": f"no item {parts[1]}"}
        return {"items": CATALOG}

    def _http_call(self, name: str, method: str, target: str, body: Optional[dict] = None
                   ) -> Tuple[int, dict]:
        """Call a plain-HTTP service over DMSC, with the HTTP proxy's payload format."""
        host = ".".join(reversed([c for c in name.split("/") if c])) + ".dmsc"
        data = _json(body) if body is not None else b""
        req = HttpRequest(method, target, [("Host", host), ("Content-Type", "application/json")], data)
        raw = self.client.call(name + target.split("?")[0], encode_request(req), timeout=2.0,
                               retries=2)
        resp = decode_response(raw)
        try:
            return resp.status, json.loads(resp.body or b"{}")
        except ValueError:
            return resp.status, {"text": resp.body.decode(errors="replace")}

    def frontend(self, path: str, args: dict) -> dict:
        user = str(args.get("user", "guest"))
        calls: Dict[str, str] = {}
        cat = json.loads(self.client.call("/shop/catalog", b"", timeout=2.0, retries=2))
        calls["catalog"] = cat.get("instance")
        out: Dict[str, object] = {"user": user, "calls": calls}
        if path.startswith("/checkout"):
            item = args.get("item", 1)
            st, cart = self._http_call("/shop/cart", "POST", f"/items?user={user}", {"item": item})
            calls["cart"] = cart.get("instance")
            if st != 200:
                raise RuntimeError(f"cart answered {st}: {cart}")
            total = sum(i["price"] for i in CATALOG if i["id"] in cart.get("items", []))
            st, pay = self._http_call("/shop/payment", "POST", "/pay", {"user": user, "amount": total})
            calls["payment"] = pay.get("instance")
            if st != 200:
                raise RuntimeError(f"payment answered {st}: {pay}")
            out.update(order={"items": cart.get("items"), "total": round(total, 2),
                              "payment": pay.get("status")})
        else:
            out["items"] = cat.get("items")
        return out

    # -------------------------------------------------------- plain HTTP apps
    def http_handler(self) -> Callable:
        shop = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Each answer leaves in one write, and TCP_NODELAY is set: a keep-alive client
            # (the SG's http_backend pool, wrk) would otherwise see every response's body
            # held back ~40 ms behind its headers (Nagle waiting for a delayed ACK).
            disable_nagle_algorithm = True

            def log_message(self, fmt, *a):
                log.debug("http " + fmt, *a)

            def _answer(self, status: int, obj: dict) -> None:
                obj = dict(obj)
                obj.setdefault("service", shop.app)
                obj.setdefault("instance", shop.instance)
                data = _json(obj) + b"\n"
                send_whole_response(self, status, [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(data)))], data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    v = json.loads(raw) if raw.strip() else {}
                    return v if isinstance(v, dict) else {"value": v}
                except ValueError:
                    return {}

            def do_GET(self):
                with shop.lock:
                    shop.served += 1
                url = urlsplit(self.path)
                user = parse_qs(url.query).get("user", ["guest"])[-1]
                if shop.app == "cart":
                    with shop.lock:
                        items = list(shop.carts.get(user, []))
                    self._answer(200, {"user": user, "items": items})
                elif shop.app == "payment":
                    self._answer(200, {"status": "ready"})
                else:
                    self._answer(200, {"path": url.path})

            def do_POST(self):
                with shop.lock:
                    shop.served += 1
                url = urlsplit(self.path)
                body = self._body()
                user = parse_qs(url.query).get("user", [str(body.get("user", "guest"))])[-1]
                if shop.app == "cart":
                    with shop.lock:
                        cart = shop.carts.setdefault(user, [])
                        cart.append(body.get("item", 1))
                        items = list(cart)
                    self._answer(200, {"user": user, "items": items})
                elif shop.app == "payment":
                    amount = body.get("amount", 0)
                    if not isinstance(amount, (int, float)) or amount < 0:
                        self._answer(400, {"status": "refused", "error": "bad amount"})
                    else:
                        self._answer(200, {"status": "paid", "user": user, "amount": amount})
                else:
                    self._answer(200, {"echo": body, "path": url.path})
        return Handler


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        signal.signal(signal.SIGINT, lambda *_: self.event.set())


def serve_client(shop: Shop, socket_path: str, prefix: str, identity: Optional[str],
                 stop: _Stop) -> int:
    """Attach, register, serve; reattach whenever the gateway goes away, until SIGTERM."""
    announced = False
    ident = None
    if identity:
        from forwarder.spa import ServiceIdentity
        ident = ServiceIdentity.load(identity)
    while not stop.event.is_set():
        try:
            client = Client(socket_path, identity=ident, timeout=2.0)
        except DmscError as exc:
            if not announced:
                log.info("waiting for the gateway: %s", exc)
                announced = True
            stop.event.wait(0.2)
            continue
        try:
            shop.client = client
            client.serve(prefix, shop.handle, workers=8)
            log.info("serving %s as %s (SPA proof %s)", prefix, client.name.text,
                     "not asked by the gateway" if not client.nonce else
                     "sent" if ident is not None else "not available")
            print(f"shop: {shop.app} serving {prefix} on {shop.instance} as {client.name.text}",
                  flush=True)
            while not stop.event.is_set() and not client.closed:
                stop.event.wait(0.2)
        except (DmscError, NackError) as exc:
            log.warning("registration of %s failed: %s", prefix, exc)
            stop.event.wait(0.5)
        finally:
            lost = not stop.event.is_set()
            client.close(drain=0.5)
            if lost:
                log.warning("gateway connection lost; reattaching")
                announced = False
    return 0


def serve_http(shop: Shop, listen: str, stop: _Stop) -> int:
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), shop.http_handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"shop: {shop.app} HTTP server on http://{listen} ({shop.instance})", flush=True)
    stop.event.wait()
    server.shutdown()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m topologies.shop.services", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", required=True, choices=["frontend", "catalog", "cart", "payment", "echo"])
    ap.add_argument("--node", required=True, help="the SG's node name (h3), for answers")
    ap.add_argument("--socket", help="the SG's local socket (client-library apps)")
    ap.add_argument("--prefix", help="prefix to serve (default /shop/<app>)")
    ap.add_argument("--identity", help="SPA service key file (NAME.key with NAME.auth beside)")
    ap.add_argument("--http", metavar="HOST:PORT", help="run as a plain HTTP server here")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    shop = Shop(args.app, args.node, args.prefix or f"/shop/{args.app}")
    stop = _Stop()
    if args.http:
        return serve_http(shop, args.http, stop)
    if not args.socket:
        ap.error("--socket is required unless --http is given")
    return serve_client(shop, args.socket, args.prefix or f"/shop/{args.app}", args.identity, stop)


if __name__ == "__main__":
    sys.exit(main())
