"""The SCSC as a process in its own namespace on a NetnsNetwork's management bridge.

    mgmt = net.add_mgmt_network()
    scsc = ScscNode(net, mgmt).start()          # 10.255.0.1, southbound :7000, REST :8080
    fn.add("a", scsc=scsc.southbound, telemetry_interval_s=0.5)
    mgmt.attach("a")
    scsc.rest.get("/telemetry")
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .rest_client import ScscRest

REPO = Path(__file__).resolve().parent.parent


class ScscNode:
    def __init__(self, net, mgmt, name: str = "scsc", host: int = 1, port: int = 7000,
                 rest_port: int = 8080, lifetime: float = 30.0, extra: Sequence[str] = (),
                 python: str = sys.executable) -> None:
        self.net, self.mgmt = net, mgmt
        self.node = net.nodes.get(name) or net.add_node(name)
        self.addr = mgmt.attach(name, host)
        self.port, self.rest_port = port, rest_port
        self.lifetime = lifetime
        self.extra = list(extra)
        self.python = python
        self.proc: Optional[subprocess.Popen] = None
        self.rest = ScscRest(self.addr, rest_port, netns=self.node.netns)
        self.starts = 0
        self.returncode: Optional[int] = None  # of the last process stopped or killed

    @property
    def southbound(self) -> str:
        return f"{self.addr}:{self.port}"

    def start(self, timeout: float = 40.0) -> "ScscNode":
        self.starts += 1
        argv = [self.python, "-m", "controller", "--southbound", self.southbound,
                "--rest", f"{self.addr}:{self.rest_port}", "--policy-lifetime", str(self.lifetime),
                *self.extra]
        self.proc = self.node.popen(argv, "scsc", env={"PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = self.node.workdir / "scsc.log"
                raise RuntimeError(f"the SCSC exited with {self.proc.returncode}:\n"
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            try:
                self.rest.close()
                if self.rest.get("/health")["status"] == "ok":
                    return self
            except (OSError, Exception):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SCSC did not answer on {self.addr}:{self.rest_port}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> Optional[float]:
        """SIGTERM; returns the seconds it took to exit (None if it was not running)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return None
        t0 = time.monotonic()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.returncode = self.proc.returncode
            self.proc = None
            return None
        finally:
            self.rest.close()
        took = time.monotonic() - t0
        self.returncode = self.proc.returncode
        self.proc = None
        return took

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
            self.returncode = self.proc.returncode
        self.rest.close()
        self.proc = None
