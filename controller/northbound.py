"""Northbound REST API (JSON): routes + webob served by wsgiref in a thread.

os-ken 4.x dropped Ryu's WSGI helpers (ofctl_rest's ControllerBase and the
eventlet WSGI server), so the API is a plain WSGI application: `routes` maps
the URL, `webob` parses and answers, the standard library's wsgiref serves it
(one thread per request). Reads take the state lock; intents go to the app's
event thread as an os-ken request event and come back as its reply.

Endpoints (docs/scsc.md has curl examples):
  GET    /                   index
  GET    /health             liveness, forwarder counts
  GET    /topology           forwarders, faces, links (matched by MAC)
  GET    /prefixes           prefixes, their instances, load and weights
  GET    /telemetry[?node=]  the latest per-interval rates per forwarder
  GET    /policy             per forwarder: rules, version sent, version acknowledged
  GET    /intents            the operator's intents
  POST   /intents[?wait=S]   add or withdraw an intent; wait up to S s for every ack
  DELETE /intents?kind=K&prefix=P   withdraw an intent
"""
from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import routes
import webob

from .policy import INTENT_KINDS, IntentError, check_prefix, parse_intent

log = logging.getLogger("dmsc.scsc.rest")
MAX_WAIT_S = 30.0
MAX_BODY = 1 << 20


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    # wsgiref writes a response's headers and its body apart; with TCP_NODELAY the body
    # does not wait for the client's (delayed) acknowledgement of the headers
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        log.debug("rest %s " + fmt, self.address_string(), *args)


def _json(status: int, body) -> webob.Response:
    resp = webob.Response(status=status, content_type="application/json", charset="utf-8")
    resp.text = json.dumps(body, indent=1, sort_keys=False) + "\n"
    return resp


class RestApi:
    """The WSGI application."""

    def __init__(self, app) -> None:
        self.app = app
        m = routes.Mapper()
        for path, action, methods in (
                ("/", "index", ["GET"]), ("/health", "health", ["GET"]),
                ("/topology", "topology", ["GET"]), ("/prefixes", "prefixes", ["GET"]),
                ("/telemetry", "telemetry", ["GET"]), ("/policy", "policy", ["GET"]),
                ("/intents", "intents", ["GET"]), ("/intents", "post_intent", ["POST"]),
                ("/intents", "delete_intent", ["DELETE"])):
            m.connect(None, path, action=action, conditions={"method": methods})
        self.mapper = m

    def __call__(self, environ, start_response):
        req = webob.Request(environ)
        match = self.mapper.match(environ=environ)
        if match is None:
            allowed = [meth for meth in ("GET", "POST", "DELETE")
                       if self.mapper.match(environ={**environ, "REQUEST_METHOD": meth})]
            if allowed:
                resp = _json(405, {"error": f"{req.method} not allowed on {req.path}; "
                                            f"use {', '.join(allowed)}"})
            else:
                resp = _json(404, {"error": f"no such endpoint: {req.path}", "see": "GET /"})
            return resp(environ, start_response)
        try:
            resp = getattr(self, match["action"])(req)
        except IntentError as exc:
            resp = _json(400, {"error": str(exc)})
        except Exception as exc:  # reported, logged
            log.exception("REST %s %s failed", req.method, req.path)
            resp = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
        return resp(environ, start_response)

    # ------------------------------------------------------------------ reads
    def index(self, req):
        return _json(200, {"service": "DMSC Scheduling Center (SCSC)", "endpoints": [
            "GET /health", "GET /topology", "GET /prefixes", "GET /telemetry[?node=/node/x]",
            "GET /policy", "GET /intents", "POST /intents[?wait=SECONDS]",
            "DELETE /intents?kind=KIND&prefix=PREFIX"], "intent_kinds": list(INTENT_KINDS)})

    def health(self, req):
        st = self.app.state
        with st.lock:
            n = len(st.forwarders)
            c = sum(1 for f in st.forwarders.values() if f.connected)
            ready = sum(1 for f in st.forwarders.values() if f.connected and f.ready)
            sync = sum(1 for f in st.forwarders.values()
                       if f.connected and f.ready and f.acked_version >= f.version)
        return _json(200, {"status": "ok", "uptime_s": round(time.time() - st.started, 3),
                           "forwarders": n, "connected": c, "ready": ready, "in_sync": sync,
                           "intents_revision": self.app.intents.revision})

    def topology(self, req):
        return _json(200, self.app.state.topology())

    def prefixes(self, req):
        return _json(200, self.app.state.prefixes(self.app.views()["weights"]))

    def telemetry(self, req):
        node = req.GET.get("node")
        if node is not None:
            node = check_prefix(node, "node")
            out = self.app.state.telemetry_view(node)
            if not out["forwarders"]:
                return _json(404, {"error": f"no forwarder {node} has reported"})
            return _json(200, out)
        return _json(200, self.app.state.telemetry_view())

    def policy(self, req):
        out = self.app.state.policy_view()
        out.update(self.app.views())
        out["intents_revision"] = self.app.intents.revision
        return _json(200, out)

    def intents(self, req):
        with self.app.state.lock:
            return _json(200, self.app.intents.to_json())

    # ----------------------------------------------------------------- writes
    def _wait_param(self, req) -> Optional[float]:
        w = req.GET.get("wait")
        if w is None:
            return None
        try:
            v = float(w)
        except ValueError:
            raise IntentError(f"wait: expected seconds (0..{MAX_WAIT_S:g}), got {w!r}") from None
        if not 0 <= v <= MAX_WAIT_S:
            raise IntentError(f"wait: expected seconds in 0..{MAX_WAIT_S:g}, got {w!r}")
        return v

    def post_intent(self, req):
        wait = self._wait_param(req)
        if req.content_length and req.content_length > MAX_BODY:
            raise IntentError("request body too large")
        try:
            body = json.loads(req.body or b"null")
        except ValueError as exc:
            raise IntentError(f"invalid JSON: {exc}") from None
        kind, value = parse_intent(body)
        return self._submit(kind, value, wait)

    def delete_intent(self, req):
        wait = self._wait_param(req)
        kind = req.GET.get("kind")
        prefix = req.GET.get("prefix")
        kind, value = parse_intent({"kind": kind, "prefix": prefix, "remove": True})
        return self._submit(kind, value, wait)

    def _submit(self, kind: str, value: dict, wait: Optional[float]):
        t0 = time.time()
        rep = self.app.post_intent(kind, value)
        out = dict(rep.result)
        w = rep.waiter
        out["forwarders"] = w.total if w is not None else 0
        if wait is not None and w is not None:
            applied = w.event.wait(wait)
            out["applied"] = applied
            if applied:
                out["push_ms"] = round((w.done_at - t0) * 1000, 3)
            else:
                out["waiting_for"] = sorted(w.targets)
        return _json(200, out)


class RestServer:
    def __init__(self, host: str, port: int, app) -> None:
        self.api = RestApi(app)
        self.httpd = make_server(host, port, self.api, server_class=_ThreadingWSGIServer,
                                 handler_class=_QuietHandler)
        self.address = self.httpd.server_address[:2]
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="scsc-rest", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(1.0)
        self.httpd.server_close()
