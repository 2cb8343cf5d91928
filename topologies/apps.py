"""The programs a node runs, one class each: a forwarder, a shop instance, the SCSC.

This is the one node model of the project: the Mininet lab, the namespace
harness of the tests and benchmarks (`fwd_net`) and the experiments all build
these. Like ipmininet's daemons, each has a work folder and a log inside the
run folder and start()/stop()/restart() (kill() for a crash); a forwarder's
configuration is validated (`forwarder.config.parse`, the daemon's own
parser) before the process starts, so a mistake is reported with the field
named instead of as a dead process.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from forwarder import config as fwd_config
from forwarder.mgmt.ctl import CtlError, request

from .proc import STOP_GRACE_S, LabError, Proc, tail
from .records import Records

ConfigSource = Union[Dict[str, Any], Callable[[], Dict[str, Any]]]


class ForwarderApp(Proc):
    """One node's DMSC forwarder (`python -m forwarder -c <workdir>/forwarder.yaml`).

    `config` is the node's configuration in the file's schema (docs: `python -m
    forwarder --help`), or a function returning it when it changes over the
    node's life (the lab's static routes follow failures). `workdir` defaults to
    the node's work folder.
    """

    def __init__(self, name: str, netns: Optional[str], workdir: Path, records: Records,
                 config: ConfigSource, python: str = sys.executable,
                 env: Optional[Dict[str, str]] = None) -> None:
        super().__init__(netns, workdir, "forwarder", records, python, env=env)
        self.name = name
        self._config = config
        self.config_path = self.workdir / "forwarder.yaml"
        self.node_config = self.validate()
        # ready only once every Ethernet face is up (links just made need a moment)
        self.wait_faces_up = False
        self._dataplane_recorded = False

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration as it would be written now."""
        data = dict(self._config() if callable(self._config) else self._config)
        data.setdefault("workdir", str(self.workdir))
        return data

    def validate(self) -> fwd_config.NodeConfig:
        """Parse the configuration as the daemon will; ConfigError names the field."""
        return fwd_config.parse(self.config, self.workdir)

    @property
    def mgmt(self) -> Path:
        return self.workdir / "mgmt.sock"

    @property
    def app_socket(self) -> str:
        """Where applications attach (a link to the real socket when the path is long)."""
        return str(self.workdir / "app.sock")

    def argv(self) -> List[str]:
        return [self.python, "-m", "forwarder", "-c", str(self.config_path)]

    def write_config(self) -> None:
        """Validate, then write the file the process reads (JSON is YAML, and faster to parse)."""
        data = self.config
        self.node_config = fwd_config.parse(data, self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(data, indent=1) + "\n")

    def launch(self, record: bool = True) -> None:
        """Start the process without waiting (many nodes start in parallel)."""
        if self.running:
            return
        self.write_config()
        self.records.many(self.dataplane_records())
        try:
            self.mgmt.unlink()
        except OSError:
            pass
        self.spawn(record=record)

    def dataplane_records(self) -> List[dict]:
        """Before a forwarder that may load the kernel fast path starts: mount the pin
        root in this (the root) mount namespace, so that the node's pins are visible
        to `make clean` and bpftool; return the record of its pin folder, which holds
        its maps and its tcx links (once per app; the caller writes it, many nodes
        under one fsync)."""
        if self.node_config.dataplane == "python" or self._dataplane_recorded:
            return []
        from forwarder.dataplane.fastpath import pins
        try:
            pins.ensure_pin_root()
        except OSError:
            return []  # the forwarder will say why it runs the Python data plane
        self._dataplane_recorded = True
        return [{"kind": "bpf_pins", "path": pins.pin_dir_for(self.workdir)}]

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        super().stop(timeout)
        self._forget_pins()

    def kill(self) -> None:
        """SIGKILL: a crash. Its pins (maps and tcx links), which only it would have
        removed, go with it, and with the last link reference its programs detach."""
        super().kill()
        self._forget_pins()

    def _forget_pins(self) -> None:
        if self._dataplane_recorded:
            from forwarder.dataplane.fastpath import pins
            try:
                pins.remove_pin_dir(pins.pin_dir_for(self.workdir))
            except OSError:
                pass   # `make clean` removes it by the records

    def socket_ready(self) -> bool:
        """The process runs and its management socket exists (it serves from then on)."""
        self.check_alive(f"forwarder on {self.name}")
        return os.path.exists(self.mgmt)  # a link: exists() follows it to the live socket

    def ready(self) -> bool:
        """It answers GET /status (and, with wait_faces_up, every Ethernet face is up)."""
        if not self.socket_ready():
            return False
        try:
            st = self.api("GET", "/status", timeout=2.0)
        except CtlError:
            return False
        # links just created turn operationally up within about a second (linkwatch)
        return not self.wait_faces_up or all(f["up"] for f in st["faces"] if f["kind"] == "ether")

    def wait_ready(self, timeout: float = 20.0) -> "ForwarderApp":
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise LabError(f"forwarder on {self.name} did not answer within {timeout:.0f}s; "
                               f"log {self.log}:\n{tail(self.log)}")
            time.sleep(0.05)
        return self

    def start(self, wait: bool = True, timeout: float = 20.0) -> "ForwarderApp":
        self.launch()
        return self.wait_ready(timeout) if wait else self

    def restart(self) -> "ForwarderApp":
        self.stop()
        return self.start()

    def api(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 30.0) -> Any:
        return request(("unix", str(self.mgmt)), method, path, body, timeout)

    def status(self) -> dict:
        return self.api("GET", "/status", timeout=10.0)

    def counters(self) -> dict:
        return self.api("GET", "/counters")

    def ping(self, name: str, count: int = 1, timeout: float = 1.0) -> dict:
        return self.api("POST", "/ping", {"name": name, "count": count, "timeout": timeout,
                                          "interval": 0})


class ServiceApp(Proc):
    """One shop instance (topologies/shop/services.py) on a Service Gateway: on the
    client library (`socket_path`, the SG's app socket) or a plain HTTP server (`http`)."""

    def __init__(self, node: str, app: str, prefix: str, kind: str, netns: Optional[str],
                 workdir: Path, records: Records, socket_path: Optional[str] = None,
                 identity: Optional[Path] = None, http: Optional[str] = None,
                 python: str = sys.executable) -> None:
        super().__init__(netns, workdir, f"shop-{app}", records, python)
        self.node, self.app, self.prefix, self.kind = node, app, prefix, kind
        self.socket_path = socket_path
        self.identity = identity
        self.http = http

    def argv(self) -> List[str]:
        argv = [self.python, "-m", "topologies.shop.services", "--app", self.app,
                "--node", self.node, "--prefix", self.prefix]
        if self.kind == "http":
            argv += ["--http", self.http]
        else:
            argv += ["--socket", str(self.socket_path)]
            if self.identity is not None:
                argv += ["--identity", str(self.identity)]
        return argv

    def start(self) -> "ServiceApp":
        self.spawn()
        return self

    def restart(self) -> "ServiceApp":
        self.stop()
        return self.start()


class ScscApp(Proc):
    """The Scheduling Center (`python -m controller ARGS`), on a host of the management network."""

    def __init__(self, netns: Optional[str], workdir: Path, records: Records, args: List[str],
                 python: str = sys.executable) -> None:
        super().__init__(netns, workdir, "scsc", records, python)
        self.args = list(args)

    def argv(self) -> List[str]:
        return [self.python, "-m", "controller", *self.args]

    def start(self) -> "ScscApp":
        self.spawn()
        return self

    def restart(self) -> "ScscApp":
        self.stop()
        return self.start()
