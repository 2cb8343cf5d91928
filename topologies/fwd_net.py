"""Real forwarder processes on a NetnsNetwork: per-node app objects for tests and benchmarks.

Like ipmininet's daemons: each node's forwarder has a config file validated
before launch, a work folder and a log, and start()/stop()/restart().
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from forwarder import config as fwd_config
from forwarder.ctl import CtlError, request

from .netns import NetnsNetwork, NsNode

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class ForwarderApp:
    """One node's forwarder process."""

    def __init__(self, node: NsNode, config: Dict[str, Any], python: str = sys.executable) -> None:
        self.node = node
        self.python = python
        self.config = dict(config)
        self.config.setdefault("workdir", str(node.workdir))
        self.config_path = node.workdir / "forwarder.yaml"
        self.proc = None
        fwd_config.parse(self.config)  # fail before launch, with the field named

    @property
    def workdir(self) -> Path:
        return Path(self.config["workdir"])

    @property
    def mgmt(self) -> Path:
        return self.workdir / "mgmt.sock"

    @property
    def app_socket(self) -> str:
        return str(self.workdir / "app.sock")

    def start(self, timeout: float = 10.0) -> "ForwarderApp":
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (many nodes start in parallel)."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.proc = self.node.popen([self.python, "-m", "forwarder", "-c", str(self.config_path)],
                                    "forwarder", env={"PYTHONPATH": str(REPO)})

    def wait_ready(self, timeout: float = 10.0) -> "ForwarderApp":
        wait_for(self._ready, timeout, what=f"forwarder on {self.node.name}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.workdir / "forwarder.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"forwarder on {self.node.name} exited with {self.proc.returncode}:\n{tail}")
        if not self.mgmt.exists():  # a link: exists() follows it to the live socket
            return False
        try:
            st = self.api("GET", "/status", timeout=2)
        except CtlError:
            return False
        # links just created turn operationally up within about a second (linkwatch)
        return all(f["up"] for f in st["faces"] if f["kind"] == "ether")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> "ForwarderApp":
        self.stop()
        return self.start()

    def api(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 60.0) -> Any:
        return request(("unix", str(self.mgmt)), method, path, body, timeout)

    def status(self) -> dict:
        return self.api("GET", "/status")

    def counters(self) -> dict:
        return self.api("GET", "/counters")

    def ping(self, name: str, count: int = 1, timeout: float = 1.0) -> dict:
        return self.api("POST", "/ping", {"name": name, "count": count, "timeout": timeout,
                                          "interval": 0})


class ForwarderNet:
    """A NetnsNetwork whose nodes run DMSC forwarders."""

    def __init__(self, net: NetnsNetwork) -> None:
        self.net = net
        self.apps: Dict[str, ForwarderApp] = {}

    def add(self, name: str, **config: Any) -> ForwarderApp:
        """Configure (not start) a forwarder on an existing node; faces default to its links."""
        node = self.net.node(name)
        config.setdefault("node", f"/node/{name}")
        config.setdefault("faces", [{"name": i, "type": "ether", "interface": i} for i in node.intfs])
        app = ForwarderApp(node, config)
        self.apps[name] = app
        return app

    def start_all(self, timeout: float = 60.0) -> None:
        """Launch every forwarder, then wait until each answers its management socket."""
        pending = [app for app in self.apps.values() if app.proc is None]
        for app in pending:
            app.launch()
        for app in pending:
            app.wait_ready(timeout)

    def __getitem__(self, name: str) -> ForwarderApp:
        return self.apps[name]

    def stop_all(self) -> None:
        for app in self.apps.values():
            app.stop()


def line_routes(names: List[str], intf_of) -> Dict[str, List[dict]]:
    """Static routes for a line a - b - c ...: every node reaches every /node/<x> and default both ways."""
    routes: Dict[str, List[dict]] = {n: [] for n in names}
    for i, n in enumerate(names):
        for j, m in enumerate(names):
            if i == j:
                continue
            face = intf_of(n, names[i + 1] if j > i else names[i - 1])
            routes[n].append({"prefix": f"/node/{m}", "face": face})
    return routes


def intf_between(net: NetnsNetwork, a: str, b: str) -> str:
    """Node a's interface on its (first) link to node b."""
    for link in net.links:
        if (link.a, link.b) == (a, b):
            return link.intf_a
        if (link.a, link.b) == (b, a):
            return link.intf_b
    raise KeyError(f"no link between {a!r} and {b!r}")
