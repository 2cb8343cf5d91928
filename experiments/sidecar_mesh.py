"""The two non-DMSC ways to run the shop on a lab's fabric: kernel IP routing and an nginx sidecar mesh.

* :class:`IpFabric` gives every data link a /31 on each end, every Service
  Gateway node an address (10.200.0.x/32 on its loopback) and every node
  kernel routes to every SG's address and to the pod range of every SG with
  pods (10.200.<SG number>.0/24) over all the shortest paths of the topology
  (ECMP, L4 hash), so plain TCP/HTTP crosses the same veths and the same
  router hosts as DMSC does (the forwarders' packet sockets only take
  EtherType 0x88B5 and are not disturbed; a pod face's socket only takes
  what the kernel marks for the gateway).
* :class:`Sidecar` is one nginx per pod (master + 1 worker, as a per-pod
  sidecar): an inbound listener on the pod address that proxies to the pod's
  app on 127.0.0.1, and an outbound listener on 127.0.0.1 that routes by Host
  header to the inbound listeners of the destination service's instances
  (upstream keep-alive connections, like Envoy's connection pools).
* :class:`NginxApp` is a tiny application server (``return 200``), the "null"
  service used to isolate the communication layer from the app's own cost.

Every nginx runs in the foreground in its node's host, recorded in the lab's
records.jsonl (experiments.common.ProcSet), with its config, pid file, temp
folders and error log in the lab run folder -- never under /tmp. That folder,
the config file in it and the start through ProcSet are :class:`ProxyFolder`,
which experiments/sidecar_haproxy.py's HaproxySidecar (the same sidecar with
HAProxy) shares.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .common import ns_run, ProcSet

OUT_BASE_PORT = 15001      # a pod's outbound listener on 127.0.0.1 (one per pod on a node)
IN_BASE_PORT = 15100       # a pod's inbound listener on the pod address


def _ip(prefix: str, i: int) -> str:
    return f"{prefix}.{i // 256}.{i % 256}"


class IpFabric:
    """Kernel IPv4 addressing and shortest-path ECMP routes over a lab topology."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.topo = lab.topo
        self.link_ip: Dict[Tuple[int, str], str] = {}
        self.pod_ip: Dict[str, str] = {}
        self.routes = 0

    def plan(self) -> Dict[str, List[str]]:
        from topologies.lab.model import distances
        topo = self.topo
        for i, l in enumerate(topo.links):
            self.link_ip[(i, l.a)] = _ip("10.100", 2 * i)
            self.link_ip[(i, l.b)] = _ip("10.100", 2 * i + 1)
        for j, sg in enumerate(topo.sgs):
            self.pod_ip[sg] = _ip("10.200", j + 1)
        adj = topo.adjacency()
        index = {id(l): i for i, l in enumerate(topo.links)}
        dist = {d: distances(adj, d) for d in topo.sgs}
        cmds: Dict[str, List[str]] = {n: [] for n in topo.nodes}
        for i, l in enumerate(topo.links):
            for n in (l.a, l.b):
                cmds[n].append(f"addr add {self.link_ip[(i, n)]}/31 dev {l.intf_of(n)}")
        for sg, ip in self.pod_ip.items():
            cmds[sg].append(f"addr add {ip}/32 dev lo")
        for n in topo.nodes:
            for d in topo.sgs:
                if d == n or n not in dist[d]:
                    continue
                hops = []
                for m, link in adj[n]:
                    if m in dist[d] and dist[d][m] + link.opts.cost == dist[d][n]:
                        i = index[id(link)]
                        hops.append((self.link_ip[(i, m)], link.intf_of(n)))
                if not hops:
                    continue
                src = f" src {self.pod_ip[n]}" if n in self.pod_ip else ""
                # the SG's own address, and its pods' range when it has pods (the lab's
                # plan: 10.200.<SG number>.0/24, topologies/pods.py)
                dests = [f"{self.pod_ip[d]}/32"] + \
                    ([f"10.200.{topo.sgs.index(d) + 1}.0/24"] if topo.pods_on(d) else [])
                for dest in dests:
                    if len(hops) == 1:
                        cmds[n].append(f"route replace {dest}{src} via {hops[0][0]} "
                                       f"dev {hops[0][1]}")
                    else:
                        nh = " ".join(f"nexthop via {gw} dev {dev} weight 1" for gw, dev in hops)
                        cmds[n].append(f"route replace {dest}{src} {nh}")
                    self.routes += 1
        return cmds

    def configure(self) -> dict:
        """Apply the plan in every node; returns counts."""
        import subprocess
        cmds = self.plan()
        t0 = time.monotonic()
        for n, lines in cmds.items():
            ns = self.lab.netns[n]
            intfs = [l.intf_of(n) for l in self.topo.links_of(n)]
            sysctl = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0", "net.ipv4.fib_multipath_hash_policy=1",
                      "net.ipv4.conf.lo.rp_filter=0"] + \
                     [f"net.ipv4.conf.{i.replace('.', '/')}.rp_filter=0" for i in intfs]
            ns_run(self.lab, n, sysctl)
            # addresses first (the routes' gateways must be on a connected subnet)
            addrs = [c for c in lines if c.startswith("addr")]
            routes = [c for c in lines if not c.startswith("addr")]
            for batch in (addrs, routes):
                if not batch:
                    continue
                res = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(batch) + "\n",
                                     capture_output=True, text=True, timeout=60)
                if res.returncode != 0:
                    raise RuntimeError(f"{n}: ip -batch failed: {res.stderr.strip()[:400]}")
        return {"nodes": len(cmds), "links": len(self.topo.links), "pod_addresses": len(self.pod_ip),
                "routes": self.routes, "configure_s": round(time.monotonic() - t0, 2)}

    def check(self, a: str, b: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = ns_run(self.lab, a, ["ping", "-c", "1", "-W", "1", "-I", self.pod_ip[a],
                                     self.pod_ip[b]], check=False, timeout=5)
            if r.returncode == 0:
                return True
            time.sleep(0.2)
        return False


def wait_listening(lab, node: str, ip: str, port: int, timeout: float = 10.0) -> None:
    from topologies.nsenter import socket_in
    deadline = time.monotonic() + timeout
    while True:
        s = socket_in(lab.netns[node], socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect((ip, port))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {ip}:{port} in {node} after {timeout:.0f}s")
            time.sleep(0.05)
        finally:
            s.close()


def _nginx_conf(d: Path, http_body: str) -> str:
    return f"""# written by experiments/sidecar_mesh.py
worker_processes 1;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {d}/tmp_body;
  proxy_temp_path {d}/tmp_proxy;
  fastcgi_temp_path {d}/tmp_fastcgi;
  uwsgi_temp_path {d}/tmp_uwsgi;
  scgi_temp_path {d}/tmp_scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
{http_body}
}}
"""


class ProxyFolder:
    """A proxy of ours in a lab host: its folder ``<lab run folder>/<node>/<name>/``
    holds its config file ``conf`` (and its pid file, temp folders, logs); it runs in
    the foreground through ProcSet (recorded for ``make clean``; its output goes to
    ``<lab run folder>/<node>/<name>.log``). Subclasses write the config, then start."""

    CONF_NAME = "proxy.conf"

    def __init__(self, procs: ProcSet, node: str, name: str) -> None:
        self.node = node
        self.name = name
        self.dir = procs.lab.run_dir / node / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / self.CONF_NAME
        self.proc = None

    def start(self, procs: ProcSet, argv: List[str]) -> None:
        self.proc = procs.start(self.node, self.name, argv)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None


class NginxProc(ProxyFolder):
    """One nginx (master + 1 worker) in a lab host, in the foreground, recorded."""

    CONF_NAME = "nginx.conf"

    def __init__(self, procs: ProcSet, node: str, name: str, http_body: str) -> None:
        super().__init__(procs, node, name)
        self.conf.write_text(_nginx_conf(self.dir, http_body))
        self.start(procs, ["nginx", "-c", str(self.conf), "-p", str(self.dir)])


class NginxApp(NginxProc):
    """The null service: answers every request with 200 "ok"."""

    def __init__(self, procs: ProcSet, node: str, name: str, listen: str) -> None:
        body = f"""  server {{
    listen {listen};
    location / {{ return 200 "ok\\n"; }}
  }}"""
        super().__init__(procs, node, name, body)
        self.listen = listen


class Sidecar(NginxProc):
    """A pod's sidecar: inbound (pod address -> local app) and outbound (Host -> instances)."""

    def __init__(self, procs: ProcSet, node: str, name: str, *, inbound: Optional[Tuple[str, int, int]],
                 out_port: Optional[int], services: Dict[str, Sequence[Tuple[str, int]]]) -> None:
        parts = ["  proxy_http_version 1.1;", '  proxy_set_header Connection "";',
                 "  proxy_set_header Host $host;"]
        if inbound is not None:
            ip, port, app_port = inbound
            parts.append(f"  upstream in_app {{ server 127.0.0.1:{app_port}; keepalive 64; }}")
            parts.append(f"  server {{ listen {ip}:{port}; location / {{ proxy_pass http://in_app; }} }}")
        if out_port is not None:
            for i, (host, ends) in enumerate(sorted(services.items())):
                ups = " ".join(f"server {ip}:{p};" for ip, p in ends)
                parts.append(f"  upstream out_{i} {{ {ups} keepalive 64; }}")
                parts.append(f"  server {{ listen 127.0.0.1:{out_port}; server_name {host}; "
                             f"location / {{ proxy_pass http://out_{i}; }} }}")
        super().__init__(procs, node, name, "\n".join(parts))
        self.inbound = inbound
        self.out_port = out_port


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

def _dur_us(text: str) -> Optional[float]:
    text = text.strip()
    for unit, f in (("us", 1.0), ("ms", 1000.0), ("s", 1e6), ("m", 60e6)):
        if text.endswith(unit):
            try:
                return float(text[:-len(unit)]) * f
            except ValueError:
                return None
    return None


def parse_wrk(out: str) -> dict:
    res: Dict[str, object] = {"requests": None, "rps": None, "non_2xx": 0, "socket_errors": {}}
    lat: Dict[str, float] = {}
    in_dist = False
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("Latency Distribution"):
            in_dist = True
            continue
        if in_dist:
            parts = s.split()
            if len(parts) == 2 and parts[0].endswith("%"):
                v = _dur_us(parts[1])
                if v is not None:
                    lat[parts[0].rstrip("%")] = v
                continue
            in_dist = False
        if s.startswith("Latency") and "Distribution" not in s:
            parts = s.split()
            if len(parts) >= 2:
                res["mean_us"] = _dur_us(parts[1])
        if " requests in " in s:
            try:
                res["requests"] = int(s.split()[0])
            except ValueError:
                pass
        if s.startswith("Requests/sec:"):
            res["rps"] = float(s.split()[1])
        if s.startswith("Non-2xx or 3xx responses:"):
            res["non_2xx"] = int(s.split(":")[1])
        if s.startswith("Socket errors:"):
            for kv in s.split(":", 1)[1].split(","):
                k, v = kv.split()
                res["socket_errors"][k] = int(v)
    for q in ("50", "75", "90", "99"):
        res[f"p{q}_us"] = lat.get(q)
    return res


def run_wrk(lab, node: str, url: str, host: Optional[str], *, threads: int, conns: int,
            duration: float, timeout_s: float = 5.0) -> Tuple[dict, float]:
    """wrk in a lab host; (parsed result, CPU seconds wrk itself used)."""
    import os
    import subprocess
    argv = ["ip", "netns", "exec", lab.netns[node], "wrk", "-t", str(threads), "-c", str(conns),
            "-d", f"{max(1, round(duration))}s", "--timeout", f"{timeout_s:g}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(url)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out.strip()[-400:]}")
    res = parse_wrk(out)
    res["raw"] = out
    return res, ru.ru_utime + ru.ru_stime
