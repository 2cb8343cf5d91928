"""A small harness for real Linux network namespaces, without Mininet.

Integration tests and benchmarks use it to build a few nodes joined by veth
pairs and run the forwarder (or anything else) inside them.  Everything it
creates is written to the run folder's ``records.jsonl`` *before* it is
created (processes right after they start), so ``python -m topologies.clean``
can undo a run whose owner was killed with ``kill -9``.

Standard library plus the ``ip`` command (iproute2) only.

Example::

    with NetnsNetwork(new_run_dir("test-x")) as net:
        a, b = net.add_node("a"), net.add_node("b")
        link = net.add_link("a", "b")
        a.add_addr(link.intf_a, "10.0.0.1/30")
        b.add_addr(link.intf_b, "10.0.0.2/30")
        a.cmd(["ping", "-c1", "10.0.0.2"])
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from .proc import CommandError, Proc, run as _run, stop_all
from .records import Records

if TYPE_CHECKING:
    from .pods import PodSpec

__all__ = ["CommandError", "MgmtNetwork", "NetnsNetwork", "NsLink", "NsNode", "require_netns"]

IFNAMSIZ = 15  # longest Linux interface name, in bytes
_NODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def require_netns() -> Optional[str]:
    """Why this machine cannot run namespace tests, or None if it can.

    Tests call it to skip with a clear reason instead of failing obscurely.
    It really creates (and deletes) a throw-away namespace, since being root is
    not enough inside some containers.
    """
    if os.geteuid() != 0:
        return "needs root (network namespaces); run as root, e.g. sudo make test"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed; run make setup"
    probe = f"dmprobe-{os.getpid()}-{secrets.token_hex(2)}"
    res = _run(["ip", "netns", "add", probe], check=False)
    if res.returncode != 0:
        return f"'ip netns add' failed: {res.stderr.strip() or res.returncode}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


@dataclass(frozen=True)
class NsLink:
    """One veth pair: ``intf_a`` lives in node ``a``, ``intf_b`` in node ``b``."""

    a: str
    b: str
    intf_a: str
    intf_b: str


class NsNode:
    """One node: a named network namespace plus a working folder for its logs."""

    def __init__(self, net: "NetnsNetwork", name: str, netns: str) -> None:
        self._net = net
        self.name = name
        self.netns = netns
        self.intfs: list[str] = []
        self.workdir = net.run_dir / name
        self.workdir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"NsNode({self.name!r}, netns={self.netns!r}, intfs={self.intfs!r})"

    def cmd(self, argv: list[str], check: bool = True, timeout: float = 30,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace and wait (``input`` on its stdin);
        stdout/stderr captured as text.

        Raises CommandError (a CalledProcessError) on a non-zero exit if ``check``.
        """
        return _run(argv, netns=self.netns, check=check, timeout=timeout, input=input)

    def popen(self, argv: list[str], log_name: str,
              env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
        """Start ``argv`` inside the namespace in the background (a `topologies.proc.Proc`).

        stdout and stderr go to ``workdir/<log_name>.log``; ``env`` is merged over
        the project's environment; the process is recorded for ``clean`` and
        stopped with the network.
        """
        return self.adopt(Proc(self.netns, self.workdir, log_name, self._net._records,
                               argv=argv, env=env)).spawn()

    def adopt(self, proc: Proc) -> Proc:
        """Let the network stop `proc` (an app of this node) when it stops."""
        self._net._procs.append(proc)
        return proc

    def mac(self, intf: str) -> str:
        """MAC address of ``intf``, as ``aa:bb:cc:dd:ee:ff``."""
        out = _run(["ip", "-n", self.netns, "-j", "link", "show", "dev", intf]).stdout
        return json.loads(out)[0]["address"]

    def add_addr(self, intf: str, cidr: str) -> None:
        """Add an IP address (e.g. ``10.0.0.1/30``) to ``intf``, for kernel-IP baselines."""
        _run(["ip", "-n", self.netns, "addr", "add", cidr, "dev", intf])


class NetnsNetwork:
    """Nodes (named netns) joined by veth pairs, recorded into ``run_dir``.

    Namespace names are ``<prefix>-<runid>-<node>`` with a random runid, so
    concurrent runs (two test sessions, a test during a lab) never collide.
    Interfaces are created directly inside their namespaces, so their short
    names (``a-eth0``) cannot clash with the root namespace either.
    """

    def __init__(self, run_dir: Path, prefix: str = "dm") -> None:
        self.run_dir = Path(run_dir)
        self.prefix = prefix
        self.runid = secrets.token_hex(3)
        self._records = Records(self.run_dir)
        self._records.owner()
        self._nodes: dict[str, NsNode] = {}
        self._links: list[NsLink] = []
        self._procs: list[Proc] = []
        self._stopped = False
        # the data plane of forwarders started on this network (topologies.fwd_net)
        # unless their configuration names one: auto, ebpf or python
        self.dataplane = "auto"
        self._pods: dict[str, list] = {}     # SG node -> its PodSpecs
        self._pod_netns: list[str] = []

    @property
    def records(self) -> Records:
        """The run's records (anything created on this network is written there first)."""
        return self._records

    def __enter__(self) -> "NetnsNetwork":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def nodes(self) -> dict[str, NsNode]:
        """Nodes by name, in creation order."""
        return dict(self._nodes)

    @property
    def links(self) -> list[NsLink]:
        """Links in creation order."""
        return list(self._links)

    def add_node(self, name: str) -> NsNode:
        """Create a namespace for node ``name`` with loopback up.

        New interfaces in it start with IPv6 disabled, so veths send no router
        solicitations or DAD probes that would show up in captures and counters.
        """
        if not _NODE_RE.match(name):
            raise ValueError(f"node name {name!r} must match {_NODE_RE.pattern}")
        if name in self._nodes:
            raise ValueError(f"node {name!r} already exists")
        _check_ifname(f"{name}-eth0", name)
        netns = f"{self.prefix}-{self.runid}-{name}"
        self._records.netns(netns)
        _run(["ip", "netns", "add", netns])
        node = NsNode(self, name, netns)
        self._nodes[name] = node
        _run(["ip", "-n", netns, "link", "set", "dev", "lo", "up"])
        node.cmd(["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])
        return node

    def node(self, name: str) -> NsNode:
        """The node called ``name`` (KeyError if there is none)."""
        return self._nodes[name]

    def add_link(self, a: str, b: str, mtu: int = 1500) -> NsLink:
        """Join nodes ``a`` and ``b`` with a veth pair ``a-ethN`` <-> ``b-ethM``, both up."""
        if a == b:
            raise ValueError(f"cannot link node {a!r} to itself")
        na, nb = self.node(a), self.node(b)
        intf_a = f"{a}-eth{len(na.intfs)}"
        intf_b = f"{b}-eth{len(nb.intfs)}"
        _check_ifname(intf_a, a)
        _check_ifname(intf_b, b)
        self._records.link(intf_a, na.netns)
        self._records.link(intf_b, nb.netns)
        _run(["ip", "link", "add", intf_a, "netns", na.netns, "mtu", str(mtu), "type", "veth",
              "peer", "name", intf_b, "netns", nb.netns, "mtu", str(mtu)])
        na.intfs.append(intf_a)
        nb.intfs.append(intf_b)
        for node, intf in ((na, intf_a), (nb, intf_b)):
            _run(["ip", "-n", node.netns, "link", "set", "dev", intf, "up"])
        link = NsLink(a, b, intf_a, intf_b)
        self._links.append(link)
        return link

    def _links_between(self, a: str, b: str) -> list[NsLink]:
        found = [l for l in self._links if {l.a, l.b} == {a, b}]
        if not found:
            raise KeyError(f"no link between {a!r} and {b!r}")
        return found

    def _set_links(self, a: str, b: str, state: str) -> None:
        for link in self._links_between(a, b):
            for node, intf in ((link.a, link.intf_a), (link.b, link.intf_b)):
                _run(["ip", "-n", self._nodes[node].netns, "link", "set", "dev", intf, state])

    def link_down(self, a: str, b: str) -> None:
        """Take every link between ``a`` and ``b`` down, on both ends (a link failure)."""
        self._set_links(a, b, "down")

    def link_up(self, a: str, b: str) -> None:
        """Bring every link between ``a`` and ``b`` back up, on both ends."""
        self._set_links(a, b, "up")

    def add_pod(self, sg: str, name: str, services: Sequence[str] = (),
                sg_number: Optional[int] = None, network_mtu: int = 1500) -> "PodSpec":
        """A pod behind node `sg` (topologies.pods): its own namespace, a veth to `sg`,
        an address from `sg`'s pod range, `sg` as its gateway and resolver. Start the
        SG's forwarder with `pods=[spec.forwarder_config(...)]`; `pod_cmd` runs in it."""
        from .pods import PodSpec, create, prepare_gateway
        if not _NODE_RE.match(name):
            raise ValueError(f"pod name {name!r} must match {_NODE_RE.pattern}")
        node = self.node(sg)
        index = len(self._pods.setdefault(sg, []))
        number = sg_number if sg_number is not None else list(self._nodes).index(sg) + 1
        spec = PodSpec(name, sg, index, number, list(services))
        if index == 0:
            prepare_gateway(node.netns)
        create(spec, node.netns, f"{self.prefix}-{self.runid}-{name}", self._records, network_mtu)
        self._pods[sg].append(spec)
        self._pod_netns.append(spec.netns)
        return spec

    def pod_cmd(self, pod: "PodSpec", argv: list[str], check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess:
        """Run argv in a pod (``ip netns exec``: its /etc/resolv.conf is its SG)."""
        return _run(argv, netns=pod.netns, check=check, timeout=timeout)

    def pod_popen(self, pod: "PodSpec", argv: list[str], log_name: str) -> Proc:
        """Start argv in a pod in the background, recorded and stopped with the network;
        its output goes to ``<SG's work folder>/<pod>-<log_name>.log`` (`Proc.log`)."""
        proc = self.node(pod.sg).adopt(Proc(pod.netns, self.node(pod.sg).workdir,
                                            f"{pod.name}-{log_name}", self._records, argv=argv))
        proc.spawn()
        return proc

    def add_mgmt_network(self, name: str = "mgmt", subnet: str = "10.255.0") -> "MgmtNetwork":
        """A management network: a Linux bridge inside its own namespace (node ``name``),
        never in the root namespace; `MgmtNetwork.attach` joins nodes to it with a veth
        and an address ``<subnet>.x/24``. The node's end is ``mg0``, which is not added
        to ``node.intfs``, so forwarders do not make it a face."""
        node = self.add_node(name)
        _run(["ip", "-n", node.netns, "link", "add", "br0", "type", "bridge",
              "forward_delay", "0", "stp_state", "0"])
        _run(["ip", "-n", node.netns, "link", "set", "dev", "br0", "up"])
        return MgmtNetwork(self, node, subnet)

    def stop(self) -> None:
        """Stop recorded processes, then delete the namespaces (and with them the veths).

        Processes get SIGTERM to their process group, up to 3 s to exit, then
        SIGKILL.  Safe to call twice.  The run is marked done only if
        everything went away; otherwise ``make clean`` retries later.
        """
        if self._stopped:
            return
        errors = stop_all(self._procs)
        from .pods import remove_etc
        for ns in self._pod_netns:
            remove_etc(ns)
            if os.path.exists(f"/run/netns/{ns}"):
                res = _run(["ip", "netns", "del", ns], check=False)
                if res.returncode != 0:
                    errors.append(f"netns {ns}: {res.stderr.strip()}")
        for node in self._nodes.values():
            if not os.path.exists(f"/run/netns/{node.netns}"):
                continue
            res = _run(["ip", "netns", "del", node.netns], check=False)
            if res.returncode != 0:
                errors.append(f"netns {node.netns}: {res.stderr.strip()}")
        if errors:
            raise RuntimeError("NetnsNetwork.stop left things behind (run `make clean`): "
                               + "; ".join(errors))
        self._records.done()
        self._stopped = True


def _check_ifname(ifname: str, node: str) -> None:
    if len(ifname.encode()) > IFNAMSIZ:
        raise ValueError(
            f"interface name {ifname!r} for node {node!r} is {len(ifname)} characters; Linux "
            f"allows {IFNAMSIZ}: use a node name of at most {IFNAMSIZ - len(ifname) + len(node)} "
            f"characters")


class MgmtNetwork:
    """The bridge of `NetnsNetwork.add_mgmt_network` and the nodes attached to it."""

    def __init__(self, net: NetnsNetwork, node: NsNode, subnet: str) -> None:
        self._net = net
        self.node = node
        self.subnet = subnet
        self.addrs: dict[str, str] = {}   # node name -> address
        self._next_host = 1
        self._ports = 0

    def attach(self, name: str, host: Optional[int] = None) -> str:
        """Join node ``name`` (its interface ``mg0``) to the bridge; returns its address."""
        if name in self.addrs:
            return self.addrs[name]
        if host is None:
            used = {int(a.rsplit(".", 1)[1]) for a in self.addrs.values()}
            while self._next_host in used:
                self._next_host += 1
            host = self._next_host
        if not 1 <= host <= 254:
            raise ValueError(f"management host number {host} outside 1..254")
        node = self._net.node(name)
        port = f"p{self._ports}"
        self._ports += 1
        self._net._records.link("mg0", node.netns)
        self._net._records.link(port, self.node.netns)
        _run(["ip", "link", "add", "mg0", "netns", node.netns, "type", "veth",
              "peer", "name", port, "netns", self.node.netns])
        _run(["ip", "-n", self.node.netns, "link", "set", "dev", port, "master", "br0", "up"])
        addr = f"{self.subnet}.{host}"
        _run(["ip", "-n", node.netns, "addr", "add", f"{addr}/24", "dev", "mg0"])
        _run(["ip", "-n", node.netns, "link", "set", "dev", "mg0", "up"])
        self.addrs[name] = addr
        return addr
