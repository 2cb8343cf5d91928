"""The Scheduling Center (SCSC) as an os-ken application.

os-ken is the maintained fork of Ryu (Ryu does not run on Python >= 3.10); its
application API is Ryu's: an `OSKenApp` subclass, events derived from
`EventBase`, handlers declared with `set_ev_cls`, one event thread per app, and
`hub` for threads and timers. The southbound server thread, the REST threads
and the timers only *post* events; every decision is taken on the app's event
thread, in order, so the state needs no other coordination than the lock the
REST readers take.

Events:
  EventAgentMessage   a message from a forwarder's agent (hello, telemetry, ack, bye)
  EventAgentClosed    its connection closed
  EventIntentRequest  an operator's intent from the REST API (request/reply)
  EventRecompute      recompute and push the policy (coalesced after telemetry)
  EventTick           refresh policy lifetimes, drop silent agents
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Dict, List, Optional

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import event
from os_ken.controller.handler import set_ev_cls
from os_ken.lib import hub

from .policy import IntentError, Intents, Params, PolicyEngine, diff
from .southbound import PROTOCOL_VERSION, Conn, SouthboundServer
from .state import NetworkState

LOG = logging.getLogger("dmsc.scsc")
CONF = cfg.CONF

OPTS = [
    cfg.StrOpt("southbound", default="0.0.0.0:7000",
               help="HOST:PORT where forwarders' agents connect (TCP, newline-delimited JSON)"),
    cfg.StrOpt("rest", default="0.0.0.0:8080", help="HOST:PORT of the northbound REST API"),
    cfg.FloatOpt("policy-lifetime", default=30.0,
                 help="seconds a forwarder keeps a policy without hearing from the SCSC"),
    cfg.FloatOpt("recompute-delay", default=0.02,
                 help="seconds to gather telemetry before recomputing the policy"),
    cfg.StrOpt("log-level", default="info", help="debug, info, warning or error"),
    cfg.StrOpt("pid-file", default="", help="write the process id here"),
]
try:
    CONF.register_cli_opts(OPTS)
except cfg.cfg.DuplicateOptError:  # imported twice (tests)
    pass


def parse_hostport(text: str, what: str):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class EventAgentMessage(event.EventBase):
    def __init__(self, conn: Conn, msg: dict, now: float) -> None:
        super().__init__()
        self.conn, self.msg, self.time = conn, msg, now


class EventAgentClosed(event.EventBase):
    def __init__(self, conn: Conn) -> None:
        super().__init__()
        self.conn = conn


class EventIntentRequest(event.EventRequestBase):
    def __init__(self, kind: str, value: dict) -> None:
        super().__init__()
        self.dst = "ScscApp"
        self.kind, self.value = kind, value


class EventIntentReply(event.EventReplyBase):
    def __init__(self, dst: str, result: dict, waiter: Optional["PushWaiter"]) -> None:
        super().__init__(dst)
        self.result, self.waiter = result, waiter


class EventRecompute(event.EventBase):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class EventTick(event.EventBase):
    pass


class PushWaiter:
    """Signals when every targeted forwarder acknowledged the version it was sent."""

    def __init__(self, targets: Dict[str, int], start: float) -> None:
        self.targets = dict(targets)
        self.total = len(self.targets)
        self.start = start
        self.done_at: Optional[float] = None
        self.event = threading.Event()
        if not self.targets:
            self.done_at = start
            self.event.set()

    def acked(self, node: str, version: int, now: float) -> None:
        want = self.targets.get(node)
        if want is not None and version >= want:
            del self.targets[node]
            if not self.targets and not self.event.is_set():
                self.done_at = now
                self.event.set()


class ScscApp(app_manager.OSKenApp):
    _EVENTS = [EventAgentMessage, EventAgentClosed, EventIntentRequest, EventRecompute, EventTick]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.state = NetworkState()
        self.engine = PolicyEngine(Params())
        self.intents = Intents()
        self.operator_changed = False   # once an operator posts, recovered intents are not adopted
        self.lifetime = float(CONF.policy_lifetime)
        self.recompute_delay = float(CONF.recompute_delay)
        self.conns: Dict[str, Conn] = {}
        self.waiters: List[PushWaiter] = []
        self._recompute_pending = False
        self._intents_json = (-1, None)  # (revision, to_json()) cached for a push
        self._ticking = False
        self.pushes = 0
        sb = parse_hostport(CONF.southbound, "--southbound")
        self.southbound = SouthboundServer(sb[0], sb[1], self._on_message, self._on_close)
        from .northbound import RestServer
        rest = parse_hostport(CONF.rest, "--rest")
        self.rest = RestServer(rest[0], rest[1], self)

    # ------------------------------------------------------------ lifecycle
    def start(self):
        super().start()
        self.southbound.start()
        self.rest.start()
        self._ticking = True
        self.threads.append(hub.spawn(self._ticker))
        LOG.info("SCSC up: southbound %s:%d, REST %s:%d, policy lifetime %.1f s",
                 *self.southbound.address, *self.rest.address, self.lifetime)

    def _ticker(self) -> None:
        period = max(0.2, self.lifetime / 3.0)
        next_t = time.monotonic() + period
        while self._ticking:
            hub.sleep(0.1)
            if time.monotonic() >= next_t and self._ticking:
                next_t = time.monotonic() + period
                self.send_event(self.name, EventTick())

    def stop(self) -> None:
        self._ticking = False     # the ticker thread ends; super().stop() joins it
        super().stop()

    def close(self) -> None:
        self._ticking = False
        self.rest.stop()
        self.southbound.stop()

    # ---------------------------------------------- other threads post events
    def _on_message(self, conn: Conn, msg: dict) -> None:
        self.send_event(self.name, EventAgentMessage(conn, msg, time.time()))

    def _on_close(self, conn: Conn) -> None:
        self.send_event(self.name, EventAgentClosed(conn))

    def post_intent(self, kind: str, value: dict) -> EventIntentReply:
        """Called from a REST thread; blocks until the event thread handled it."""
        return self.send_request(EventIntentRequest(kind, value))

    # ------------------------------------------------------------- handlers
    @set_ev_cls(EventAgentMessage)
    def agent_message(self, ev: EventAgentMessage) -> None:
        conn, msg = ev.conn, ev.msg
        if conn.closed:
            return
        if msg.get("v") != PROTOCOL_VERSION:
            conn.send({"type": "error", "ack": msg.get("seq"),
                       "error": f"unsupported protocol version {msg.get('v')!r}; "
                                f"this SCSC speaks v{PROTOCOL_VERSION}"})
            self.southbound.close_conn(conn)
            return
        t = msg.get("type")
        if t == "hello":
            self._hello(conn, msg, ev.time)
            return
        if conn.node is None:
            conn.send({"type": "error", "ack": msg.get("seq"), "error": "say hello first"})
            return
        if t == "telemetry":
            self._telemetry(conn, msg, ev.time)
        elif t == "ack":
            self._ack(conn, msg, ev.time)
        elif t == "bye":
            self.southbound.close_conn(conn)
        else:
            conn.send({"type": "error", "ack": msg.get("seq"), "error": f"unknown type {t!r}"})

    def _hello(self, conn: Conn, msg: dict, now: float) -> None:
        node = msg.get("node")
        if not isinstance(node, str) or not node.startswith("/"):
            conn.send({"type": "error", "ack": msg.get("seq"), "error": "hello needs a node name"})
            self.southbound.close_conn(conn)
            return
        with self.state.lock:
            old = self.conns.get(node)
            if old is not None and old is not conn:
                self.southbound.close_conn(old)
            conn.node = node
            self.conns[node] = conn
            f = self.state.hello(msg, conn.peer, now)
            f.ready = False
            self._recover(msg.get("policy") or {}, f)
        conn.send({"type": "welcome", "ack": msg.get("seq"), "lifetime_s": self.lifetime,
                   "refresh_s": round(max(0.2, self.lifetime / 3.0), 3),
                   "scsc": {"pid": os.getpid(), "started": self.state.started}})
        LOG.info("forwarder %s connected from %s (policy v%d held)", node, conn.peer, f.version)

    def _recover(self, held: dict, f) -> None:
        """Rebuild from what a reconnecting forwarder holds: the operator's intents and
        the adopted instance weights, so a restarted SCSC does not start from zero."""
        it = held.get("intents")
        if it and not self.operator_changed:
            try:
                got = Intents.from_json(it)
            except (IntentError, TypeError, ValueError, KeyError) as exc:
                LOG.warning("ignoring intents held by %s: %s", f.node, exc)
            else:
                if got.revision > self.intents.revision:
                    LOG.info("recovered intents revision %d from %s", got.revision, f.node)
                    self.intents = got
        for p, r in f.sent.items():
            w = r.get("weights")
            if not w or p in self.intents.pinned or p in self.engine.weights:
                continue
            if all(k.startswith("/") for k in w) and abs(sum(w.values()) - 100) < 1e-6:
                self.engine.adopt_weights(p, w)

    def _telemetry(self, conn: Conn, msg: dict, now: float) -> None:
        conn.send({"type": "ack", "ack": msg.get("seq")})
        msg["node"] = conn.node
        with self.state.lock:
            f, samples, faces, routes_changed = self.state.telemetry(msg, now)
            changed = routes_changed
            for prefix, s in samples.items():
                changed |= self.engine.observe_instance(prefix, f.node, s)
            if faces:
                before = set(self.engine.congested.get(f.node, ()))
                changed |= self.engine.observe_faces(f.node, faces) != before
            first = not f.ready
            if first:
                f.ready = True
        if first:
            self._push("hello", full_for={f.node})
        elif changed:
            self._schedule_recompute("telemetry")

    def _ack(self, conn: Conn, msg: dict, now: float) -> None:
        if "version" not in msg:
            return  # an ack of a refresh or of a welcome
        v = int(msg.get("version") or 0)
        with self.state.lock:
            f = self.state.forwarders.get(conn.node)
            if f is None:
                return
            if not msg.get("ok", True):
                err = str(msg.get("error"))
                f.errors = (f.errors + [err])[-10:]
                LOG.warning("forwarder %s refused policy v%s: %s", f.node, v, err)
                if msg.get("resync"):
                    self._send_policy(f, full=True)
                return
            if msg.get("skipped"):
                f.errors = (f.errors + [f"skipped {msg['skipped']}"])[-10:]
            if v >= f.acked_version:
                f.acked_version = v
                f.ack_time = now
                if v == f.version:
                    f.policy = dict(f.sent)
            for w in list(self.waiters):
                w.acked(f.node, v, now)
                if w.event.is_set():
                    self.waiters.remove(w)

    @set_ev_cls(EventAgentClosed)
    def agent_closed(self, ev: EventAgentClosed) -> None:
        node = ev.conn.node
        if node is None:
            return
        with self.state.lock:
            if self.conns.get(node) is ev.conn:
                del self.conns[node]
                self.state.gone(node, time.time())
                LOG.info("forwarder %s disconnected", node)
                for w in list(self.waiters):  # nobody to wait for any more
                    w.acked(node, 1 << 62, time.time())
                    if w.event.is_set():
                        self.waiters.remove(w)
        self._schedule_recompute("disconnect")

    @set_ev_cls(EventIntentRequest)
    def intent_request(self, req: EventIntentRequest) -> None:
        start = time.time()
        with self.state.lock:
            self.operator_changed = True
            changed = self.intents.apply(req.kind, req.value)
            waiter = self._push("intent") if changed else PushWaiter({}, start)
            if waiter is not None:
                waiter.start = start
            result = {"kind": req.kind, "intent": req.value, "changed": changed,
                      "revision": self.intents.revision,
                      "sent_ms": round((time.time() - start) * 1000, 3)}
        self.reply_to_request(req, EventIntentReply(req.src, result, waiter))

    @set_ev_cls(EventRecompute)
    def recompute(self, ev: EventRecompute) -> None:
        self._recompute_pending = False
        self._push(ev.reason)

    @set_ev_cls(EventTick)
    def tick(self, ev: EventTick) -> None:
        now = time.time()
        with self.state.lock:
            for node, conn in list(self.conns.items()):
                f = self.state.forwarders.get(node)
                if f is None:
                    continue
                silent = now - (f.last_seen or now)
                if silent > max(10.0, 5 * f.interval_s):
                    LOG.warning("forwarder %s silent for %.1f s: closing", node, silent)
                    self.southbound.close_conn(conn)
                    continue
                if f.ready:
                    conn.send({"type": "refresh", "version": f.version, "lifetime_s": self.lifetime})

    # --------------------------------------------------------------- pushing
    def _schedule_recompute(self, reason: str) -> None:
        if self._recompute_pending:
            return
        self._recompute_pending = True
        hub.spawn_after(self.recompute_delay, self.send_event, self.name, EventRecompute(reason))

    def _push(self, reason: str, full_for=()) -> PushWaiter:
        """Compute the policy and send each ready forwarder what changed for it."""
        now = time.time()
        with self.state.lock:
            nodes = {n: i for n, i in self.state.nodes().items()
                     if self.state.forwarders[n].ready}
            policy = self.engine.compute(nodes, self.intents)
            targets = {}
            for node in nodes:
                f = self.state.forwarders[node]
                f.target = policy.get(node, {})
                if self._send_policy(f, full=node in full_for):
                    targets[node] = f.version
                elif f.acked_version < f.version:
                    targets[node] = f.version
            if targets:
                self.pushes += 1
                LOG.debug("push (%s): %d forwarder(s)", reason, len(targets))
            w = PushWaiter(targets, now)
            if not w.event.is_set():
                self.waiters.append(w)
            return w

    def _send_policy(self, f, full: bool = False) -> bool:
        conn = self.conns.get(f.node)
        if conn is None or conn.closed:
            return False
        new = f.target
        to_set, to_remove = diff(f.sent, new)
        intents_changed = f.intents_rev != self.intents.revision
        if not full and not to_set and not to_remove and not intents_changed:
            return False
        f.version += 1
        msg = {"type": "policy", "version": f.version, "lifetime_s": self.lifetime,
               "intents_rev": self.intents.revision}
        if full:
            msg.update(full=True, base=None, set=[new[p] for p in sorted(new)], remove=[])
        else:
            msg.update(full=False, base=f.version - 1, set=to_set, remove=to_remove)
        if intents_changed or full:
            if self._intents_json[0] != self.intents.revision or self._intents_json[1] is None:
                self._intents_json = (self.intents.revision, self.intents.to_json())
            msg["intents"] = self._intents_json[1]
        f.sent = dict(new)
        f.intents_rev = self.intents.revision
        conn.send(msg)
        return True

    # ---------------------------------------------------------- REST helpers
    def views(self) -> dict:
        with self.state.lock:
            return {"weights": {p: dict(w) for p, w in self.engine.weights.items()},
                    "degraded": {p: sorted(d) for p, d in self.engine.degraded.items() if d},
                    "congested": {n: sorted(c) for n, c in self.engine.congested.items() if c}}
