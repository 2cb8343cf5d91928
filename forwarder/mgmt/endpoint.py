"""Management endpoint: JSON (and Prometheus text) over HTTP on a Unix or TCP socket.

A Unix socket in the node's work folder is reachable from the root namespace
whatever network namespace the forwarder lives in, which is what `forwarder.ctl`
uses; TCP serves the SCSC and scrapers on the management network.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from ..dataplane.names import InvalidName, Name
from ..dataplane.rib import Route
from ..dataplane.strategy import Rule
from ..dataplane.wire import HopRecord, NackBody, PacketType, TlvType

log = logging.getLogger("dmsc.mgmt")
TRACE_MAX_HOPS = 16  # how far a trace goes unless asked (ctl trace -m, the lab's dmsc trace)


class BadRequest(ValueError):
    """Answered with 400 and the message."""


class Views:
    """Read and change the daemon's state; every method runs on the loop thread."""

    def __init__(self, daemon) -> None:
        self.d = daemon

    @property
    def core(self):
        return self.d.core

    def status(self) -> dict:
        self.d.sync_kernel()
        core, now = self.core, time.time()
        faces = []
        for f in core.faces:
            io = self.d.io.get(f.face_id)
            faces.append({"id": f.face_id, "name": f.name, "kind": f.kind, "up": f.up, "mtu": f.mtu,
                          "app": f.app_name.text if f.app_name else None,
                          "peer_mac": io.peer_mac.hex(":") if hasattr(io, "peer_mac") else None,
                          "queued": getattr(io, "queued", 0)})
        return {"node": core.name.text, "roles": sorted(core.roles), "pid": os.getpid(),
                "uptime_s": round(now - self.d.started, 3), "faces": faces,
                "fib_entries": len(core.fib), "rib_routes": len(core.rib),
                "flows": len(core.flows), "rules": len(core.strategy),
                "fib_changed_at": core.fib_changed_at, "fib_digest": self.fib_digest(),
                "local_prefixes": sorted({r.prefix.text for r in core.local_prefixes()}),
                "drops": dict(core.counters.drops),
                "face_events": dict(self.d.face_events),
                "events": self.d.events.summary(),
                "dataplane": self.dataplane(),
                "gateway": self.d.pods.status(now) if self.d.pods is not None else None,
                "routing": self.routing_summary()}

    def dataplane(self) -> dict:
        """Which data plane runs and why; with the kernel fast path, its state."""
        out = dict(self.d.dataplane)
        if self.d.offload is not None:
            out.update(self.d.offload.status())
        return out

    def routing_summary(self) -> Optional[dict]:
        r = self.d.router
        if r is None:
            return None
        return {"lsdb_digest": r.lsdb_digest(), "last_change": r.last_change,
                "neighbors": r.neighbors(), "stats": dict(r.stats),
                "lsa_queue": self.d.lsa_queue_len(), "lsa_queue_max": self.d.lsa_queue_max,
                "lsa_queue_merged": self.d.lsa_queue_merged,
                "slow_loop_turns": self.d.slow_turns}

    def routing(self) -> dict:
        r = self.d.router
        if r is None:
            raise BadRequest("routing is not enabled on this node (config: routing.enabled)")
        return {"summary": self.routing_summary(), "lsdb": r.lsdb()}

    def fib_digest(self) -> str:
        """Digest of the FIB's prefixes, so a poller can tell when nodes agree on reachability."""
        h = hashlib.sha256()
        for e in self.core.fib.entries():
            h.update(e.prefix.wire + b"\0")
        return h.hexdigest()[:16]

    def fib(self) -> dict:
        return {"entries": [self.entry(e) for e in self.core.fib.entries()]}

    def entry(self, e) -> dict:
        d = e.to_json()
        for nh in d["nexthops"]:
            f = self.core.faces.get(nh["face"])
            nh["face_name"] = f.name if f else None
            nh["up"] = bool(f and f.up)
        return d

    def rib(self) -> dict:
        return {"routes": [self._route(r) for r in self.core.rib]}

    def _route(self, r: Route) -> dict:
        d = r.to_json()
        f = self.core.faces.get(r.face_id)
        d["face_name"] = f.name if f else None
        return d

    def flows(self) -> dict:
        self.d.sync_kernel()
        now = time.time()
        out = []
        for e in self.core.flows.entries():
            d = e.to_json(now)
            f = self.core.faces.get(e.face_id)
            d["face_name"] = f.name if f else None
            out.append(d)
        conns = [c.to_json(now) for c in self.d.pods.gateway.conns] if self.d.pods else []
        return {"flows": out, "idle_timeout_s": self.core.flows.idle_timeout,
                "connections": conns}

    def strategy(self) -> dict:
        return {"rules": [r.to_json() for r in self.core.strategy.rules()]}

    def counters(self) -> dict:
        self.d.sync_kernel()
        names = {f.face_id: f.name for f in self.core.faces}
        d = self.core.counters.to_json(names)
        d["tx_errors"] = dict(self.d.tx_errors)
        if self.d.pods is not None:
            d["l4"] = self.l4_counters()
        return d

    def l4_counters(self) -> dict:
        """The pods' carried connections: opened, closed, expired, evicted, open now;
        packets and bytes each way (the kernel's included); what the gateway refused."""
        gw = self.d.pods.gateway
        conns = list(gw.conns)
        return {**gw.conns.stats, "open": len(conns),
                "packets_from_pods": sum(c.packets_from_pod for c in conns),
                "packets_to_pods": sum(c.packets_to_pod for c in conns),
                "bytes_from_pods": sum(c.bytes_from_pod for c in conns),
                "bytes_to_pods": sum(c.bytes_to_pod for c in conns),
                "refused": dict(gw.drops), "sent_to_pods": dict(gw.sent_to_pods),
                "dns": dict(self.d.pods.dns_answers)}

    def metrics(self) -> str:
        self.d.sync_kernel()
        names = {f.face_id: f.name for f in self.core.faces}
        text = self.core.counters.prometheus(self.core.name.text, names)
        if self.d.pods is not None:
            node = self.core.name.text
            l4 = self.l4_counters()
            lines = [f'dmsc_l4_connections{{node="{node}",state="{k}"}} {l4[k]}'
                     for k in ("opened", "closed", "expired", "evicted", "open")]
            lines += [f'dmsc_l4_{k}{{node="{node}"}} {l4[k]}'
                      for k in ("packets_from_pods", "packets_to_pods", "bytes_from_pods",
                                "bytes_to_pods")]
            lines += [f'dmsc_l4_refused{{node="{node}",reason="{r}"}} {n}'
                      for r, n in sorted(l4["refused"].items())]
            text = text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        return text

    def add_route(self, body: dict) -> dict:
        prefix = _name(body.get("prefix"))
        face = self.core.faces.by_name(str(body.get("face")))
        if face is None:
            raise BadRequest(f"no face named {body.get('face')!r}")
        try:
            route = Route(prefix, face.face_id, int(body.get("cost", 1)), int(body.get("priority", 0)),
                          str(body.get("origin", "static")), body.get("instance"))
            self.core.add_route(route, time.time())
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        return {"added": self._route(route)}

    def del_route(self, q: dict) -> dict:
        prefix = _name(q.get("prefix"))
        face = self.core.faces.by_name(str(q.get("face")))
        if face is None:
            raise BadRequest(f"no face named {q.get('face')!r}")
        ok = self.core.remove_route(prefix, q.get("origin", "static"), face.face_id, time.time(),
                                    q.get("instance"))
        if not ok:
            raise BadRequest(f"no {q.get('origin', 'static')} route {prefix} via {face.name}")
        return {"removed": prefix.text}

    def set_rule(self, body: dict) -> dict:
        try:
            rule = Rule.from_json(body)
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        self.core.set_rule(rule)
        return {"rule": rule.to_json()}

    def del_rule(self, q: dict) -> dict:
        prefix = _name(q.get("prefix"))
        if not self.core.remove_rule(prefix):
            raise BadRequest(f"no rule for {prefix}")
        return {"removed": prefix.text}


def _name(value: Any) -> Name:
    if not isinstance(value, str):
        raise BadRequest("a name is required (e.g. /shop/cart)")
    try:
        n = Name.parse(value)
    except InvalidName as exc:
        raise BadRequest(str(exc)) from None
    return n


def describe_reply(core, reply, rtt_s: float) -> dict:
    """Turn an echo reply or NACK into the JSON a ping reports."""
    if reply is None:
        return {"ok": False, "error": "timeout", "rtt_ms": round(rtt_s * 1000, 3)}
    hops = [HopRecord.decode(v) for t, v in reply.tlvs if t == TlvType.HOP_RECORD]
    hop_names = [core.names_seen.get(h.node_hash, f"#{h.node_hash:08x}") for h in hops]
    if reply.type == PacketType.NACK:
        body = NackBody.decode(reply.payload)
        return {"ok": False, "error": "nack", "reason": _reason(body.reason),
                "from": reply.src.text, "rtt_ms": round(rtt_s * 1000, 3)}
    return {"ok": True, "responder": reply.src.text, "rtt_ms": round(rtt_s * 1000, 3),
            "hops": _forward_hops(hops), "hop_records": hop_names}


def _forward_hops(hops) -> Optional[int]:
    """Forwarding hops up to the responder (records before the responder's own)."""
    for i, h in enumerate(hops):
        if h.out_face == 0xFFFF:
            return i
    return None


def _reason(code: int) -> str:
    from ..dataplane.wire import NackReason
    try:
        return NackReason(code).name.lower()
    except ValueError:
        return f"reason_{code}"


class Api:
    """HTTP routes to Views calls, executed on the daemon loop."""

    def __init__(self, daemon) -> None:
        self.d = daemon
        self.views = Views(daemon)

    def handle(self, method: str, path: str, query: dict, body: Optional[dict]) -> Tuple[int, Any]:
        v = self.views
        gets: Dict[str, Callable[[], Any]] = {
            "/status": v.status, "/fib": v.fib, "/rib": v.rib, "/flows": v.flows,
            "/strategy": v.strategy, "/counters": v.counters, "/metrics": v.metrics,
            "/routing": v.routing}
        if method == "GET" and path in gets:
            return 200, self.d.call_soon_wait(gets[path])
        if method == "GET" and path == "/events":
            try:
                since = float(query.get("since", 0))
            except ValueError:
                raise BadRequest("since must be a number of seconds since the epoch") from None
            return 200, {"events": self.d.events.recent(since, query.get("kind"))}
        if method == "GET" and path == "/lookup":
            n = _name(query.get("name"))
            return 200, self.d.call_soon_wait(lambda: self._lookup(n))
        if method == "POST" and path == "/ping":
            return 200, self.ping(body or {})
        if method == "POST" and path == "/trace":
            return 200, self.trace(body or {})
        if method == "POST" and path == "/routes":
            return 200, self.d.call_soon_wait(lambda: v.add_route(body or {}))
        if method == "DELETE" and path == "/routes":
            return 200, self.d.call_soon_wait(lambda: v.del_route(query))
        if method == "POST" and path == "/strategy":
            return 200, self.d.call_soon_wait(lambda: v.set_rule(body or {}))
        if method == "DELETE" and path == "/strategy":
            return 200, self.d.call_soon_wait(lambda: v.del_rule(query))
        return 404, {"error": f"no such endpoint: {method} {path}"}

    def _lookup(self, n: Name) -> dict:
        core = self.d.core
        e = core.fib.lookup(n)
        r = core.strategy.lookup_wire(n.wire, bytes(n.bounds()), len(n)) if len(n) else None
        return {"name": n.text, "fib": self.views.entry(e) if e else None,
                "rule": r.to_json() if r else None}

    def _echo(self, name: Name, hop_limit: int, telemetry: bool, timeout: float, size: int = 0):
        done = threading.Event()
        box: list = []

        def finished(reply, rtt):
            box.append((reply, rtt))
            done.set()
        self.d.call_soon_wait(lambda: self.d.echo(name, hop_limit, telemetry, timeout, finished, size))
        done.wait(timeout + 2.0)
        reply, rtt = box[0] if box else (None, timeout)
        return self.d.call_soon_wait(lambda: describe_reply(self.d.core, reply, rtt))

    def ping(self, body: dict) -> dict:
        name = _name(body.get("name"))
        count = _bounded(body, "count", 1, 1, 10000)
        timeout = float(body.get("timeout", 1.0))
        interval = float(body.get("interval", 0.2))
        size = _bounded(body, "size", 0, 0, 1400)
        if not 0 < timeout <= 30 or not 0 <= interval <= 10:
            raise BadRequest("timeout must be in (0, 30] s and interval in [0, 10] s")
        results = []
        for i in range(count):
            if i:
                time.sleep(interval)
            results.append(self._echo(name, self.d.core.hop_limit, True, timeout, size))
        ok = [r["rtt_ms"] for r in results if r["ok"]]
        return {"name": name.text, "sent": count, "received": len(ok), "results": results,
                "rtt_ms_min": min(ok) if ok else None, "rtt_ms_avg": sum(ok) / len(ok) if ok else None,
                "rtt_ms_max": max(ok) if ok else None}

    def trace(self, body: dict) -> dict:
        """Hop by hop, like traceroute: each hop limit expires one node further. A
        probe that gets no answer is sent again (up to `probes` per hop, as
        traceroute does), so that one lost packet on a lossy link does not end
        the trace; the hop then says how many were lost."""
        name = _name(body.get("name"))
        max_hops = _bounded(body, "max_hops", TRACE_MAX_HOPS, 1, 64)
        probes = _bounded(body, "probes", 3, 1, 10)
        timeout = float(body.get("timeout", 1.0))
        hops = []
        for hl in range(2, max_hops + 2):
            for lost in range(probes):
                r = self._echo(name, hl, False, timeout)
                if r.get("error") != "timeout":
                    break
            else:
                lost = probes
            hop = {"hop": hl - 1, "rtt_ms": r["rtt_ms"], "reached": bool(r["ok"])}
            if lost:
                hop["lost"] = lost
            if r["ok"]:
                hops.append({**hop, "node": r["responder"]})
                return {"name": name.text, "reached": True, "hops": hops}
            if r.get("reason") == "hop_limit_exceeded":
                hops.append({**hop, "node": r["from"]})
                continue
            hops.append({**hop, "node": r.get("from"), "error": r.get("reason") or r["error"]})
            return {"name": name.text, "reached": False, "hops": hops}
        return {"name": name.text, "reached": False, "hops": hops}


def _bounded(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be an integer in {lo}..{hi}")
    return v


def _make_handler(api: Api):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            if self.connection.family != socket.AF_UNIX:  # tcp:HOST:PORT
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt, *args):  # keep the forwarder log readable
            log.debug("mgmt " + fmt, *args)

        def address_string(self):
            return "mgmt"

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            body = None
            length = int(self.headers.get("Content-Length") or 0)
            try:
                if length:
                    body = json.loads(self.rfile.read(length))
                    if not isinstance(body, dict):
                        raise BadRequest("the request body must be a JSON object")
                status, result = api.handle(method, url.path, query, body)
            except BadRequest as exc:
                status, result = 400, {"error": str(exc)}
            except json.JSONDecodeError as exc:
                status, result = 400, {"error": f"invalid JSON: {exc}"}
            except Exception as exc:  # reported to the client, logged here
                log.exception("management request failed")
                status, result = 500, {"error": f"{type(exc).__name__}: {exc}"}
            if isinstance(result, str):
                data, ctype = result.encode(), "text/plain; version=0.0.4"
            else:
                data, ctype = json.dumps(result, indent=1).encode(), "application/json"
            # head and body in one write: over TCP a keep-alive client would otherwise
            # wait ~40 ms for each body (Nagle behind a delayed ACK); here TCP_NODELAY is
            # set as well, and over the Unix socket it saves a system call
            real, head = self.wfile, io.BytesIO()
            self.wfile = head
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
            finally:
                self.wfile = real
            real.write(head.getvalue() + data)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_DELETE(self):
            self._serve("DELETE")
    return Handler


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(daemon, endpoint: str) -> socketserver.BaseServer:
    """Start the management server in a thread; endpoint is unix:/path or tcp:host:port."""
    handler = _make_handler(Api(daemon))
    if endpoint.startswith("unix:"):
        path = Path(endpoint[5:])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        server = _UnixServer(str(path), handler)
    else:
        host, _, port = endpoint[4:].rpartition(":")
        server = _TcpServer((host, int(port)), handler)
    # No periodic wake-up: the thread sleeps until a request comes. The process
    # ends with server_close(), never shutdown() (which would wait for a poll).
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None},
                     name="mgmt", daemon=True).start()
    return server
