"""What the SCSC knows: forwarders, their tables and measurements, and what it pushed.

Everything here is rebuilt from the forwarders' reports: a restarted SCSC
starts empty, the agents reconnect, say hello (with the policy and intents they
hold) and stream telemetry again. Only the app's event thread mutates it; the
REST threads read it under `lock`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from forwarder.dataplane.counters import bucket_quantile
from forwarder.mgmt.rules import canonical

from .policy import FaceSample, InstanceSample, NextHop, NodeInfo, NodePolicy

def _hist_delta(new: Optional[dict], old: Optional[dict]) -> Tuple[int, float, List[int]]:
    """(count, sum_us, bucket counts) added between two cumulative histogram snapshots."""
    if not new:
        return 0, 0.0, []
    nc = list(new.get("counts") or [])
    if not old or old.get("count", 0) > new.get("count", 0):  # first report or counters reset
        return int(new.get("count", 0)), float(new.get("sum_us", 0.0)), nc
    oc = list(old.get("counts") or [])
    oc += [0] * (len(nc) - len(oc))
    return (int(new.get("count", 0)) - int(old.get("count", 0)),
            float(new.get("sum_us", 0.0)) - float(old.get("sum_us", 0.0)),
            [max(0, a - b) for a, b in zip(nc, oc)])


def _delta(new: Dict[str, Any], old: Optional[Dict[str, Any]], key: str) -> float:
    n = new.get(key, 0) or 0
    o = (old or {}).get(key, 0) or 0
    return n - o if n >= o else n


@dataclass
class ForwarderState:
    node: str
    roles: Tuple[str, ...] = ("sg", "sr")
    pid: Optional[int] = None
    peer: str = ""
    interval_s: float = 1.0
    connected: bool = False
    connected_at: Optional[float] = None
    last_seen: Optional[float] = None
    telemetry_count: int = 0
    last: Optional[dict] = None          # last telemetry message (cumulative counters)
    rates: Dict[str, Any] = field(default_factory=dict)   # derived from the last two
    fib: Dict[str, List[NextHop]] = field(default_factory=dict)
    fib_raw: List[dict] = field(default_factory=list)
    fib_changed_at: Optional[float] = None
    fib_digest: Optional[str] = None
    route_changes: int = 0
    local_prefixes: Tuple[str, ...] = ()
    faces: Dict[str, dict] = field(default_factory=dict)
    # policy bookkeeping
    policy: NodePolicy = field(default_factory=dict)     # what the forwarder holds (acked)
    sent: NodePolicy = field(default_factory=dict)       # what we last sent (maybe unacked)
    version: int = 0                                     # version of `sent`
    acked_version: int = 0
    ack_time: Optional[float] = None
    intents_rev: int = 0
    errors: List[str] = field(default_factory=list)
    ready: bool = False                                  # its first telemetry arrived
    target: NodePolicy = field(default_factory=dict)     # what the engine wants it to hold

    def info(self) -> NodeInfo:
        return NodeInfo(self.node, self.roles, self.fib, self.local_prefixes, self.connected)


class NetworkState:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.forwarders: Dict[str, ForwarderState] = {}
        self.started = time.time()

    # ------------------------------------------------------------- updates
    def hello(self, msg: dict, peer: str, now: float) -> ForwarderState:
        node = msg["node"]
        with self.lock:
            f = self.forwarders.get(node)
            if f is None:
                f = self.forwarders[node] = ForwarderState(node)
            f.roles = tuple(msg.get("roles") or ("sg", "sr"))
            f.pid = msg.get("pid")
            f.peer = peer
            f.interval_s = float(msg.get("interval_s") or 1.0)
            f.connected, f.connected_at, f.last_seen = True, now, now
            f.last = None  # counters may have restarted with the forwarder
            held = msg.get("policy") or {}
            rules = {r["prefix"]: canonical(r) for r in held.get("rules") or []
                     if isinstance(r, dict) and "prefix" in r}
            f.policy = dict(rules)
            f.sent = dict(rules)
            f.version = f.acked_version = int(held.get("version") or 0)
            f.intents_rev = int(held.get("intents_rev") or 0)
            return f

    def gone(self, node: str, now: float) -> None:
        with self.lock:
            f = self.forwarders.get(node)
            if f is not None:
                f.connected = False
                f.last_seen = now

    def telemetry(self, msg: dict, now: float) -> Tuple[ForwarderState, Dict[str, Dict[str, InstanceSample]],
                                                      Dict[str, FaceSample], bool]:
        """Record one report; returns (state, instance samples of the prefixes the node
        hosts, face samples, whether the node's FIB or local prefixes changed)."""
        node = msg["node"]
        with self.lock:
            f = self.forwarders.get(node)
            if f is None:
                f = self.forwarders[node] = ForwarderState(node, connected=True)
            old = f.last
            f.last_seen = now
            f.telemetry_count += 1
            dt = float(msg.get("time", now)) - float(old.get("time", now)) if old else 0.0
            if dt <= 0:
                dt = float(msg.get("interval_s") or f.interval_s)
            routes_changed = False
            fib = msg.get("fib") or {}
            if "entries" in fib:
                f.fib_raw = fib["entries"]
                f.fib = {e["prefix"]: [NextHop(h.get("face_name") or str(h.get("face")),
                                               h.get("instance"), bool(h.get("up", True)),
                                               (h.get("priority", 0), h.get("cost", 0)))
                                       for h in e.get("nexthops", [])]
                         for e in fib["entries"]}
                routes_changed = True
            if fib.get("changed_at") != f.fib_changed_at and f.fib_changed_at is not None:
                f.route_changes += 1
            f.fib_changed_at = fib.get("changed_at", f.fib_changed_at)
            f.fib_digest = fib.get("digest", f.fib_digest)
            lp = tuple(sorted(msg.get("local_prefixes") or ()))
            if lp != f.local_prefixes:
                f.local_prefixes = lp
                routes_changed = True
            f.faces = msg.get("faces") or {}

            # per-prefix rates and latency, per-instance samples
            prefixes, samples = {}, {}
            for p, c in (msg.get("prefixes") or {}).items():
                oc = (old or {}).get("prefixes", {}).get(p) if old else None
                d_req = _delta(c, oc, "requests")
                d_resp = _delta(c, oc, "responses")
                d_nack = _delta(c, oc, "nacks")
                d_served = _delta(c, oc, "served")
                d_drops = sum((c.get("drops") or {}).values()) - \
                    sum(((oc or {}).get("drops") or {}).values()) if oc else sum((c.get("drops") or {}).values())
                n, s_us, counts = _hist_delta(c.get("latency"), (oc or {}).get("latency"))
                sn, ss_us, scounts = _hist_delta(c.get("service_latency"), (oc or {}).get("service_latency"))
                entry = {"request_rate": round(d_req / dt, 3), "responses": d_resp,
                         "errors": d_nack + max(0, d_drops),
                         "latency_p50_us": bucket_quantile(counts, 0.5),
                         "latency_p99_us": bucket_quantile(counts, 0.99),
                         "latency_mean_us": round(s_us / n, 1) if n else None,
                         "served_rate": round(d_served / dt, 3),
                         "service_p50_us": bucket_quantile(scounts, 0.5),
                         "service_p99_us": bucket_quantile(scounts, 0.99),
                         "service_mean_us": round(ss_us / sn, 1) if sn else None}
                prefixes[p] = entry
                if old is not None and p in lp:
                    samples[p] = InstanceSample(served=sn, mean_ms=(ss_us / sn / 1000.0) if sn else None,
                                                errors=int(d_nack + max(0, d_drops)))
            for p in lp:  # an instance that served nothing this interval
                if old is not None and p not in samples:
                    samples[p] = InstanceSample()
            faces = {}
            for name, c in f.faces.items():
                oc = (old or {}).get("faces", {}).get(name) if old else None
                tx_b = _delta(c, oc, "tx_bytes")
                # congestion drops only: the forwarder's full queues, the kernel's and the qdisc's
                drops = _delta(c, oc, "tx_drops") + _delta(c, oc, "qdisc_drops") + \
                    _delta(c, oc, "kernel_tx_dropped")
                faces[name] = {"tx_bps": round(8 * tx_b / dt, 1),
                               "rx_bps": round(8 * _delta(c, oc, "rx_bytes") / dt, 1),
                               "tx_pps": round(_delta(c, oc, "tx_packets") / dt, 1),
                               "drops": int(drops) if oc else 0,
                               "queued": int(c.get("queued", 0)) + int(c.get("qdisc_backlog", 0)),
                               "up": bool(c.get("up", True)),
                               "capacity_bps": c.get("capacity_bps")}
            f.rates = {"dt": round(dt, 3), "prefixes": prefixes, "faces": faces}
            f.last = msg
            face_samples = {} if old is None else {
                n: FaceSample(v["tx_bps"], v["drops"], v["queued"], v["capacity_bps"], v["up"])
                for n, v in faces.items()}
            return f, samples, face_samples, routes_changed

    # --------------------------------------------------------------- views
    def nodes(self) -> Dict[str, NodeInfo]:
        with self.lock:
            return {n: f.info() for n, f in self.forwarders.items() if f.connected}

    def topology(self) -> dict:
        """Forwarders and the links between them, found by matching each face's
        learnt peer MAC with another forwarder's own MAC."""
        with self.lock:
            by_mac = {}
            for f in self.forwarders.values():
                for name, c in f.faces.items():
                    if c.get("mac"):
                        by_mac[c["mac"]] = (f.node, name)
            links, seen = [], set()
            for f in self.forwarders.values():
                for name, c in f.faces.items():
                    other = by_mac.get(c.get("peer_mac") or "")
                    if other is None:
                        continue
                    key = tuple(sorted([(f.node, name), other]))
                    if key in seen:
                        continue
                    seen.add(key)
                    util = f.rates.get("faces", {}).get(name, {})
                    links.append({"a": f.node, "face_a": name, "b": other[0], "face_b": other[1],
                                  "up": bool(c.get("up", True)), "tx_bps_a": util.get("tx_bps")})
            nodes = [{"node": f.node, "roles": list(f.roles), "connected": f.connected,
                      "peer": f.peer, "pid": f.pid,
                      "faces": {n: {"kind": c.get("kind"), "up": c.get("up"), "mac": c.get("mac"),
                                    "peer_mac": c.get("peer_mac")} for n, c in f.faces.items()},
                      "fib_entries": len(f.fib), "fib_digest": f.fib_digest,
                      "fib_changed_at": f.fib_changed_at, "route_changes": f.route_changes}
                     for f in sorted(self.forwarders.values(), key=lambda f: f.node)]
            return {"nodes": nodes, "links": links}

    def prefixes(self, weights: Dict[str, Dict[str, int]]) -> dict:
        with self.lock:
            out: Dict[str, dict] = {}
            for f in self.forwarders.values():
                if not f.connected:
                    continue
                for p in f.local_prefixes:
                    e = out.setdefault(p, {"prefix": p, "instances": []})
                    r = f.rates.get("prefixes", {}).get(p, {})
                    e["instances"].append({"instance": f.node, "served_rate": r.get("served_rate"),
                                           "service_mean_us": r.get("service_mean_us"),
                                           "service_p99_us": r.get("service_p99_us"),
                                           "errors": r.get("errors")})
                for p, r in f.rates.get("prefixes", {}).items():
                    if r.get("request_rate"):
                        e = out.setdefault(p, {"prefix": p, "instances": []})
                        e["request_rate"] = round(e.get("request_rate", 0) + r["request_rate"], 3)
            for p, e in out.items():
                e["instances"].sort(key=lambda i: i["instance"])
                e["anycast"] = len(e["instances"]) >= 2
                if p in weights:
                    e["weights"] = dict(weights[p])
            return {"prefixes": [out[p] for p in sorted(out)]}

    def telemetry_view(self, node: Optional[str] = None) -> dict:
        with self.lock:
            out = {}
            for f in self.forwarders.values():
                if node is not None and f.node != node:
                    continue
                out[f.node] = {"connected": f.connected, "last_seen": f.last_seen,
                               "interval_s": f.interval_s, "reports": f.telemetry_count,
                               "fib_changed_at": f.fib_changed_at, "fib_digest": f.fib_digest,
                               "route_changes": f.route_changes, **f.rates}
                if f.last and f.last.get("l4"):   # a gateway's carried connections (pods)
                    out[f.node]["l4"] = f.last["l4"]
            return {"forwarders": out}

    def policy_view(self) -> dict:
        with self.lock:
            return {"forwarders": {
                f.node: {"version": f.version, "acked_version": f.acked_version,
                         "in_sync": f.acked_version >= f.version, "connected": f.connected,
                         "rules": [f.sent[p] for p in sorted(f.sent)]}
                for f in sorted(self.forwarders.values(), key=lambda f: f.node)}}
