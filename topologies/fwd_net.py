"""Real forwarder processes (and the SCSC) on a NetnsNetwork, for tests and benchmarks.

The nodes' programs are the lab's own (`topologies.apps`): the same
configuration check before launch, the same records, logs and stop.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional, Sequence

from .apps import ForwarderApp, ScscApp
from .measure import wait_for
from .netns import MgmtNetwork, NetnsNetwork

__all__ = ["ForwarderNet", "ScscNode", "intf_between", "wait_for"]


class ForwarderNet:
    """A NetnsNetwork whose nodes run DMSC forwarders."""

    def __init__(self, net: NetnsNetwork) -> None:
        self.net = net
        self.apps: Dict[str, ForwarderApp] = {}

    def add(self, name: str, **config: Any) -> ForwarderApp:
        """Configure (not start) a forwarder on an existing node; faces default to its links."""
        node = self.net.node(name)
        config.setdefault("node", f"/node/{name}")
        config.setdefault("dataplane", self.net.dataplane)
        config.setdefault("faces", [{"name": i, "type": "ether", "interface": i} for i in node.intfs])
        app = node.adopt(ForwarderApp(name, node.netns, node.workdir, self.net.records, config))
        app.wait_faces_up = True
        self.apps[name] = app
        return app

    def start_all(self, timeout: float = 60.0) -> None:
        """Launch every forwarder, then wait until each answers with its faces up."""
        pending = [app for app in self.apps.values() if not app.running]
        for app in pending:
            app.launch()
        for app in pending:
            app.wait_ready(timeout)

    def __getitem__(self, name: str) -> ForwarderApp:
        return self.apps[name]

    def stop_all(self) -> None:
        for app in self.apps.values():
            app.stop()


class ScscNode:
    """The SCSC as a process in its own namespace on a NetnsNetwork's management bridge.

        mgmt = net.add_mgmt_network()
        scsc = ScscNode(net, mgmt).start()          # 10.255.0.1, southbound :7000, REST :8080
        fn.add("a", scsc=scsc.southbound, telemetry_interval_s=0.5)
        mgmt.attach("a")
        scsc.rest.get("/telemetry")
    """

    def __init__(self, net: NetnsNetwork, mgmt: MgmtNetwork, name: str = "scsc", host: int = 1,
                 port: int = 7000, rest_port: int = 8080, lifetime: float = 30.0,
                 extra: Sequence[str] = (), python: str = sys.executable) -> None:
        from controller.rest_client import ScscRest
        self.node = net.nodes.get(name) or net.add_node(name)
        self.addr = mgmt.attach(name, host)
        self.port, self.rest_port = port, rest_port
        self.rest = ScscRest(self.addr, rest_port, netns=self.node.netns)
        self.app = self.node.adopt(ScscApp(
            self.node.netns, self.node.workdir, net.records,
            ["--southbound", self.southbound, "--rest", f"{self.addr}:{rest_port}",
             "--policy-lifetime", str(lifetime), *extra], python=python))
        self.starts = 0
        self.returncode: Optional[int] = None  # of the last process stopped or killed

    @property
    def southbound(self) -> str:
        return f"{self.addr}:{self.port}"

    @property
    def proc(self):
        return self.app.proc

    def start(self, timeout: float = 40.0) -> "ScscNode":
        """Start and wait until the REST API answers /health."""
        self.starts += 1
        self.app.start()

        def healthy() -> bool:
            self.app.check_alive("the SCSC (python -m controller)")
            try:
                self.rest.close()
                return self.rest.get("/health")["status"] == "ok"
            except Exception:  # not listening yet, or an answer that is not JSON yet
                return False
        wait_for(healthy, timeout, interval=0.05, what=f"the SCSC on {self.addr}:{self.rest_port}")
        return self

    def stop(self, timeout: float = 5.0) -> Optional[float]:
        """SIGTERM; returns the seconds it took to exit (None if it was not running)."""
        if not self.app.running:
            self.app.proc = None
            return None
        t0 = time.monotonic()
        p = self.app.proc
        p.terminate()
        try:
            p.wait(timeout)
        except Exception:
            self.app.kill()
            self.returncode = p.returncode
            return None
        finally:
            self.rest.close()
        self.returncode = p.returncode
        self.app.proc = None
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL: a crash."""
        p = self.app.proc
        self.app.kill()
        if p is not None:
            self.returncode = p.returncode
        self.rest.close()


def intf_between(net: NetnsNetwork, a: str, b: str) -> str:
    """Node a's interface on its (first) link to node b."""
    for link in net.links:
        if (link.a, link.b) == (a, b):
            return link.intf_a
        if (link.a, link.b) == (b, a):
            return link.intf_b
    raise KeyError(f"no link between {a!r} and {b!r}")
