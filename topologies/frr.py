"""FRR (zebra + ospfd + bfdd) on a NetnsNetwork: the routing peer DMSC is measured against.

Like ipmininet's daemons: every node gets its own FRR instance, whose
configuration is built and validated in Python (then once more by FRR's own
parser, ``-C``) before anything starts, written to the node's work folder
``<run>/<node>/frr/`` together with the daemons' pid files, vty sockets, zserv
socket and logs, and started in the foreground inside the node's namespace
through ``NsNode.popen`` (so each daemon is recorded in the run's
``records.jsonl`` and ``python -m topologies.clean`` stops it after a crash).

Daemons run as root with the package's vty group (``-u root -g frrvty``):
FRR refuses a user that is not in its vty group, ``-g frrvty`` puts it there,
and root needs no permissions on the run folder (the ``frr`` user could not
reach a checkout under /root). Nothing under /etc/frr or /run/frr is used, and
no TCP vty port is opened (``-P 0``): vtysh talks to the vty sockets.

Addressing (`FrrNetwork`): link i gets ``10.1.0.0/16`` + 2i as a /31 (the
end listed first in ``add_link`` takes the even address), node n (creation
order, from 1) gets the loopback ``10.0.<n // 256>.<n % 256>/32``, which is
also its router id.  Every interface is an OSPF point-to-point interface in
area 0; the loopback is advertised as a stub /32.

Example::

    with NetnsNetwork(new_run_dir("x")) as net:
        for n in "abc": net.add_node(n)
        net.add_link("a", "b"); net.add_link("b", "c")
        frr = FrrNetwork(net)
        frr.start_all()
        frr.wait_converged(30)
"""
from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .netns import NetnsNetwork, NsNode
from .proc import run

FRR_DIR = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bfdd", "ospfd")  # start order; stop in reverse
USER, GROUP = "root", "frrvty"
UNIX_PATH_MAX = 107                   # sun_path is 108 bytes with its NUL
LINK_NET = ipaddress.ip_network("10.1.0.0/16")
_HOST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class FrrConfigError(ValueError):
    """A configuration that must not be launched; the message names the field."""


def _wait(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class OspfTimers:
    """OSPF and BFD timers, in FRR's units; defaults are the fastest sensible ones.

    * ``hello_multiplier``: ``ip ospf dead-interval minimal hello-multiplier N``:
      dead interval 1 s (OSPF's minimum) and N hellos per second (FRR: 1..10).
    * ``spf_*_ms``: ``timers throttle spf DELAY INITIAL-HOLD MAX-HOLD``.
    * ``lsa_throttle_ms``: ``timers throttle lsa all`` (min interval between two
      originations of one LSA; FRR's default is 5000).
    * ``lsa_min_arrival_ms``: ``timers lsa min-arrival`` (default 1000).
    * ``retransmit_s``: ``ip ospf retransmit-interval`` (FRR's minimum is 1).
    * ``bfd``: run bfdd and ``ip ospf bfd`` with a profile of ``bfd_rx_ms`` /
      ``bfd_tx_ms`` intervals and ``bfd_multiplier`` (detection after
      multiplier x interval of silence).
    """

    hello_multiplier: int = 10
    spf_delay_ms: int = 0
    spf_initial_hold_ms: int = 10
    spf_max_hold_ms: int = 100
    lsa_throttle_ms: int = 0
    lsa_min_arrival_ms: int = 0
    retransmit_s: int = 1
    bfd: bool = True
    bfd_rx_ms: int = 50
    bfd_tx_ms: int = 50
    bfd_multiplier: int = 3

    def validate(self) -> None:
        checks = [
            ("hello_multiplier", 1, 10), ("spf_delay_ms", 0, 600000),
            ("spf_initial_hold_ms", 0, 600000), ("spf_max_hold_ms", 0, 600000),
            ("lsa_throttle_ms", 0, 5000), ("lsa_min_arrival_ms", 0, 600000),
            ("retransmit_s", 1, 65535), ("bfd_rx_ms", 10, 60000), ("bfd_tx_ms", 10, 60000),
            ("bfd_multiplier", 2, 255),
        ]
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise FrrConfigError(f"timers.{name} = {v!r}: FRR 8.4 accepts an integer in {lo}..{hi}")
        if self.spf_max_hold_ms < self.spf_initial_hold_ms:
            raise FrrConfigError("timers.spf_max_hold_ms must be >= spf_initial_hold_ms")

    def describe(self) -> dict:
        """The settings as the FRR commands they become (for results files)."""
        d = {
            "hello_interval_ms": round(1000 / self.hello_multiplier),
            "dead_interval_ms": 1000,
            "interface": [f"ip ospf dead-interval minimal hello-multiplier {self.hello_multiplier}",
                          f"ip ospf retransmit-interval {self.retransmit_s}",
                          "ip ospf network point-to-point"],
            "router_ospf": [f"timers throttle spf {self.spf_delay_ms} {self.spf_initial_hold_ms} "
                            f"{self.spf_max_hold_ms}",
                            f"timers throttle lsa all {self.lsa_throttle_ms}",
                            f"timers lsa min-arrival {self.lsa_min_arrival_ms}"],
        }
        if self.bfd:
            d["bfd"] = {"receive_interval_ms": self.bfd_rx_ms, "transmit_interval_ms": self.bfd_tx_ms,
                        "detect_multiplier": self.bfd_multiplier,
                        "detection_ms": self.bfd_multiplier * max(self.bfd_rx_ms, self.bfd_tx_ms)}
        return d


@dataclass(frozen=True)
class FrrInterface:
    """One routed interface: its name in the node and its address with prefix length."""

    name: str
    address: str  # e.g. "10.1.0.0/31"


@dataclass
class FrrConfig:
    """Everything one node's FRR instance is configured with."""

    hostname: str
    router_id: str
    loopback: str                     # "10.0.0.1/32"
    interfaces: List[FrrInterface] = field(default_factory=list)
    timers: OspfTimers = field(default_factory=OspfTimers)
    log_level: str = "informational"

    def validate(self, existing_intfs: Optional[Iterable[str]] = None) -> None:
        """Raise FrrConfigError naming the first thing FRR would reject or misroute."""
        if not _HOST_RE.match(self.hostname):
            raise FrrConfigError(f"hostname {self.hostname!r} must match {_HOST_RE.pattern}")
        try:
            rid = ipaddress.IPv4Address(self.router_id)
        except ValueError as e:
            raise FrrConfigError(f"router_id {self.router_id!r}: {e}") from None
        if rid.is_unspecified:
            raise FrrConfigError("router_id must not be 0.0.0.0")
        try:
            lo = ipaddress.IPv4Interface(self.loopback)
        except ValueError as e:
            raise FrrConfigError(f"loopback {self.loopback!r}: {e}") from None
        if lo.network.prefixlen != 32:
            raise FrrConfigError(f"loopback {self.loopback!r} must be a /32")
        if not self.interfaces:
            raise FrrConfigError(f"{self.hostname}: no interfaces")
        names, nets = set(), []
        existing = set(existing_intfs) if existing_intfs is not None else None
        for intf in self.interfaces:
            if intf.name in names:
                raise FrrConfigError(f"interface {intf.name} listed twice")
            names.add(intf.name)
            if existing is not None and intf.name not in existing:
                raise FrrConfigError(f"interface {intf.name} does not exist on {self.hostname} "
                                     f"(has {sorted(existing)})")
            try:
                addr = ipaddress.IPv4Interface(intf.address)
            except ValueError as e:
                raise FrrConfigError(f"interface {intf.name} address {intf.address!r}: {e}") from None
            if addr.network.prefixlen not in (30, 31):
                raise FrrConfigError(f"interface {intf.name} address {intf.address}: "
                                     f"point-to-point links use a /31 or /30")
            if addr.network.prefixlen == 30 and addr.ip in (addr.network.network_address,
                                                             addr.network.broadcast_address):
                raise FrrConfigError(f"interface {intf.name} address {intf.address}: "
                                     f"network or broadcast address of a /30")
            if lo.ip in addr.network:
                raise FrrConfigError(f"loopback {self.loopback} lies in {intf.name}'s subnet")
            for other_name, other in nets:
                if addr.network.overlaps(other):
                    raise FrrConfigError(f"interfaces {other_name} and {intf.name} have "
                                         f"overlapping subnets {other} and {addr.network}")
            nets.append((intf.name, addr.network))
        self.timers.validate()
        if self.log_level not in ("emergencies", "alerts", "critical", "errors", "warnings",
                                  "notifications", "informational", "debugging"):
            raise FrrConfigError(f"log_level {self.log_level!r} is not an FRR log level")

    def daemons(self) -> Tuple[str, ...]:
        return DAEMONS if self.timers.bfd else tuple(d for d in DAEMONS if d != "bfdd")

    def render(self) -> Dict[str, str]:
        """``{daemon: config text}`` for zebra, ospfd and (with BFD) bfdd."""
        t = self.timers
        zebra = [f"hostname {self.hostname}", "!", "interface lo",
                 f" ip address {self.loopback}", "!"]
        for intf in self.interfaces:
            zebra += [f"interface {intf.name}", f" ip address {intf.address}", "!"]
        ospf = [f"hostname {self.hostname}", "!", "interface lo", " ip ospf area 0.0.0.0", "!"]
        for intf in self.interfaces:
            ospf += [f"interface {intf.name}",
                     " ip ospf network point-to-point",
                     " ip ospf area 0.0.0.0",
                     f" ip ospf dead-interval minimal hello-multiplier {t.hello_multiplier}",
                     f" ip ospf retransmit-interval {t.retransmit_s}"]
            if t.bfd:
                ospf += [" ip ospf bfd", " ip ospf bfd profile lab"]
            ospf.append("!")
        ospf += ["router ospf",
                 f" ospf router-id {self.router_id}",
                 " log-adjacency-changes detail",
                 " passive-interface lo",
                 f" timers throttle spf {t.spf_delay_ms} {t.spf_initial_hold_ms} {t.spf_max_hold_ms}",
                 f" timers throttle lsa all {t.lsa_throttle_ms}",
                 f" timers lsa min-arrival {t.lsa_min_arrival_ms}",
                 "!"]
        out = {"zebra": "\n".join(zebra) + "\n", "ospfd": "\n".join(ospf) + "\n"}
        if t.bfd:
            out["bfdd"] = "\n".join([
                f"hostname {self.hostname}", "!", "bfd", " profile lab",
                f"  receive-interval {t.bfd_rx_ms}", f"  transmit-interval {t.bfd_tx_ms}",
                f"  detect-multiplier {t.bfd_multiplier}", " !", "!"]) + "\n"
        return out


class FrrNode:
    """One node's FRR instance: config files, daemons and their sockets under ``<workdir>/frr``."""

    def __init__(self, node: NsNode, config: FrrConfig, limit_fds: int = 1024) -> None:
        self.node = node
        self.config = config
        self.limit_fds = limit_fds
        self.dir = node.workdir / "frr"
        self.procs: Dict[str, subprocess.Popen] = {}
        config.validate(existing_intfs=node.intfs)
        for path in (self.zserv, self.bfdctl, *(self.vty_socket(d) for d in DAEMONS)):
            if len(str(path).encode()) > UNIX_PATH_MAX:
                raise FrrConfigError(f"socket path {path} is longer than {UNIX_PATH_MAX} bytes "
                                     f"(a Unix socket limit): use a shorter run folder")

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def zserv(self) -> Path:
        return self.dir / "zserv.api"

    @property
    def bfdctl(self) -> Path:
        return self.dir / "bfdd.sock"

    def vty_socket(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.vty"

    def conf_path(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.conf"

    def argv(self, daemon: str, conf: Optional[Path] = None, sockdir: Optional[Path] = None) -> List[str]:
        """The daemon's command line (foreground: no -d); ``sockdir`` moves its sockets (dry runs)."""
        d = self.dir if sockdir is None else sockdir
        argv = [str(FRR_DIR / daemon), "-f", str(conf or self.conf_path(daemon)),
                "-i", str(d / f"{daemon}.pid"), "--vty_socket", str(d),
                "-z", str(d / "zserv.api"), "-u", USER, "-g", GROUP, "-P", "0",
                "--limit-fds", str(self.limit_fds), "--log", "stdout",
                "--log-level", self.config.log_level]
        if daemon == "bfdd":
            argv += ["--bfdctl", str(d / "bfdd.sock")]
        return argv

    def write_config(self) -> Dict[str, Path]:
        """Render, check with FRR's own parser (``-C``), and write the config files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        texts = self.config.render()
        check = self.dir / "check"
        check.mkdir(exist_ok=True)
        for daemon, text in texts.items():
            conf = check / f"{daemon}.conf"
            conf.write_text(text)
            res = run(self.argv(daemon, conf=conf, sockdir=check) + ["-C"], check=False)
            # FRR's -C exits 0 even when a line is rejected; it names the line instead.
            bad = [l.split("] ", 1)[-1] for l in (res.stdout + res.stderr).splitlines()
                   if "config line" in l]
            if res.returncode != 0 or bad:
                raise FrrConfigError(f"{self.name}: FRR rejects {daemon}.conf: "
                                     + "; ".join(bad or [res.stderr.strip()]))
        for f in check.iterdir():
            f.unlink()
        check.rmdir()
        paths = {}
        for daemon, text in texts.items():
            p = self.conf_path(daemon)
            p.write_text(text)
            paths[daemon] = p
        (self.dir / "config.json").write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        return paths

    def prepare_kernel(self, ignore_linkdown: bool = True) -> None:
        """Namespace sysctls a router needs: forwarding, no reverse-path filter (ECMP paths
        are asymmetric) and, if asked, routes whose nexthop lost carrier are skipped by the
        kernel at once (``ignore_routes_with_linkdown``)."""
        v = "1" if ignore_linkdown else "0"
        self.node.cmd(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                       "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                       f"net.ipv4.conf.all.ignore_routes_with_linkdown={v}",
                       f"net.ipv4.conf.default.ignore_routes_with_linkdown={v}"])
        for intf in self.config.interfaces:
            self.node.cmd(["sysctl", "-q", "-w", f"net.ipv4.conf.{intf.name}.rp_filter=0",
                           f"net.ipv4.conf.{intf.name}.ignore_routes_with_linkdown={v}"])

    def launch(self, daemon: str) -> subprocess.Popen:
        proc = self.node.popen(self.argv(daemon), f"frr-{daemon}")
        self.procs[daemon] = proc
        return proc

    def start(self, timeout: float = 30.0) -> "FrrNode":
        """Write the config, start zebra, wait for its sockets, then bfdd and ospfd."""
        self.write_config()
        self.launch("zebra")
        self.wait_daemon("zebra", timeout)
        for d in self.config.daemons()[1:]:
            self.launch(d)
        for d in self.config.daemons()[1:]:
            self.wait_daemon(d, timeout)
        return self

    def wait_daemon(self, daemon: str, timeout: float = 30.0) -> None:
        """Until the daemon's vty socket (and zebra's zserv socket) exist; raise if it exited."""
        def ready() -> bool:
            proc = self.procs[daemon]
            if proc.poll() is not None:
                log = self.node.workdir / f"frr-{daemon}.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{daemon} on {self.name} exited with {proc.returncode}:\n{tail}")
            return self.vty_socket(daemon).exists() and (daemon != "zebra" or self.zserv.exists())
        _wait(ready, timeout, f"{daemon} on {self.name}")

    def pids(self) -> Dict[str, int]:
        """Live daemons' pids (``ip netns exec`` execs the daemon, so the pid is the daemon's)."""
        return {d: p.pid for d, p in self.procs.items() if p.poll() is None}

    def stop(self, timeout: float = 5.0) -> List[str]:
        """SIGTERM each daemon, in reverse start order; SIGKILL what does not exit.

        Returns what is still running after that (a machine under extreme load can
        take longer); the network's own stop() signals those again and reports them.
        """
        left = []
        for d in reversed(list(self.procs)):
            p = self.procs[d]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        left.append(f"{self.name}/{d} ({p.pid})")
        self.procs.clear()
        return left

    def vtysh(self, *commands: str, daemon: Optional[str] = None, timeout: float = 10.0) -> str:
        """Run vtysh commands against this instance's daemons; returns the output."""
        argv = ["vtysh", "--vty_socket", str(self.dir), "--config_dir", str(self.dir)]
        if daemon:
            argv += ["-d", daemon]
        for c in commands:
            argv += ["-c", c]
        res = self.node.cmd(argv, timeout=timeout)
        return res.stdout

    def routes(self) -> List[dict]:
        """The namespace's main IPv4 routing table (``ip -j route``)."""
        out = self.node.cmd(["ip", "-j", "route", "show", "table", "main"]).stdout
        return json.loads(out) if out.strip() else []


def route_devs(route: dict) -> List[str]:
    """Out interfaces of an ``ip -j route`` entry, single path or ECMP."""
    if "nexthops" in route:
        return [nh["dev"] for nh in route["nexthops"] if "dev" in nh]
    return [route["dev"]] if "dev" in route else []


class FrrNetwork:
    """FRR on every node of a NetnsNetwork whose links already exist (see module doc)."""

    def __init__(self, net: NetnsNetwork, timers: Optional[OspfTimers] = None,
                 nodes: Optional[Iterable[str]] = None, ignore_linkdown: bool = True,
                 log_level: str = "informational") -> None:
        self.net = net
        self.timers = timers or OspfTimers()
        self.ignore_linkdown = ignore_linkdown
        names = list(nodes) if nodes is not None else list(net.nodes)
        self.loopbacks: Dict[str, str] = {}
        for i, n in enumerate(net.nodes, start=1):
            if i >= 65536:
                raise FrrConfigError("more than 65535 nodes")
            self.loopbacks[n] = f"10.0.{i // 256}.{i % 256}"
        intf_addrs: Dict[str, List[FrrInterface]] = {n: [] for n in net.nodes}
        for i, link in enumerate(net.links):
            if 2 * i + 1 >= LINK_NET.num_addresses:
                raise FrrConfigError(f"more links than {LINK_NET} holds")
            base = LINK_NET.network_address + 2 * i
            intf_addrs[link.a].append(FrrInterface(link.intf_a, f"{base}/31"))
            intf_addrs[link.b].append(FrrInterface(link.intf_b, f"{base + 1}/31"))
        self.nodes: Dict[str, FrrNode] = {}
        for n in names:
            lo = self.loopbacks[n]
            cfg = FrrConfig(hostname=n, router_id=lo, loopback=f"{lo}/32",
                            interfaces=intf_addrs[n], timers=self.timers, log_level=log_level)
            self.nodes[n] = FrrNode(net.node(n), cfg)

    def __getitem__(self, name: str) -> FrrNode:
        return self.nodes[name]

    def intf_address(self, node: str, intf: str) -> str:
        for i in self.nodes[node].config.interfaces:
            if i.name == intf:
                return str(ipaddress.IPv4Interface(i.address).ip)
        raise KeyError(f"{node} has no interface {intf}")

    def start_all(self, timeout: float = 60.0) -> None:
        """`prepare`, then `launch_all`."""
        self.prepare()
        self.launch_all(timeout)

    def prepare(self, workers: int = 4) -> None:
        """Set each namespace's sysctls; write every config once FRR's parser accepted it."""
        for fn in self.nodes.values():
            fn.prepare_kernel(self.ignore_linkdown)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda fn: fn.write_config(), self.nodes.values()))

    def launch_all(self, timeout: float = 60.0) -> None:
        """Start all zebras, wait for their sockets, then start all bfdd and ospfd."""
        for fn in self.nodes.values():
            fn.launch("zebra")
        for fn in self.nodes.values():
            fn.wait_daemon("zebra", timeout)
        for fn in self.nodes.values():
            for d in fn.config.daemons()[1:]:
                fn.launch(d)
        for fn in self.nodes.values():
            for d in fn.config.daemons()[1:]:
                fn.wait_daemon(d, timeout)

    def missing_routes(self, limit: int = 5) -> List[str]:
        """What keeps the network from being converged: ``node: no route to <loopback>``."""
        problems = []
        for n, fn in self.nodes.items():
            have = {r["dst"] for r in fn.routes()}
            for m, lo in self.loopbacks.items():
                if m != n and m in self.nodes and lo not in have and f"{lo}/32" not in have:
                    problems.append(f"{n}: no route to {m} ({lo})")
                    if len(problems) >= limit:
                        return problems
        return problems

    def converged(self) -> bool:
        """Every node has a kernel route to every other node's loopback."""
        return not self.missing_routes(limit=1)

    def wait_converged(self, timeout: float = 60.0, interval: float = 0.1) -> float:
        """Poll until converged; returns the seconds it took."""
        t0 = time.monotonic()
        try:
            _wait(self.converged, timeout, "FRR convergence", interval)
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {'; '.join(self.missing_routes())}") from None
        return time.monotonic() - t0

    def stop_all(self) -> List[str]:
        """Stop every node's daemons; returns those still running (see `FrrNode.stop`)."""
        left: List[str] = []
        for fn in self.nodes.values():
            left += fn.stop()
        return left

    def pids(self) -> Dict[str, Dict[str, int]]:
        return {n: fn.pids() for n, fn in self.nodes.items()}
