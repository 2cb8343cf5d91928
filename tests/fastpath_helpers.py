"""Helpers for the fast path tests: imports, skip rules, namespaces, frames."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Dict, List, Optional

import pytest

from forwarder.dataplane import fastpath, names, wire  # noqa: F401 (the tests' imports)
from forwarder.dataplane.fastpath import build, kernel, layout, libbpf, pins  # noqa: F401
from topologies.nsenter import in_netns  # noqa: F401
from topologies.records import Records, new_run_dir

Name = names.Name
Packet = wire.Packet


# ------------------------------------------------------------------ skip rules
def why_not() -> Optional[str]:
    """None if the kernel tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (bpf(), tc, network namespaces)"
    ok, reason = kernel.available(str(build.object_path()))
    if not ok and "no BPF object" in reason:
        try:
            build.ensure_built()
        except build.BuildError as exc:
            return f"cannot build the BPF object: {exc}"
        ok, reason = kernel.available(str(build.object_path()))
    if not ok:
        return reason
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "ip netns unusable"
    return None


def require_kernel() -> None:
    reason = why_not()
    if reason:
        if os.environ.get("DMSC_NO_SKIP") == "1":
            pytest.fail(f"DMSC_NO_SKIP=1 but this test cannot run here: {reason}")
        pytest.skip(reason)


# ------------------------------------------------------------------ namespaces
def sh(*args: str, check: bool = True) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


class Namespaces:
    """Network namespaces and veth pairs this test made: recorded in a run folder
    before they exist (so `make clean` finds them after a crash), deleted by cleanup()."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"fpt{os.getpid()}{tag}"
        self.made: List[str] = []
        self.records = Records(new_run_dir(f"test-fastpath-{tag}"))
        self.records.owner()

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.records.netns(name)
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for key in ("all", "default"):  # no IPv6 chatter on our veths
            sh("ip", "netns", "exec", name, "sysctl", "-qw",
               f"net.ipv6.conf.{key}.disable_ipv6=1", check=False)
        return name

    def veth(self, ns1: str, if1: str, ns2: str, if2: str) -> None:
        """A veth pair if1@ns1 -- if2@ns2, both up (deleted with the namespaces)."""
        self.records.link(if1, ns1)
        self.records.link(if2, ns2)
        sh("ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2,
           "netns", ns2)
        sh("ip", "-n", ns1, "link", "set", if1, "up")
        sh("ip", "-n", ns2, "link", "set", if2, "up")

    def cleanup(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()
        self.records.done()


def link(ns: str, ifname: str) -> Dict:
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", ifname))[0]


def ifindex(ns: str, ifname: str) -> int:
    return int(link(ns, ifname)["ifindex"])


def mac(ns: str, ifname: str) -> bytes:
    return bytes.fromhex(link(ns, ifname)["address"].replace(":", ""))


# ------------------------------------------------------------------ packets
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


def packet(dst: str = "/svc/video", src: str = "/host/a", type_: int = 1, payload: bytes = b"",
           **kw) -> bytes:
    return Packet(type=type_, dst=Name.parse(dst), src=Name.parse(src), payload=payload,
                  **kw).encode()


def frame(pkt: bytes, pad_to: int = 60, ethertype: bytes = b"\x88\xb5") -> bytes:
    f = DST_MAC + SRC_MAC + ethertype + pkt
    return f.ljust(pad_to, b"\0")


def patch(pkt: bytes, offset: int, value: bytes) -> bytes:
    """The packet with bytes at `offset` replaced (offsets as in docs/protocol.md §3)."""
    b = bytearray(pkt)
    b[offset:offset + len(value)] = value
    return bytes(b)
