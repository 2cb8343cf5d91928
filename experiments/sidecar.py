"""Sidecar experiment: the shop three ways on the same fabric -- direct, nginx sidecars, DMSC.

One lab (default the k=4 fat tree with the shop, SPA and the SCSC); on the
same veths and the same router hosts:

* direct: kernel IPv4 routing (experiments/sidecar_mesh.py: IpFabric, /31 per
  link, a pod address per SG node, shortest-path ECMP routes in every node),
  plain HTTP from the client pod to the service's pod address;
* sidecar: one nginx per pod (inbound on the pod address -> the app on
  127.0.0.1; outbound on 127.0.0.1 -> the destination's inbound sidecars by
  Host header, keep-alive upstreams), for every shop instance, the client pod
  and the bench service pods, as per-pod sidecars;
* dmsc: HTTP through the SG adapters: the client's SG HTTP proxy
  (127.0.0.1:8080, Host cart.exp.dmsc) -> DMSC over the forwarders -> the
  server SG's http_backend adapter -> the app.

All three reach the *same* server processes on the server SG: the shop's cart
(topologies/shop/services.py --app cart, a Python HTTP server; the headline
numbers) and a null service (nginx answering 200 "ok") that isolates the
communication layer from the app. wrk in the client SG's host measures:

* latency: 1 connection, back to back, p50/p75/p90/p99 (wrk --latency);
* throughput at saturation: --conns connections, 2 threads (requests/s);
* CPU seconds of the communication layer during each run (the sidecars'
  nginx processes; all forwarders with their adapters; nothing for direct,
  whose kernel work is not attributable to a process), per 1,000 requests,
  and the whole machine's busy CPU per 1,000 requests (includes wrk, the app
  and the kernel; noisy on a shared machine);
* memory (PSS) of the communication layer as deployed;
* scaling: on one SG node, --pods-per-node pods each of: nginx sidecars (one
  per pod), client-library pods on the SG (no per-pod process at all) and
  plain-HTTP pods published by the SG (one http_backend adapter per pod); the
  proxy count and memory per node measured at each count, and extrapolated to
  the topology's SG count.

Modes are interleaved (the order rotates each round) so that the machine's
background load hits them alike; ratios are measured side by side in one run.

Outputs: config.json, runs.csv (every wrk run), wrk/*.txt (raw wrk output),
memory.json, scaling.csv, sidecar_latency.png, sidecar_throughput.png,
sidecar_cpu.png, sidecar_scaling.png, summary.md/json.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Dict, List, Optional

from topologies.measure import (children_map, group_usage, machine_cpu_busy_s, proc_cpu_s, wait_for,
                                with_descendants)

from .common import (build_topology, Experiment, fmt, issue_identity, lab_facts, md_table,
                     parse_list, ProcSet, Progress, Results, rnd, run_main, settle, start_lab)
from .sidecar_mesh import (IN_BASE_PORT, OUT_BASE_PORT, IpFabric, NginxApp, Sidecar, run_wrk,
                           wait_listening)

NAME = "sidecar"
MODES = ["direct", "sidecar", "dmsc"]
LABELS = {"direct": "direct", "sidecar": "sidecar", "dmsc": "dmsc"}
BACKENDS = {"cart": {"port": 9101, "prefix": "/exp/cart", "host": "cart.exp.dmsc",
                     "path": "/items?user=bench"},
            "null": {"port": 9102, "prefix": "/exp/null", "host": "null.exp.dmsc", "path": "/"}}
HEADLINE = "cart"
WARMUP_HANG_S = 60

DEFAULTS = dict(topology="fat-tree:4", duration=5.0, rounds=2, conns=16, backends="cart,null",
                pods_per_node="1,2,4,8,16", hello_ms=300, dead_ms=3000, scsc="off")
QUICK = dict(duration=2.0, rounds=1, pods_per_node="1,4")


def add_args(ap) -> None:
    ap.add_argument("--topology", help="fat-tree:K, leaf-spine:SxLxH or linear:N (default fat-tree:4)")
    ap.add_argument("--duration", type=float, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, help="rounds of every mode x backend (medians reported)")
    ap.add_argument("--conns", type=int, help="connections of the saturation runs")
    ap.add_argument("--backends", help="cart (the shop's cart), null (nginx 200 ok), or both")
    ap.add_argument("--pods-per-node", help="pod counts of the scaling measurement")
    ap.add_argument("--hello-ms", type=int, help="routing hello interval (default 300)")
    ap.add_argument("--dead-ms", type=int,
                    help="routing dead interval (default 3000: saturation runs starve the Python "
                         "forwarders of a 2-core machine, which must not flap adjacencies)")
    ap.add_argument("--scsc", choices=["auto", "off"],
                    help="run the SCSC (default off: the sidecar mesh has no control plane either)")


class SidecarExperiment(Experiment):
    def __init__(self, args, res: Results, progress: Progress) -> None:
        super().__init__(args, res, progress)
        self.runs: List[dict] = []
        self.sidecars: List[Sidecar] = []
        self.dmsc_adapters: List[Any] = []
        self.apps: List[Any] = []
        self.memory: Dict[str, Any] = {}
        self.scaling: List[dict] = []
        self.idle: Dict[str, float] = {}
        (res.dir / "wrk").mkdir(exist_ok=True)

    # --------------------------------------------------------------- set-up
    def setup(self) -> None:
        a = self.a
        topo = build_topology(a.topology)
        self.lab = start_lab(topo, self.res, self.p, run_kind="exp-sidecar", hello_ms=a.hello_ms,
                             dead_ms=a.dead_ms, scsc=a.scsc, dataplane=a.dataplane)
        lab = self.lab
        self.procs = ProcSet(lab)
        sgs = topo.sgs
        proxied = [n for n in sgs if lab.wants_proxy(n)]
        self.client = proxied[0]
        far = [n for n in sgs if topo.nodes[n].pod != topo.nodes[self.client].pod] or \
              [n for n in sgs if n != self.client]
        self.server = far[-1]
        self.scale_node = next((n for n in sgs if n not in (self.client, self.server)
                                and not topo.services_on(n)), sgs[len(sgs) // 2])
        self.p.log(f"client pod on {self.client}, server pods on {self.server}; "
                   f"scaling on {self.scale_node}")
        # kernel routing over the same fabric
        self.fabric = IpFabric(lab)
        self.fabric_info = self.fabric.configure()
        if not self.fabric.check(self.client, self.server):
            raise RuntimeError(f"kernel routing: {self.client} cannot reach {self.server}")
        self.p.log(f"kernel routing: {self.fabric_info['routes']} routes in "
                   f"{self.fabric_info['configure_s']} s; {self.client} reaches {self.server}")
        pod = self.fabric.pod_ip
        # the bench service pods on the server SG: the shop's cart and the null app
        backends = parse_list(a.backends, str)
        self.backends = [b for b in backends if b in BACKENDS]
        if "cart" in self.backends:
            # the shop's cart, as the lab runs it (one write per response, TCP_NODELAY)
            self.apps.append(self.procs.python(self.server, "bench-cart", "topologies.shop.services",
                                               "--app", "cart", "--node", self.server, "--http",
                                               f"0.0.0.0:{BACKENDS['cart']['port']}"))
        if "null" in self.backends:
            self.apps.append(NginxApp(self.procs, self.server, "bench-null",
                                      f"0.0.0.0:{BACKENDS['null']['port']}").proc)
        for b in self.backends:
            wait_listening(lab, self.server, "127.0.0.1", BACKENDS[b]["port"], 20)
        # DMSC: the server SG's adapters publish the same servers
        for b in self.backends:
            cfg = BACKENDS[b]
            ident = issue_identity(lab, cfg["prefix"], f"bench{b}", self.server)
            argv = ["--socket", str(lab.fwd[self.server].app_socket), "--prefix", cfg["prefix"],
                    "--backend", f"127.0.0.1:{cfg['port']}"]
            if ident:
                argv += ["--identity", str(ident)]
            self.dmsc_adapters.append(self.procs.python(self.server, f"http_backend-{b}",
                                                        "forwarder.apps.http_backend", *argv))

        def routed() -> bool:
            fib = {e["prefix"] for e in lab.fwd[self.client].api("GET", "/fib")["entries"]}
            return all(BACKENDS[b]["prefix"] in fib for b in self.backends)
        wait_for(routed, 30, 0.25, "the bench prefixes in the client SG's FIB", retry_on=(Exception,))
        # the sidecar mesh: one sidecar per pod
        self.build_mesh()
        self.res.write_config(**lab_facts(lab), client=self.client, server=self.server,
                              scale_node=self.scale_node, ip_fabric=self.fabric_info,
                              pod_addresses=pod, sidecars=[s.name + "@" + s.node for s in self.sidecars])

    def build_mesh(self) -> None:
        lab, topo, pod = self.lab, self.lab.topo, self.fabric.pod_ip
        from topologies.shop.deploy import HTTP_PORTS
        # pods: every shop instance, the bench client, the bench servers
        pods: List[dict] = []
        for svc in topo.services:
            for n in svc.nodes:
                pods.append({"node": n, "name": f"sc-{svc.app}", "host": _host(svc.prefix),
                             "app_port": HTTP_PORTS.get(svc.app, 9100)})
        for b in self.backends:
            pods.append({"node": self.server, "name": f"sc-bench-{b}", "host": BACKENDS[b]["host"],
                         "app_port": BACKENDS[b]["port"]})
        pods.append({"node": self.client, "name": "sc-bench-client", "host": None, "app_port": None})
        per_node: Dict[str, int] = {}
        for p in pods:
            i = per_node.get(p["node"], 0)
            per_node[p["node"]] = i + 1
            p["in_port"] = IN_BASE_PORT + i if p["host"] else None
            p["out_port"] = OUT_BASE_PORT + i
        services: Dict[str, List[tuple]] = {}
        for p in pods:
            if p["host"]:
                services.setdefault(p["host"], []).append((pod[p["node"]], p["in_port"]))
        for p in pods:
            inbound = (pod[p["node"]], p["in_port"], p["app_port"]) if p["host"] else None
            sc = Sidecar(self.procs, p["node"], p["name"], inbound=inbound, out_port=p["out_port"],
                         services=services)
            sc.pod = p
            self.sidecars.append(sc)
        for sc in self.sidecars:
            wait_listening(lab, sc.node, "127.0.0.1", sc.out_port, 20)
        self.client_sidecar = next(s for s in self.sidecars if s.name == "sc-bench-client")
        self.p.log(f"sidecar mesh: {len(self.sidecars)} nginx sidecars (one per pod) on "
                   f"{len(per_node)} nodes")

    # ------------------------------------------------------------- process sets
    def comm_pids(self, mode: str) -> List[int]:
        kids = children_map()
        if mode == "sidecar":
            return with_descendants([s.pid for s in self.sidecars], kids)
        if mode == "dmsc":
            base = [f.pid for f in self.lab.fwd.values()] + [p.pid for p in self.dmsc_adapters]
            return with_descendants(base, kids)
        return []

    def dmsc_split(self) -> Dict[str, dict]:
        kids = children_map()
        sg = [self.lab.fwd[n].pid for n in self.lab.topo.sgs] + [p.pid for p in self.dmsc_adapters]
        sr = [self.lab.fwd[n].pid for n in self.lab.topo.srs]
        return {"sg": group_usage(with_descendants(sg, kids)),
                "sr": group_usage(with_descendants(sr, kids))}

    def app_pids(self) -> List[int]:
        return with_descendants([p.pid for p in self.apps])

    # ------------------------------------------------------------------ runs
    def target(self, mode: str, backend: str) -> tuple:
        cfg = BACKENDS[backend]
        if mode == "direct":
            return f"http://{self.fabric.pod_ip[self.server]}:{cfg['port']}{cfg['path']}", None
        if mode == "sidecar":
            return f"http://127.0.0.1:{self.client_sidecar.out_port}{cfg['path']}", cfg["host"]
        return f"http://127.0.0.1:8080{cfg['path']}", cfg["host"]     # the lab's own proxy

    def one(self, rnd_i: int, mode: str, backend: str, kind: str) -> dict:
        a = self.a
        url, host = self.target(mode, backend)
        conns, threads = (1, 1) if kind == "latency" else (a.conns, 2)
        comm = self.comm_pids(mode)
        apps = self.app_pids()
        settled = settle(self.lab, 60)
        c0 = sum(proc_cpu_s(p) for p in comm)
        a0 = sum(proc_cpu_s(p) for p in apps)
        m0 = machine_cpu_busy_s()
        t0 = time.time()
        res, wrk_cpu = run_wrk(self.lab, self.client, url, host, threads=threads, conns=conns,
                               duration=a.duration)
        dt = time.time() - t0
        c1 = sum(proc_cpu_s(p) for p in comm)
        a1 = sum(proc_cpu_s(p) for p in apps)
        m1 = machine_cpu_busy_s()
        raw = res.pop("raw")
        (self.res.dir / "wrk" / f"r{rnd_i}-{backend}-{mode}-{kind}.txt").write_text(raw)
        n = res.get("requests") or 0
        k = n / 1000.0 if n else None
        row = {"round": rnd_i, "backend": backend, "mode": mode, "kind": kind, "conns": conns,
               "url": url, "host": host, "duration_s": round(dt, 2), **res,
               "comm_cpu_s": round(c1 - c0, 3), "app_cpu_s": round(a1 - a0, 3),
               "wrk_cpu_s": round(wrk_cpu, 3), "machine_cpu_s": round(m1 - m0, 3),
               "comm_cpu_ms_per_1k": round((c1 - c0) * 1000 / k, 2) if k else None,
               "machine_cpu_ms_per_1k": round((m1 - m0) * 1000 / k, 2) if k else None,
               "comm_processes": len(comm), "settle_s": round(settled, 2)}
        row["errors"] = (res.get("non_2xx") or 0) + sum((res.get("socket_errors") or {}).values())
        self.runs.append(row)
        self.p.log(f"{backend:4} {mode:7} {kind:10} p50 {fmt(res.get('p50_us'), 0)} us, p99 "
                   f"{fmt(res.get('p99_us'), 0)} us, {fmt(res.get('rps'), 0)} req/s, comm CPU "
                   f"{fmt(row['comm_cpu_ms_per_1k'], 1)} ms/1k req, errors {row['errors']}")
        return row

    def idle_cpu(self) -> None:
        """Background CPU of each communication layer with no traffic (hellos, telemetry...)."""
        d = max(2.0, self.a.duration)
        settle(self.lab, 60)
        for mode in ("sidecar", "dmsc"):
            pids = self.comm_pids(mode)
            c0 = sum(proc_cpu_s(p) for p in pids)
            time.sleep(d)
            self.idle[mode] = round((sum(proc_cpu_s(p) for p in pids) - c0) / d, 4)
        self.idle["direct"] = 0.0

    def measure_memory(self) -> None:
        kids = children_map()
        self.memory = {
            "sidecar": {**group_usage(with_descendants([s.pid for s in self.sidecars], kids)),
                        "proxies": len(self.sidecars)},
            "dmsc": {**group_usage(self.comm_pids("dmsc")), "forwarders": len(self.lab.fwd),
                     "sg": len(self.lab.topo.sgs), "sr": len(self.lab.topo.srs),
                     "split": self.dmsc_split()},
            "direct": {"processes": 0, "pss_mb": 0.0, "rss_mb": 0.0,
                       "note": "kernel IP forwarding: no process"},
            "apps": group_usage(self.app_pids()),
        }
        self.res.write_json("memory.json", self.memory)

    # --------------------------------------------------------------- scaling
    def scale(self) -> None:
        a, lab = self.a, self.lab
        node = self.scale_node
        counts = sorted(int(x) for x in parse_list(a.pods_per_node))
        ip = self.fabric.pod_ip[node]
        app_port = BACKENDS["null"]["port"] if "null" in self.backends else 9102
        app = NginxApp(self.procs, node, "scale-app", f"127.0.0.1:{app_port}")
        wait_listening(lab, node, "127.0.0.1", app_port, 10)
        sidecars: List[Sidecar] = []
        pods: List[Any] = []
        adapters: List[Any] = []
        sg_pid = lab.fwd[node].pid
        base_sg = group_usage(with_descendants([sg_pid]))
        for p in counts:
            while len(sidecars) < p:
                i = len(sidecars)
                sc = Sidecar(self.procs, node, f"scale-sc{i}", inbound=(ip, 16000 + i, app_port),
                             out_port=17000 + i, services={"null.exp.dmsc": [(ip, 16000 + i)]})
                sidecars.append(sc)
                prefix = f"/exp/pod{i}"
                ident = issue_identity(lab, prefix, f"pod{i}", node)
                argv = ["--socket", str(lab.fwd[node].app_socket), "--prefix", prefix, "--node", node]
                if ident:
                    argv += ["--identity", str(ident)]
                pods.append(self.procs.python(node, f"scale-pod{i}", "experiments.testsvc", *argv))
                hprefix = f"/exp/hpod{i}"
                ident = issue_identity(lab, hprefix, f"hpod{i}", node)
                argv = ["--socket", str(lab.fwd[node].app_socket), "--prefix", hprefix, "--backend",
                        f"127.0.0.1:{app_port}"]
                if ident:
                    argv += ["--identity", str(ident)]
                adapters.append(self.procs.python(node, f"scale-http{i}", "forwarder.apps.http_backend",
                                                  *argv))
            for sc in sidecars:
                wait_listening(lab, node, ip, sc.inbound[1], 20)
            want = {f"/exp/pod{i}" for i in range(p)} | {f"/exp/hpod{i}" for i in range(p)}
            wait_for(lambda: want <= set(lab.fwd[node].status()["local_prefixes"]), 60, 0.25,
                       f"{p} pods registered at {node}", retry_on=(Exception,))
            time.sleep(0.5)
            kids = children_map()
            sc_use = group_usage(with_descendants([s.pid for s in sidecars], kids))
            sg_use = group_usage(with_descendants([sg_pid], kids))
            ad_use = group_usage(with_descendants([x.pid for x in adapters], kids))
            row = {"pods_per_node": p,
                   "sidecar_proxies": len(sidecars), "sidecar_processes": sc_use["processes"],
                   "sidecar_pss_mb": sc_use["pss_mb"], "sidecar_rss_mb": sc_use["rss_mb"],
                   "dmsc_lib_proxies": 1, "dmsc_lib_pss_mb": sg_use["pss_mb"],
                   "dmsc_lib_rss_mb": sg_use["rss_mb"],
                   "dmsc_http_proxies": 1 + len(adapters),
                   "dmsc_http_pss_mb": round(sg_use["pss_mb"] + ad_use["pss_mb"], 2),
                   "dmsc_http_rss_mb": round(sg_use["rss_mb"] + ad_use["rss_mb"], 2),
                   "sg_processes": sg_use["processes"], "adapter_pss_mb": ad_use["pss_mb"],
                   "registered_prefixes": len(lab.fwd[node].status()["local_prefixes"])}
            self.scaling.append(row)
            self.p.log(f"scaling {p} pods/node: sidecars {row['sidecar_pss_mb']} MB "
                       f"({row['sidecar_proxies']} proxies), SG {row['dmsc_lib_pss_mb']} MB (1), "
                       f"SG + HTTP adapters {row['dmsc_http_pss_mb']} MB ({row['dmsc_http_proxies']})")
        self.scale_base = base_sg
        self.procs.stop([s.proc for s in sidecars] + [app.proc] + pods + adapters)
        self.res.write_csv("scaling.csv", self.scaling)

    # ------------------------------------------------------------------- run
    def run(self) -> None:
        a = self.a
        backends = [b for b in parse_list(a.backends, str) if b in BACKENDS]
        if not backends:
            raise SystemExit(f"sidecar: --backends must name some of {list(BACKENDS)}")
        n_runs = a.rounds * len(backends) * len(MODES) * 2
        self.p.total = 5 + n_runs
        self.p.step(f"bringing up {a.topology}")
        self.setup()
        self.p.step("kernel routing, sidecars and adapters ready; warming up every path")
        for b in self.backends:
            for m in MODES:
                url, host = self.target(m, b)
                # A path's first request can be lost or slow on a busy machine (a DMSC call
                # lost on the way is retried after 5 s, past a 1 s run): warm up until the
                # path answers, giving up only after a hang limit.
                deadline = time.monotonic() + WARMUP_HANG_S
                while True:
                    res, _ = run_wrk(self.lab, self.client, url, host, threads=1, conns=2, duration=1)
                    if res.get("requests"):
                        break
                    self.p.log(f"warm-up: no answer on the {m} path to {b} within 1 s; again")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"warm-up: no answers on the {m} path to {b} in "
                                           f"{WARMUP_HANG_S} s: {url}")
        self.p.step("idle CPU of each communication layer")
        self.idle_cpu()
        for r in range(a.rounds):
            order = MODES[r % 3:] + MODES[:r % 3]
            for b in self.backends:
                for m in order:
                    for kind in ("latency", "saturation"):
                        self.p.step(f"round {r + 1}: {b} via {m}, {kind}")
                        self.one(r, m, b, kind)
        self.p.step("memory of the communication layers")
        self.measure_memory()
        self.p.step("scaling with pods per node")
        self.scale()

    # ---------------------------------------------------------------- report
    def med(self, backend: str, mode: str, kind: str, key: str) -> Optional[float]:
        vals = [r[key] for r in self.runs if r["backend"] == backend and r["mode"] == mode
                and r["kind"] == kind and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def report(self, error: Optional[str]) -> None:
        a = self.a
        self.res.write_csv("runs.csv", self.runs)
        head: Dict[str, Any] = {}
        if error:
            head["error"] = error
        table: Dict[str, Dict[str, dict]] = {}
        for b in getattr(self, "backends", []):
            for m in MODES:
                d = {"p50_us": self.med(b, m, "latency", "p50_us"),
                     "p90_us": self.med(b, m, "latency", "p90_us"),
                     "p99_us": self.med(b, m, "latency", "p99_us"),
                     "latency_rps": self.med(b, m, "latency", "rps"),
                     "rps": self.med(b, m, "saturation", "rps"),
                     "sat_p50_us": self.med(b, m, "saturation", "p50_us"),
                     "sat_p99_us": self.med(b, m, "saturation", "p99_us"),
                     "comm_cpu_ms_per_1k": self.med(b, m, "saturation", "comm_cpu_ms_per_1k"),
                     "machine_cpu_ms_per_1k": self.med(b, m, "saturation", "machine_cpu_ms_per_1k"),
                     "errors": sum(r["errors"] for r in self.runs if r["backend"] == b and r["mode"] == m)}
                table.setdefault(b, {})[m] = d
                pre = "" if b == HEADLINE else f"{b}_"
                head[f"{m}_{pre}p50_us"] = rnd(d["p50_us"], 1)
                head[f"{m}_{pre}p99_us"] = rnd(d["p99_us"], 1)
                head[f"{m}_{pre}rps"] = rnd(d["rps"], 1)
                head[f"{m}_{pre}comm_cpu_ms_per_1k"] = d["comm_cpu_ms_per_1k"]
        head["by_backend"] = table
        head["headline_backend"] = HEADLINE
        mem = self.memory
        if mem:
            head["comm_memory_mb"] = {"direct": 0.0, "sidecar": mem["sidecar"]["pss_mb"],
                                      "dmsc": mem["dmsc"]["pss_mb"],
                                      "dmsc_sg": mem["dmsc"]["split"]["sg"]["pss_mb"],
                                      "dmsc_sr": mem["dmsc"]["split"]["sr"]["pss_mb"]}
            head["comm_processes"] = {"direct": 0, "sidecar": mem["sidecar"]["processes"],
                                      "dmsc": mem["dmsc"]["processes"]}
            head["proxies"] = {"direct": 0, "sidecar": mem["sidecar"]["proxies"],
                               "dmsc_sg": mem["dmsc"]["sg"], "dmsc_sr": mem["dmsc"]["sr"]}
        head["idle_comm_cpu_s_per_s"] = self.idle
        per = self.per_unit()
        if per:
            head["scaling"] = per
        head["wins"], head["losses"] = self.verdicts(table, per)
        self.plot(table)
        self.res.summary(head, self.markdown(head, table, per, error))

    def per_unit(self) -> Optional[dict]:
        if not self.scaling:
            return None
        last = self.scaling[-1]
        p = last["pods_per_node"]
        m_sc = last["sidecar_pss_mb"] / p
        m_sg = last["dmsc_lib_pss_mb"]
        m_ad = (last["dmsc_http_pss_mb"] - last["dmsc_lib_pss_mb"]) / p
        nodes = len(self.lab.topo.sgs)
        cross = m_sg / m_sc if m_sc else None
        return {"rows": self.scaling, "sidecar_mb_per_pod": rnd(m_sc, 2), "sg_mb_per_node": rnd(m_sg, 2),
                "http_adapter_mb_per_pod": rnd(m_ad, 2), "nodes": nodes,
                "pods_per_node_where_sidecars_outweigh_one_sg": rnd(cross, 2),
                "sg_growth_mb_from_1_to_max_pods": rnd(last["dmsc_lib_pss_mb"] - self.scaling[0]["dmsc_lib_pss_mb"], 2),
                "cluster_at_max_pods": {"pods_per_node": p, "nodes": nodes,
                                        "sidecar_proxies": nodes * p,
                                        "sidecar_mb": rnd(nodes * p * m_sc, 1),
                                        "dmsc_sgs": nodes, "dmsc_lib_mb": rnd(nodes * m_sg, 1),
                                        "dmsc_http_mb": rnd(nodes * (m_sg + p * m_ad), 1)}}

    def verdicts(self, table: Dict[str, Dict[str, dict]], per: Optional[dict]) -> tuple:
        wins, losses = [], []
        for b, t in table.items():
            d, s, x = t["direct"], t["sidecar"], t["dmsc"]
            if x["p50_us"] and s["p50_us"]:
                (wins if x["p50_us"] < s["p50_us"] else losses).append(
                    f"{b}: latency p50 {x['p50_us']:.0f} us via DMSC vs {s['p50_us']:.0f} us via sidecars "
                    f"({x['p50_us'] / s['p50_us']:.1f}x) and {d['p50_us'] or 0:.0f} us direct")
            if x["p99_us"] and s["p99_us"]:
                (wins if x["p99_us"] < s["p99_us"] else losses).append(
                    f"{b}: latency p99 {x['p99_us']:.0f} us via DMSC vs {s['p99_us']:.0f} us via sidecars")
            if x["rps"] and s["rps"]:
                (wins if x["rps"] > s["rps"] else losses).append(
                    f"{b}: throughput {x['rps']:.0f} req/s via DMSC vs {s['rps']:.0f} via sidecars "
                    f"and {d['rps'] or 0:.0f} direct")
            if x["comm_cpu_ms_per_1k"] and s["comm_cpu_ms_per_1k"]:
                (wins if x["comm_cpu_ms_per_1k"] < s["comm_cpu_ms_per_1k"] else losses).append(
                    f"{b}: communication-layer CPU {x['comm_cpu_ms_per_1k']:.0f} ms per 1k requests via "
                    f"DMSC vs {s['comm_cpu_ms_per_1k']:.0f} via sidecars")
        mem = self.memory
        if mem:
            dm, sm = mem["dmsc"]["pss_mb"], mem["sidecar"]["pss_mb"]
            (wins if dm < sm else losses).append(
                f"memory as deployed ({mem['sidecar']['proxies']} pods): DMSC {dm:.0f} MB "
                f"({mem['dmsc']['forwarders']} forwarders + adapters; SGs alone "
                f"{mem['dmsc']['split']['sg']['pss_mb']:.0f} MB) vs sidecars {sm:.0f} MB")
        if per:
            c = per["cluster_at_max_pods"]
            wins.append(f"proxy count: sidecars grow with pods ({c['sidecar_proxies']} for {c['nodes']} "
                        f"nodes x {c['pods_per_node']} pods), DMSC gateways with nodes ({c['dmsc_sgs']})")
            (wins if c["dmsc_lib_mb"] < c["sidecar_mb"] else losses).append(
                f"memory at {c['pods_per_node']} pods/node, client-library pods: DMSC "
                f"{c['dmsc_lib_mb']:.0f} MB vs sidecars {c['sidecar_mb']:.0f} MB for {c['nodes']} nodes "
                f"(crossover at {per['pods_per_node_where_sidecars_outweigh_one_sg']} pods/node)")
            (wins if c["dmsc_http_mb"] < c["sidecar_mb"] else losses).append(
                f"memory at {c['pods_per_node']} pods/node, plain-HTTP pods (one Python http_backend "
                f"adapter per pod, {per['http_adapter_mb_per_pod']} MB each): DMSC {c['dmsc_http_mb']:.0f} MB "
                f"vs sidecars {c['sidecar_mb']:.0f} MB")
        return wins, losses

    def markdown(self, head: dict, table: dict, per: Optional[dict], error: Optional[str]) -> str:
        a = self.a
        md = [f"# Sidecar experiment ({'QUICK' if a.quick else 'default'} run)", ""]
        if error:
            md += [f"**The run stopped early: {error}**", ""]
        if self.lab is not None and hasattr(self, "client"):
            md += [f"{a.topology}, lab run `{self.lab.run_dir}`. Client pod on {self.client}, server "
                   f"pods on {self.server} (across the core). wrk: latency with 1 connection, saturation "
                   f"with {a.conns} connections, {a.duration:g} s per run, {a.rounds} round(s), modes "
                   "interleaved; medians over rounds.", ""]
        for b, t in table.items():
            what = ("the shop's cart (a Python HTTP server): GET /items" if b == "cart" else
                    "the null service (nginx answering 200 ok): the communication layer alone")
            md += [f"## {b}: {what}", "",
                   md_table([[LABELS[m], fmt(t[m]["p50_us"], 0), fmt(t[m]["p90_us"], 0), fmt(t[m]["p99_us"], 0),
                              fmt(t[m]["rps"], 0), fmt(t[m]["sat_p99_us"], 0),
                              fmt(t[m]["comm_cpu_ms_per_1k"], 1), fmt(t[m]["machine_cpu_ms_per_1k"], 1),
                              t[m]["errors"]] for m in MODES],
                            ["mode", "p50 us", "p90 us", "p99 us", "req/s at saturation",
                             "p99 us at saturation", "comm-layer CPU ms / 1k req",
                             "machine CPU ms / 1k req", "errors"]), ""]
        if table:
            md += ["Modes: *direct* = plain HTTP over kernel IP routing on the same veths; *sidecar* = "
                   "client pod -> its nginx sidecar -> kernel routing -> the server pod's nginx sidecar "
                   "-> app; *dmsc* = client pod -> the client SG's HTTP proxy (127.0.0.1:8080) -> DMSC "
                   "forwarders -> the server SG's http_backend adapter -> app. The cart is the shop's "
                   "own HTTP server in every mode (each response in one write, TCP_NODELAY set).", ""]
        mem = self.memory
        if mem:
            md += ["## Communication layer as deployed", "",
                   md_table([["direct", 0, 0, "0.0", f"{self.idle.get('direct', 0):.3f}"],
                             ["sidecar", mem["sidecar"]["proxies"], mem["sidecar"]["processes"],
                              fmt(mem["sidecar"]["pss_mb"], 1), f"{self.idle.get('sidecar', 0):.3f}"],
                             ["dmsc", f"{mem['dmsc']['sg']} SG + {mem['dmsc']['sr']} SR",
                              mem["dmsc"]["processes"],
                              f"{mem['dmsc']['pss_mb']:.1f} (SG {mem['dmsc']['split']['sg']['pss_mb']:.1f}, "
                              f"SR {mem['dmsc']['split']['sr']['pss_mb']:.1f})",
                              f"{self.idle.get('dmsc', 0):.3f}"]],
                            ["mode", "proxies", "processes", "memory PSS MB", "idle CPU s/s"]), "",
                   "Direct and sidecar modes forward in the kernel on the router nodes; DMSC runs a "
                   "forwarder process on every node (SR numbers), which a deployment on real routers "
                   "would not count on the hosts.", ""]
        if per:
            md += ["## Scaling with pods per node (measured on one node)", "",
                   md_table([[r["pods_per_node"], r["sidecar_proxies"], fmt(r["sidecar_pss_mb"], 1),
                              r["dmsc_lib_proxies"], fmt(r["dmsc_lib_pss_mb"], 1), r["dmsc_http_proxies"],
                              fmt(r["dmsc_http_pss_mb"], 1)] for r in per["rows"]],
                            ["pods/node", "sidecars", "sidecar MB", "DMSC SG (lib pods)", "SG MB",
                             "SG + adapters (HTTP pods)", "SG + adapters MB"]), "",
                   f"Per unit: {per['sidecar_mb_per_pod']} MB per sidecar, {per['sg_mb_per_node']} MB per "
                   f"SG (it grew {per['sg_growth_mb_from_1_to_max_pods']} MB from "
                   f"{per['rows'][0]['pods_per_node']} to {per['rows'][-1]['pods_per_node']} pods), "
                   f"{per['http_adapter_mb_per_pod']} MB per http_backend adapter. Extrapolated to "
                   f"{per['nodes']} nodes in `scaling` of summary.json.", ""]
        md += ["## Where DMSC wins", ""] + [f"* {w}" for w in head.get("wins", [])] + [""]
        md += ["## Where DMSC loses", ""] + [f"* {l}" for l in head.get("losses", [])] + [""]
        md.append("Plots: `sidecar_latency.png`, `sidecar_throughput.png`, `sidecar_cpu.png`, "
                  "`sidecar_scaling.png`. Every wrk output is in `wrk/`.")
        return "\n".join(md)

    def plot(self, table: Dict[str, Dict[str, dict]]) -> None:
        if table:
            bs = list(table)
            with self.res.figure("sidecar_latency", ncols=len(bs), size=(5 * len(bs), 4)) as (fig, ax):
                for i, b in enumerate(bs):
                    x = range(len(MODES))
                    for j, (key, lab) in enumerate((("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"))):
                        ax[0][i].bar([v + (j - 1) * 0.27 for v in x],
                                     [table[b][m][key] or 0 for m in MODES], width=0.27, label=lab)
                    ax[0][i].set_xticks(list(x), MODES, rotation=15)
                    if any(table[b][m]["p50_us"] for m in MODES):
                        ax[0][i].set_yscale("log")
                    ax[0][i].set_ylabel("latency, 1 connection (us)")
                    ax[0][i].set_title(b)
                    ax[0][i].legend()
            with self.res.figure("sidecar_throughput", ncols=len(bs), size=(5 * len(bs), 4)) as (fig, ax):
                for i, b in enumerate(bs):
                    ax[0][i].bar(MODES, [table[b][m]["rps"] or 0 for m in MODES],
                                 color=["tab:green", "tab:orange", "tab:blue", "tab:grey"])
                    ax[0][i].set_ylabel(f"req/s at saturation ({self.a.conns} connections)")
                    ax[0][i].set_title(b)
            with self.res.figure("sidecar_cpu", ncols=len(bs), size=(5 * len(bs), 4)) as (fig, ax):
                for i, b in enumerate(bs):
                    ax[0][i].bar([v - 0.2 for v in range(len(MODES))],
                                 [table[b][m]["comm_cpu_ms_per_1k"] or 0 for m in MODES], width=0.4,
                                 label="communication layer")
                    ax[0][i].bar([v + 0.2 for v in range(len(MODES))],
                                 [table[b][m]["machine_cpu_ms_per_1k"] or 0 for m in MODES], width=0.4,
                                 label="whole machine")
                    ax[0][i].set_xticks(range(len(MODES)), MODES)
                    ax[0][i].set_ylabel("CPU ms per 1,000 requests")
                    ax[0][i].set_title(b)
                    ax[0][i].legend()
        if self.scaling:
            rows = self.scaling
            x = [r["pods_per_node"] for r in rows]
            with self.res.figure("sidecar_scaling", ncols=2, size=(11, 4.2)) as (fig, ax):
                ax[0][0].plot(x, [r["sidecar_proxies"] for r in rows], "o-", label="sidecars")
                ax[0][0].plot(x, [r["dmsc_lib_proxies"] for r in rows], "o-", label="DMSC SG (library pods)")
                ax[0][0].plot(x, [r["dmsc_http_proxies"] for r in rows], "o--",
                              label="DMSC SG + HTTP adapters (plain-HTTP pods)")
                ax[0][0].set_xlabel("pods per node")
                ax[0][0].set_ylabel("proxy processes per node")
                ax[0][0].legend(fontsize=8)
                ax[0][0].grid(alpha=0.3)
                ax[0][1].plot(x, [r["sidecar_pss_mb"] for r in rows], "o-", label="sidecars")
                ax[0][1].plot(x, [r["dmsc_lib_pss_mb"] for r in rows], "o-", label="DMSC SG (library pods)")
                ax[0][1].plot(x, [r["dmsc_http_pss_mb"] for r in rows], "o--",
                              label="DMSC SG + HTTP adapters")
                ax[0][1].set_xlabel("pods per node")
                ax[0][1].set_ylabel("memory per node, PSS (MB)")
                ax[0][1].legend(fontsize=8)
                ax[0][1].grid(alpha=0.3)


def _host(prefix: str) -> str:
    return ".".join(reversed([c for c in prefix.split("/") if c])) + ".dmsc"


def main(argv=None) -> int:
    return run_main(NAME, __doc__, add_args, DEFAULTS, QUICK, SidecarExperiment, argv)


if __name__ == "__main__":
    sys.exit(main())
