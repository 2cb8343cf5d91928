"""Shortest-path computations for link-state routing: pure functions on a graph.

Kept apart from the protocol machinery in `routing.py` so that the maths (the
two-way check, ECMP first hops, loop-free alternates) can be read, tested and
timed on its own. Nodes are any hashable values (the router uses `Name`s);
costs are positive integers.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Dict, FrozenSet, Hashable, Iterable, List, Mapping, Tuple

Node = Hashable
Graph = Dict[Node, Dict[Node, int]]


def two_way_graph(adjacencies: Mapping[Node, Iterable[Tuple[Node, int]]]) -> Graph:
    """Keep the edge u->v only if v also lists u.

    A one-sided adjacency is either stale (v has already noticed the link is
    gone) or half formed; using it could send traffic into a black hole, so
    both ends must agree before SPF uses a link. Each direction keeps its own
    advertised cost; parallel entries keep the cheapest; costs below 1 count
    as 1 so that every path has a positive length (Dijkstra's ECMP bookkeeping
    relies on it).
    """
    listed: Dict[Node, Dict[Node, int]] = {}
    for u, adj in adjacencies.items():
        out = listed.setdefault(u, {})
        for v, cost in adj:
            if v == u:
                continue
            c = max(1, int(cost))
            if v not in out or c < out[v]:
                out[v] = c
    return {u: {v: c for v, c in out.items() if u in listed.get(v, ())}
            for u, out in listed.items()}


def distances(graph: Graph, root: Node) -> Dict[Node, int]:
    """Plain Dijkstra: cost of the shortest path from root to every reachable node."""
    dist: Dict[Node, int] = {root: 0}
    done = set()
    tie = itertools.count()
    heap: List[Tuple[int, int, Node]] = [(0, next(tie), root)]
    while heap:
        d, _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        for v, c in graph.get(u, {}).items():
            nd = d + c
            if nd < dist.get(v, nd + 1):
                dist[v] = nd
                heapq.heappush(heap, (nd, next(tie), v))
    return dist


def shortest_paths(graph: Graph, root: Node, root_hops: Mapping[Node, FrozenSet[int]]
                   ) -> Tuple[Dict[Node, int], Dict[Node, FrozenSet[int]]]:
    """Dijkstra with equal-cost multipath: (distance, first-hop faces) per node.

    `root_hops[n]` gives the faces of the root that reach neighbour n at the
    cost in graph[root][n] (several when there are parallel links). A node's
    first hops are the union of those of every predecessor on an equal-cost
    shortest path, so the forwarding core can spread load over all of them.
    With positive costs a node's first hops are final when it is popped.
    """
    dist: Dict[Node, int] = {root: 0}
    hops: Dict[Node, FrozenSet[int]] = {root: frozenset()}
    done = set()
    tie = itertools.count()
    heap: List[Tuple[int, int, Node]] = [(0, next(tie), root)]
    while heap:
        d, _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        for v, c in graph.get(u, {}).items():
            if v in done:
                continue
            nd = d + c
            via = root_hops.get(v, frozenset()) if u == root else hops[u]
            if not via:
                continue
            old = dist.get(v)
            if old is None or nd < old:
                dist[v] = nd
                hops[v] = via
                heapq.heappush(heap, (nd, next(tie), v))
            elif nd == old:
                hops[v] = hops[v] | via
    del dist[root], hops[root]
    return dist, hops


def loop_free_alternates(graph: Graph, root: Node, dist: Mapping[Node, int],
                         primary_neighbours: Mapping[Node, FrozenSet[Node]]
                         ) -> Dict[Node, List[Tuple[Node, int]]]:
    """RFC 5286 basic (link-protecting) LFAs: destination -> [(neighbour, cost via it)].

    Neighbour N of the root S is a loop-free alternate for destination D when
    it is not a primary next hop and dist(N, D) < dist(N, S) + dist(S, D): N's
    own shortest path to D then does not come back through S, so S can hand
    traffic to N the moment its primary link fails, before any LSA arrives.
    Costs one Dijkstra per neighbour.
    """
    out: Dict[Node, List[Tuple[Node, int]]] = {}
    for n, link in graph.get(root, {}).items():
        dn = distances(graph, n)
        back = dn.get(root)
        if back is None:
            continue
        for d, dsd in dist.items():
            if n in primary_neighbours.get(d, ()):
                continue
            dnd = dn.get(d)
            if dnd is not None and dnd < back + dsd:
                out.setdefault(d, []).append((n, link + dnd))
    return out
