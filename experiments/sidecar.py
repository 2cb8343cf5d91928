"""Sidecar experiment: the same services in pods, five ways on the same fabric, interleaved.

One lab (default the k=4 fat tree with the shop, SPA and the SCSC). Three pods
take part in every mode (topologies/pods.py: a namespace behind its SG, the SG
its default gateway and resolver): a client pod ``bcli`` behind the client SG
and, across the core, two server pods behind the server SG: ``bcart`` (the
shop's cart, topologies/shop/services.py, a Python HTTP server: the headline
numbers) and ``bnull`` (nginx answering 200 "ok": the communication layer
alone). Each server listens on port 80 of its pod. wrk runs in ``bcli``:

* direct: kernel IPv4 routing of pod addresses over the same veths and router
  hosts (experiments/sidecar_mesh.py: IpFabric), wrk to the server pod's address;
* sidecar: one nginx per pod, in the pod (outbound on 127.0.0.1 -> the server
  pod's inbound sidecar by Host -> the app on 127.0.0.1), keep-alive upstreams;
* sidecar_haproxy: the same mesh with HAProxy (experiments/sidecar_haproxy.py);
* dmsc_l7: today's adapters, with the kernel fast path between the SGs: the
  client SG's HTTP proxy (on 169.254.1.1:8080, the pod's gateway) -> DMSC ->
  the server SG's http_backend adapter -> the server pod;
* dmsc_l4: the SG as the pods' default gateway (docs/protocol.md 13): wrk asks
  for ``http://cart.exp.dmsc/``, the SG's DNS answers the service address, and
  the pod's own TCP connection is carried by name, in the kernel once
  established, to the server pod; no proxy anywhere.

Measured per mode and service, modes interleaved (the order rotates each
round), medians over rounds:

* latency: 1 connection, back to back, p50/p90/p99 (wrk --latency);
* throughput at saturation: --conns connections, 2 threads (requests/s);
* communication-layer CPU per 1,000 requests, as the kernel accounts it: the
  mode's own processes (utime + stime of the proxies, forwarders and adapters,
  /proc/<pid>/stat) plus the machine's softirq time (/proc/stat) per 1,000
  requests above the direct mode's in the same round and kind: packet work
  that runs in softirq (the SGs' eBPF programs, veth and loopback hops) is not
  charged to any process. Direct is the baseline (0 by this definition). The
  eBPF programs' own run time (kernel.bpf_stats_enabled) is recorded beside it;
* memory (PSS) of the communication layer as deployed, and idle CPU;
* scaling: on one SG node, --pods-per-node pods each of: nginx sidecars,
  client-library pods on the SG and plain-HTTP pods published by the SG; proxy
  count and memory per node, extrapolated to the topology's SG count.

Outputs: config.json, runs.csv (every wrk run), wrk/*.txt (raw wrk output),
memory.json, scaling.csv, sidecar_latency.png, sidecar_throughput.png,
sidecar_cpu.png, sidecar_scaling.png, summary.md/json. summary.json keys:
``<mode>_p50_us``, ``_p99_us``, ``_rps``, ``_comm_cpu_ms_per_1k`` for the cart
and ``<mode>_null_...`` for the null service; ``dmsc_*`` are the ``dmsc_l7``
figures (the name the adapters' mode had before the L4 mode existed).
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from topologies.measure import (bpf_run_ns, children_map, group_usage, machine_cpu_busy_s,
                                machine_softirq_s, proc_cpu_s, wait_for, with_descendants)

from .common import (build_topology, Experiment, issue_identity, lab_facts, ns_run, parse_list,
                     ProcSet, Progress, Results, run_main, settle, start_lab)
from .sidecar_haproxy import HaproxySidecar
from .sidecar_mesh import (IN_BASE_PORT, OUT_BASE_PORT, IpFabric, NginxApp, Sidecar, run_wrk,
                           wait_listening)
from . import sidecar_report

NAME = "sidecar"
MODES = ["direct", "sidecar", "sidecar_haproxy", "dmsc_l7", "dmsc_l4"]
SIDECAR_KINDS = {"sidecar": Sidecar, "sidecar_haproxy": HaproxySidecar}
HAPROXY_PORT_OFFSET = 50     # HAProxy's listeners beside nginx's in the same pod
POD_PORT = 80                # every server pod's app
L7_PROXY = ("169.254.1.1", 8080)   # the client SG's HTTP proxy, where its pods reach it
BACKENDS = {"cart": {"pod": "bcart", "prefix": "/exp/cart", "host": "cart.exp.dmsc",
                     "path": "/items?user=bench"},
            "null": {"pod": "bnull", "prefix": "/exp/null", "host": "null.exp.dmsc", "path": "/"}}
CLIENT_POD = "bcli"
HEADLINE = "cart"
BPF_PROGS = ("fp_ingress", "fp_pod_ingress")
IP_MODES = ("direct", "sidecar", "sidecar_haproxy")   # pods reach each other's own addresses
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


def _ends(topo) -> tuple:
    """(client SG, server SG): the first SG with the shop's frontend, and an SG in
    another pod of the fabric (the last one), so the path crosses the core."""
    sgs = topo.sgs
    fronts = [n for s in topo.services if s.app == "frontend" for n in s.nodes if n in sgs]
    client = fronts[0] if fronts else sgs[0]
    far = [n for n in sgs if topo.nodes[n].pod != topo.nodes[client].pod] or \
          [n for n in sgs if n != client] or [client]
    return client, far[-1]


class SidecarExperiment(Experiment):
    def __init__(self, args, res: Results, progress: Progress) -> None:
        super().__init__(args, res, progress)
        self.runs: List[dict] = []
        self.meshes: Dict[str, List[Any]] = {m: [] for m in SIDECAR_KINDS}
        self.out_port: Dict[str, int] = {}
        self.l7_adapters: List[Any] = []
        self.apps: List[Any] = []
        self.memory: Dict[str, Any] = {}
        self.scaling: List[dict] = []
        self.idle: Dict[str, float] = {}
        self.bpf_stats_was: Optional[str] = None
        self.forwarding: Optional[bool] = None
        (res.dir / "wrk").mkdir(exist_ok=True)

    # --------------------------------------------------------------- set-up
    def setup(self) -> None:
        a = self.a
        topo = build_topology(a.topology)
        self.client, self.server = _ends(topo)
        self.backends = [b for b in parse_list(a.backends, str) if b in BACKENDS]
        topo.add_pod(CLIENT_POD, self.client)
        for b in self.backends:
            topo.add_pod(BACKENDS[b]["pod"], self.server, [BACKENDS[b]["prefix"] + "/_l4"])
        self.scale_node = next((n for n in topo.sgs if n not in (self.client, self.server)
                                and not topo.services_on(n)), topo.sgs[len(topo.sgs) // 2])
        self.lab = start_lab(topo, self.res, self.p, run_kind="exp-sidecar", hello_ms=a.hello_ms,
                             dead_ms=a.dead_ms, scsc=a.scsc, dataplane=a.dataplane)
        lab = self.lab
        self.procs = ProcSet(lab)
        self.p.log(f"client pod {CLIENT_POD} on {self.client}, server pods on {self.server}; "
                   f"scaling on {self.scale_node}; data plane {lab.dataplane_in_use.get('mode')}")
        self.fabric = IpFabric(lab)
        self.fabric_info = self.fabric.configure()
        if not self.fabric.check(self.client, self.server):
            raise RuntimeError(f"kernel routing: {self.client} cannot reach {self.server}")
        self.forwarding = True
        self.start_servers()
        self.start_l7()
        self.build_meshes()
        self.enable_bpf_stats()
        self.res.write_config(**lab_facts(lab), client=self.client, server=self.server,
                              scale_node=self.scale_node, ip_fabric=self.fabric_info,
                              pods={n: s.address for n, s in lab.pods.items()},
                              sidecars={m: [s.name + "@" + s.node for s in v]
                                        for m, v in self.meshes.items()})

    def ip_forwarding(self, on: bool) -> None:
        """IPv4 forwarding in the SGs with pods: on for the modes that route the pods' own
        addresses, off for DMSC's. A gateway that carries a pod's connection passes its
        first packets up to its Python (docs/protocol.md 13.5); a node that also routed
        them itself would deliver a second copy, with the pod's own source address, which
        the client's stack answers with a reset."""
        if on == self.forwarding:
            return
        for n in (self.client, self.server):
            ns_run(self.lab, n, ["sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}"])
        self.forwarding = on

    def pod_addr(self, pod: str) -> str:
        return self.lab.pods[pod].address

    def start_servers(self) -> None:
        lab = self.lab
        if "cart" in self.backends:   # the shop's cart, as the lab runs it
            self.apps.append(self.procs.python("bcart", "bench-cart", "topologies.shop.services",
                                               "--app", "cart", "--node", self.server, "--http",
                                               f"0.0.0.0:{POD_PORT}"))
        if "null" in self.backends:
            self.apps.append(NginxApp(self.procs, "bnull", "bench-null", f"0.0.0.0:{POD_PORT}").proc)
        for b in self.backends:
            wait_listening(lab, BACKENDS[b]["pod"], "127.0.0.1", POD_PORT, 20)

    def start_l7(self) -> None:
        """dmsc_l7: the server SG's http_backend adapters publish the pods' servers under
        the same prefixes (the pods serve <prefix>/_l4); the client SG's HTTP proxy
        listens where its pods reach it."""
        lab = self.lab
        for b in self.backends:
            cfg = BACKENDS[b]
            ident = issue_identity(lab, cfg["prefix"], f"bench{b}", self.server)
            argv = ["--socket", str(lab.fwd[self.server].app_socket), "--prefix", cfg["prefix"],
                    "--backend", f"{self.pod_addr(cfg['pod'])}:{POD_PORT}"]
            if ident:
                argv += ["--identity", str(ident)]
            self.l7_adapters.append(self.procs.python(self.server, f"http_backend-{b}",
                                                      "forwarder.apps.http_backend", *argv))
        host, port = L7_PROXY
        self.l7_adapters.append(self.procs.python(
            self.client, "http_proxy-pods", "forwarder.apps.http_proxy",
            "--socket", str(lab.fwd[self.client].app_socket), "--listen", f"{host}:{port}"))
        wait_listening(lab, self.client, host, port, 20)

        def routed() -> bool:
            fib = {e["prefix"] for e in lab.fwd[self.client].api("GET", "/fib")["entries"]}
            vips = (lab.fwd[self.client].status().get("gateway") or {}).get("services", {})
            return all(BACKENDS[b]["prefix"] in fib and BACKENDS[b]["prefix"] in vips
                       for b in self.backends)
        wait_for(routed, 30, 0.25, "the bench prefixes and their service addresses at the client SG",
                 retry_on=(Exception,))

    def build_meshes(self) -> None:
        """A sidecar of each kind in every bench pod, and (nginx only, for the memory and
        proxy counts) beside every shop instance on its SG host, as before."""
        from topologies.shop.deploy import HTTP_PORTS
        topo = self.lab.topo
        for kind, cls in SIDECAR_KINDS.items():
            off = HAPROXY_PORT_OFFSET if kind == "sidecar_haproxy" else 0
            pods: List[dict] = [{"node": CLIENT_POD, "name": f"{kind}-client", "host": None,
                                 "ip": None, "app_port": None}]
            for b in self.backends:
                pods.append({"node": BACKENDS[b]["pod"], "name": f"{kind}-{b}", "host": BACKENDS[b]["host"],
                             "ip": self.pod_addr(BACKENDS[b]["pod"]), "app_port": POD_PORT})
            if kind == "sidecar":
                for svc in topo.services:
                    for n in svc.nodes:
                        pods.append({"node": n, "name": f"sc-{svc.app}", "host": _host(svc.prefix),
                                     "ip": self.fabric.pod_ip[n], "app_port": HTTP_PORTS.get(svc.app, 9100)})
            per_node: Dict[str, int] = {}
            for p in pods:
                i = per_node.get(p["node"], 0)
                per_node[p["node"]] = i + 1
                p["in_port"] = IN_BASE_PORT + off + i if p["host"] else None
                p["out_port"] = OUT_BASE_PORT + off + i
            services: Dict[str, List[tuple]] = {}
            for p in pods:
                if p["host"]:
                    services.setdefault(p["host"], []).append((p["ip"], p["in_port"]))
            for p in pods:
                inbound = (p["ip"], p["in_port"], p["app_port"]) if p["host"] else None
                sc = cls(self.procs, p["node"], p["name"], inbound=inbound, out_port=p["out_port"],
                         services=services)
                self.meshes[kind].append(sc)
            self.out_port[kind] = pods[0]["out_port"]
            for sc in self.meshes[kind]:
                wait_listening(self.lab, sc.node, "127.0.0.1", sc.out_port, 20)
            self.p.log(f"{kind} mesh: {len(self.meshes[kind])} proxies (one per pod)")

    def enable_bpf_stats(self) -> None:
        """kernel.bpf_stats_enabled=1 for the run (restored in teardown): run time per program."""
        try:
            was = subprocess.run(["sysctl", "-n", "kernel.bpf_stats_enabled"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            if was == "0":
                subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True, timeout=10)
                self.bpf_stats_was = was
        except (OSError, subprocess.SubprocessError) as exc:
            self.p.log(f"no eBPF run-time statistics: {exc}")

    def teardown(self) -> None:
        if self.bpf_stats_was is not None:
            subprocess.run(["sysctl", "-qw", f"kernel.bpf_stats_enabled={self.bpf_stats_was}"],
                           timeout=10)
            self.bpf_stats_was = None
        super().teardown()

    # ------------------------------------------------------------- process sets
    def comm_pids(self, mode: str) -> List[int]:
        kids = children_map()
        if mode in SIDECAR_KINDS:
            return with_descendants([s.pid for s in self.meshes[mode]], kids)
        fwd = [f.pid for f in self.lab.fwd.values()]
        if mode == "dmsc_l7":
            return with_descendants(fwd + [p.pid for p in self.l7_adapters], kids)
        if mode == "dmsc_l4":
            return with_descendants(fwd, kids)
        return []

    def app_pids(self) -> List[int]:
        return with_descendants([p.pid for p in self.apps])

    # ------------------------------------------------------------------ runs
    def target(self, mode: str, backend: str) -> tuple:
        """(URL, Host header or None) of a backend from the client pod."""
        cfg = BACKENDS[backend]
        if mode == "direct":
            return f"http://{self.pod_addr(cfg['pod'])}:{POD_PORT}{cfg['path']}", None
        if mode in SIDECAR_KINDS:
            return f"http://127.0.0.1:{self.out_port[mode]}{cfg['path']}", cfg["host"]
        if mode == "dmsc_l7":
            return f"http://{L7_PROXY[0]}:{L7_PROXY[1]}{cfg['path']}", cfg["host"]
        return f"http://{cfg['host']}{cfg['path']}", None          # dmsc_l4: by name

    def one(self, rnd_i: int, mode: str, backend: str, kind: str) -> dict:
        a = self.a
        url, host = self.target(mode, backend)
        conns, threads = (1, 1) if kind == "latency" else (a.conns, 2)
        self.ip_forwarding(mode in IP_MODES)
        comm, apps = self.comm_pids(mode), self.app_pids()
        settled = settle(self.lab, 60)
        c0, a0 = sum(proc_cpu_s(p) for p in comm), sum(proc_cpu_s(p) for p in apps)
        m0, s0, b0 = machine_cpu_busy_s(), machine_softirq_s(), bpf_run_ns(BPF_PROGS)
        t0 = time.time()
        res, wrk_cpu = run_wrk(self.lab, CLIENT_POD, url, host, threads=threads, conns=conns,
                               duration=a.duration)
        dt = time.time() - t0
        c1, a1 = sum(proc_cpu_s(p) for p in comm), sum(proc_cpu_s(p) for p in apps)
        m1, s1, b1 = machine_cpu_busy_s(), machine_softirq_s(), bpf_run_ns(BPF_PROGS)
        raw = res.pop("raw")
        (self.res.dir / "wrk" / f"r{rnd_i}-{backend}-{mode}-{kind}.txt").write_text(raw)
        n = res.get("requests") or 0
        k = n / 1000.0 if n else None
        per_k = (lambda v: round(v * 1000 / k, 3) if k and v is not None else None)
        row = {"round": rnd_i, "backend": backend, "mode": mode, "kind": kind, "conns": conns,
               "url": url, "host": host, "duration_s": round(dt, 2), **res,
               "proc_cpu_s": round(c1 - c0, 3), "softirq_s": round(s1 - s0, 3),
               "bpf_s": round((b1 - b0) / 1e9, 4) if b0 is not None and b1 is not None else None,
               "app_cpu_s": round(a1 - a0, 3), "wrk_cpu_s": round(wrk_cpu, 3),
               "machine_cpu_s": round(m1 - m0, 3), "comm_processes": len(comm),
               "settle_s": round(settled, 2)}
        row["proc_cpu_ms_per_1k"] = per_k(row["proc_cpu_s"])
        row["softirq_ms_per_1k"] = per_k(row["softirq_s"])
        row["bpf_ms_per_1k"] = per_k(row["bpf_s"])
        row["machine_cpu_ms_per_1k"] = per_k(row["machine_cpu_s"])
        row["errors"] = (res.get("non_2xx") or 0) + sum((res.get("socket_errors") or {}).values())
        self.runs.append(row)
        self.p.log(f"{backend:4} {mode:15} {kind:10} p50 {sidecar_report.fmt(res.get('p50_us'), 0)} us, "
                   f"p99 {sidecar_report.fmt(res.get('p99_us'), 0)} us, "
                   f"{sidecar_report.fmt(res.get('rps'), 0)} req/s, processes "
                   f"{sidecar_report.fmt(row['proc_cpu_ms_per_1k'], 1)} + softirq "
                   f"{sidecar_report.fmt(row['softirq_ms_per_1k'], 1)} ms/1k req, errors {row['errors']}")
        return row

    def warm_up(self) -> None:
        """A path's first request can be slow on a busy machine (the first packets of a
        connection go through Python, a lost call is retried after 5 s): warm every
        path up until it answers, giving up only after a hang limit."""
        for b in self.backends:
            for m in MODES:
                url, host = self.target(m, b)
                self.ip_forwarding(m in IP_MODES)
                deadline = time.monotonic() + WARMUP_HANG_S
                while True:
                    try:
                        res, _ = run_wrk(self.lab, CLIENT_POD, url, host, threads=1, conns=2,
                                         duration=1)
                        why = "no answer within 1 s"
                    except RuntimeError as exc:     # wrk could not connect at all
                        res, why = {}, str(exc)
                    if res.get("requests"):
                        break
                    self.p.log(f"warm-up: {m} path to {b}: {why}; again ({self.gateways()})")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"warm-up: no answers on the {m} path to {b} in "
                                           f"{WARMUP_HANG_S} s: {url}")

    def gateways(self) -> str:
        """The client and server SGs' gateway counters, for a log line."""
        out = []
        for n in (self.client, self.server):
            try:
                g = self.lab.fwd[n].status().get("gateway") or {}
                out.append(f"{n}: drops {g.get('drops')}, to pods {g.get('sent_to_pods')}, "
                           f"connections {g.get('conntrack')}")
            except Exception as exc:  # a diagnostic only
                out.append(f"{n}: {exc}")
        return "; ".join(out)

    def idle_cpu(self) -> None:
        """Background CPU of each communication layer with no traffic (hellos, telemetry...)."""
        d = max(2.0, self.a.duration)
        settle(self.lab, 60)
        for mode in MODES[1:]:
            pids = self.comm_pids(mode)
            c0 = sum(proc_cpu_s(p) for p in pids)
            time.sleep(d)
            self.idle[mode] = round((sum(proc_cpu_s(p) for p in pids) - c0) / d, 4)
        self.idle["direct"] = 0.0

    def measure_memory(self) -> None:
        kids = children_map()
        fwd = [f.pid for f in self.lab.fwd.values()]
        sg = [self.lab.fwd[n].pid for n in self.lab.topo.sgs]
        sr = [self.lab.fwd[n].pid for n in self.lab.topo.srs]
        dmsc = {"forwarders": len(fwd), "sg": len(sg), "sr": len(sr),
                "split": {"sg": group_usage(with_descendants(sg, kids)),
                          "sr": group_usage(with_descendants(sr, kids))}}
        self.memory = {
            "direct": {"processes": 0, "pss_mb": 0.0, "rss_mb": 0.0,
                       "note": "kernel IP forwarding: no process"},
            "apps": group_usage(self.app_pids()),
            "dmsc_l4": {**group_usage(self.comm_pids("dmsc_l4")), **dmsc},
            "dmsc_l7": {**group_usage(self.comm_pids("dmsc_l7")), **dmsc,
                        "adapters": len(self.l7_adapters)},
        }
        for m in SIDECAR_KINDS:
            self.memory[m] = {**group_usage(with_descendants([s.pid for s in self.meshes[m]], kids)),
                              "proxies": len(self.meshes[m])}
        self.res.write_json("memory.json", self.memory)

    # --------------------------------------------------------------- scaling
    def scale(self) -> None:
        """Proxy count and memory per node as pods are added to one SG node."""
        a, lab = self.a, self.lab
        node = self.scale_node
        counts = sorted(int(x) for x in parse_list(a.pods_per_node))
        ip = self.fabric.pod_ip[node]
        app_port = 9102
        app = NginxApp(self.procs, node, "scale-app", f"127.0.0.1:{app_port}")
        wait_listening(lab, node, "127.0.0.1", app_port, 10)
        sidecars: List[Sidecar] = []
        pods: List[Any] = []
        adapters: List[Any] = []
        sg_pid = lab.fwd[node].pid
        for p in counts:
            while len(sidecars) < p:
                i = len(sidecars)
                sidecars.append(Sidecar(self.procs, node, f"scale-sc{i}", inbound=(ip, 16000 + i, app_port),
                                        out_port=17000 + i,
                                        services={"null.exp.dmsc": [(ip, 16000 + i)]}))
                pods.append(self._scale_app(node, "experiments.testsvc", f"/exp/pod{i}", f"pod{i}",
                                            ["--node", node]))
                adapters.append(self._scale_app(node, "forwarder.apps.http_backend", f"/exp/hpod{i}",
                                                f"hpod{i}", ["--backend", f"127.0.0.1:{app_port}"]))
            for sc in sidecars:
                wait_listening(lab, node, ip, sc.inbound[1], 20)
            want = {f"/exp/pod{i}" for i in range(p)} | {f"/exp/hpod{i}" for i in range(p)}
            wait_for(lambda: want <= set(lab.fwd[node].status()["local_prefixes"]), 60, 0.25,
                     f"{p} pods registered at {node}", retry_on=(Exception,))
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
        self.procs.stop([s.proc for s in sidecars] + [app.proc] + pods + adapters)
        self.res.write_csv("scaling.csv", self.scaling)

    def _scale_app(self, node: str, module: str, prefix: str, name: str, extra: List[str]):
        ident = issue_identity(self.lab, prefix, name, node)
        argv = ["--socket", str(self.lab.fwd[node].app_socket), "--prefix", prefix, *extra]
        if ident:
            argv += ["--identity", str(ident)]
        return self.procs.python(node, f"scale-{name}", module, *argv)

    # ------------------------------------------------------------------- run
    def run(self) -> None:
        a = self.a
        if not [b for b in parse_list(a.backends, str) if b in BACKENDS]:
            raise SystemExit(f"sidecar: --backends must name some of {list(BACKENDS)}")
        n_runs = a.rounds * len(parse_list(a.backends, str)) * len(MODES) * 2
        self.p.total = 5 + n_runs
        self.p.step(f"bringing up {a.topology} with the bench pods")
        self.setup()
        self.p.step("kernel routing, sidecars and adapters ready; warming up every path")
        self.warm_up()
        self.p.step("idle CPU of each communication layer")
        self.idle_cpu()
        for r in range(a.rounds):
            k = r % len(MODES)
            order = MODES[k:] + MODES[:k]
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
    def report(self, error: Optional[str]) -> None:
        sidecar_report.report(self, error)


def _host(prefix: str) -> str:
    return ".".join(reversed([c for c in prefix.split("/") if c])) + ".dmsc"


def main(argv=None) -> int:
    return run_main(NAME, __doc__, add_args, DEFAULTS, QUICK, SidecarExperiment, argv)


if __name__ == "__main__":
    sys.exit(main())
