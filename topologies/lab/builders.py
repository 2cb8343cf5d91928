"""Topology generators: k-ary fat tree, leaf-spine, linear chain.

Each returns a :class:`Topology` with the demo shop deployed on its Service
Gateways (``shop=False`` leaves it out).
"""
from __future__ import annotations

from typing import Optional

from .model import LinkOpts, Topology, TopologyError


def deploy_shop(topo: Topology) -> Topology:
    """Place the demo shop's instances on the topology's SGs (topologies/shop)."""
    from topologies.shop.deploy import placement
    for prefix, app, kind, nodes in placement(topo.sgs):
        topo.add_service(prefix, app, kind, nodes)
    return topo


POD_HTTP_PORT = 80


def shop_in_pods(topo: Topology, python: str) -> Topology:
    """The shop's plain-HTTP services (cart, payment) run in pods behind their SGs, and
    a client pod sits behind each SG hosting the frontend (or the first SG).

    Each instance pod runs the same program as before (topologies.shop.services, an
    HTTP server on port 80) and serves ``<prefix>/_l4``: any pod reaches it by name
    with no proxy (``curl http://cart.shop.dmsc/items``), carried in the kernel.
    Its SG still publishes ``<prefix>`` through its HTTP adapter (backend: the pod's
    address), so the frontend's DMSC calls and the SG's HTTP proxy work as before.
    """
    n = 0
    for svc in topo.services:
        if svc.kind != "http":
            continue
        for node in svc.nodes:
            n += 1
            topo.add_pod(_free_pod_name(topo, svc.app[:4], n), node, [f"{svc.prefix}/_l4"],
                         [python, "-m", "topologies.shop.services", "--app", svc.app, "--node",
                          node, "--http", f"0.0.0.0:{POD_HTTP_PORT}"])
    fronts = [n for s in topo.services if s.app == "frontend" for n in s.nodes] or topo.sgs[:1]
    for node in dict.fromkeys(fronts):
        if not any(not p.serves for p in topo.pods_on(node)):   # no client pod there yet
            topo.add_pod(_free_pod_name(topo, "cli", 1), node)
    return topo


def _free_pod_name(topo: Topology, base: str, n: int) -> str:
    """base<n>, or the next number free among the topology's nodes and pods."""
    taken = set(topo.nodes) | {p.name for p in topo.pods}
    while f"{base}{n}" in taken:
        n += 1
    return f"{base}{n}"


def fat_tree(k: int = 4, shop: bool = True, opts: Optional[LinkOpts] = None) -> Topology:
    """k-ary fat tree (Al-Fares et al.): (k/2)^2 core, k pods of k/2 aggregation and
    k/2 edge SRs, k/2 SGs (the servers) per edge: 5k^2/4 SRs and k^3/4 SGs.

    Names: c1.. (core), a1.. (aggregation), e1.. (edge), h1.. (servers, SGs).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2:
        raise TopologyError(f"fat tree: k must be an even integer >= 2, got {k!r}")
    if k > 16:
        raise TopologyError(f"fat tree: k={k} means {5 * k * k // 4 + k ** 3 // 4} nodes; "
                            "at most k=16 is accepted")
    half = k // 2
    t = Topology(f"fat-tree-k{k}")
    cores = [t.add_node(f"c{i + 1}", "sr", "core").name for i in range(half * half)]
    for p in range(k):
        aggs = [t.add_node(f"a{p * half + i + 1}", "sr", "agg", p + 1).name for i in range(half)]
        edges = [t.add_node(f"e{p * half + i + 1}", "sr", "edge", p + 1).name for i in range(half)]
        for ei, e in enumerate(edges):
            for hi in range(half):
                h = t.add_node(f"h{(p * half + ei) * half + hi + 1}", "sg", "server", p + 1).name
                t.add_link(h, e, _copy(opts))
        for e in edges:
            for a in aggs:
                t.add_link(e, a, _copy(opts))
        for ai, a in enumerate(aggs):
            for ci in range(half):
                t.add_link(a, cores[ai * half + ci], _copy(opts))
    return deploy_shop(t) if shop else t


def leaf_spine(spines: int = 2, leaves: int = 4, hosts: int = 2, shop: bool = True,
               opts: Optional[LinkOpts] = None) -> Topology:
    """Two-tier Clos: every leaf SR linked to every spine SR, `hosts` SGs per leaf.

    Names: s1.. (spines), l1.. (leaves), h1.. (SGs).
    """
    for what, v in (("spines", spines), ("leaves", leaves), ("hosts", hosts)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
            raise TopologyError(f"leaf-spine: {what} must be an integer in 1..64, got {v!r}")
    t = Topology(f"leaf-spine-{spines}x{leaves}x{hosts}")
    ss = [t.add_node(f"s{i + 1}", "sr", "spine").name for i in range(spines)]
    for li in range(leaves):
        leaf = t.add_node(f"l{li + 1}", "sr", "leaf", li + 1).name
        for hi in range(hosts):
            h = t.add_node(f"h{li * hosts + hi + 1}", "sg", "server", li + 1).name
            t.add_link(h, leaf, _copy(opts))
        for s in ss:
            t.add_link(leaf, s, _copy(opts))
    return deploy_shop(t) if shop else t


def linear(n: int = 4, hosts: int = 1, shop: bool = True,
           opts: Optional[LinkOpts] = None) -> Topology:
    """A chain of n SRs r1 - r2 - ... - rn with `hosts` SGs on each (h1..)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 250:
        raise TopologyError(f"linear: n must be an integer in 1..250, got {n!r}")
    if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= 16:
        raise TopologyError(f"linear: hosts must be an integer in 1..16, got {hosts!r}")
    t = Topology(f"linear-{n}x{hosts}")
    prev = None
    for i in range(n):
        r = t.add_node(f"r{i + 1}", "sr", "router").name
        if prev is not None:
            t.add_link(prev, r, _copy(opts))
        for j in range(hosts):
            h = t.add_node(f"h{i * hosts + j + 1}", "sg", "server").name
            t.add_link(h, r, _copy(opts))
        prev = r
    return deploy_shop(t) if shop else t


def _copy(opts: Optional[LinkOpts]) -> Optional[LinkOpts]:
    if opts is None:
        return None
    return LinkOpts(opts.bw, opts.delay, opts.loss, opts.mtu, opts.cost)
