"""A forwarder's events as data: JSON lines in the node's run folder, and a summary.

What an experiment, a benchmark or an operator needs to know about a
forwarder's decisions over time (an adjacency went down and why, the routes
changed, the SCSC session ended, a prefix was refused, the event loop fell
behind) is written here as one JSON object per line, ``<workdir>/events.jsonl``:

    {"t": 1764990000.123, "kind": "adjacency_down", "node": "/node/e00",
     "face": 2, "neighbor": "/node/a01", "reason": "dead_interval"}

``t`` is the node's wall clock (every node of a lab shares one). Readers parse
these records, never the human log. GET /status carries `summary()`: counts by
kind and the last event of each kind.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

EVENTS_FILE = "events.jsonl"

# The kinds a forwarder emits, with the fields each carries (docs/protocol.md 12.9).
KINDS = {
    "adjacency_up": "face, neighbor",
    "adjacency_down": "face, neighbor, reason",
    "carrier": "face (name), up, source (netlink | poll)",
    "routes_changed": "routes, prefixes",
    "prefix_rejected": "prefix, originator, reason (SPA)",
    "registration_refused": "prefix, face, reason (SPA at the gateway)",
    "lsa_purged": "originator, seq, reason",
    "seq_bumped": "seq, face",
    "scsc_session_up": "addr",
    "scsc_session_down": "reason",
    "slow_turn": "seconds, ready, lsa_queue",
    "dataplane": "mode, reason",
}


class EventLog:
    """Append-only JSON-lines event log of one node, safe to call from any thread."""

    def __init__(self, path: Optional[Path], node: str, clock: Callable[[], float] = time.time,
                 keep: int = 512) -> None:
        self.path = Path(path) if path is not None else None
        self.node = node
        self.clock = clock
        self._lock = threading.Lock()
        self._f = open(self.path, "a", encoding="utf-8") if self.path is not None else None
        self._recent: Deque[dict] = deque(maxlen=keep)
        self._counts: Counter = Counter()
        self._last: Dict[str, dict] = {}

    def emit(self, kind: str, **fields: Any) -> dict:
        """Record one event now; returns it."""
        ev = {"t": round(self.clock(), 6), "kind": kind, "node": self.node, **fields}
        line = json.dumps(ev, separators=(",", ":"), default=str)
        with self._lock:
            self._recent.append(ev)
            self._counts[kind] += 1
            self._last[kind] = ev
            if self._f is not None:
                self._f.write(line + "\n")
                self._f.flush()
        return ev

    def summary(self) -> dict:
        with self._lock:
            return {"counts": dict(self._counts), "last": dict(self._last),
                    "file": str(self.path) if self.path else None}

    def recent(self, since: float = 0.0, kind: Optional[str] = None) -> List[dict]:
        """The events kept in memory (the last `keep`) at or after `since`, of `kind` if given."""
        with self._lock:
            return [e for e in self._recent if e["t"] >= since and (kind is None or e["kind"] == kind)]

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def read_events(path: Path, since: float = 0.0, kind: Optional[str] = None,
                **match: Any) -> List[dict]:
    """Events of one node's events.jsonl at or after `since`, of `kind`, whose fields
    equal `match` (a line cut short by a crash is skipped)."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("t", 0) < since or (kind is not None and ev.get("kind") != kind):
                    continue
                if all(ev.get(k) == v for k, v in match.items()):
                    out.append(ev)
    except OSError:
        pass
    return out
