"""Forwarder configuration: a YAML file, validated before anything starts.

Every problem is reported as one ConfigError naming the field, so a lab of 200
nodes fails at launch with a readable line instead of a traceback per node.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .dataplane.flows import DEFAULT_IDLE_TIMEOUT
from .dataplane.names import InvalidName, Name
from .dataplane.wire import DEFAULT_HOP_LIMIT, UDP_PORT

ROLES = ("sg", "sr")
FACE_TYPES = ("ether", "udp")
ORIGINS = ("static", "scsc")


class ConfigError(ValueError):
    """A configuration problem; str() is the one-line message shown to the user."""


@dataclass
class FaceConfig:
    name: str
    type: str = "ether"
    interface: Optional[str] = None
    mtu: int = 1500
    local: Optional[Tuple[str, int]] = None
    remote: Optional[Tuple[str, int]] = None


@dataclass
class RouteConfig:
    prefix: Name
    face: str
    cost: int = 1
    priority: int = 0
    instance: Optional[str] = None


@dataclass
class HttpService:
    prefix: Name
    backend: Tuple[str, int]
    cost: int = 0
    identity: Optional[Path] = None  # SPA service identity for the registration


@dataclass
class PodService:
    """A service a pod serves: the SG registers its prefix for the pod (with the
    service's SPA identity when the gateway enforces SPA)."""
    prefix: Name
    identity: Optional[Path] = None
    cost: int = 0


@dataclass
class PodConfig:
    """A pod behind this Service Gateway (forwarder.gateway): its veth's SG end, its
    one address and MAC, the services it serves."""
    name: str
    interface: str
    address: str
    mac: str
    mtu: Optional[int] = None   # the pod's MTU; default: the network faces' less the
                                # carriage overhead (forwarder.gateway.addresses.L4_OVERHEAD)
    services: List[PodService] = field(default_factory=list)


@dataclass
class RoutingConfig:
    enabled: bool = False
    hello_ms: int = 100
    dead_ms: int = 300
    costs: Dict[str, int] = field(default_factory=dict)  # face name -> link cost
    # RFC 8405 back-offs, [initial, short, long, time_to_learn, holddown] ms (None: the router's)
    spf_backoff_ms: Optional[Tuple[int, ...]] = None
    lsa_backoff_ms: Optional[Tuple[int, ...]] = None
    retransmit_ms: int = 200  # an unacknowledged LSA is sent again after this
    ack_delay_ms: int = 0     # ACKs wait this long to cover a burst of LSAs in one packet


@dataclass
class SpaConfig:
    trust: List[Path] = field(default_factory=list)  # authority public keys
    crl: Optional[Path] = None                       # revocation list file
    enforce: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.trust)


@dataclass
class NodeConfig:
    node: Name
    roles: Tuple[str, ...] = ROLES
    workdir: Path = Path(".")
    faces: List[FaceConfig] = field(default_factory=list)
    routes: List[RouteConfig] = field(default_factory=list)
    rules: List[Dict[str, Any]] = field(default_factory=list)
    local_socket: Optional[Path] = None
    management: str = ""
    http_proxy: Optional[Tuple[str, int]] = None
    http_services: List[HttpService] = field(default_factory=list)
    pods: List[PodConfig] = field(default_factory=list)
    host_map: Dict[str, str] = field(default_factory=dict)
    hop_limit: int = DEFAULT_HOP_LIMIT
    flow_idle_s: float = DEFAULT_IDLE_TIMEOUT
    log_level: str = "info"
    pcap: bool = False
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    spa: SpaConfig = field(default_factory=SpaConfig)
    scsc: Optional[Tuple[str, int]] = None
    telemetry_interval_s: float = 1.0
    dataplane: str = "auto"   # auto | ebpf | python (forwarder.runtime.offload)
    seed: Optional[int] = None  # seeds weighted choices (strategy rules); None: from the OS

    @property
    def mgmt_socket(self) -> Optional[Path]:
        return Path(self.management[5:]) if self.management.startswith("unix:") else None


def _addr(value: Any, where: str) -> Tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a numeric IP address and port") from None
    return host.strip("[]"), p


def _name(value: Any, where: str) -> Name:
    try:
        return Name.parse(value)
    except InvalidName as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _int(d: dict, key: str, where: str, default: int, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{where}.{key}: expected an integer in {lo}..{hi}, got {v!r}")
    return v


def _backoff(rt: dict, key: str) -> Optional[Tuple[int, ...]]:
    """routing.<key>: [initial, short, long, time_to_learn, holddown] in ms, checked whole."""
    v = rt.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 5 or any(
            isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 600_000 for x in v):
        raise ConfigError(f"routing.{key}: expected [initial, short, long, time_to_learn, "
                          f"holddown], five integers in 0..600000 ms, got {v!r}")
    from .routing.backoff import Backoff
    try:
        Backoff.from_ms(v)
    except ValueError as exc:
        raise ConfigError(f"routing.{key}: {exc}") from None
    return tuple(v)


def _check_keys(d: Any, allowed: set, where: str) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return d


TOP_KEYS = {"node", "roles", "workdir", "faces", "routes", "rules", "local_socket", "management",
            "http_proxy", "http_services", "host_map", "hop_limit", "flow_idle_s", "log_level",
            "pcap", "routing", "spa", "scsc", "telemetry_interval_s", "dataplane", "pods", "seed"}
DATAPLANES = ("auto", "ebpf", "python")


SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes


def socket_dir(workdir: Path) -> Path:
    """Where a node's Unix sockets live: its work folder, or, when that path is too
    long for sun_path, a short folder under /run/dmsc (the daemon then links
    WORKDIR/app.sock and WORKDIR/mgmt.sock to the real sockets)."""
    if len(str(Path(workdir).absolute() / "mgmt.sock")) <= SOCKET_PATH_MAX:
        return Path(workdir)
    digest = hashlib.sha1(str(Path(workdir).absolute()).encode()).hexdigest()[:16]
    return Path("/run/dmsc") / digest


def parse(data: Any, base_dir: Path = Path(".")) -> NodeConfig:
    """Validate a mapping (as loaded from YAML) into a NodeConfig."""
    d = _check_keys(data if data is not None else {}, TOP_KEYS, "config")
    if "node" not in d:
        raise ConfigError("config: 'node' (the node's own name, e.g. /node/a) is required")
    node = _name(d["node"], "node")
    if len(node) == 0:
        raise ConfigError("node: the node name needs at least one component")
    roles = d.get("roles", list(ROLES))
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
        raise ConfigError(f"roles: expected a non-empty list of {ROLES}, got {roles!r}")
    workdir = Path(d.get("workdir") or base_dir)
    cfg = NodeConfig(node=node, roles=tuple(roles), workdir=workdir)
    cfg.hop_limit = _int(d, "hop_limit", "config", DEFAULT_HOP_LIMIT, 1, 255)
    idle = d.get("flow_idle_s", DEFAULT_IDLE_TIMEOUT)
    if not isinstance(idle, (int, float)) or idle <= 0:
        raise ConfigError(f"flow_idle_s: expected a positive number, got {idle!r}")
    cfg.flow_idle_s = float(idle)
    cfg.log_level = str(d.get("log_level", "info")).lower()
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {cfg.log_level!r} is not debug, info, warning or error")
    cfg.pcap = bool(d.get("pcap", False))
    cfg.faces = _parse_faces(d.get("faces") or [])
    names = {f.name for f in cfg.faces}
    cfg.routes = _parse_routes(d.get("routes") or [], names)
    cfg.rules = _parse_rules(d.get("rules") or [])
    _parse_sockets(d, cfg)
    _parse_http(d, cfg)
    if d.get("routing") is not None:
        cfg.routing = _parse_routing(d["routing"], names)
    if d.get("spa") is not None:
        cfg.spa = _parse_spa(d["spa"])
    if d.get("scsc") is not None:
        cfg.scsc = _addr(d["scsc"], "scsc")
    ti = d.get("telemetry_interval_s", 1.0)
    if not isinstance(ti, (int, float)) or isinstance(ti, bool) or not 0.05 <= ti <= 3600:
        raise ConfigError(f"telemetry_interval_s: expected a number of seconds in 0.05..3600, got {ti!r}")
    cfg.telemetry_interval_s = float(ti)
    if d.get("seed") is not None:
        cfg.seed = _int(d, "seed", "config", 0, 0, 2**63 - 1)
    cfg.pods = _parse_pods(d.get("pods") or [], cfg)
    cfg.dataplane = d.get("dataplane", "auto")
    if cfg.dataplane not in DATAPLANES:
        raise ConfigError(f"dataplane: expected one of {', '.join(DATAPLANES)}, got {cfg.dataplane!r}")
    return cfg


def _parse_faces(faces: Any) -> List[FaceConfig]:
    if not isinstance(faces, list):
        raise ConfigError("faces: expected a list")
    out: List[FaceConfig] = []
    seen = set()
    for i, f in enumerate(faces):
        where = f"faces[{i}]"
        _check_keys(f, {"name", "type", "interface", "mtu", "local", "remote"}, where)
        ftype = f.get("type", "ether")
        if ftype not in FACE_TYPES:
            raise ConfigError(f"{where}.type: {ftype!r} is not one of {FACE_TYPES}")
        fname = f.get("name") or f.get("interface")
        if not fname or not isinstance(fname, str):
            raise ConfigError(f"{where}: a face needs a name (or an interface)")
        if fname in seen:
            raise ConfigError(f"{where}.name: duplicate face name {fname!r}")
        seen.add(fname)
        fc = FaceConfig(name=fname, type=ftype, mtu=_int(f, "mtu", where, 1500, 68, 65535))
        if ftype == "ether":
            fc.interface = f.get("interface") or fname
            if len(fc.interface) > 15:
                raise ConfigError(f"{where}.interface: {fc.interface!r} is longer than 15 characters")
        else:
            fc.local = _addr(f.get("local", f"0.0.0.0:{UDP_PORT}"), f"{where}.local")
            if "remote" not in f:
                raise ConfigError(f"{where}.remote: a UDP face needs the peer's HOST:PORT")
            fc.remote = _addr(f["remote"], f"{where}.remote")
        out.append(fc)
    return out


def _parse_routes(routes: Any, faces: set) -> List[RouteConfig]:
    if not isinstance(routes, list):
        raise ConfigError("routes: expected a list")
    out: List[RouteConfig] = []
    for i, r in enumerate(routes):
        where = f"routes[{i}]"
        _check_keys(r, {"prefix", "face", "cost", "priority", "instance"}, where)
        if "prefix" not in r or "face" not in r:
            raise ConfigError(f"{where}: a route needs a prefix and a face")
        if r["face"] not in faces:
            raise ConfigError(f"{where}.face: no face named {r['face']!r} (faces: {sorted(faces)})")
        inst = r.get("instance")
        out.append(RouteConfig(_name(r["prefix"], f"{where}.prefix"), r["face"],
                               _int(r, "cost", where, 1, 0, 65535),
                               _int(r, "priority", where, 0, 0, 255),
                               _name(inst, f"{where}.instance").text if inst else None))
    return out


def _parse_rules(rules: Any) -> List[Dict[str, Any]]:
    if not isinstance(rules, list):
        raise ConfigError("rules: expected a list")
    from .dataplane.strategy import Rule  # local import: config must not pull the pipeline in
    for i, r in enumerate(rules):
        try:
            Rule.from_json(r if isinstance(r, dict) else {})
        except (ValueError, TypeError, InvalidName) as exc:
            raise ConfigError(f"rules[{i}]: {exc}") from None
    return list(rules)


def _parse_sockets(d: dict, cfg: NodeConfig) -> None:
    """The applications' socket (Service Gateways only) and the management endpoint."""
    sock = d.get("local_socket")
    sdir = socket_dir(cfg.workdir)
    if "sg" in cfg.roles:
        cfg.local_socket = Path(sock) if sock else sdir / "app.sock"
    elif sock:
        raise ConfigError("local_socket: only a Service Gateway (role sg) accepts applications")
    mgmt = d.get("management") or f"unix:{sdir / 'mgmt.sock'}"
    if not isinstance(mgmt, str) or not (mgmt.startswith("unix:") or mgmt.startswith("tcp:")):
        raise ConfigError(f"management: expected unix:/path or tcp:HOST:PORT, got {mgmt!r}")
    if mgmt.startswith("tcp:"):
        _addr(mgmt[4:], "management")
    cfg.management = mgmt
    if len(str(cfg.local_socket or "")) > 100 or len(mgmt) > 105:
        raise ConfigError("local_socket/management: Unix socket paths must be under 108 bytes; "
                          "use a shorter workdir")


def _parse_http(d: dict, cfg: NodeConfig) -> None:
    """The SG's HTTP adapters: the proxy for clients, the published backends, the host map."""
    if d.get("http_proxy") is not None:
        if "sg" not in cfg.roles:
            raise ConfigError("http_proxy: only a Service Gateway (role sg) runs the HTTP proxy")
        cfg.http_proxy = _addr(d["http_proxy"], "http_proxy")
    for i, s in enumerate(d.get("http_services") or []):
        where = f"http_services[{i}]"
        _check_keys(s, {"prefix", "backend", "cost", "identity"}, where)
        if "prefix" not in s or "backend" not in s:
            raise ConfigError(f"{where}: needs a prefix and a backend HOST:PORT")
        if "sg" not in cfg.roles:
            raise ConfigError(f"{where}: only a Service Gateway (role sg) hosts services")
        cfg.http_services.append(HttpService(_name(s["prefix"], f"{where}.prefix"),
                                             _addr(s["backend"], f"{where}.backend"),
                                             _int(s, "cost", where, 0, 0, 65535),
                                             Path(s["identity"]) if s.get("identity") else None))
    hm = d.get("host_map") or {}
    if not isinstance(hm, dict):
        raise ConfigError("host_map: expected a mapping of host name to prefix")
    for host, prefix in hm.items():
        _name(prefix, f"host_map[{host}]")
    cfg.host_map = {str(k): str(v) for k, v in hm.items()}


def _parse_pods(pods: Any, cfg: NodeConfig) -> List[PodConfig]:
    if not isinstance(pods, list):
        raise ConfigError("pods: expected a list of {name, interface, address, mac, services}")
    if pods and "sg" not in cfg.roles:
        raise ConfigError("pods: only a Service Gateway (role sg) has pods")
    out: List[PodConfig] = []
    seen: set = set()
    for i, p in enumerate(pods):
        where = f"pods[{i}]"
        _check_keys(p, {"name", "interface", "address", "mac", "mtu", "services"}, where)
        for k in ("name", "interface", "address", "mac"):
            if not isinstance(p.get(k), str) or not p[k]:
                raise ConfigError(f"{where}.{k}: required (a string)")
        if p["name"] in seen:
            raise ConfigError(f"{where}.name: duplicate pod {p['name']!r}")
        seen.add(p["name"])
        if len(p["interface"]) > 15:
            raise ConfigError(f"{where}.interface: {p['interface']!r} is longer than 15 characters")
        try:
            addr = ipaddress.IPv4Address(p["address"])
        except ValueError:
            raise ConfigError(f"{where}.address: {p['address']!r} is not an IPv4 address") from None
        if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", p["mac"]):
            raise ConfigError(f"{where}.mac: {p['mac']!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        pc = PodConfig(p["name"], p["interface"], str(addr), p["mac"].lower(),
                       _int(p, "mtu", where, 576, 576, 65535) if "mtu" in p else None)
        for j, sv in enumerate(p.get("services") or []):
            w = f"{where}.services[{j}]"
            _check_keys(sv, {"prefix", "identity", "cost"}, w)
            if "prefix" not in sv:
                raise ConfigError(f"{w}: a prefix is required")
            ident = Path(sv["identity"]) if sv.get("identity") else None
            if ident is not None and not ident.exists():
                raise ConfigError(f"{w}.identity: {ident} does not exist")
            pc.services.append(PodService(_name(sv["prefix"], f"{w}.prefix"), ident,
                                          _int(sv, "cost", w, 0, 0, 65535)))
        out.append(pc)
    return out


def _parse_routing(rt: Any, faces: set) -> RoutingConfig:
    if rt is True or rt is False:
        rt = {"enabled": rt}
    _check_keys(rt, {"enabled", "hello_ms", "dead_ms", "costs", "spf_backoff_ms",
                     "lsa_backoff_ms", "retransmit_ms", "ack_delay_ms"}, "routing")
    costs = rt.get("costs") or {}
    if not isinstance(costs, dict) or any(k not in faces for k in costs):
        raise ConfigError(f"routing.costs: expected a mapping of face name (one of {sorted(faces)}) "
                          f"to cost, got {costs!r}")
    rc = RoutingConfig(bool(rt.get("enabled", True)),
                       _int(rt, "hello_ms", "routing", 100, 10, 60_000),
                       _int(rt, "dead_ms", "routing", 300, 20, 600_000),
                       {k: _int(costs, k, "routing.costs", 1, 1, 65535) for k in costs},
                       _backoff(rt, "spf_backoff_ms"), _backoff(rt, "lsa_backoff_ms"),
                       _int(rt, "retransmit_ms", "routing", 200, 10, 60_000),
                       _int(rt, "ack_delay_ms", "routing", 0, 0, 60_000))
    if rc.dead_ms <= rc.hello_ms:
        raise ConfigError("routing.dead_ms must be longer than routing.hello_ms")
    if rc.ack_delay_ms >= rc.retransmit_ms:
        raise ConfigError("routing.ack_delay_ms must be shorter than routing.retransmit_ms "
                          "(else every LSA is sent twice)")
    return rc


def _parse_spa(sp: Any) -> SpaConfig:
    _check_keys(sp, {"trust", "crl", "enforce"}, "spa")
    trust = sp.get("trust") or []
    if isinstance(trust, str):
        trust = [trust]
    if not isinstance(trust, list) or not trust:
        raise ConfigError("spa.trust: expected a list of authority public key files")
    spa = SpaConfig([Path(t) for t in trust], Path(sp["crl"]) if sp.get("crl") else None,
                    bool(sp.get("enforce", True)))
    for t in spa.trust:
        if not t.exists():
            raise ConfigError(f"spa.trust: {t} does not exist")
    return spa


def load(path: os.PathLike) -> NodeConfig:
    import yaml
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        return parse(data, p.parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
