"""DmscLab: a DMSC network on Mininet.

Every node is a Mininet host (its own network namespace) running the DMSC
forwarder; hosts are linked directly by veth pairs, with no switch in the data
plane. A management network (a Linux bridge in the root namespace, one
``<node>-mg`` interface per host, 10.255.0.0/16) reaches every node and the
SCSC host.

Lifecycle (``with DmscLab(topo) as lab:`` or start()/stop()):

1. a run folder ``runs/lab-<timestamp>-<id>/`` (``runs/latest`` points at it),
   an owner record, then every namespace, link and process recorded before or
   right after it exists, so ``make clean`` undoes a ``kill -9`` of the lab;
2. an SPA authority for the run (``<run>/spa``, forwarder.spa_tool): every
   node trusts it, every service instance gets an authorization for its
   prefix (``<run>/spa/services/<app>-<node>.key/.auth``), SGs enforce it;
3. Mininet hosts and links, each host's namespace also attached under a name
   (``ip netns``: ``dm-<id>-<node>``) so processes can be started with
   ``ip netns exec`` and the cleanup can find them; link options (tc/nft);
4. the SCSC on host ``scsc`` when ``python -m controller`` exists;
5. forwarders (``<run>/<node>/forwarder.yaml``, log ``forwarder.log``), all
   launched at once, then the shop's services;
6. polling (never fixed sleeps) until routing has converged: every node
   answers, every node's FIB holds every node name and service prefix, the
   link-state databases agree (``/status`` ``routing.lsdb_digest``), and no
   FIB changed for a short settle time.

Routing: ``linkstate`` (forwarders run ``routing: {enabled: true}``) or
``static`` (shortest-path ECMP routes computed here from the topology and
re-pushed through the management API after ``fail``/``restore``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import urlencode

from forwarder.mgmt.ctl import CtlError

from ..apps import ForwarderApp, ScscApp, ServiceApp
from ..proc import CommandError, LabError, Proc, run, stop_all
from ..records import Records, new_run_dir
from .zygote import Zygote
from .linkopts import apply_link_options
from .builders import POD_HTTP_PORT
from .model import (AUTO_LINKSTATE_NODES_PER_CPU, LinkSpec, Topology, expected_prefixes,
                    static_routes)

MGMT_NET = "10.255.0.0/16"
SCSC_IP = "10.255.255.254"
SCSC_PORT = 6653
SCSC_REST_PORT = 8181
HTTP_PROXY = "127.0.0.1:8080"


def _run(argv: List[str], check: bool = True, input: Optional[str] = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    """topologies.proc.run, with a failure reported as a LabError (the CLI shows those)."""
    try:
        return run(argv, check=check, timeout=timeout, input=input)
    except CommandError as exc:
        raise LabError(str(exc)) from None


def linkstate_supported() -> bool:
    """Does this checkout's forwarder run link-state routing when configured to?"""
    try:
        from forwarder.runtime.daemon import Daemon
    except ImportError:
        return False
    import inspect
    return "LinkStateRouter" in inspect.getsource(Daemon)


def scsc_supported() -> Optional[str]:
    """None if the SCSC can run here (controller and the forwarder's agent exist), else why not."""
    import importlib.util
    if importlib.util.find_spec("controller.__main__") is None:
        return "controller/__main__.py does not exist yet (python -m controller)"
    if importlib.util.find_spec("forwarder.mgmt.scsc_agent") is None:
        return "forwarder/mgmt/scsc_agent.py does not exist (the forwarder's SCSC agent)"
    return None


def netns_http_connection(netns: str, host: str, port: int, timeout: float):
    """An http.client connection whose socket is opened inside a network namespace,
    with TCP_NODELAY: http.client sends a POST's headers and body in two writes, and a
    body waiting (Nagle) for the acknowledgement of the headers waits ~40 ms for it."""
    import http.client
    import socket as socketmod
    from ..nsenter import socket_in

    class Conn(http.client.HTTPConnection):
        def connect(conn) -> None:
            conn.sock = socket_in(netns, socketmod.AF_INET, socketmod.SOCK_STREAM)
            conn.sock.settimeout(timeout)
            conn.sock.connect((host, port))
            conn.sock.setsockopt(socketmod.IPPROTO_TCP, socketmod.TCP_NODELAY, 1)
    return Conn(host, port, timeout=timeout)


class DmscLab:
    """A DMSC network of Mininet hosts running forwarders, from a Topology."""

    def __init__(self, topo: Topology, *, routing: str = "auto", scsc: str = "auto",
                 spa: bool = True, shop: bool = True, proxies: str = "entry",
                 hello_ms: Optional[int] = None, dead_ms: Optional[int] = None,
                 log_level: str = "info", run_kind: str = "lab", zygote: bool = True,
                 dataplane: str = "auto",
                 out: Callable[[str], None] = print, python: str = sys.executable) -> None:
        topo.validate()
        self.topo = topo
        self.routing_note = ""
        if routing == "auto":
            routing = "linkstate" if linkstate_supported() else "static"
            limit = AUTO_LINKSTATE_NODES_PER_CPU * (os.cpu_count() or 1)
            if routing == "linkstate" and len(topo.nodes) > limit:
                # Python routers sharing too few cores fall seconds behind while the
                # network comes up: adjacencies time out, and every flap floods again
                routing = "static"
                self.routing_note = (f"{len(topo.nodes)} forwarders with link-state routing need more "
                                     f"CPU than {os.cpu_count()} cores have (limit {limit} nodes); "
                                     "using static routes (--routing linkstate forces it)")
        if routing not in ("linkstate", "static"):
            raise LabError(f"routing must be auto, linkstate or static, not {routing!r}")
        self.routing = routing
        if dataplane not in ("auto", "ebpf", "python"):
            raise LabError(f"dataplane must be auto, ebpf or python, not {dataplane!r}")
        self.dataplane = dataplane
        self.dataplane_in_use: Dict[str, Any] = {}
        self.scsc_mode = scsc
        self.spa = spa
        self.shop = shop
        if proxies not in ("all", "services", "entry", "none"):
            raise LabError("proxies must be all, services, entry or none")
        self.proxies = proxies
        # Python forwarders on a 2-core machine: a hello every 100 ms from 200 nodes
        # would eat the CPU, and a loaded machine delays hellos, so the dead interval
        # is generous (link failures are seen at once through carrier anyway).
        big = len(topo.nodes) > 80
        self.hello_ms = hello_ms or (1000 if big else 250)
        self.dead_ms = dead_ms or max(self.hello_ms * 5, 2500)
        self.telemetry_s = 10.0 if big else 2.0
        # A big lab comes up as one long storm of adjacencies and LSAs on a CPU that
        # 200 forwarders share: slower retransmission (a starved neighbour acks late,
        # not never), delayed ACKs (one packet per burst) and RFC 8405 back-offs that
        # reach their long delay early. A small lab keeps the forwarder's defaults.
        self.routing_tuning: Dict[str, Any] = {} if not big else {
            "retransmit_ms": 2000, "ack_delay_ms": 200,
            "spf_backoff_ms": [0, 200, 2000, 500, 5000], "lsa_backoff_ms": [0, 200, 2000, 500, 5000]}
        self.log_level = log_level
        self.use_zygote = zygote
        self.zygote: Optional[Zygote] = None
        self.run_kind = run_kind
        self.out = out
        self.python = python
        self.runid = secrets.token_hex(3)
        self.run_dir: Optional[Path] = None
        self.records: Optional[Records] = None
        self.net = None                      # mininet.net.Mininet
        self.netns: Dict[str, str] = {}      # node -> attached namespace name
        self.mgmt_ip: Dict[str, str] = {}
        self.fwd: Dict[str, ForwarderApp] = {}
        self.services: List[ServiceApp] = []
        self.pods: Dict[str, Any] = {}       # pod name -> topologies.pods.PodSpec
        self.pod_procs: List[Proc] = []      # the pods' `run` commands
        self.scsc: Optional[ScscApp] = None
        self.scsc_reason: Optional[str] = None
        self.down_links: List[LinkSpec] = []
        self.dead_nodes: Set[str] = set()
        self.routes: Dict[str, List[dict]] = {}
        self.timings: Dict[str, float] = {}
        self.warnings: List[str] = []
        self.started = False
        self._stopped = False
        self._spa_dir: Optional[Path] = None
        self._bridge = f"dm{self.runid}"

    # ================================================================ start
    def __enter__(self) -> "DmscLab":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, converge_timeout: Optional[float] = None) -> "DmscLab":
        t0 = time.monotonic()
        self.run_dir = new_run_dir(self.run_kind)
        self.records = Records(self.run_dir)
        self.records.owner()
        if self.use_zygote:  # imports the forwarder while the network is being built
            self.zygote = Zygote(self.records, self.run_dir, self.python)
        (self.run_dir / "topology.json").write_text(json.dumps(self.describe(), indent=1))
        self.out(f"*** {self.topo.summary()}")
        self.out(f"*** run folder {self.run_dir} (routing {self.routing})")
        if self.routing_note:
            self.out(f"*** {self.routing_note}")
        try:
            if self.spa:
                self._provision_spa()
            self.timings["prepare_s"] = time.monotonic() - t0
            t = time.monotonic()
            self._build_network()   # starts the SCSC as soon as its host exists
            self.timings["network_s"] = time.monotonic() - t
            t = time.monotonic()
            if self.routing == "static":
                self.routes = static_routes(self.topo)
            self._start_forwarders()  # and the shop's services, which wait for their gateway
            self.timings["forwarders_s"] = time.monotonic() - t
            t = time.monotonic()
            self._check_routing_mode()
            self._start_pod_commands()
            self.timings["first_status_s"] = time.monotonic() - t
            self.timings["up_s"] = time.monotonic() - t0
            self.out(f"*** lab up in {self.timings['up_s']:.1f} s "
                     f"(network {self.timings['network_s']:.1f} s, forwarders "
                     f"{self.timings['forwarders_s']:.1f} s); waiting for convergence")
            self.started = True
            n = len(self.topo.nodes)
            self.wait_converged(converge_timeout or max(60.0, n * 0.6))
            self.timings["converged_s"] = time.monotonic() - t0
            self.out(f"*** converged {self.timings['converged_s']:.1f} s after start "
                     f"({n} nodes, {len(self.topo.links)} links, routing {self.routing}"
                     f"{', SCSC sees every forwarder' if self.scsc else ''})")
            (self.run_dir / "timings.json").write_text(json.dumps(self.timings, indent=1))
        except BaseException:
            self.stop()
            raise
        return self

    def describe(self) -> dict:
        t = self.topo
        return {"name": t.name, "routing": self.routing,
                "nodes": [{"name": n.name, "role": n.role, "layer": n.layer, "pod": n.pod}
                          for n in t.nodes.values()],
                "links": [{"a": l.a, "b": l.b, "intf_a": l.intf_a, "intf_b": l.intf_b,
                           "bw": l.opts.bw, "delay": l.opts.delay, "loss": l.opts.loss,
                           "mtu": l.opts.mtu, "cost": l.opts.cost} for l in t.links],
                "services": [{"prefix": s.prefix, "app": s.app, "kind": s.kind, "nodes": s.nodes}
                             for s in t.services],
                "pods": [{"name": p.name, "node": p.node, "serves": p.serves, "run": p.run}
                         for p in t.pods]}

    # ------------------------------------------------------------------ SPA
    def _provision_spa(self) -> None:
        from forwarder.spa import tool as spa_tool
        d = self.run_dir / "spa"
        d.mkdir()
        log = io.StringIO()

        def tool(*args: str) -> None:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                rc = spa_tool.main(["--dir", str(d), *args])
            if rc != 0:
                raise LabError(f"spa_tool {' '.join(args)} failed:\n{log.getvalue()[-800:]}")
        tool("init")
        for svc in self.topo.services:
            for node in svc.nodes:
                tool("issue", svc.prefix, "--new-service", f"{svc.app}-{node}", "--days", "2")
        for pod in self.topo.pods:
            for k, prefix in enumerate(pod.serves):
                tool("issue", prefix, "--new-service", f"pod-{pod.name}-{k}", "--days", "2")
        tool("crl")
        (d / "spa_tool.log").write_text(log.getvalue())
        self._spa_dir = d
        n = sum(len(s.nodes) for s in self.topo.services) + sum(len(p.serves) for p in self.topo.pods)
        self.out(f"*** SPA authority in {d}: {n} service authorizations issued")

    def identity_of(self, app: str, node: str) -> Optional[Path]:
        if self._spa_dir is None:
            return None
        return self._spa_dir / "services" / f"{app}-{node}.key"

    def pod_identity(self, pod: str, prefix: str) -> Optional[str]:
        """The SPA key file the SG presents when it registers `prefix` for `pod`."""
        if self._spa_dir is None:
            return None
        k = self.topo.pod(pod).serves.index(prefix)
        return str(self._spa_dir / "services" / f"pod-{pod}-{k}.key")

    # -------------------------------------------------------------- network
    def _build_network(self) -> None:
        from mininet.link import Link
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        setLogLevel("output")  # the CLI prints node command results at this level
        self.net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False,
                           waitConnected=False)
        br = self._bridge
        self.records.many([{"kind": "link", "name": br, "netns": None}])
        _run(["ip", "-batch", "-"], input=f"link add name {br} type bridge\nlink set {br} up\n")
        self._ports = 0
        hosts: Dict[str, Any] = {}
        if self.scsc_mode != "off":
            self.scsc_reason = scsc_supported()
            if self.scsc_reason is None:  # first, so that its start-up overlaps the rest
                hosts.update(self._add_hosts(["scsc"]))
                self._configure_host(hosts["scsc"])
                self._start_scsc()
            else:
                self.out(f"*** SCSC not started: {self.scsc_reason}; forwarders run without one")
        hosts.update(self._add_hosts(list(self.topo.nodes)))
        # data links, recorded (inside their named namespaces) before they exist
        self.records.many([e for l in self.topo.links for e in (
            {"kind": "link", "name": l.intf_a, "netns": self.netns[l.a]},
            {"kind": "link", "name": l.intf_b, "netns": self.netns[l.b]})])
        for l in self.topo.links:
            self.net.addLink(hosts[l.a], hosts[l.b], intfName1=l.intf_a, intfName2=l.intf_b,
                             cls=Link)
        for n in self.topo.nodes:
            self._configure_host(hosts[n])
        self.warnings += apply_link_options(self.topo.links, self.netns.__getitem__,
                                            lambda n: self.run_dir / n, self._warn)
        self._add_pods()

    def _network_mtu(self, node: str) -> int:
        return min([l.opts.mtu or 1500 for l in self.topo.links_of(node)] or [1500])

    def _add_pods(self) -> None:
        """Every pod's namespace and veth behind its SG (topologies/pods.py). A pod's
        namespace is in `netns` under the pod's name, so everything that runs a
        command "in a node" runs it in a pod the same way."""
        from topologies.pods import PodSpec, create, prepare_gateway
        for pd in self.topo.pods:
            if pd.index == 0:
                prepare_gateway(self.netns[pd.node])
            spec = PodSpec(pd.name, pd.node, pd.index, self.topo.sgs.index(pd.node) + 1,
                           list(pd.serves))
            create(spec, self.netns[pd.node], f"dm-{self.runid}-{pd.name}", self.records,
                   self._network_mtu(pd.node))
            self.pods[pd.name] = spec
            self.netns[pd.name] = spec.netns
        if self.topo.pods:
            self.out(f"*** {len(self.topo.pods)} pods behind "
                     f"{len({p.node for p in self.topo.pods})} Service Gateways")

    def _add_hosts(self, names: List[str]) -> Dict[str, Any]:
        """Mininet hosts, their namespaces attached as dm-<run>-<node>, and management veths."""
        from mininet.node import Host
        hosts = {}
        for name in names:
            hosts[name] = self.net.addHost(name, cls=Host, ip=None, inNamespace=True)
            self.netns[name] = f"dm-{self.runid}-{name}"
        # each host's shell holds its namespace: recorded with the name it is attached under
        self.records.many([e for n in names for e in (
            Records.pid_entry(hosts[n].pid, "mnexec"), {"kind": "netns", "name": self.netns[n]})])
        _run(["ip", "-batch", "-"], input="".join(
            f"netns attach {self.netns[n]} {hosts[n].pid}\n" for n in names))
        br = self._bridge
        ports = {}
        for n in names:
            ports[n] = f"{br}p{self._ports}"
            self._ports += 1
            self.mgmt_ip[n] = SCSC_IP if n == "scsc" else \
                f"10.255.{self._ports // 250}.{self._ports % 250 + 1}"
        self.records.many([{"kind": "link", "name": p, "netns": None} for p in ports.values()])
        cmds = []
        for n in names:
            cmds.append(f"link add name {ports[n]} type veth peer name {n}-mg netns {hosts[n].pid}")
            cmds.append(f"link set {ports[n]} master {br} up")
        _run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n")
        return hosts

    def _configure_host(self, host) -> None:
        """IPv6 off (no RS/DAD noise), loopback, data interfaces up with their MTU, mgmt address."""
        n, ip = host.name, self.mgmt_ip[host.name]
        script = ["sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 "
                  "net.ipv6.conf.default.disable_ipv6=1 >/dev/null",
                  "ip link set lo up"]
        if n in self.topo.nodes:
            for l in self.topo.links_of(n):
                script.append(f"ip link set dev {l.intf_of(n)} mtu {l.opts.mtu} up")
        script += [f"ip addr add {ip}/16 dev {n}-mg", f"ip link set dev {n}-mg up"]
        out = host.cmd(" && ".join(script) + " || echo LABFAIL")
        if "LABFAIL" in out:
            raise LabError(f"configuring host {n} failed: {out.strip()[:400]}")

    def _warn(self, msg: str) -> None:
        self.out(f"*** WARNING: {msg}")

    # ----------------------------------------------------------------- SCSC
    def _start_scsc(self) -> None:
        if self.scsc_mode == "off":
            self.scsc_reason = "disabled (--scsc off)"
            return
        self.scsc = ScscApp(self.netns["scsc"], self.run_dir / "scsc", self.records,
                            ["--southbound", f"{SCSC_IP}:{SCSC_PORT}",
                             "--rest", f"{SCSC_IP}:{SCSC_REST_PORT}"], python=self.python)
        self.scsc.start()
        self.out(f"*** SCSC on host scsc ({SCSC_IP}:{SCSC_PORT}, REST :{SCSC_REST_PORT})")

    def _wait_scsc_listening(self, timeout: float = 15.0) -> None:
        """Until the SCSC listens (forwarders' agents would otherwise back off for seconds).

        Reads the SCSC's /proc/<pid>/net/tcp (its namespace's sockets): no connection made."""
        if self.scsc is None:
            return
        port = f":{SCSC_PORT:04X}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.scsc.check_alive("the SCSC (python -m controller)")
            try:
                with open(f"/proc/{self.scsc.pid}/net/tcp") as f:
                    if any(l.split()[1].endswith(port) and l.split()[3] == "0A"
                           for l in f.readlines()[1:]):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.out(f"*** WARNING: the SCSC does not listen on {SCSC_IP}:{SCSC_PORT} after {timeout:.0f} s")

    def scsc_api(self, method: str, path: str, body: Optional[dict] = None,
                 timeout: float = 10.0) -> Any:
        """REST call to the SCSC, over a socket opened inside the scsc host's namespace."""
        if self.scsc is None:
            raise LabError(f"no SCSC in this lab: {self.scsc_reason}")
        c = netns_http_connection(self.netns["scsc"], SCSC_IP, SCSC_REST_PORT, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.request(method, path, body=data,
                      headers={"Content-Type": "application/json"} if data else {})
            resp = c.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise LabError(f"SCSC REST {method} {path}: {exc}") from None
        finally:
            c.close()
        try:
            result = json.loads(raw)
        except ValueError:
            result = raw.decode(errors="replace")
        if resp.status >= 400:
            raise LabError(f"SCSC REST {method} {path}: {resp.status}: {result}")
        return result

    # ----------------------------------------------------------- forwarders
    def node_config(self, name: str) -> Dict[str, Any]:
        spec = self.topo.nodes[name]
        work = self.run_dir / name
        cfg: Dict[str, Any] = {
            "node": spec.dmsc_name,
            "roles": ["sg", "sr"] if spec.role == "sg" else ["sr"],
            "workdir": str(work),
            "log_level": self.log_level,
            "dataplane": self.dataplane,
            "faces": [{"name": l.intf_of(name), "type": "ether", "interface": l.intf_of(name),
                       "mtu": l.opts.mtu} for l in self.topo.links_of(name)],
        }
        if self.routing == "linkstate":
            costs = {l.intf_of(name): l.opts.cost for l in self.topo.links_of(name) if l.opts.cost != 1}
            cfg["routing"] = {"enabled": True, "hello_ms": self.hello_ms, "dead_ms": self.dead_ms,
                              **self.routing_tuning}
            if costs:
                cfg["routing"]["costs"] = costs
        else:
            cfg["routes"] = list(self.routes.get(name, []))
        if self._spa_dir is not None:
            cfg["spa"] = {"trust": [str(self._spa_dir / "authority.pub")],
                          "crl": str(self._spa_dir / "crl.bin"), "enforce": True}
        if spec.role == "sg":
            hosted = self.topo.services_on(name)
            if self.wants_proxy(name):
                cfg["http_proxy"] = HTTP_PROXY
            http = []
            for svc in hosted:
                if svc.kind == "http" and self.shop_enabled:
                    pod = self.instance_pod(svc.prefix, name)
                    backend = (f"{self.pods[pod].address}:{POD_HTTP_PORT}" if pod
                               else self.http_backend_of(svc.app))
                    entry = {"prefix": svc.prefix, "backend": backend}
                    ident = self.identity_of(svc.app, name)
                    if ident is not None:
                        entry["identity"] = str(ident)
                    http.append(entry)
            if http:
                cfg["http_services"] = http
            from topologies.pods import pod_mtu
            pods = [self.pods[p.name].forwarder_config(
                pod_mtu(self._network_mtu(name)), lambda prefix, p=p: self.pod_identity(p.name, prefix))
                for p in self.topo.pods_on(name)]
            if pods:
                cfg["pods"] = pods
        if self.scsc is not None:
            cfg["scsc"] = f"{SCSC_IP}:{SCSC_PORT}"
            cfg["telemetry_interval_s"] = self.telemetry_s
        return cfg

    def wants_proxy(self, name: str) -> bool:
        """all: every SG; services: SGs hosting a service; entry (default): SGs hosting
        /shop/frontend (or any service, without a frontend) plus the last SG."""
        hosted = self.topo.services_on(name)
        if self.proxies == "all":
            return True
        if self.proxies == "services":
            return bool(hosted)
        if self.proxies == "entry":
            front = [s for s in self.topo.services if s.app == "frontend"]
            return (any(name in s.nodes for s in front) if front else bool(hosted)) \
                or name == self.topo.sgs[-1]
        return False

    @property
    def shop_enabled(self) -> bool:
        return self.shop

    def instance_pod(self, prefix: str, node: str) -> Optional[str]:
        """The pod on `node` running the instance of `prefix` (builders.shop_in_pods), if any."""
        for p in self.topo.pods_on(node):
            if f"{prefix}/_l4" in p.serves:
                return p.name
        return None

    @staticmethod
    def http_backend_of(app: str) -> str:
        from topologies.shop.deploy import HTTP_PORTS
        return f"127.0.0.1:{HTTP_PORTS.get(app, 9100 + sum(map(ord, app)) % 800)}"

    def _start_forwarders(self) -> None:
        for name in self.topo.nodes:
            self.fwd[name] = ForwarderApp(name, self.netns[name], self.run_dir / name, self.records,
                                          (lambda n=name: self.node_config(n)), python=self.python)
            self.fwd[name].zygote = self.zygote
        if self.shop:  # plain HTTP backends first: the SG's adapters register them at once
            for svc in self.topo.services:
                if svc.kind != "http":
                    continue
                for node in svc.nodes:
                    if self.instance_pod(svc.prefix, node):
                        continue   # it runs in its pod (the pod's `run`)
                    app = ServiceApp(node, svc.app, svc.prefix, svc.kind, self.netns[node],
                                     self.run_dir / node, self.records,
                                     self.fwd[node].app_socket, http=self.http_backend_of(svc.app),
                                     python=self.python)
                    app.zygote = self.zygote
                    self.services.append(app.start())
        for app in self.fwd.values():
            app.write_config()
        self.records.many([e for app in self.fwd.values() for e in app.dataplane_records()])
        self._wait_scsc_listening()
        pending = list(self.fwd.values())
        for app in pending:
            app.spawn(record=False)
        self.records.many([Records.pid_entry(a.pid, self.python, pgid=a.pid) for a in pending])
        self._start_services()
        deadline = time.monotonic() + max(30.0, len(pending) * 1.0)
        while pending:
            # the management socket exists once the daemon has opened its faces and
            # serves: cheaper to test than an HTTP request per node on a loaded machine
            pending = [a for a in pending if not a.socket_ready()]
            if pending and time.monotonic() > deadline:
                raise LabError(f"{len(pending)} forwarder(s) did not answer: "
                               f"{', '.join(a.name for a in pending[:8])}; see "
                               f"{pending[0].log}")
            if pending:
                time.sleep(0.05)

    def _start_pod_commands(self) -> None:
        """The pods' `run` commands, each in its pod, output in <run>/<pod>/run.log."""
        for pd in self.topo.pods:
            if pd.run:
                proc = Proc(self.netns[pd.name], self.run_dir / pd.name, "run", self.records,
                            argv=pd.run)
                proc.spawn()
                self.pod_procs.append(proc)

    def _check_routing_mode(self) -> None:
        """What one forwarder runs: link-state routing when asked for, and its data plane."""
        app = next(iter(self.fwd.values()))
        try:
            st = app.api("GET", "/status", timeout=60.0)
        except CtlError as exc:
            raise LabError(f"forwarder on {app.name} does not answer: {exc}") from None
        dp = st.get("dataplane") or {}
        self.dataplane_in_use = {"mode": dp.get("mode"), "reason": dp.get("reason")}
        self.out(f"*** data plane: {dp.get('reason')}")
        if self.routing != "linkstate":
            return
        if not st.get("routing"):
            raise LabError("the forwarder ignored 'routing: {enabled: true}' (its /status has no "
                           "routing summary); run the lab with --routing static")

    def _start_services(self) -> None:
        if not self.shop:
            return
        for svc in self.topo.services:
            if svc.kind != "client":
                continue
            for node in svc.nodes:
                app = ServiceApp(node, svc.app, svc.prefix, svc.kind, self.netns[node],
                                 self.run_dir / node, self.records, self.fwd[node].app_socket,
                                 identity=self.identity_of(svc.app, node), python=self.python)
                app.zygote = self.zygote
                self.services.append(app.start())

    # ---------------------------------------------------------- convergence
    def statuses(self, nodes: Optional[Iterable[str]] = None) -> Dict[str, Optional[dict]]:
        """GET /status of many nodes, 8 at a time (None for a node that did not answer)."""
        from concurrent.futures import ThreadPoolExecutor
        names = list(nodes if nodes is not None else self.live_nodes())

        def one(n: str) -> Optional[dict]:
            try:
                return self.fwd[n].api("GET", "/status", timeout=10.0)
            except (CtlError, OSError):
                return None
        with ThreadPoolExecutor(8) as pool:
            return dict(zip(names, pool.map(one, names)))

    def live_nodes(self) -> List[str]:
        return [n for n in self.topo.nodes if n not in self.dead_nodes]

    def convergence_problems(self, settle_s: float = 0.5, full: bool = True) -> List[str]:
        """What still keeps the lab from being converged ([] = converged)."""
        problems: List[str] = []
        live = self.live_nodes()
        sts = self.statuses(live)
        dead = [n for n, s in sts.items() if s is None]
        if dead:
            return [f"{len(dead)} forwarder(s) not answering: {', '.join(dead[:5])}"]
        expected = expected_prefixes(self.topo, self.dead_nodes)
        # services registered where they are deployed
        if self.shop:
            for svc in self.topo.services:
                for n in svc.nodes:
                    if n in self.dead_nodes:
                        continue
                    if svc.prefix not in sts[n]["local_prefixes"]:
                        problems.append(f"{svc.prefix} not registered on {n}")
        if self.routing == "linkstate":
            digests = {s["routing"]["lsdb_digest"] for s in sts.values() if s.get("routing")}
            if len(digests) > 1:
                problems.append(f"link-state databases differ ({len(digests)} versions)")
            short = [n for n, s in sts.items() if s["fib_entries"] < len(expected)]
            if short:
                problems.append(f"{len(short)} FIB(s) smaller than the {len(expected)} expected "
                                f"prefixes: {', '.join(short[:5])}")
            now = time.time()
            recent = [n for n, s in sts.items()
                      if s.get("fib_changed_at") and now - s["fib_changed_at"] < settle_s]
            if recent:
                problems.append(f"FIB changed less than {settle_s}s ago on {', '.join(recent[:5])}")
            if not problems and full:
                from concurrent.futures import ThreadPoolExecutor

                def missing(n: str) -> List[str]:
                    have = {e["prefix"] for e in self.fwd[n].api("GET", "/fib", timeout=20.0)["entries"]}
                    return sorted(expected - have)
                with ThreadPoolExecutor(8) as pool:
                    for n, miss in zip(live, pool.map(missing, live)):
                        if miss:
                            problems.append(f"{n} has no route to {', '.join(miss[:4])}")
                            break
        if self.scsc is not None and not problems:
            seen = self.scsc_forwarders()
            missing = [n for n in live if f"/node/{n}" not in seen]
            if missing:
                problems.append(f"the SCSC does not see {len(missing)} forwarder(s): "
                                f"{', '.join(missing[:5])}")
        return problems

    def scsc_forwarders(self) -> Set[str]:
        """Node names the SCSC reports as connected (REST GET /telemetry, docs/scsc.md)."""
        try:
            data = self.scsc_api("GET", "/telemetry", timeout=5.0)
        except LabError:
            return set()
        fwds = data.get("forwarders", {}) if isinstance(data, dict) else {}
        return {n for n, f in fwds.items() if not isinstance(f, dict) or f.get("connected", True)}

    def wait_converged(self, timeout: float = 60.0, settle_s: float = 0.5) -> float:
        """Poll until converged; returns the seconds it took; LabError with the reason on timeout."""
        t0 = time.monotonic()
        problems: List[str] = ["not checked"]
        last_print = t0
        while time.monotonic() - t0 < timeout:
            for fa in self.fwd.values():
                if fa.name not in self.dead_nodes:
                    fa.check_alive(f"forwarder on {fa.name}")
            problems = self.convergence_problems(settle_s)
            if not problems:
                return time.monotonic() - t0
            if time.monotonic() - last_print > (1 if os.environ.get("DMSC_LAB_DEBUG") else 10):
                self.out(f"*** still converging: {problems[0]}")
                last_print = time.monotonic()
            # every poll asks every forwarder for /status: in a 200-node lab on 2 cores
            # asking 5 times a second would itself slow the convergence it measures
            time.sleep(0.2 if len(self.topo.nodes) <= 80 else 1.0)
        raise LabError(f"no convergence within {timeout:.0f}s: {'; '.join(problems[:3])}")

    # ------------------------------------------------------- failures (CLI)
    def node(self, name: str) -> ForwarderApp:
        if name not in self.fwd:
            raise LabError(f"no node {name!r} (nodes: {', '.join(list(self.fwd)[:12])}"
                           f"{' ...' if len(self.fwd) > 12 else ''})")
        return self.fwd[name]

    def _set_links(self, links: Iterable[LinkSpec], state: str) -> None:
        for l in links:
            for n in (l.a, l.b):
                _run(["ip", "-n", self.netns[n], "link", "set", "dev", l.intf_of(n), state])

    def fail(self, target: str) -> str:
        """Fail a node (forwarder killed, its links down) or a link ("a-b": both ends down)."""
        if target in self.topo.nodes:
            if target in self.dead_nodes:
                return f"node {target} is already failed"
            self.dead_nodes.add(target)
            self.fwd[target].kill()
            self._set_links(self.topo.links_of(target), "down")
            self._reroute()
            return (f"node {target}: forwarder killed, {len(self.topo.links_of(target))} link(s) down")
        links = self.topo.find_link(target)
        if not links:
            raise LabError(f"{target!r} is neither a node nor a link (a link is NODE-NODE, e.g. e1-a1)")
        fresh = [l for l in links if all(l is not d for d in self.down_links)]
        self.down_links += fresh
        self._set_links(links, "down")
        self._reroute()
        return f"link {links[0].a}-{links[0].b} down ({', '.join(l.intf_a + '/' + l.intf_b for l in links)})"

    def restore(self, target: str) -> str:
        if target in self.topo.nodes:
            if target not in self.dead_nodes:
                return f"node {target} is not failed"
            self.dead_nodes.discard(target)
            self._set_links([l for l in self.topo.links_of(target)
                             if all(l is not d for d in self.down_links)], "up")
            if self.routing == "static":
                self.routes = static_routes(self.topo, self.down_links, self.dead_nodes)
            self.fwd[target].start()
            self._reroute()
            return f"node {target}: links up, forwarder restarted (pid {self.fwd[target].pid})"
        links = self.topo.find_link(target)
        if not links:
            raise LabError(f"{target!r} is neither a node nor a link (a link is NODE-NODE, e.g. e1-a1)")
        self.down_links = [d for d in self.down_links if all(d is not l for l in links)]
        up = [l for l in links if l.a not in self.dead_nodes and l.b not in self.dead_nodes]
        self._set_links(up, "up")
        self._wait_faces_up(up)
        self._reroute()
        return f"link {links[0].a}-{links[0].b} up"

    def _wait_faces_up(self, links, timeout: float = 5.0) -> None:
        """A veth is operationally up a moment after `ip link set up` (the kernel's
        linkwatch); the forwarders use a face only from then on. Wait for it, so
        that what follows a restore does not race the kernel."""
        def all_up() -> bool:
            for l in links:
                for node in (l.a, l.b):
                    app = self.fwd.get(node)
                    if app is None or not app.running:
                        continue
                    try:
                        faces = {f["name"]: f["up"] for f in app.status()["faces"]}
                    except CtlError:
                        return False
                    if not faces.get(l.intf_of(node), True):
                        return False
            return True
        deadline = time.monotonic() + timeout
        while not all_up() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _reroute(self) -> None:
        """Static routing: recompute the shortest paths and push the differences."""
        if self.routing != "static":
            return
        new = static_routes(self.topo, self.down_links, self.dead_nodes)
        for n in self.live_nodes():
            old_set = {_route_key(r) for r in self.routes.get(n, [])}
            new_set = {_route_key(r) for r in new.get(n, [])}
            app = self.fwd[n]
            if not app.running:
                continue
            for key in old_set - new_set:
                q = {"prefix": key[0], "face": key[1]}
                if key[3]:
                    q["instance"] = key[3]
                try:
                    app.api("DELETE", "/routes?" + urlencode(q))
                except CtlError:
                    pass
            for r in new.get(n, []):
                if _route_key(r) in new_set - old_set:
                    app.api("POST", "/routes", r)
        self.routes = new

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop every process, delete namespaces and the management bridge; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        errors: List[str] = []
        stop_all(list(self.pod_procs) + list(self.services) + list(self.fwd.values()) +
                 ([self.scsc] if self.scsc else []))
        if self.zygote is not None:
            self.zygote.close()
        if self.net is not None:
            for h in self.net.hosts:
                try:
                    h.terminate()
                except Exception as exc:  # keep going: the namespaces are deleted below
                    errors.append(f"host {h.name}: {exc}")
        if self.netns:
            cmds = "".join(f"netns del {ns}\n" for ns in self.netns.values()
                           if os.path.exists(f"/run/netns/{ns}"))
            if cmds:
                res = _run(["ip", "-force", "-batch", "-"], check=False, input=cmds)
                if res.returncode != 0:
                    errors.append(res.stderr.strip()[:300])
        if self.pods:
            from topologies.pods import remove_etc
            for spec in self.pods.values():
                remove_etc(spec.netns)
        # the root-side management ports would go with their namespaces, but namespace
        # teardown is asynchronous in the kernel: delete them now, then the bridge
        ports = [f"{self._bridge}p{i}" for i in range(getattr(self, "_ports", 0))
                 if os.path.exists(f"/sys/class/net/{self._bridge}p{i}")]
        if ports:
            _run(["ip", "-force", "-batch", "-"], check=False,
                 input="".join(f"link del {p}\n" for p in ports))
        if self.run_dir is not None and os.path.exists(f"/sys/class/net/{self._bridge}"):
            res = _run(["ip", "link", "del", self._bridge], check=False)
            if res.returncode != 0:
                errors.append(f"bridge {self._bridge}: {res.stderr.strip()}")
        if self.records is not None:
            if errors:
                self.out("*** cleanup left something behind (run `make clean`): " + "; ".join(errors))
            else:
                self.records.done()


def _route_key(r: dict) -> Tuple[str, str, int, Optional[str]]:
    return (r["prefix"], r["face"], int(r.get("cost", 1)), r.get("instance"))
