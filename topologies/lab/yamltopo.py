"""Topologies described in YAML (topologies/from_yaml.py FILE). Schema::

    name: my-lab                      # optional (default: the file name)
    defaults:                         # optional
      link: {bw: 100, delay: 2, loss: 0.5, mtu: 1500, cost: 1}
    nodes:                            # required: name -> role, or name -> mapping
      r1: sr                          #   sr = Service Router, sg = Service Gateway
      h1: {role: sg, layer: server, pod: 1}
    links:                            # required: [a, b] or a mapping with options
      - [h1, r1]
      - {a: r1, b: r2, bw: 10, delay: 5, loss: 1, mtu: 1400, cost: 10}
    services:                         # optional; without it the demo shop is
      - prefix: /shop/catalog         #   spread over the SGs (shop: false: none)
        app: catalog                  # frontend | catalog | cart | payment | echo
        kind: client                  # client (client library) | http (plain HTTP server)
        nodes: [h1, h2]               # Service Gateways hosting an instance
    pods:                             # optional: namespaces behind an SG (its default
      - name: web1                    #   gateway and DNS); the SG registers what it
        node: h2                      #   serves, reached by name with no proxy:
        serves: [/web]                #   curl http://web.dmsc/ from any pod
        run: [python3, -m, http.server, "80"]   # optional command started in it
      - {name: cli1, node: h1}        # a client pod: `dmsc pod cli1 curl http://web.dmsc/`
    shop: true

Units: bw Mbit/s, delay ms, loss percent. Node names: a letter, then letters,
digits or _, at most 10 characters. Every problem is reported as
``FILE:LINE: problem``, before anything is created.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from .model import SERVICE_KINDS, LinkOpts, Topology, TopologyError

APPS = ("frontend", "catalog", "cart", "payment", "echo")
TOP_KEYS = {"name", "defaults", "nodes", "links", "services", "pods", "shop"}
POD_KEYS = ("name", "node", "serves", "run")
LINK_OPTS = {"bw", "delay", "loss", "mtu", "cost"}


class YamlTopologyError(TopologyError):
    """FILE:LINE: problem."""


class _LineDict(dict):
    line = 0
    key_lines: dict = {}


class _LineList(list):
    line = 0
    item_lines: list = []


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        line = knode.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise YamlTopologyError(f"line {line}: a key must be a plain value") from None
        if key in out:
            raise YamlTopologyError(f"line {line}: duplicate key {key!r} "
                                    f"(first on line {out.key_lines[key]})")
        out[key] = loader.construct_object(vnode, deep=True)
        out.key_lines[key] = line
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    out = _LineList(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _line(obj: Any, key: Any = None, default: int = 0) -> int:
    if isinstance(obj, _LineDict):
        return obj.key_lines.get(key, obj.line) if key is not None else obj.line
    if isinstance(obj, _LineList):
        if isinstance(key, int) and key < len(obj.item_lines):
            return obj.item_lines[key]
        return obj.line
    return default


def parse_topology(text: str, source: str = "<yaml>", shop: bool = True,
                   opts: Optional[LinkOpts] = None) -> Topology:
    """Build a Topology from YAML text; YamlTopologyError("SOURCE:LINE: problem")."""
    return _Parser(source).parse(text, shop, opts)


class _Parser:
    """One YAML topology, section by section; every error names its line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, line: int, msg: str) -> YamlTopologyError:
        src = self.source
        return YamlTopologyError(f"{src}:{line}: {msg}" if line else f"{src}: {msg}")

    def parse(self, text: str, shop: bool, opts: Optional[LinkOpts]) -> Topology:
        data = self.load(text)
        name = data.get("name", Path(self.source).stem)
        if not isinstance(name, str) or not name:
            raise self.fail(_line(data, "name"), "name: expected a non-empty string")
        topo = Topology(name)
        link_defaults = self.link_defaults(data, opts)
        nodes = self.nodes(data, topo)
        self.links(data, topo, link_defaults)
        want_shop = data.get("shop", True)
        if not isinstance(want_shop, bool):
            raise self.fail(_line(data, "shop"), "shop: expected true or false")
        if data.get("services") is not None:
            self.services(data, topo)
        elif shop and want_shop:
            from .builders import deploy_shop
            deploy_shop(topo)
        if data.get("pods") is not None:
            self.pods(data, topo)
        try:
            topo.validate()
        except TopologyError as exc:
            from .model import distances
            reached = distances(topo.adjacency(), next(iter(topo.nodes)))
            lost = [n for n in topo.nodes if n not in reached]
            line = _line(nodes, lost[0]) if lost else _line(data, "nodes")
            raise self.fail(line, str(exc)) from None
        return topo

    def load(self, text: str) -> dict:
        try:
            data = yaml.load(text, Loader=_Loader)
        except YamlTopologyError as exc:
            raise YamlTopologyError(f"{self.source}:{str(exc)[5:]}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            raise self.fail(mark.line + 1 if mark else 0, f"not valid YAML: {problem}") from None
        if not isinstance(data, dict):
            raise self.fail(1, "expected a mapping with 'nodes' and 'links' at the top level")
        unknown = sorted(set(map(str, data)) - TOP_KEYS)
        if unknown:
            raise self.fail(_line(data, unknown[0]), f"unknown key {unknown[0]!r}; allowed: "
                                                     f"{', '.join(sorted(TOP_KEYS))}")
        return data

    def link_defaults(self, data: dict, opts: Optional[LinkOpts]) -> dict:
        """defaults.link, overridden by the command line's link options."""
        base = {} if opts is None else {k: getattr(opts, k) for k in LINK_OPTS
                                        if getattr(opts, k) is not None and
                                        not (k == "mtu" and opts.mtu == 1500) and
                                        not (k == "cost" and opts.cost == 1)}
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise self.fail(_line(data, "defaults"),
                            "defaults: expected a mapping (defaults: {link: {...}})")
        for k in defaults:
            if k != "link":
                raise self.fail(_line(defaults, k),
                                f"defaults: unknown key {k!r}; only 'link' is allowed")
        dlink = defaults.get("link") or {}
        if not isinstance(dlink, dict):
            raise self.fail(_line(defaults, "link"), "defaults.link: expected a mapping of link options")
        for k in dlink:
            if k not in LINK_OPTS:
                raise self.fail(_line(dlink, k), f"defaults.link: unknown option {k!r}; allowed: "
                                                 f"{', '.join(sorted(LINK_OPTS))}")
        return {**dict(dlink), **base}

    def nodes(self, data: dict, topo: Topology) -> dict:
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise self.fail(_line(data, "nodes", 1), "nodes: expected a mapping of node name to "
                                                     "role (sr or sg), e.g. 'r1: sr'")
        for nname, spec in nodes.items():
            line = _line(nodes, nname)
            if isinstance(spec, str):
                spec = {"role": spec}
            if not isinstance(spec, dict):
                raise self.fail(line, f"node {nname}: expected a role (sr or sg) or a mapping "
                                      "{role: ...}")
            extra = sorted(set(spec) - {"role", "layer", "pod"})
            if extra:
                raise self.fail(_line(spec, extra[0], line), f"node {nname}: unknown key "
                                                              f"{extra[0]!r}; allowed: role, layer, pod")
            if "role" not in spec:
                raise self.fail(line, f"node {nname}: a role is required (sr or sg)")
            pod = spec.get("pod")
            if pod is not None and (isinstance(pod, bool) or not isinstance(pod, int)):
                raise self.fail(_line(spec, "pod", line), f"node {nname}: pod must be an integer")
            try:
                topo.add_node(str(nname), spec["role"], str(spec.get("layer") or ""), pod)
            except TopologyError as exc:
                where = _line(spec, "role", line) if "role" in str(exc) else line
                raise self.fail(where, str(exc)) from None
        return nodes

    def links(self, data: dict, topo: Topology, link_defaults: dict) -> None:
        links = data.get("links")
        if not isinstance(links, list) or not links:
            raise self.fail(_line(data, "links", 1),
                            "links: expected a list of [a, b] or {a: .., b: .., ...}")
        for i, l in enumerate(links):
            line = _line(links, i)
            if isinstance(l, (list, tuple)):
                if len(l) != 2:
                    raise self.fail(line, f"link {list(l)}: expected exactly two node names [a, b]")
                spec = {"a": l[0], "b": l[1]}
            elif isinstance(l, dict):
                spec = l
            else:
                raise self.fail(line, f"link {l!r}: expected [a, b] or a mapping {{a: .., b: ..}}")
            extra = sorted(set(spec) - ({"a", "b"} | LINK_OPTS))
            if extra:
                raise self.fail(_line(spec, extra[0], line), f"link: unknown key {extra[0]!r}; "
                                                              f"allowed: a, b, "
                                                              f"{', '.join(sorted(LINK_OPTS))}")
            if "a" not in spec or "b" not in spec:
                raise self.fail(line, "link: needs both ends, a and b")
            values = {**link_defaults, **{k: spec[k] for k in LINK_OPTS if k in spec}}
            lo = LinkOpts(**{k: values[k] for k in LINK_OPTS if k in values})
            try:
                topo.add_link(str(spec["a"]), str(spec["b"]), lo)
            except TopologyError as exc:
                bad = next((k for k in LINK_OPTS if f"{k} must" in str(exc)), None)
                raise self.fail(_line(spec, bad, line) if bad and bad in spec else line,
                                str(exc)) from None

    def services(self, data: dict, topo: Topology) -> None:
        services = data.get("services")
        if not isinstance(services, list):
            raise self.fail(_line(data, "services"), "services: expected a list of "
                                                     "{prefix, app, kind, nodes}")
        for i, s in enumerate(services):
            line = _line(services, i)
            if not isinstance(s, dict):
                raise self.fail(line, "service: expected a mapping {prefix, app, kind, nodes}")
            extra = sorted(set(s) - {"prefix", "app", "kind", "nodes"})
            if extra:
                raise self.fail(_line(s, extra[0], line), f"service: unknown key {extra[0]!r}; "
                                                           "allowed: prefix, app, kind, nodes")
            for k in ("prefix", "nodes"):
                if k not in s:
                    raise self.fail(line, f"service: {k} is required")
            app = s.get("app", "echo")
            if app not in APPS:
                raise self.fail(_line(s, "app", line), f"service {s['prefix']}: app must be one "
                                                        f"of {', '.join(APPS)}, got {app!r}")
            kind = s.get("kind", "http" if app in ("cart", "payment") else "client")
            if kind not in SERVICE_KINDS:
                raise self.fail(_line(s, "kind", line), f"service {s['prefix']}: kind must be one "
                                                         f"of {', '.join(SERVICE_KINDS)}, got {kind!r}")
            nl = s["nodes"]
            if isinstance(nl, str):
                nl = [nl]
            if not isinstance(nl, list) or not nl:
                raise self.fail(_line(s, "nodes", line), f"service {s['prefix']}: nodes must be a "
                                                          "non-empty list of SG names")
            try:
                topo.add_service(str(s["prefix"]), app, kind, [str(n) for n in nl])
            except TopologyError as exc:
                key = "nodes" if "node" in str(exc) else "prefix"
                raise self.fail(_line(s, key, line), str(exc)) from None


    def pods(self, data: dict, topo: Topology) -> None:
        pods = data.get("pods")
        if not isinstance(pods, list):
            raise self.fail(_line(data, "pods"), "pods: expected a list of {name, node, serves, run}")
        for i, p in enumerate(pods):
            line = _line(pods, i)
            if not isinstance(p, dict):
                raise self.fail(line, "pod: expected a mapping {name, node, serves, run}")
            extra = sorted(set(map(str, p)) - set(POD_KEYS))
            if extra:
                raise self.fail(_line(p, extra[0], line), f"pod: unknown key {extra[0]!r}; "
                                                           f"allowed: {', '.join(POD_KEYS)}")
            for k in ("name", "node"):
                if k not in p:
                    raise self.fail(line, f"pod: {k} is required")
            serves = p.get("serves", [])
            if isinstance(serves, str):
                serves = [serves]
            if not isinstance(serves, list):
                raise self.fail(_line(p, "serves", line), f"pod {p['name']}: serves must be a "
                                                           "list of prefixes")
            run = p.get("run")
            if isinstance(run, str):
                run = run.split()
            if run is not None and (not isinstance(run, list) or not run):
                raise self.fail(_line(p, "run", line), f"pod {p['name']}: run must be a command "
                                                        "(a list, or a string split on spaces)")
            try:
                topo.add_pod(str(p["name"]), str(p["node"]), [str(x) for x in serves],
                             [str(x) for x in run] if run is not None else None)
            except TopologyError as exc:
                msg = str(exc)
                key = ("serves" if "prefix" in msg or "a service of" in msg else
                       "run" if "run must" in msg else
                       "name" if "pod name" in msg or "already a node" in msg else "node")
                raise self.fail(_line(p, key, line), msg) from None


def load_topology(path, shop: bool = True, opts: Optional[LinkOpts] = None) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise YamlTopologyError(f"{p}: cannot read ({exc.strerror})") from None
    return parse_topology(text, str(p), shop=shop, opts=opts)
