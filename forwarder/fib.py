"""FIB: longest-prefix match on whole name components.

Entries are keyed by the binary form of the prefix. A packet carries the end
offset of each destination component (dst_bounds), so the lookup slices the
destination bytes at those offsets and probes a dict at most 8 times, longest
first: constant work per packet whatever the table size, no name parsing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from .names import Name
from .rib import Route


@dataclass
class FibEntry:
    prefix: Name
    nexthops: List[Route]  # sorted by rank; the forwarding picks among the best up ones

    def to_json(self) -> dict:
        return {"prefix": self.prefix.text, "nexthops": [r.to_json() for r in self.nexthops]}


class Fib:
    def __init__(self) -> None:
        self._entries: Dict[bytes, FibEntry] = {}
        self.generation = 0  # bumps on every change; flow entries compare against it

    def set(self, prefix: Name, routes: Iterable[Route]) -> None:
        routes = sorted(routes, key=lambda r: r.rank)
        if routes:
            self._entries[prefix.wire] = FibEntry(prefix, routes)
        else:
            self._entries.pop(prefix.wire, None)
        self.generation += 1

    def lookup_wire(self, dst_wire: bytes, bounds: bytes, ncomp: int) -> Optional[FibEntry]:
        entries = self._entries
        for k in range(ncomp - 1, -1, -1):
            e = entries.get(dst_wire[:bounds[k]])
            if e is not None:
                return e
        return entries.get(b"")

    def lookup(self, name: Name) -> Optional[FibEntry]:
        b = name.bounds()
        return self.lookup_wire(name.wire, bytes(b), len(b)) if b else self._entries.get(b"")

    def get(self, prefix: Name) -> Optional[FibEntry]:
        return self._entries.get(prefix.wire)

    def entries(self) -> List[FibEntry]:
        return sorted(self._entries.values(), key=lambda e: e.prefix)

    def __len__(self) -> int:
        return len(self._entries)
