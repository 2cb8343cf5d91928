"""The scripted tour (`--demo`): every step prints its outcome; True only if all passed.

Steps: registration (with SPA: an unauthorized registration is refused),
discovery (every node routes every service prefix), a ping, calls (client
library, and curl through an SG's HTTP proxy), the route a name takes, a link
failure on that route and the recovery, telemetry, a policy change (weights
pin an anycast service to one instance -- an intent pushed by the SCSC when
it runs, which must also see every forwarder -- then a deny rule).
"""
from __future__ import annotations

import json
import subprocess
import time
import traceback
from typing import Callable, List, Tuple

from ..proc import LabError
from .commands import DmscCommands


class Step(Exception):
    """A failed expectation inside a step."""


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise Step(msg)


class Tour:
    def __init__(self, lab, out: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.cmd = DmscCommands(lab)
        self.out = out
        self.results: List[Tuple[str, bool, str]] = []
        topo = lab.topo
        self.svc = {s.app: s for s in topo.services}
        # the client SG: one hosting no shop service if possible, else one without payment
        hosting = {n for s in topo.services for n in s.nodes}
        free = [n for n in topo.sgs if n not in hosting]
        pay = set(self.svc["payment"].nodes) if "payment" in self.svc else set()
        self.client = (free or [n for n in topo.sgs if n not in pay] or topo.sgs)[-1]
        # what the route and failure steps follow: a service with no instance on the client,
        # else the farthest node
        remote = [s.prefix for s in sorted(topo.services, key=lambda s: s.app != "payment")
                  if self.client not in s.nodes]
        if remote:
            self.target = remote[0]
        else:
            from .model import distances
            d = distances(topo.adjacency(), self.client)
            self.target = "/node/" + max(d, key=lambda n: (d[n], n))

    def step(self, title: str, fn: Callable[[], str]) -> bool:
        t = time.monotonic()
        try:
            detail = fn()
            ok = True
        except (Step, LabError) as exc:
            detail, ok = str(exc), False
        except Exception as exc:  # a bug in the lab or the forwarder: report, go on
            detail, ok = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", False
        took = time.monotonic() - t
        self.results.append((title, ok, detail))
        mark = "PASS" if ok else "FAIL"
        self.out(f"[{mark}] {title} ({took:.1f} s)")
        for line in (detail or "").rstrip().splitlines():
            self.out(f"       {line}")
        return ok

    # ------------------------------------------------------------------ steps
    def registration(self) -> str:
        lines = []
        for s in self.lab.topo.services:
            for n in s.nodes:
                st = self.lab.fwd[n].status()
                expect(s.prefix in st["local_prefixes"], f"{s.prefix} is not registered on {n}")
            lines.append(f"{s.prefix} ({s.kind}) registered on {', '.join(s.nodes)}")
        if self.lab.spa:
            from forwarder.apps.client import Client, DmscError
            n = self.lab.topo.sgs[0]
            with Client(str(self.lab.fwd[n].app_socket), timeout=2.0) as c:
                try:
                    c.register("/shop/catalog")
                    refused = None
                except DmscError as exc:
                    refused = str(exc)
            expect(refused is not None and "spa" in refused,
                   f"SPA: a registration without an authorization was accepted on {n}")
            lines.append(f"SPA: an unauthorized registration of /shop/catalog on {n} was refused "
                         f"({refused.split(': ', 1)[-1]})")
        return "\n".join(lines)

    def discovery(self) -> str:
        prefixes = [s.prefix for s in self.lab.topo.services]
        live = self.lab.live_nodes()
        for n in live:
            for p in prefixes:
                r = self.lab.fwd[n].api("GET", f"/lookup?name={p}")
                expect(r["fib"] is not None, f"{n} has no route for {p}")
        r = self.lab.fwd[self.client].api("GET", "/lookup?name=/shop/catalog")
        inst = sorted({nh["instance"] for nh in r["fib"]["nexthops"] if nh.get("instance")})
        return (f"all {len(live)} nodes route {', '.join(prefixes)}\n"
                f"{self.client}: /shop/catalog -> {len(r['fib']['nexthops'])} next hop(s), "
                f"instances {', '.join(inst) or '(this node)'}")

    def ping(self) -> str:
        res = self.cmd.cmd_ping(self.client, "/shop/catalog", "3")
        expect(res.ok and res.data["received"] == 3, f"ping lost echoes:\n{res.text}")
        responders = {r["responder"] for r in res.data["results"] if r["ok"]}
        instances = {f"/node/{n}" for n in self.svc["catalog"].nodes} if "catalog" in self.svc else set()
        expect(not instances or responders <= instances,
               f"echo answered by {responders}, not a catalog instance {instances}")
        far = self.lab.topo.srs[0] if self.lab.topo.srs else self.lab.topo.sgs[0]
        res2 = self.cmd.cmd_ping(self.client, f"/node/{far}", "1")
        expect(res2.ok, f"ping /node/{far} failed:\n{res2.text}")
        return res.text + "\n" + res2.text.splitlines()[0]

    def calls(self) -> str:
        out = []
        res = self.cmd.cmd_call(self.client, "/shop/frontend/checkout",
                                json.dumps({"user": "demo", "item": 2}))
        expect(res.ok, f"checkout failed: {res.text}")
        j = res.data.get("json") or {}
        expect(j.get("order", {}).get("payment") == "paid", f"checkout did not pay: {j}")
        out.append(f"client library: /shop/frontend/checkout answered by {res.data['responder']}: "
                   f"calls {json.dumps(j.get('calls'))}, order {json.dumps(j.get('order'))}")
        res = self.cmd.cmd_call(self.client, "/shop/cart/items?user=demo")
        expect(res.ok and res.data.get("http_status") == 200, f"cart call failed: {res.text}")
        out.append(f"plain HTTP service over DMSC: /shop/cart -> HTTP {res.data['http_status']} "
                   f"from {res.data['json'].get('instance')}")
        proxy_sg = next((n for n in self.lab.topo.sgs
                         if self.lab.node_config(n).get("http_proxy")), None)
        if proxy_sg is not None:
            body = self.curl(proxy_sg, "http://cart.shop.dmsc/items?user=demo")
            expect(body.get("service") == "cart", f"curl through the HTTP proxy: {body}")
            body2 = self.curl(proxy_sg, "http://frontend.shop.dmsc/")
            expect(body2.get("service") == "frontend", f"curl frontend through the proxy: {body2}")
            out.append(f"curl on {proxy_sg} through its HTTP proxy: cart.shop.dmsc -> "
                       f"{body.get('instance')}, frontend.shop.dmsc -> {body2.get('instance')}")
        return "\n".join(out)

    def curl(self, node: str, url: str) -> dict:
        from .net import HTTP_PROXY
        res = subprocess.run(["ip", "netns", "exec", self.lab.netns[node], "curl", "-sS", "-m", "10",
                              "-x", f"http://{HTTP_PROXY}", url],
                             capture_output=True, text=True, timeout=20)
        expect(res.returncode == 0, f"curl {url} on {node}: {res.stderr.strip()}")
        try:
            return json.loads(res.stdout)
        except ValueError:
            raise Step(f"curl {url} on {node}: not JSON: {res.stdout[:200]}") from None

    def route(self) -> str:
        res = self.cmd.cmd_route(self.client, self.target)
        expect(res.ok, f"trace did not reach {self.target}:\n{res.text}")
        self.path = [h["node"] for h in res.data["hops"]]
        return res.text

    def _failable(self, path: List[str]):
        """The first link on client -> path whose loss keeps the network connected."""
        from .model import distances
        topo = self.lab.topo
        nodes = [self.client] + [n.split("/")[-1] for n in path]
        for a, b in zip(nodes, nodes[1:]):
            for l in topo.links_between(a, b):
                adj = topo.adjacency(down=[l] + self.lab.down_links, dead=self.lab.dead_nodes)
                if len(distances(adj, a)) == len(topo.nodes) - len(self.lab.dead_nodes):
                    return l
        return None

    def failure(self) -> str:
        """Fail a link on the current path whose loss keeps the network connected."""
        from .model import distances
        topo = self.lab.topo
        candidate = self._failable(list(getattr(self, "path", [])))
        if candidate is None:  # e.g. the instance sits behind the same leaf: go far instead
            d = distances(topo.adjacency(), self.client)
            for far in sorted(d, key=lambda n: (-d[n], n)):
                tr = self.cmd.cmd_route(self.client, f"/node/{far}")
                if tr.ok:
                    candidate = self._failable([h["node"] for h in tr.data["hops"]])
                    if candidate is not None:
                        self.target = f"/node/{far}"
                        break
                if d[far] < 2:
                    break
        if candidate is None:
            return "skipped: no link on any path can fail without cutting the network"
        target = f"{candidate.a}-{candidate.b}"
        lines = [self.cmd.cmd_fail(target).text]
        t0 = time.monotonic()
        ok_after = None
        while time.monotonic() - t0 < 20:
            if self.target == "/shop/payment":
                r = self.cmd.cmd_call(self.client, "/shop/payment/pay",
                                      json.dumps({"user": "demo", "amount": 1}))
            else:
                r = self.cmd.cmd_ping(self.client, self.target, "1")
            if r.ok:
                ok_after = time.monotonic() - t0
                break
            time.sleep(0.2)
        expect(ok_after is not None, f"{self.target} unreachable for 20 s after {target} failed")
        tr = self.cmd.cmd_route(self.client, self.target)
        expect(tr.ok, f"no route to {self.target} after the failure:\n{tr.text}")
        hops = [h["node"].split("/")[-1] for h in tr.data["hops"]]
        seq = [self.client] + hops
        used = any({x, y} == {candidate.a, candidate.b} for x, y in zip(seq, seq[1:]))
        expect(not used, f"the new path still crosses {target}: {' -> '.join(seq)}")
        lines.append(f"{'calls to' if self.target == '/shop/payment' else 'pings to'} {self.target} "
                     f"work again {ok_after:.2f} s after the failure; new path {' -> '.join(seq)}")
        lines.append(self.cmd.cmd_restore(target).text)
        took = self.lab.wait_converged(60)
        lines.append(f"restored; converged again in {took:.2f} s")
        return "\n".join(lines)

    def telemetry(self) -> str:
        from forwarder.apps.client import Client
        with Client(str(self.lab.fwd[self.client].app_socket), timeout=2.0, retries=2) as c:
            for i in range(20):
                c.call("/shop/catalog", b"", flow=f"t{i}")
        res = self.cmd.cmd_telemetry("/shop/catalog")
        per_node = res.data["prefixes"].get("/shop/catalog", {})
        mine = per_node.get(self.client)
        expect(mine is not None and mine["requests"] >= 20 and mine["latency"]["count"] >= 20,
               f"{self.client}'s counters do not show the 20 requests: {mine}")
        served = sum(pc["served"] for n, pc in per_node.items() if n != self.client)
        expect(served >= 20, f"the instances report only {served} served requests")
        return res.text

    def policy(self) -> str:
        """Pin /shop/catalog to one instance (through the SCSC when it runs), then deny."""
        from forwarder.apps.client import Client, NackError
        lab = self.lab
        cat = self.svc.get("catalog")
        expect(cat is not None and len(cat.nodes) >= 2, "needs /shop/catalog with 2+ instances")
        pinned = cat.nodes[-1]
        lines = []
        if lab.scsc is not None:
            seen = lab.scsc_forwarders()
            missing = [n for n in lab.live_nodes() if f"/node/{n}" not in seen]
            expect(not missing, f"the SCSC does not see {', '.join(missing[:6])}")
            res = self.cmd.cmd_intent("pin_weights", "/shop/catalog", f"/node/{pinned}=1")
            expect(res.ok, f"the SCSC did not apply the intent: {res.text}")
            lines.append(f"the SCSC sees all {len(lab.live_nodes())} forwarders; {res.text}")
        else:
            lines.append(self.cmd.cmd_policy("set", "/shop/catalog", f"weight=/node/{pinned}:1").text)
        with Client(str(lab.fwd[self.client].app_socket), timeout=2.0, retries=2) as c:
            seen_i = {json.loads(c.call("/shop/catalog", b"", flow=f"p{time.time_ns()}-{i}"))["instance"]
                      for i in range(12)}
        if lab.scsc is not None:
            lines.append(self.cmd.cmd_intent("del", "pin_weights", "/shop/catalog").text)
        else:
            lines.append(self.cmd.cmd_policy("del", "/shop/catalog").text)
        expect(seen_i == {f"/node/{pinned}"}, f"weights pinned /node/{pinned}, answers came from {seen_i}")
        lines.append(f"12 new flows to /shop/catalog all answered by /node/{pinned}")
        lines.append(self.cmd.cmd_policy("set", "/shop/payment", "deny", f"at={self.client}").text)
        with Client(str(lab.fwd[self.client].app_socket), timeout=2.0) as c:
            try:
                c.call("/shop/payment/pay", b"{}")
                denied = None
            except NackError as exc:
                denied = exc.reason_name
        lines.append(self.cmd.cmd_policy("del", "/shop/payment", f"at={self.client}").text)
        expect(denied == "DENIED", f"a call under a deny rule got {denied or 'an answer'}")
        lines.append(f"/shop/payment denied at {self.client}: NACK {denied}")
        r = self.cmd.cmd_call(self.client, "/shop/payment/pay", json.dumps({"amount": 2}))
        expect(r.ok, f"payment still refused after the rule was removed: {r.text}")
        lines.append("rule removed: /shop/payment answers again")
        return "\n".join(lines)

    # ------------------------------------------------------------------- run
    def run(self) -> bool:
        lab = self.lab
        self.out(f"*** DMSC tour on {lab.topo.name}, client gateway {self.client}")
        steps = [("registration: services registered at their gateways, SPA enforced", self.registration),
                 ("discovery: every node routes every service prefix", self.discovery),
                 ("ping: DMSC echo to a service name and a node name", self.ping),
                 ("calls: the shop through the client library and the HTTP adapters", self.calls),
                 (f"route: the path {self.target} takes, hop by hop", self.route),
                 ("failure: a link on that path fails, traffic recovers, the link comes back",
                  self.failure),
                 ("telemetry: request counts and latency per prefix", self.telemetry),
                 ("policy: weights pin an anycast service"
                  f"{' (an SCSC intent)' if lab.scsc is not None else ''}, a deny rule refuses calls",
                  self.policy)]
        ok = all([self.step(t, f) for t, f in steps])
        passed = sum(1 for _, o, _ in self.results if o)
        self.out(f"*** tour {'PASSED' if ok else 'FAILED'}: {passed}/{len(self.results)} steps")
        return ok


def run_demo(lab, out: Callable[[str], None] = print) -> bool:
    return Tour(lab, out).run()
