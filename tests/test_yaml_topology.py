"""Unit tests of the lab's topology model: generators, YAML loader, static routes, shop placement.

No root, no Mininet: everything here is pure data.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from topologies.shop.deploy import SHOP, placement
from topologies.lab.builders import fat_tree, leaf_spine, linear
from topologies.lab.model import (LinkOpts, Topology, TopologyError, distances, expected_prefixes,
                                  static_routes)
from topologies.lab.yamltopo import YamlTopologyError, load_topology, parse_topology

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "topologies" / "examples").glob("*.yaml"))


# ------------------------------------------------------------------ generators
@pytest.mark.parametrize("k", [2, 4, 8])
def test_fat_tree_shape(k):
    t = fat_tree(k)
    assert len(t.srs) == 5 * k * k // 4 and len(t.sgs) == k ** 3 // 4
    assert len(t.links) == 3 * k ** 3 // 4
    degrees = {n: len(t.links_of(n)) for n in t.nodes}
    assert all(degrees[n] == (1 if t.nodes[n].role == "sg" else k) for n in t.nodes)
    t.validate()
    for l in t.links:  # interface names fit IFNAMSIZ and are unique per node
        assert len(l.intf_a) <= 15 and len(l.intf_b) <= 15
    intfs = [i for l in t.links for i in (l.intf_a, l.intf_b)]
    assert len(intfs) == len(set(intfs))


def test_fat_tree_k8_is_208_nodes_and_k_must_be_even():
    assert len(fat_tree(8).nodes) == 208
    with pytest.raises(TopologyError, match="even"):
        fat_tree(3)


def test_leaf_spine_and_linear():
    t = leaf_spine(2, 4, 2)
    assert (len(t.srs), len(t.sgs), len(t.links)) == (6, 8, 16)
    t = linear(3, 2)
    assert (len(t.srs), len(t.sgs), len(t.links)) == (3, 6, 8)
    assert distances(t.adjacency(), "h1")["h6"] == 4


def test_shop_placement_spreads_instances():
    sgs = [f"h{i}" for i in range(1, 17)]
    placed = placement(sgs)
    assert [p for p, *_ in placed] == [p for p, *_ in SHOP]
    for (prefix, app, kind, nodes), (_, _, _, count) in zip(placed, SHOP):
        assert len(nodes) == count and len(set(nodes)) == count
    # in a k=4 fat tree (4 SGs per pod) two instances of a service sit in different pods
    for _, _, _, nodes in placed:
        pods = {(int(n[1:]) - 1) // 4 for n in nodes}
        assert len(pods) == len(nodes)
    # fewer SGs than instances: still every service placed, no duplicates per service
    for prefix, _, _, nodes in placement(["h1", "h2"]):
        assert nodes and len(nodes) == len(set(nodes))


# --------------------------------------------------------------- static routes
def _walk(topo: Topology, routes, src: str, dst_prefix: str, dst_nodes) -> list:
    """Follow the static routes (lowest cost, first face) hop by hop; returns the path."""
    path, node = [src], src
    by_intf = {}
    for l in topo.links:
        by_intf[(l.a, l.intf_a)] = l.b
        by_intf[(l.b, l.intf_b)] = l.a
    for _ in range(20):
        if node in dst_nodes:
            return path
        rs = [r for r in routes[node] if r["prefix"] == dst_prefix] or \
             [r for r in routes[node] if r["prefix"] == "/"]
        assert rs, f"{node} has no route for {dst_prefix}"
        best = min(r["cost"] for r in rs)
        r = sorted((r for r in rs if r["cost"] == best), key=lambda r: r["face"])[0]
        node = by_intf[(node, r["face"])]
        path.append(node)
    raise AssertionError(f"loop: {path}")


def test_static_routes_reach_every_node_and_service_on_shortest_paths():
    t = fat_tree(4)
    routes = static_routes(t)
    dist = {n: distances(t.adjacency(), n) for n in t.nodes}
    for src in ("h1", "e3", "a5", "c2"):
        for dst in ("h16", "h5", "c4", "e1"):
            if src == dst:
                continue
            p = _walk(t, routes, src, f"/node/{dst}", {dst})
            assert len(p) - 1 == dist[src][dst]
        for svc in t.services:
            p = _walk(t, routes, src, svc.prefix, set(svc.nodes))
            assert len(p) - 1 == min(dist[src][n] for n in svc.nodes)


def test_static_routes_compress_uplinks_into_a_default_route():
    t = fat_tree(4)
    routes = static_routes(t)
    h1 = routes["h1"]
    assert {r["prefix"] for r in h1} == {"/"} | {s.prefix for s in t.services}
    # an edge router: own servers explicit, the rest through its aggregation uplinks
    e1 = routes["e1"]
    assert {r["face"] for r in e1 if r["prefix"] == "/"} == {"e1-eth2", "e1-eth3"}
    # a core router has no majority next hop: every node explicit, no default
    assert not [r for r in routes["c1"] if r["prefix"] == "/"]
    full = static_routes(t, compress=False)
    assert sum(map(len, full.values())) > 2 * sum(map(len, routes.values()))


def test_static_routes_avoid_failed_links_and_nodes():
    t = fat_tree(4)
    e1_a1 = t.links_between("e1", "a1")
    routes = static_routes(t, down=e1_a1)
    assert not [r for r in routes["e1"] if r["face"] == e1_a1[0].intf_a]
    routes = static_routes(t, dead={"c1"})
    assert "c1" not in routes
    assert not any(r["prefix"] == "/node/c1" for rs in routes.values() for r in rs)
    assert "/node/c1" not in expected_prefixes(t, {"c1"})


# ---------------------------------------------------------------------- YAML
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    t = load_topology(path)
    assert t.nodes and t.links and t.services
    t.validate()


def test_yaml_full_schema():
    t = parse_topology("""
name: demo
defaults:
  link: {bw: 50, loss: 0.5}
nodes:
  r1: sr
  r2: {role: sr, layer: spine}
  h1: {role: sg, pod: 1}
links:
  - [h1, r1]
  - {a: r1, b: r2, bw: 10, delay: 3, cost: 5, mtu: 1400}
services:
  - {prefix: /x/echo, app: echo, nodes: [h1]}
""", "demo.yaml")
    assert t.name == "demo" and t.nodes["r2"].layer == "spine" and t.nodes["h1"].pod == 1
    l0, l1 = t.links
    assert (l0.opts.bw, l0.opts.loss, l0.opts.cost) == (50, 0.5, 1)
    assert (l1.opts.bw, l1.opts.delay, l1.opts.cost, l1.opts.mtu, l1.opts.loss) == (10, 3, 5, 1400, 0.5)
    assert [(s.prefix, s.kind) for s in t.services] == [("/x/echo", "client")]


def test_yaml_without_services_gets_the_shop_unless_disabled():
    text = "nodes: {r1: sr, h1: sg, h2: sg}\nlinks: [[h1, r1], [h2, r1]]\n"
    assert {s.prefix for s in parse_topology(text).services} == {p for p, *_ in SHOP}
    assert parse_topology(text + "shop: false\n").services == []
    assert parse_topology(text, shop=False).services == []


def test_command_line_link_options_apply_where_the_file_says_nothing():
    text = "nodes: {r1: sr, h1: sg}\nlinks: [[h1, r1], {a: r1, b: h1, bw: 5}]\nshop: false\n"
    t = parse_topology(text, opts=LinkOpts(bw=20, loss=1))
    assert [l.opts.bw for l in t.links] == [20, 5] and all(l.opts.loss == 1 for l in t.links)


POD_BASE = "nodes:\n  r1: sr\n  h1: sg\nlinks: [[h1, r1]]\n"

BAD = [
    ("nodes: {r1: sr\nlinks: []\n", 2, "not valid YAML"),
    ("- just\n- a list\n", 1, "expected a mapping"),
    ("nodes: {r1: sr}\nlinks: [[r1, r1]]\nfoo: 1\n", 3, "unknown key 'foo'"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\n  - [r1, r9]\n", 6, "no node named 'r9'"),
    ("nodes:\n  r1: sr\n  h1: router\nlinks:\n  - [h1, r1]\n", 3, "role must be one of"),
    ("nodes:\n  r1: sr\n  r1: sg\nlinks: []\n", 3, "duplicate key 'r1'"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\n  - {a: h1, b: r1, loss: 150}\n", 6,
     "loss must be a percentage"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\n  - {a: h1, b: r1,\n     bw: -3}\n", 7,
     "bw must be"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1, r1]\n", 5, "exactly two"),
    ("nodes:\n  r1: sr\n  h1: sg\n  h2: sg\nlinks:\n  - [h1, r1]\n", 4, "not connected"),
    ("nodes:\n  a_very_long_name: sr\nlinks: []\n", 2, "longer than 10"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\nservices:\n  - {prefix: /s, nodes: [r1]}\n",
     7, "Service Router"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\nservices:\n  - prefix: /s\n    app: db\n"
     "    nodes: [h1]\n", 8, "app must be one of"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\nservices:\n  - {prefix: 'no-slash', "
     "nodes: [h1]}\n", 7, "service"),
    ("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\n  - {a: h1, b: r1, colour: red}\n", 6,
     "unknown key 'colour'"),
    ("nodes: {r1: sr}\nlinks:\n  - [r1, r1]\n", 3, "cannot be linked to itself"),
    (POD_BASE + "pods:\n  - {name: p1, node: r1}\n", 6, "Service Router"),
    (POD_BASE + "pods:\n  - {name: p1, node: h1}\n  - name: p1\n    node: h1\n", 7,
     "already a node or a pod"),
    (POD_BASE + "pods:\n  - name: p1\n    node: h1\n    serves: [/node/x]\n", 8,
     "not a service prefix"),
    (POD_BASE + "pods:\n  - {name: p1, node: h1, colour: red}\n", 6, "unknown key 'colour'"),
    (POD_BASE + "pods:\n  - {name: h1, node: h1}\n", 6, "already a node"),
    (POD_BASE + "pods:\n  - {node: h1}\n", 6, "name is required"),
]


@pytest.mark.parametrize("text,line,problem", BAD, ids=[b[2] for b in BAD])
def test_bad_files_name_the_line_and_the_problem(text, line, problem):
    with pytest.raises(YamlTopologyError) as info:
        parse_topology(text, "bad.yaml")
    msg = str(info.value)
    assert msg.startswith(f"bad.yaml:{line}: "), msg
    assert problem in msg, msg


def test_pods_in_yaml():
    t = parse_topology(POD_BASE + "pods:\n  - {name: web1, node: h1, serves: [/web], run: python3 -m "
                       "http.server 80}\n  - name: cli\n    node: h1\n", "pods.yaml")
    web, cli = t.pods
    assert (web.name, web.node, web.index, web.serves, web.run) == \
        ("web1", "h1", 0, ["/web"], ["python3", "-m", "http.server", "80"])
    assert (cli.index, cli.serves, cli.run) == (1, [], None)
    assert t.pods_on("h1") == [web, cli] and "2 pods" in t.summary()


def test_unreadable_file(tmp_path):
    with pytest.raises(YamlTopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")


def test_from_yaml_check_reports_the_line(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  r1: sr\n  h1: sg\nlinks:\n  - [h1, r1]\n  - [r1, r9]\n")
    script = Path(__file__).resolve().parent.parent / "topologies" / "from_yaml.py"
    res = subprocess.run([sys.executable, str(script), str(bad), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0
    assert f"{bad}:6: link r1-r9: no node named 'r9'" in res.stderr
    good = subprocess.run([sys.executable, str(script), str(EXAMPLES[0]), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and good.stdout.startswith("ok: ")
