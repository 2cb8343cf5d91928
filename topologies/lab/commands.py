"""The lab's DMSC commands, usable from the Mininet CLI (`dmsc ...`) and from code.

Every command returns a :class:`Result` (ok, text for people, data for
scripts) and raises LabError for a usage problem. The CLI prints ``text``;
tests and the demo look at ``ok`` and ``data``.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlencode

from forwarder.mgmt.ctl import CtlError, render

from ..proc import LabError

HELP: Dict[str, str] = {
    "ping": "dmsc ping <node> <name> [count]\n"
            "  DMSC echo from <node>'s forwarder to a node name (/node/h3) or service name\n"
            "  (/shop/catalog); prints who answered, hops and RTT. Default 3 echoes.",
    "call": "dmsc call <node> <name> [payload]\n"
            "  Attach to <node>'s Service Gateway with the client library and send one\n"
            "  REQUEST to <name>; prints who answered and the payload. For plain-HTTP\n"
            "  services (/shop/cart) a payload that is not an HTTP message is wrapped in\n"
            "  GET (no payload) or POST (payload) <path below the prefix>.\n"
            "  e.g. dmsc call h1 /shop/frontend/checkout '{\"user\": \"ann\", \"item\": 2}'",
    "route": "dmsc route <node> <name>\n"
             "  The path <name> takes from <node>, hop by hop (DMSC trace: echoes with\n"
             "  growing hop limits).",
    "fib": "dmsc fib <node>\n  <node>'s FIB: prefix, next-hop face, cost, origin, instance.",
    "flows": "dmsc flows <node>\n  <node>'s data flow table: (dst, src) -> face, packets, idle time.",
    "telemetry": "dmsc telemetry [prefix]\n"
                 "  Per-prefix request counts and latency (p50/p99) measured at the gateways,\n"
                 "  and instance service times, from every node's counters (and the SCSC's\n"
                 "  view when it runs). With a prefix, only that subtree.",
    "policy": "dmsc policy                      rules on every node\n"
              "dmsc policy set <prefix> [deny] [rate=R] [burst=B] [priority=P]\n"
              "                [weight=INSTANCE_OR_FACE:W ...] [at=NODE,NODE|all]\n"
              "dmsc policy del <prefix> [at=NODE,NODE|all]\n"
              "  Forwarding strategy: deny, rate limit, priority class, or weights over\n"
              "  anycast instances (/node/h3) or faces. Default at=all live nodes.\n"
              "  e.g. dmsc policy set /shop/catalog weight=/node/h3:1",
    "fail": "dmsc fail <node|link>\n"
            "  A node: its forwarder is killed and its links go down. A link (a-b, e.g.\n"
            "  e1-a1): both ends go down. Routing reacts (link-state), or the lab pushes\n"
            "  recomputed static routes (--routing static).",
    "restore": "dmsc restore <node|link>\n  Undo dmsc fail: links up, the node's forwarder restarted.",
    "intent": "dmsc intent                                  the SCSC's intents and policy\n"
              "dmsc intent pin_weights <prefix> INSTANCE=W ...   e.g. /node/h3=1\n"
              "dmsc intent rate_limit <prefix> rate=R [burst=B]\n"
              "dmsc intent critical <prefix> [class=C]\n"
              "dmsc intent del <kind> <prefix>\n"
              "  Policy through the Scheduling Center (needs the SCSC): it turns intents\n"
              "  into forwarding rules and pushes them to every forwarder.",
    "nodes": "dmsc nodes\n  Every node: role, layer, management address, forwarder pid and state.",
    "pods": "dmsc pods\n  Every pod: its SG, address, what it serves, and its SG's view (service\n"
            "  addresses, open connections).",
    "pod": "dmsc pod <pod> <command ...>\n"
           "  Run a command in a pod (its resolver is its SG), e.g.\n"
           "  dmsc pod cli1 curl -s http://web.dmsc/",
    "status": "dmsc status <node>\n  <node>'s forwarder status: faces, table sizes, FIB digest, drops.",
    "converge": "dmsc converge [timeout]\n  Poll until routing has converged again; prints how long it took.",
}


@dataclass
class Result:
    ok: bool
    text: str
    data: Any = field(default=None, repr=False)


class DmscCommands:
    def __init__(self, lab) -> None:
        self.lab = lab

    # --------------------------------------------------------------- dispatch
    def run_line(self, line: str) -> Result:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise LabError(f"cannot parse the command: {exc}") from None
        if not argv or argv[0] in ("help", "-h", "--help"):
            if len(argv) > 1 and argv[1] in HELP:
                return Result(True, HELP[argv[1]])
            return Result(True, usage())
        cmd, args = argv[0], argv[1:]
        fn: Optional[Callable[..., Result]] = getattr(self, f"cmd_{cmd}", None)
        if fn is None:
            raise LabError(f"unknown dmsc command {cmd!r}\n{usage()}")
        try:
            return fn(*args)
        except TypeError as exc:
            if "positional argument" in str(exc) or "takes" in str(exc):
                raise LabError(f"usage: {HELP[cmd]}") from None
            raise
        except CtlError as exc:
            return Result(False, f"error: {exc}")

    # ---------------------------------------------------------------- helpers
    def _fwd(self, node: str):
        app = self.lab.node(node)
        if node in self.lab.dead_nodes:
            raise LabError(f"node {node} is failed (dmsc restore {node})")
        return app

    # --------------------------------------------------------------- commands
    def cmd_ping(self, node: str, name: str, count: str = "3") -> Result:
        data = self._fwd(node).api("POST", "/ping", {"name": name, "count": int(count),
                                                     "timeout": 1.0, "interval": 0.1})
        return Result(data["received"] > 0, render("ping", data), data)

    def cmd_route(self, node: str, name: str) -> Result:
        data = self._fwd(node).api("POST", "/trace", {"name": name})
        return Result(bool(data["reached"]), render("trace", data), data)

    def cmd_fib(self, node: str) -> Result:
        data = self._fwd(node).api("GET", "/fib")
        return Result(True, render("fib", data), data)

    def cmd_flows(self, node: str) -> Result:
        data = self._fwd(node).api("GET", "/flows")
        return Result(True, render("flows", data) if data["flows"] else "no flows", data)

    def cmd_status(self, node: str) -> Result:
        data = self._fwd(node).status()
        return Result(True, render("status", data), data)

    def cmd_nodes(self) -> Result:
        rows = []
        for name, spec in self.lab.topo.nodes.items():
            app = self.lab.fwd.get(name)
            state = "FAILED" if name in self.lab.dead_nodes else (
                "running" if app is not None and app.running else "stopped")
            svcs = ",".join(s.prefix for s in self.lab.topo.services_on(name))
            rows.append([name, spec.role, spec.layer, spec.pod or "", self.lab.mgmt_ip.get(name, ""),
                         app.pid if app else "", state, svcs])
        return Result(True, _table(rows, ["node", "role", "layer", "pod", "mgmt", "pid", "state",
                                          "services"]), rows)

    def cmd_converge(self, timeout: str = "60") -> Result:
        took = self.lab.wait_converged(float(timeout))
        return Result(True, f"converged in {took:.2f} s", took)

    def cmd_call(self, node: str, name: str, payload: str = "") -> Result:
        from forwarder.apps.client import Client, DmscError
        from forwarder.dataplane.names import Name
        spec = self.lab.topo.nodes.get(node)
        if spec is None:
            raise LabError(f"no node {node!r}")
        if spec.role != "sg":
            raise LabError(f"{node} is a Service Router; calls start at a Service Gateway (role sg)")
        app = self._fwd(node)
        body = payload.encode()
        svc = self._service_for(name)
        http_wrapped = False
        if svc is not None and svc.kind == "http" and not _looks_http(body):
            from forwarder.apps.http_proxy import HttpRequest, encode_request
            sub = name[len(svc.prefix):] or "/"
            host = ".".join(reversed([c for c in svc.prefix.split("/") if c])) + ".dmsc"
            req = HttpRequest("POST" if body else "GET", sub,
                              [("Host", host), ("Content-Type", "application/json")], body)
            body = encode_request(req)
            http_wrapped = True
        t = time.monotonic()
        try:
            with Client(str(app.app_socket), timeout=2.0, retries=2) as c:
                reply = c.request(Name.parse(name), body)
        except DmscError as exc:
            return Result(False, f"call {name} from {node} failed: {exc}", {"error": str(exc)})
        ms = (time.monotonic() - t) * 1000
        out = reply.payload
        data: Dict[str, Any] = {"responder": reply.src.text, "ms": ms, "payload": out}
        shown = out.decode(errors="replace")
        ok = True
        if http_wrapped or _looks_http_response(out):
            from forwarder.apps.http_proxy import decode_response
            try:
                resp = decode_response(out)
                data["http_status"] = resp.status
                shown = f"HTTP {resp.status} {resp.reason}\n{resp.body.decode(errors='replace')}"
                ok = resp.status < 400
                out = resp.body
            except ValueError:
                pass
        try:
            data["json"] = json.loads(out)
        except ValueError:
            pass
        if isinstance(data.get("json"), dict) and "error" in data["json"]:
            ok = False
        return Result(ok, f"reply from {reply.src.text} in {ms:.1f} ms:\n{shown.rstrip()}", data)

    def _service_for(self, name: str):
        best = None
        for s in self.lab.topo.services:
            if name == s.prefix or name.startswith(s.prefix + "/"):
                if best is None or len(s.prefix) > len(best.prefix):
                    best = s
        return best

    def cmd_telemetry(self, prefix: str = "/") -> Result:
        prefix = prefix.rstrip("/") or "/"
        rows: List[list] = []
        totals: Dict[str, List[int]] = {}
        data: Dict[str, Dict[str, dict]] = {}
        for n in self.lab.live_nodes():
            try:
                c = self.lab.fwd[n].api("GET", "/counters", timeout=5.0)
            except CtlError:
                continue
            for p, pc in c["prefixes"].items():
                if not p or not (prefix == "/" or p == prefix or p.startswith(prefix + "/")):
                    continue
                if not (pc["requests"] or pc["served"]):
                    continue
                data.setdefault(p, {})[n] = pc
                lat, svc = pc["latency"], pc["service_latency"]
                rows.append([p, n, pc["requests"], pc["responses"], pc["nacks"],
                             lat["p50_us"] if lat["count"] else "", lat["p99_us"] if lat["count"] else "",
                             pc["served"], svc["p50_us"] if svc["count"] else ""])
                t = totals.setdefault(p, [0, 0, 0, 0])
                for i, k in enumerate(("requests", "responses", "nacks", "served")):
                    t[i] += pc[k]
        rows.sort(key=lambda r: (r[0], r[1]))
        text = _table(rows, ["prefix", "node", "requests", "responses", "nacks", "p50_us", "p99_us",
                             "served", "service_p50_us"]) if rows else f"no requests under {prefix} yet"
        if totals:
            text += "\n\ntotals: " + "; ".join(f"{p}: {t[0]} requests, {t[1]} responses, {t[2]} nacks, "
                                               f"{t[3]} served" for p, t in sorted(totals.items()))
        if self.lab.scsc is not None:
            try:
                view = self.lab.scsc_api("GET", "/telemetry")
                text += "\n\n" + _scsc_summary(view, prefix)
            except LabError as exc:
                text += f"\n\nSCSC view unavailable: {exc}"
        return Result(True, text, {"prefixes": data, "totals": totals})

    def cmd_policy(self, *args: str) -> Result:
        if not args or args[0] in ("list", "show"):
            rows = []
            data = {}
            for n in self.lab.live_nodes():
                rules = self.lab.fwd[n].api("GET", "/strategy")["rules"]
                data[n] = rules
                for r in rules:
                    rows.append([n, r["prefix"], "deny" if r["deny"] else "", r["rate"] or "",
                                 r["priority"] if r["priority"] is not None else "",
                                 ", ".join(f"{k}={v:g}" for k, v in r["weights"].items()), r["origin"]])
            text = _table(rows, ["node", "prefix", "deny", "rate/s", "prio", "weights", "origin"]) \
                if rows else "no forwarding strategy rules on any node"
            if self.lab.scsc is not None:
                try:
                    intents = self.lab.scsc_api("GET", "/intents")
                    text += "\n\nSCSC intents: " + json.dumps(intents)
                except LabError as exc:
                    text += f"\n\nSCSC intents unavailable: {exc}"
            return Result(True, text, data)
        action, rest = args[0], list(args[1:])
        if action not in ("set", "del") or not rest:
            raise LabError("usage: " + HELP["policy"])
        prefix, opts = rest[0], rest[1:]
        nodes = self.lab.live_nodes()
        body: Dict[str, Any] = {"prefix": prefix}
        weights: Dict[str, float] = {}
        for o in opts:
            key, sep, val = o.partition("=")
            if o == "deny":
                body["deny"] = True
            elif key == "at" and sep:
                nodes = self.lab.live_nodes() if val == "all" else [v for v in val.split(",") if v]
                for v in nodes:
                    self._fwd(v)
            elif key in ("rate", "burst") and sep:
                body[key] = float(val)
            elif key == "priority" and sep:
                body[key] = int(val)
            elif key == "weight" and sep:
                target, _, w = val.rpartition(":")
                if not target:
                    raise LabError(f"weight={val}: expected INSTANCE_OR_FACE:WEIGHT")
                weights[target] = float(w)
            else:
                raise LabError(f"unknown policy option {o!r}\nusage: {HELP['policy']}")
        if action == "del":
            done = []
            for n in nodes:
                try:
                    self.lab.fwd[n].api("DELETE", "/strategy?" + urlencode({"prefix": prefix}))
                    done.append(n)
                except CtlError:
                    pass
            return Result(True, f"rule for {prefix} removed on {len(done)} node(s)", done)
        if weights:
            body["weights"] = weights
        for n in nodes:
            self.lab.fwd[n].api("POST", "/strategy", body)
        return Result(True, f"rule {json.dumps(body)} set on {len(nodes)} node(s)", body)

    def cmd_intent(self, *args: str) -> Result:
        lab = self.lab
        if lab.scsc is None:
            raise LabError(f"no SCSC in this lab ({lab.scsc_reason}); use dmsc policy")
        if not args:
            intents = lab.scsc_api("GET", "/intents")
            return Result(True, json.dumps(intents, indent=1), intents)
        if args[0] == "del":
            if len(args) != 3:
                raise LabError("usage: dmsc intent del <kind> <prefix>")
            res = lab.scsc_api("DELETE", "/intents?" + urlencode({"wait": 10, "kind": args[1],
                                                                  "prefix": args[2]}))
            return Result(bool(res.get("applied", True)),
                          f"intent {args[1]} {args[2]} removed (applied: {res.get('applied')})", res)
        if len(args) < 2:
            raise LabError("usage: " + HELP["intent"])
        kind, prefix = args[0], args[1]
        body: Dict[str, Any] = {"kind": kind, "prefix": prefix}
        weights: Dict[str, float] = {}
        for o in args[2:]:
            k, sep, v = o.rpartition("=")
            if not sep:
                raise LabError(f"{o!r}: expected KEY=VALUE")
            if kind == "pin_weights":
                weights[k] = float(v)
            elif k in ("rate", "burst"):
                body[k] = float(v)
            elif k == "class":
                body["class"] = int(v)
            else:
                raise LabError(f"unknown option {k!r} for a {kind} intent")
        if weights:
            body["weights"] = weights
        res = lab.scsc_api("POST", "/intents?wait=10", body)
        ok = bool(res.get("applied", True))
        return Result(ok, f"intent {json.dumps(body)} applied on {res.get('forwarders')} forwarder(s)"
                          f" in {res.get('push_ms', '?')} ms" if ok else
                      f"intent not applied everywhere: {res}", res)

    def cmd_pods(self) -> Result:
        rows, data = [], {}
        gateways = {}
        for name, spec in sorted(self.lab.pods.items()):
            if spec.sg not in gateways:
                try:
                    gateways[spec.sg] = self._fwd(spec.sg).status().get("gateway") or {}
                except (CtlError, LabError):
                    gateways[spec.sg] = {}
            gw = gateways[spec.sg]
            data[name] = {"sg": spec.sg, "address": spec.address, "serves": spec.services,
                          "netns": spec.netns}
            rows.append([name, spec.sg, spec.address, ",".join(spec.services) or "-",
                         gw.get("connections", "?")])
        if not rows:
            return Result(True, "no pods (the topology has none: YAML `pods:`, or --pods)", data)
        return Result(True, _table(rows, ["pod", "SG", "address", "serves", "SG connections"]), data)

    def cmd_pod(self, pod: str, *argv: str) -> Result:
        spec = self.lab.pods.get(pod)
        if spec is None:
            raise LabError(f"no pod named {pod!r} (dmsc pods lists them)")
        if not argv:
            raise LabError(f"usage: {HELP['pod']}")
        import subprocess
        try:
            res = subprocess.run(["ip", "netns", "exec", spec.netns, *argv], capture_output=True,
                                 text=True, timeout=120, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            return Result(False, f"error: {exc}")
        except subprocess.TimeoutExpired:
            return Result(False, "error: the command ran for more than 120 s")
        text = (res.stdout + res.stderr).rstrip()
        return Result(res.returncode == 0, text, {"returncode": res.returncode,
                                                  "stdout": res.stdout, "stderr": res.stderr})

    def cmd_fail(self, target: str) -> Result:
        return Result(True, self.lab.fail(target))

    def cmd_restore(self, target: str) -> Result:
        return Result(True, self.lab.restore(target))


def _scsc_summary(view: dict, prefix: str) -> str:
    """The SCSC's telemetry (GET /telemetry), reduced to the prefixes asked for."""
    fwds = view.get("forwarders", {}) if isinstance(view, dict) else {}
    connected = sum(1 for f in fwds.values() if isinstance(f, dict) and f.get("connected"))
    rows = []
    for node, f in sorted(fwds.items()):
        for p, m in sorted((f.get("prefixes") or {}).items() if isinstance(f, dict) else ()):
            if not isinstance(m, dict) or not (prefix == "/" or p == prefix or p.startswith(prefix + "/")):
                continue
            if not (m.get("request_rate") or m.get("served_rate") or m.get("responses")):
                continue
            rows.append([p, node, m.get("request_rate"), m.get("responses"), m.get("errors"),
                         m.get("latency_p50_us"), m.get("served_rate"), m.get("service_p50_us")])
    head = f"SCSC view: {connected}/{len(fwds)} forwarders connected"
    if not rows:
        return head + f"; no recent traffic under {prefix}"
    return head + "\n" + _table(rows, ["prefix", "node", "req/s", "responses", "errors", "p50_us",
                                        "served/s", "service_p50_us"])


def usage() -> str:
    lines = ["DMSC commands (dmsc help <command> for details):"]
    for k in ("ping", "call", "route", "fib", "flows", "telemetry", "policy", "intent", "fail",
              "restore", "nodes", "status", "converge", "pods", "pod"):
        lines.append("  " + HELP[k].splitlines()[0])
    return "\n".join(lines)


def _looks_http(b: bytes) -> bool:
    return b.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH") \
        and b"HTTP/1." in b.split(b"\r\n", 1)[0]


def _looks_http_response(b: bytes) -> bool:
    return b.startswith(b"HTTP/1.")


def _table(rows, headers) -> str:
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
