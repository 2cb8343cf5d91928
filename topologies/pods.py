"""Pods behind Service Gateways: network namespaces linked to their SG node by a veth,
as Kubernetes pods sit behind their node. Used by the Mininet lab and by the
namespace harness of the tests, benchmarks and experiments alike.

A pod gets:
  * its own network namespace, recorded for ``make clean`` before it exists;
  * a veth: ``eth0`` in the pod, ``p<n>`` in the SG node's namespace;
  * one address from its SG node's pod range (10.200.<SG number>.<n + 2>/32), the
    SG as its default gateway at 169.254.1.1 (a permanent neighbour entry: no ARP
    needed), an MTU the carriage header always fits in
    (forwarder.gateway.addresses.L4_OVERHEAD below the network's);
  * TSO, GSO and checksum offload off on both ends of the veth: the SG carries
    whole, checksummed packets (docs/protocol.md 13);
  * ``/etc/netns/<pod namespace>/resolv.conf`` naming its SG as its resolver, which
    ``ip netns exec`` shows the pod as /etc/resolv.conf (so ``curl
    http://cart.shop.dmsc/`` resolves through the SG's DNS).

On the SG node: 169.254.1.1 on its loopback (where the SG answers DNS), a route
to each pod's address, and a blackhole for the service range 10.96.0.0/12 (the
SG carries that traffic itself; its own stack must neither route nor answer it).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from forwarder.gateway.addresses import L4_OVERHEAD, POD_GATEWAY, VIP_NET

from .proc import run
from .records import Records

NETNS_ETC = Path("/etc/netns")
OFFLOADS = ["tso", "off", "gso", "off", "tx", "off", "gro", "off"]


@dataclass
class PodSpec:
    """One pod: its name, the SG node it sits behind, its number there, what it serves."""
    name: str
    sg: str
    index: int
    sg_number: int                    # the SG's number in the topology (its pod range)
    services: List[str] = field(default_factory=list)   # prefixes it serves
    netns: str = ""
    interface: str = ""               # the veth's end in the SG's namespace
    mac: str = ""                     # the pod's eth0

    @property
    def address(self) -> str:
        return pod_address(self.sg_number, self.index)

    def forwarder_config(self, mtu: int, identity: Callable[[str], Optional[str]]) -> dict:
        """The SG's `pods:` entry for this pod (identity(prefix) -> SPA key file or None)."""
        svcs = []
        for p in self.services:
            entry = {"prefix": p}
            ident = identity(p)
            if ident:
                entry["identity"] = ident
            svcs.append(entry)
        return {"name": self.name, "interface": self.interface, "address": self.address,
                "mac": self.mac, "mtu": mtu, "services": svcs}


def pod_address(sg_number: int, index: int) -> str:
    if not 1 <= sg_number <= 254 or not 0 <= index <= 252:
        raise ValueError(f"pod {index} of SG {sg_number}: outside the 10.200.x.y plan")
    return f"10.200.{sg_number}.{index + 2}"


def pod_mtu(network_mtu: int = 1500) -> int:
    return network_mtu - L4_OVERHEAD


def _mac(netns: str, intf: str) -> str:
    out = run(["ip", "-j", "link", "show", "dev", intf], netns=netns).stdout
    return json.loads(out)[0]["address"]


def create(spec: PodSpec, sg_netns: str, netns: str, records: Records,
           network_mtu: int = 1500) -> PodSpec:
    """Make the pod's namespace and veth and configure both ends; returns the spec with
    its namespace, SG-side interface and MAC filled in. Everything is recorded first."""
    spec.netns, spec.interface = netns, f"p{spec.index}"
    mtu = pod_mtu(network_mtu)
    records.netns(netns)
    run(["ip", "netns", "add", netns])
    records.link(spec.interface, sg_netns)
    records.link("eth0", netns)
    run(["ip", "link", "add", spec.interface, "netns", sg_netns, "mtu", str(mtu), "type", "veth",
         "peer", "name", "eth0", "netns", netns, "mtu", str(mtu)])
    sg_mac = _mac(sg_netns, spec.interface)
    run(["ip", "-batch", "-"], netns=netns, input="\n".join([
        "link set dev lo up", "link set dev eth0 up",
        f"addr add {spec.address}/32 dev eth0",
        f"route add {POD_GATEWAY} dev eth0 scope link",
        f"route add default via {POD_GATEWAY} dev eth0",
        f"neigh replace {POD_GATEWAY} lladdr {sg_mac} dev eth0 nud permanent"]) + "\n")
    run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], netns=netns)
    run(["ethtool", "-K", "eth0", *OFFLOADS], netns=netns)
    spec.mac = _mac(netns, "eth0")
    sg_cmds = [f"link set dev {spec.interface} up",
               f"route replace {spec.address}/32 dev {spec.interface}",
               f"neigh replace {spec.address} lladdr {spec.mac} dev {spec.interface} nud permanent"]
    run(["ip", "-batch", "-"], netns=sg_netns, input="\n".join(sg_cmds) + "\n")
    run(["ethtool", "-K", spec.interface, *OFFLOADS], netns=sg_netns)
    etc = NETNS_ETC / netns
    records.netns_etc(str(etc))
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {POD_GATEWAY}\noptions timeout:1 attempts:3\n")
    return spec


def prepare_gateway(sg_netns: str) -> None:
    """Once per SG node with pods: its DNS address and the blackhole for service addresses."""
    run(["ip", "addr", "replace", f"{POD_GATEWAY}/32", "dev", "lo"], netns=sg_netns)
    run(["ip", "route", "replace", "blackhole", str(VIP_NET)], netns=sg_netns)


def remove_etc(netns: str) -> None:
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
