"""The forwarder's agent for the Scheduling Center (SCSC): telemetry out, policy in.

Started by `python -m forwarder` when the configuration names an `scsc:
HOST:PORT`. It runs in its own thread and touches the forwarder only through
`daemon.call_soon_wait`, once per telemetry interval (a read of the counters,
status and, when it changed, the FIB) and once per policy message (installing
strategy rules with origin "scsc" and an expiry time). If the SCSC is away the
forwarder keeps its last policy until the rules expire, then forwards by its
routing defaults; the agent reconnects with jittered exponential backoff and
says hello again, carrying what it holds so a restarted SCSC can rebuild.
Nothing here may block or crash the forwarder: every failure is logged and
turned into a reconnect.

Protocol: newline-delimited JSON, every message {"v": 1, "type": ..., "seq": N};
see docs/scsc.md.
"""
from __future__ import annotations

import json
import logging
import os
import random
import select
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from ..dataplane.counters import LATENCY_BUCKETS_US
from ..dataplane.names import InvalidName, Name
from ..dataplane.strategy import Rule
from .rules import canonical, same_effect

log = logging.getLogger("dmsc.scsc_agent")

PROTOCOL_VERSION = 1
AGENT = "dmsc-forwarder-agent/1"
# drops that mean "the link could not take it" (not bad packets or missing routes)
TX_DROP_REASONS = ("queue_full", "no_buffer")


class PolicyError(ValueError):
    pass


class ScscAgent:
    """ScscAgent(daemon, (host, port), interval) -- start() and stop().

    `daemon` needs `core` (the pipeline), `io`, `started`, `tx_errors` and
    `call_soon_wait(fn, timeout)`: the real Daemon, or a stand-in for benchmarks.
    `on_policy(version, applied_at)` is called after each policy is acknowledged.
    """

    def __init__(self, daemon, addr: Tuple[str, int], interval: float = 1.0, *,
                 backoff: Tuple[float, float] = (0.1, 2.0), call_timeout: float = 2.0,
                 qdisc_stats: bool = True,
                 on_policy: Optional[Callable[[int, float], None]] = None) -> None:
        self.d = daemon
        self._ended: Optional[str] = None  # why the current session ended, for its event
        self.addr = (str(addr[0]), int(addr[1]))
        self.interval = float(interval)
        self.backoff = backoff
        self.call_timeout = call_timeout
        self.qdisc_stats = qdisc_stats
        self.on_policy = on_policy
        self.node = daemon.core.name.text
        # what this forwarder holds from the SCSC
        self.version = 0
        self.rules: Dict[str, dict] = {}
        self.intents: Optional[dict] = None
        self.intents_rev = 0
        self.lifetime = 30.0
        # connection
        self._sock: Optional[socket.socket] = None
        self._seq = 0
        self._running = False
        self._stop = threading.Event()
        self._wlock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._fib_sent_at: object = object()
        self._iproute = None
        self.connected = False
        self.stats = {"connects": 0, "telemetry_sent": 0, "policies": 0, "refreshes": 0,
                      "errors": 0, "last_error": None}

    # -------------------------------------------------------------- control
    def start(self) -> "ScscAgent":
        self._running = True
        self._thread = threading.Thread(target=self._run, name="scsc-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop without touching the forwarder loop (it may already have stopped)."""
        self._running = False
        self._stop.set()
        sock = self._sock
        if sock is not None:
            if self._wlock.acquire(timeout=0.2):
                try:
                    sock.send(self._encode({"type": "bye"}), socket.MSG_DONTWAIT)
                except OSError:
                    pass
                finally:
                    self._wlock.release()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._iproute is not None:
            try:
                self._iproute.close()
            except Exception:
                pass

    # ----------------------------------------------------------------- loop
    def _run(self) -> None:
        delay = self.backoff[0]
        while self._running:
            try:
                sock = socket.create_connection(self.addr, timeout=2.0)
            except OSError as exc:
                log.debug("cannot reach the SCSC at %s:%d: %s", *self.addr, exc)
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return
                delay = min(self.backoff[1], delay * 2)
                continue
            self.stats["connects"] += 1
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sock = sock
                if self._session(sock):
                    delay = self.backoff[0]
            except Exception as exc:  # never let the agent die
                self.stats["errors"] += 1
                self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
                if self._running:
                    log.warning("SCSC session ended: %s", self.stats["last_error"])
                    self._ended = self.stats["last_error"]
            finally:
                if self.connected or self._ended:
                    self.d.events.emit("scsc_session_down", reason=self._ended or "closed")
                self._ended = None
                self.connected = False
                self._sock = None
                try:
                    sock.close()
                except OSError:
                    pass
            if self._running:
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return
                delay = min(self.backoff[1], delay * 2)

    def _session(self, sock: socket.socket) -> bool:
        """One connection; returns True if the SCSC welcomed us."""
        sock.settimeout(5.0)
        self._fib_sent_at = object()  # the first report after a (re)connect carries the FIB
        self._send(sock, self._hello())
        self._report(sock)
        next_report = time.monotonic() + self.interval
        last_rx = time.monotonic()
        # the SCSC acknowledges every report: silence this long means it is gone (or
        # starved: a busy machine must not turn into a reconnection storm)
        dead_after = max(5 * self.interval, 10.0)
        buf = bytearray()
        welcomed = False
        poller = select.poll()  # not select(): a busy forwarder may hold fds above 1024
        poller.register(sock, select.POLLIN)
        while self._running:
            wait = max(0.0, next_report - time.monotonic())
            if poller.poll(wait * 1000):
                data = sock.recv(262144)
                if not data:
                    log.info("the SCSC closed the connection")
                    self._ended = "closed by the SCSC"
                    return welcomed
                last_rx = time.monotonic()
                buf += data
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    if line.strip():
                        welcomed |= self._handle(sock, line)
            now = time.monotonic()
            if now >= next_report:
                self._report(sock)
                next_report = now + self.interval
            if now - last_rx > dead_after:
                log.warning("no word from the SCSC for %.1f s: reconnecting", now - last_rx)
                self._ended = f"silent for {now - last_rx:.1f} s"
                return welcomed
        return welcomed

    def _encode(self, msg: dict) -> bytes:
        self._seq += 1
        return json.dumps({"v": PROTOCOL_VERSION, "seq": self._seq, **msg},
                          separators=(",", ":")).encode() + b"\n"

    def _send(self, sock: socket.socket, msg: dict) -> None:
        with self._wlock:
            sock.sendall(self._encode(msg))

    def _report(self, sock: socket.socket) -> None:
        try:
            msg = self._telemetry()
        except TimeoutError:
            log.warning("the forwarder loop did not answer within %.1f s: report skipped",
                        self.call_timeout)
            return
        self._send(sock, msg)

    # ------------------------------------------------------------- messages
    def _handle(self, sock: socket.socket, line: bytes) -> bool:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("malformed message from the SCSC: %r", line[:200])
            return False
        if msg.get("v") != PROTOCOL_VERSION:
            raise ConnectionError(f"the SCSC speaks protocol version {msg.get('v')!r}, "
                                  f"this agent {PROTOCOL_VERSION}")
        t = msg.get("type")
        if t == "welcome":
            self.lifetime = float(msg.get("lifetime_s") or self.lifetime)
            self.connected = True
            log.info("connected to the SCSC at %s:%d", *self.addr)
            self.d.events.emit("scsc_session_up", addr=f"{self.addr[0]}:{self.addr[1]}")
            return True
        if t == "policy":
            self._send(sock, self._policy(msg))
        elif t == "refresh":
            self._send(sock, self._refresh(msg))
        elif t == "error":
            log.warning("the SCSC reports: %s", msg.get("error"))
        # "ack" of our telemetry: liveness only
        return False

    def _policy(self, msg: dict) -> dict:
        seq, version = msg.get("seq"), int(msg.get("version") or 0)
        ack = {"type": "ack", "ack": seq, "version": version}
        full = bool(msg.get("full"))
        if not full and msg.get("base") != self.version:
            return {**ack, "ok": False, "resync": True,
                    "error": f"base_mismatch: policy v{version} is based on v{msg.get('base')}, "
                             f"this forwarder holds v{self.version}"}
        new = {} if full else dict(self.rules)
        built: Dict[str, Rule] = {}  # rules that changed, validated before touching anything
        try:
            for p in msg.get("remove") or []:
                new.pop(p, None)
            for rd in msg.get("set") or []:
                if not isinstance(rd, dict) or not isinstance(rd.get("prefix"), str):
                    raise PolicyError(f"bad rule {rd!r}")
                rd = canonical(rd)
                p = rd["prefix"]
                if self.rules.get(p) != rd:
                    built[p] = self._rule(rd, 0.0)
                new[p] = rd
            lifetime = float(msg.get("lifetime_s") or self.lifetime)
            if not lifetime > 0:
                raise PolicyError(f"lifetime_s {lifetime!r} must be > 0")
        except (PolicyError, ValueError, TypeError, InvalidName) as exc:
            self.stats["errors"] += 1
            return {**ack, "ok": False, "resync": False, "error": f"invalid policy: {exc}"}
        try:
            skipped = self.d.call_soon_wait(lambda: self._install(new, lifetime, built),
                                            self.call_timeout)
        except TimeoutError:
            return {**ack, "ok": False, "resync": True, "error": "the forwarder loop is busy"}
        self.rules, self.version, self.lifetime = new, version, lifetime
        if "intents" in msg:
            self.intents = msg["intents"]
        self.intents_rev = int(msg.get("intents_rev") or self.intents_rev)
        self.stats["policies"] += 1
        if self.on_policy is not None:
            self.on_policy(version, time.time())
        out = {**ack, "ok": True, "rules": len(new)}
        if skipped:
            out["skipped"] = skipped
        return out

    def _refresh(self, msg: dict) -> dict:
        seq, version = msg.get("seq"), int(msg.get("version") or 0)
        if version != self.version:
            return {"type": "ack", "ack": seq, "version": self.version, "ok": False, "resync": True,
                    "error": f"refresh of v{version}, this forwarder holds v{self.version}"}
        lifetime = float(msg.get("lifetime_s") or self.lifetime)
        rules = dict(self.rules)
        try:
            self.d.call_soon_wait(lambda: self._install(rules, lifetime, {}), self.call_timeout)
        except TimeoutError:
            return {"type": "ack", "ack": seq, "ok": False, "error": "the forwarder loop is busy"}
        self.stats["refreshes"] += 1
        return {"type": "ack", "ack": seq}

    @staticmethod
    def _rule(rd: dict, expires: float) -> Rule:
        return Rule(prefix=Name.parse(rd["prefix"]), deny=bool(rd.get("deny", False)),
                    rate=rd.get("rate"), burst=rd.get("burst"), priority=rd.get("priority"),
                    weights={str(k): float(v) for k, v in (rd.get("weights") or {}).items()},
                    origin="scsc", expires=expires)

    def _install(self, rules: Dict[str, dict], lifetime: float, built: Dict[str, Rule]) -> List[str]:
        """On the loop thread: make the scsc rules exactly `rules`, expiring after `lifetime`.

        `built` holds the Rule objects of the rules that changed; the others are
        already installed (their expiry is extended) or expired meanwhile (rebuilt)."""
        core = self.d.core
        expires = time.time() + lifetime
        current = {r.prefix.text: r for r in core.strategy.rules()}
        for p, r in current.items():
            if r.origin == "scsc" and p not in rules:
                core.remove_rule(r.prefix)
        skipped = []
        for p, rd in rules.items():
            ex = current.get(p)
            if ex is not None and ex.origin != "scsc":
                skipped.append(p)  # an operator's or the configuration's rule wins
                continue
            rule = built.get(p)
            if rule is None:
                if ex is not None:
                    ex.expires = expires  # unchanged: keep its token bucket, flows stay as they are
                    continue
                rule = self._rule(rd, expires)  # expired while the SCSC was away
            rule.expires = expires
            if ex is not None and same_effect(ex, rule):
                ex.expires = expires
                continue
            core.set_rule(rule)
        return skipped

    # ------------------------------------------------------------ reporting
    def _hello(self) -> dict:
        core = self.d.core
        return {"type": "hello", "node": self.node, "roles": sorted(core.roles), "pid": os.getpid(),
                "agent": AGENT, "interval_s": self.interval, "buckets_us": list(LATENCY_BUCKETS_US),
                "policy": {"version": self.version, "intents_rev": self.intents_rev,
                           "intents": self.intents,
                           "rules": [self.rules[p] for p in sorted(self.rules)]}}

    def _snapshot(self):
        from .endpoint import Views
        v = Views(self.d)
        st, ct = v.status(), v.counters()
        fib = v.fib() if st.get("fib_changed_at") != self._fib_sent_at else None
        macs = {}
        ifnames = {}
        for f in self.d.core.faces:
            io = self.d.io.get(f.face_id)
            mac = getattr(io, "mac", None)
            if isinstance(mac, (bytes, bytearray)) and len(mac) == 6:
                macs[f.name] = mac.hex(":")
            if getattr(io, "interface", None):
                ifnames[f.name] = io.interface
        return st, ct, fib, macs, ifnames

    def _telemetry(self) -> dict:
        st, ct, fib, macs, ifnames = self.d.call_soon_wait(self._snapshot, self.call_timeout)
        kernel = self._kernel_stats(ifnames)
        faces = {}
        for f in st.get("faces", []):
            if f.get("kind") == "self":
                continue
            name = f["name"]
            c = ct.get("faces", {}).get(name, {})
            drops = c.get("drops") or {}
            entry = {"kind": f.get("kind"), "up": f.get("up"), "mac": macs.get(name),
                     "peer_mac": f.get("peer_mac"), "queued": f.get("queued", 0),
                     "rx_packets": c.get("rx_packets", 0), "rx_bytes": c.get("rx_bytes", 0),
                     "tx_packets": c.get("tx_packets", 0), "tx_bytes": c.get("tx_bytes", 0),
                     "drops": sum(drops.values()), "drop_reasons": drops,
                     "tx_drops": sum(drops.get(r, 0) for r in TX_DROP_REASONS)}
            entry.update(kernel.get(name, {}))
            faces[name] = entry
        prefixes = {}
        for p, c in (ct.get("prefixes") or {}).items():
            prefixes[p] = {k: c.get(k, 0) for k in ("packets", "bytes", "requests", "responses",
                                                     "nacks", "served")}
            prefixes[p]["drops"] = c.get("drops") or {}
            for h in ("latency", "service_latency"):
                hj = c.get(h) or {}
                prefixes[p][h] = {"count": hj.get("count", 0), "sum_us": hj.get("sum_us", 0.0),
                                  "counts": hj.get("counts", [])}
        fibj = {"changed_at": st.get("fib_changed_at"), "digest": st.get("fib_digest"),
                "entries_count": st.get("fib_entries")}
        if fib is not None:
            fibj["entries"] = fib.get("entries", [])
            self._fib_sent_at = st.get("fib_changed_at")
        self.stats["telemetry_sent"] += 1
        return {"type": "telemetry", "node": self.node, "time": time.time(),
                "interval_s": self.interval, "uptime_s": st.get("uptime_s"),
                "prefixes": prefixes, "faces": faces, "drops": ct.get("drops") or {},
                "nacks_sent": ct.get("nacks_sent") or {}, "flows": st.get("flows"),
                "rules": st.get("rules"), "fib": fibj,
                "local_prefixes": st.get("local_prefixes") or [],
                "policy_version": self.version,
                **({"l4": ct["l4"]} if ct.get("l4") else {})}   # a gateway's pods' connections

    def _kernel_stats(self, ifnames: Dict[str, str]) -> Dict[str, dict]:
        """Per face: the kernel's tx drops and the root qdisc's drops and backlog
        (a shaped link's queue builds up there, out of the forwarder's sight)."""
        out: Dict[str, dict] = {}
        for face, ifname in ifnames.items():
            e = out.setdefault(face, {})
            try:
                with open(f"/sys/class/net/{ifname}/statistics/tx_dropped") as fh:
                    e["kernel_tx_dropped"] = int(fh.read())
            except (OSError, ValueError):
                pass
        if not self.qdisc_stats or not ifnames:
            return out
        try:
            if self._iproute is None:
                from pyroute2 import IPRoute
                self._iproute = IPRoute()
            ipr = self._iproute
            # One qdisc dump for every face: a lookup per face would dump and parse
            # every link and qdisc of the node each time (milliseconds per report).
            index = {face: socket.if_nametoindex(ifname) for face, ifname in ifnames.items()}
            qdiscs: Dict[int, list] = {}
            for q in ipr.get_qdiscs():
                qdiscs.setdefault(q["index"], []).append(q)
            for face, idx in index.items():
                drops = backlog = 0
                capacity = None
                root_kind = None
                for q in qdiscs.get(idx, ()):
                    s2 = q.get_attr("TCA_STATS2")
                    qs = s2.get_attr("TCA_STATS_QUEUE") if s2 else None
                    if qs:
                        drops += int(qs.get("drops", 0))
                    if q["parent"] == 0xFFFFFFFF:
                        root_kind = q.get_attr("TCA_KIND")
                        if qs:
                            backlog = int(qs.get("qlen", 0))
                        if root_kind == "tbf":
                            parms = q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
                            capacity = 8 * int(parms["rate"]) if parms else None
                if root_kind == "htb":  # a shaped link: the top classes' ceilings
                    tops = [c.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_PARMS")
                            for c in ipr.get_classes(index=idx) if c["parent"] == 0xFFFFFFFF]
                    tops = [t for t in tops if t]
                    capacity = 8 * sum(int(t["ceil"]) for t in tops) if tops else None
                out[face]["qdisc_drops"] = drops
                out[face]["qdisc_backlog"] = backlog
                if capacity:
                    out[face]["capacity_bps"] = capacity
        except Exception as exc:  # no netlink here (a stand-in daemon, odd kernels): skip
            log.debug("qdisc statistics unavailable: %s", exc)
            self.qdisc_stats = False
        return out
