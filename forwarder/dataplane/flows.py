"""Data flow table: (destination, source) -> the next hop chosen for the flow.

The key is the raw header bytes [20, names_end) of the first packet
(`wire.flow_key`): hashes, lengths, component table and both names. A later
packet with equal bytes has identical, already validated names, so the hit
path neither parses nor hashes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

DEFAULT_IDLE_TIMEOUT = 30.0


@dataclass
class FlowEntry:
    face_id: int
    generation: int            # FIB/strategy generation the choice was made in
    created: float
    last_used: float
    rule: Optional[object] = None   # strategy rule applied (rate limit, priority)
    priority: int = 0
    out: Optional[object] = None    # the FaceInfo of face_id, for the fast path
    prefix_counters: Optional[object] = None  # the FIB prefix's counters, for the fast path
    packets: int = 0
    bytes: int = 0
    dst: str = ""
    src: str = ""
    pin: Optional[int] = None       # hash of the anycast instance this flow is steered to

    def to_json(self, now: float) -> dict:
        return {"dst": self.dst, "src": self.src, "face": self.face_id,
                "packets": self.packets, "bytes": self.bytes,
                "age_s": round(now - self.created, 3), "idle_s": round(now - self.last_used, 3),
                "priority": self.priority}


class FlowTable:
    def __init__(self, idle_timeout: float = DEFAULT_IDLE_TIMEOUT, max_entries: int = 100_000) -> None:
        self.idle_timeout = idle_timeout
        self.max_entries = max_entries
        self._flows: Dict[bytes, FlowEntry] = {}
        self.evicted = 0

    def get(self, key: bytes) -> Optional[FlowEntry]:
        return self._flows.get(key)

    def __contains__(self, key: bytes) -> bool:
        return key in self._flows

    def discard(self, key: bytes) -> Optional[FlowEntry]:
        """Forget one flow (its next packet chooses afresh); the entry, or None."""
        return self._flows.pop(key, None)

    def put(self, key: bytes, entry: FlowEntry) -> None:
        if len(self._flows) >= self.max_entries and key not in self._flows:
            # Evict the idlest tenth rather than refusing new flows.
            victims = sorted(self._flows.items(), key=lambda kv: kv[1].last_used)
            for k, _ in victims[: max(1, self.max_entries // 10)]:
                del self._flows[k]
                self.evicted += 1
        self._flows[key] = entry

    def expire(self, now: float) -> int:
        limit = now - self.idle_timeout
        dead = [k for k, e in self._flows.items() if e.last_used < limit]
        for k in dead:
            del self._flows[k]
        return len(dead)

    def remove_face(self, face_id: int) -> int:
        dead = [k for k, e in self._flows.items() if e.face_id == face_id]
        for k in dead:
            del self._flows[k]
        return len(dead)

    def clear(self) -> None:
        self._flows.clear()

    def entries(self) -> List[FlowEntry]:
        return list(self._flows.values())

    def __len__(self) -> int:
        return len(self._flows)
