"""Topology model for the DMSC lab: nodes, links, link options, service placement.

Pure data plus graph algorithms (no Mininet, no root), so the generators, the
YAML loader and the static route computation are unit-testable anywhere.

Node names are short identifiers (``[A-Za-z][A-Za-z0-9_]*``, at most 10
characters) because they become Linux interface names (``<node>-eth<N>``,
15 bytes at most) and DMSC node names (``/node/<name>``).
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

# Measured (docs/lab.md): 208 link-state forwarders converge on 2 cores in about a
# minute. Auto mode uses link-state routing up to this many nodes per CPU (240 on 2
# cores, a little beyond what was measured) and static routes above.
AUTO_LINKSTATE_NODES_PER_CPU = 120

NODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_NODE_NAME = 10          # "<name>-eth<NN>" must fit IFNAMSIZ (15)
ROLES = ("sr", "sg")
SERVICE_KINDS = ("client", "http")


class TopologyError(ValueError):
    """A topology that cannot be built; str() names the node, link or field."""


@dataclass
class LinkOpts:
    """Per-link emulation options (both directions).

    bw: Mbit/s (tc tbf, or netem rate when netem exists); delay: milliseconds
    (netem only: without netem the lab warns and skips it); loss: percent
    (nftables netdev ingress, numgen random: works without netem); mtu: bytes;
    cost: routing cost of the link (link-state ``routing.costs`` and the static
    shortest paths).
    """
    bw: Optional[float] = None
    delay: Optional[float] = None
    loss: Optional[float] = None
    mtu: int = 1500
    cost: int = 1

    def validate(self, where: str) -> None:
        if self.bw is not None and not (isinstance(self.bw, (int, float)) and 0 < self.bw <= 100_000):
            raise TopologyError(f"{where}: bw must be a number of Mbit/s in (0, 100000], got {self.bw!r}")
        if self.delay is not None and not (isinstance(self.delay, (int, float)) and 0 <= self.delay <= 60_000):
            raise TopologyError(f"{where}: delay must be milliseconds in [0, 60000], got {self.delay!r}")
        if self.loss is not None and not (isinstance(self.loss, (int, float)) and 0 <= self.loss <= 100):
            raise TopologyError(f"{where}: loss must be a percentage in [0, 100], got {self.loss!r}")
        if isinstance(self.mtu, bool) or not isinstance(self.mtu, int) or not 576 <= self.mtu <= 9000:
            raise TopologyError(f"{where}: mtu must be an integer in 576..9000, got {self.mtu!r}")
        if isinstance(self.cost, bool) or not isinstance(self.cost, int) or not 1 <= self.cost <= 65535:
            raise TopologyError(f"{where}: cost must be an integer in 1..65535, got {self.cost!r}")

    def describe(self) -> str:
        parts = []
        if self.bw is not None:
            parts.append(f"{self.bw:g} Mbit/s")
        if self.delay:
            parts.append(f"{self.delay:g} ms")
        if self.loss:
            parts.append(f"{self.loss:g}% loss")
        if self.mtu != 1500:
            parts.append(f"mtu {self.mtu}")
        if self.cost != 1:
            parts.append(f"cost {self.cost}")
        return ", ".join(parts)


@dataclass
class NodeSpec:
    name: str
    role: str                     # "sr" (Service Router) or "sg" (Service Gateway)
    layer: str = ""               # core / agg / edge / spine / leaf / host ... (for display)
    pod: Optional[int] = None

    @property
    def dmsc_name(self) -> str:
        return f"/node/{self.name}"


@dataclass
class LinkSpec:
    a: str
    b: str
    opts: LinkOpts = field(default_factory=LinkOpts)
    intf_a: str = ""              # filled in by Topology.add_link
    intf_b: str = ""

    @property
    def key(self) -> str:
        return f"{self.a}-{self.b}"

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a

    def intf_of(self, node: str) -> str:
        return self.intf_a if node == self.a else self.intf_b


@dataclass
class ServiceSpec:
    """One microservice deployed on some Service Gateways.

    kind "client": a process using forwarder.client (Client.serve);
    kind "http": a plain HTTP server published through the SG's http_services.
    app: which program to run (topologies/shop roles: frontend, catalog,
    cart, payment, echo).
    """
    prefix: str
    app: str
    kind: str
    nodes: List[str]


@dataclass
class PodDef:
    """A pod behind a Service Gateway (topologies/pods.py): its own namespace, the SG
    as its default gateway and resolver. `serves`: prefixes the SG registers for it
    (the pod's TCP/UDP servers are then reached by name, docs/protocol.md 13);
    `run`: a command started in it once the lab is up (none: an empty pod, e.g. a
    client to run commands in with ``dmsc pod NAME CMD``)."""
    name: str
    node: str
    index: int                       # its number on its SG (the _pod/<index> names)
    serves: List[str] = field(default_factory=list)
    run: Optional[List[str]] = None


MAX_PODS_PER_NODE = 250             # 10.200.<SG>.2 .. .252 (topologies/pods.py)


class Topology:
    """A DMSC network: SR and SG nodes joined by point-to-point links, services, pods."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: Dict[str, NodeSpec] = {}
        self.links: List[LinkSpec] = []
        self.services: List[ServiceSpec] = []
        self.pods: List[PodDef] = []
        self._ports: Dict[str, int] = {}

    # ------------------------------------------------------------- building
    def add_node(self, name: str, role: str, layer: str = "", pod: Optional[int] = None) -> NodeSpec:
        if not isinstance(name, str) or not NODE_RE.match(name):
            raise TopologyError(f"node name {name!r}: use a letter then letters, digits or _")
        if len(name) > MAX_NODE_NAME:
            raise TopologyError(f"node name {name!r} is longer than {MAX_NODE_NAME} characters "
                                f"(it becomes interface names like {name}-eth0, 15 bytes at most)")
        if name in self.nodes:
            raise TopologyError(f"node {name!r} is defined twice")
        if role not in ROLES:
            raise TopologyError(f"node {name!r}: role must be one of {ROLES}, got {role!r}")
        node = NodeSpec(name, role, layer, pod)
        self.nodes[name] = node
        self._ports[name] = 0
        return node

    def add_link(self, a: str, b: str, opts: Optional[LinkOpts] = None) -> LinkSpec:
        for n in (a, b):
            if n not in self.nodes:
                raise TopologyError(f"link {a}-{b}: no node named {n!r}")
        if a == b:
            raise TopologyError(f"link {a}-{b}: a node cannot be linked to itself")
        opts = opts or LinkOpts()
        opts.validate(f"link {a}-{b}")
        link = LinkSpec(a, b, opts)
        link.intf_a = f"{a}-eth{self._ports[a]}"
        link.intf_b = f"{b}-eth{self._ports[b]}"
        if self._ports[a] > 99 or self._ports[b] > 99:
            raise TopologyError(f"link {a}-{b}: at most 100 links per node")
        self._ports[a] += 1
        self._ports[b] += 1
        self.links.append(link)
        return link

    def add_service(self, prefix: str, app: str, kind: str, nodes: Sequence[str]) -> ServiceSpec:
        text = _service_prefix(prefix, f"service {prefix!r}")
        if kind not in SERVICE_KINDS:
            raise TopologyError(f"service {prefix}: kind must be one of {SERVICE_KINDS}, got {kind!r}")
        if not nodes:
            raise TopologyError(f"service {prefix}: needs at least one node")
        for n in nodes:
            if n not in self.nodes:
                raise TopologyError(f"service {prefix}: no node named {n!r}")
            if self.nodes[n].role != "sg":
                raise TopologyError(f"service {prefix}: node {n!r} is a Service Router; services "
                                    "run on Service Gateways (role sg)")
        if any(s.prefix == text for s in self.services):
            raise TopologyError(f"service {prefix} is defined twice")
        svc = ServiceSpec(text, app, kind, list(dict.fromkeys(nodes)))
        self.services.append(svc)
        return svc

    def add_pod(self, name: str, node: str, serves: Sequence[str] = (),
                run: Optional[Sequence[str]] = None) -> PodDef:
        if not isinstance(name, str) or not NODE_RE.match(name) or len(name) > MAX_NODE_NAME:
            raise TopologyError(f"pod name {name!r}: a letter then letters, digits or _, at "
                                f"most {MAX_NODE_NAME} characters")
        if name in self.nodes or any(p.name == name for p in self.pods):
            raise TopologyError(f"pod {name!r}: the name is already a node or a pod")
        if node not in self.nodes:
            raise TopologyError(f"pod {name}: no node named {node!r}")
        if self.nodes[node].role != "sg":
            raise TopologyError(f"pod {name}: node {node!r} is a Service Router; pods sit "
                                "behind Service Gateways (role sg)")
        index = sum(1 for p in self.pods if p.node == node)
        if index >= MAX_PODS_PER_NODE:
            raise TopologyError(f"pod {name}: {node} already has {MAX_PODS_PER_NODE} pods")
        prefixes = []
        for prefix in serves:
            p = _service_prefix(prefix, f"pod {name}")
            if any(p == s.prefix and node in s.nodes for s in self.services):
                raise TopologyError(f"pod {name}: {p} is already a service of {node}")
            prefixes.append(p)
        if run is not None and (isinstance(run, str) or not run or
                                not all(isinstance(a, str) for a in run)):
            raise TopologyError(f"pod {name}: run must be a command as a list of strings")
        pod = PodDef(name, node, index, prefixes, list(run) if run is not None else None)
        self.pods.append(pod)
        return pod

    # -------------------------------------------------------------- queries
    def pods_on(self, node: str) -> List[PodDef]:
        return [p for p in self.pods if p.node == node]

    def pod(self, name: str) -> PodDef:
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(f"no pod named {name!r}")

    @property
    def sgs(self) -> List[str]:
        return [n for n, s in self.nodes.items() if s.role == "sg"]

    @property
    def srs(self) -> List[str]:
        return [n for n, s in self.nodes.items() if s.role == "sr"]

    def links_of(self, node: str) -> List[LinkSpec]:
        return [l for l in self.links if node in (l.a, l.b)]

    def links_between(self, a: str, b: str) -> List[LinkSpec]:
        return [l for l in self.links if {l.a, l.b} == {a, b}]

    def find_link(self, spec: str) -> List[LinkSpec]:
        """Links named by "a-b", "a:b" or "a,b" (every parallel link between a and b)."""
        for sep in ("-", ":", ","):
            if sep in spec:
                a, _, b = spec.partition(sep)
                found = self.links_between(a.strip(), b.strip())
                if found:
                    return found
        return []

    def services_on(self, node: str) -> List[ServiceSpec]:
        return [s for s in self.services if node in s.nodes]

    def validate(self) -> None:
        if not self.nodes:
            raise TopologyError("the topology has no nodes")
        if not self.sgs:
            raise TopologyError("the topology has no Service Gateway (role sg)")
        seen: Set[str] = set()
        start = next(iter(self.nodes))
        todo = deque([start])
        adj = self.adjacency()
        while todo:
            n = todo.popleft()
            if n in seen:
                continue
            seen.add(n)
            todo.extend(m for m, _ in adj[n] if m not in seen)
        missing = [n for n in self.nodes if n not in seen]
        if missing:
            raise TopologyError(f"the topology is not connected: {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''} cannot be reached from {start}")

    def adjacency(self, down: Iterable[LinkSpec] = (), dead: Iterable[str] = ()
                  ) -> Dict[str, List[Tuple[str, LinkSpec]]]:
        """node -> [(neighbour, link)], leaving out failed links and failed nodes."""
        down_ids = {id(l) for l in down}
        dead = set(dead)
        adj: Dict[str, List[Tuple[str, LinkSpec]]] = {n: [] for n in self.nodes}
        for l in self.links:
            if id(l) in down_ids or l.a in dead or l.b in dead:
                continue
            adj[l.a].append((l.b, l))
            adj[l.b].append((l.a, l))
        return adj

    def summary(self) -> str:
        layers: Dict[str, int] = {}
        for s in self.nodes.values():
            key = s.layer or s.role
            layers[key] = layers.get(key, 0) + 1
        parts = ", ".join(f"{v} {k}" for k, v in layers.items())
        return (f"{self.name}: {len(self.nodes)} nodes ({len(self.srs)} SR, {len(self.sgs)} SG: "
                f"{parts}), {len(self.links)} links, {len(self.services)} services"
                + (f", {len(self.pods)} pods" if self.pods else ""))


def _service_prefix(prefix: str, where: str) -> str:
    """The canonical text of a service prefix, or TopologyError naming `where`."""
    from forwarder.dataplane.names import InvalidName, Name
    try:
        p = Name.parse(prefix)
    except (InvalidName, TypeError, AttributeError) as exc:
        raise TopologyError(f"{where}: {prefix!r}: {exc}") from None
    if len(p) == 0 or p.text.startswith("/_dmsc") or p.text.startswith("/node"):
        raise TopologyError(f"{where}: {prefix!r} is not a service prefix (/, /_dmsc and "
                            "/node are reserved)")
    return p.text


# ---------------------------------------------------------------------------
# Shortest paths and static routes
# ---------------------------------------------------------------------------

def distances(adj: Dict[str, List[Tuple[str, LinkSpec]]], src: str) -> Dict[str, int]:
    """Dijkstra over link costs (BFS when every cost is 1); unreachable nodes are absent."""
    import heapq
    dist = {src: 0}
    heap = [(0, src)]
    while heap:
        d, n = heapq.heappop(heap)
        if d > dist.get(n, 1 << 60):
            continue
        for m, link in adj[n]:
            nd = d + link.opts.cost
            if nd < dist.get(m, 1 << 60):
                dist[m] = nd
                heapq.heappush(heap, (nd, m))
    return dist


def static_routes(topo: Topology, down: Iterable[LinkSpec] = (), dead: Iterable[str] = (),
                  compress: bool = True) -> Dict[str, List[dict]]:
    """Shortest-path (ECMP) static routes for every node, as forwarder config route dicts.

    Every node gets a route to every other node's name (/node/<x>) over each
    first hop of a shortest path, and to every service prefix towards every
    instance (cost = distance, instance = /node/<sg>; the FIB prefers the
    nearest instances, ECMP among equals, and a strategy rule can weight
    instances). With ``compress``, the node-name routes that share the node's
    most common next-hop set (its "uplinks") are replaced by one default route
    ``/`` when that set covers more than half the destinations: a fat tree's
    servers and edge routers then need a handful of routes instead of one per
    node, which keeps 200-node configs small. Service prefixes always get
    explicit routes (the nearest instance matters).
    """
    down = list(down)
    dead = set(dead)
    adj = topo.adjacency(down, dead)
    alive = [n for n in topo.nodes if n not in dead]
    dist = {n: distances(adj, n) for n in alive}
    routes: Dict[str, List[dict]] = {n: [] for n in alive}
    # (service prefix, instance node): the services' instances and what pods serve
    placements = list(dict.fromkeys([(svc.prefix, n) for svc in topo.services for n in svc.nodes] +
                                    [(p, pod.node) for pod in topo.pods for p in pod.serves]))

    def first_hops(x: str, d: str) -> List[Tuple[LinkSpec, int]]:
        dx = dist[d].get(x)
        if dx is None or dx == 0:
            return []
        out = []
        for m, link in adj[x]:
            dm = dist[d].get(m)
            if dm is not None and dm + link.opts.cost == dx:
                out.append((link, dx))
        return out

    for x in alive:
        node_hops: Dict[str, Tuple[frozenset, List[Tuple[LinkSpec, int]]]] = {}
        for d in alive:
            if d == x:
                continue
            hops = first_hops(x, d)
            if hops:
                node_hops[d] = (frozenset(l.intf_of(x) for l, _ in hops), hops)
        default: Optional[frozenset] = None
        if compress and node_hops:
            counts: Dict[frozenset, int] = {}
            for key, _ in node_hops.values():
                counts[key] = counts.get(key, 0) + 1
            best, n = max(counts.items(), key=lambda kv: (kv[1], sorted(kv[0])))
            if n * 2 > len(node_hops) and n > 1:
                default = best
                routes[x].extend({"prefix": "/", "face": f, "cost": 1} for f in sorted(best))
        for d, (key, hops) in node_hops.items():
            if key == default:
                continue
            for link, cost in hops:
                routes[x].append({"prefix": f"/node/{d}", "face": link.intf_of(x), "cost": cost})
        for prefix, inst in placements:
            if inst == x or inst in dead:
                continue
            for link, cost in first_hops(x, inst) if inst in dist else ():
                routes[x].append({"prefix": prefix, "face": link.intf_of(x), "cost": cost,
                                  "instance": f"/node/{inst}"})
    return routes


def expected_prefixes(topo: Topology, dead: Iterable[str] = ()) -> Set[str]:
    """What every live node should be able to route once converged."""
    dead = set(dead)
    out = {f"/node/{n}" for n in topo.nodes if n not in dead}
    out |= {s.prefix for s in topo.services if any(n not in dead for n in s.nodes)}
    out |= {x for p in topo.pods if p.node not in dead for x in p.serves}
    return out
