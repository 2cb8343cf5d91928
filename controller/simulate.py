"""Simulated forwarders for benchmarks and tests: real ScscAgents without a data plane.

A `StubDaemon` has a real pipeline (`forwarder.pipeline.Forwarder`: its
strategy table, FIB and counters) but no sockets; `call_soon_wait` runs the
function at once under a lock, as the real loop thread would. The agent on top
is the unchanged `forwarder.scsc_agent.ScscAgent`, so the SCSC sees exactly
the messages real forwarders send, and policy lands in a real strategy table.
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, List, Optional, Tuple

from forwarder.dataplane.facetable import ETHER
from forwarder.dataplane.names import Name
from forwarder.dataplane.pipeline import Forwarder
from forwarder.runtime.events import EventLog
from forwarder.dataplane.rib import Route
from forwarder.mgmt.scsc_agent import ScscAgent


class StubDaemon:
    def __init__(self, node: str, roles: Iterable[str] = ("sg", "sr"), faces: Iterable[str] = ()) -> None:
        self.core = Forwarder(node, roles=tuple(roles))
        self.io: dict = {}
        self.started = time.time()
        self.tx_errors: dict = {}
        self.face_events: dict = {}
        self.events = EventLog(None, node)
        self.router = None
        self.offload = None
        self.pods = None
        self.dataplane = {"mode": "python", "reason": "a simulated forwarder has no kernel path"}
        self._lock = threading.Lock()
        for f in faces:
            self.core.add_face(ETHER, f)

    def add_route(self, prefix: str, face: str, instance: Optional[str] = None, cost: int = 1) -> None:
        fid = self.core.faces.by_name(face).face_id
        self.call_soon_wait(lambda: self.core.add_route(
            Route(Name.parse(prefix), fid, cost, 0, "static", instance), time.time()))

    def sync_kernel(self) -> None:
        """Nothing to merge: no kernel fast path."""

    def call_soon_wait(self, fn, timeout: float = 5.0):
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError("the stub loop did not answer")
        try:
            return fn()
        finally:
            self._lock.release()

    def rules(self) -> List[dict]:
        return self.call_soon_wait(lambda: [r.to_json() for r in self.core.strategy.rules()])


def start_agents(n: int, addr: Tuple[str, int], interval: float = 1.0, prefix: str = "/node/sim",
                 on_policy=None) -> List[ScscAgent]:
    """n simulated forwarders named <prefix><i>, each with an agent connected to addr."""
    agents = []
    for i in range(n):
        d = StubDaemon(f"{prefix}{i}", faces=("eth0", "eth1"))
        cb = (lambda v, t, i=i: on_policy(i, v, t)) if on_policy else None
        agents.append(ScscAgent(d, addr, interval, qdisc_stats=False, on_policy=cb).start())
    return agents
