"""FIB: name prefix -> next hops, chosen by longest-prefix match (`lpm`).

The FIB is the RIB's best routes per prefix, in rank order; the forwarding
picks among the best ones that are up. Its generation number bumps on every
change, so flow entries (and the kernel's fast path) can tell a stale choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List

from .lpm import PrefixTable
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
        self._table: PrefixTable[FibEntry] = PrefixTable()
        self.lookup_wire = self._table.lookup_wire   # the per-packet call, without a hop
        self.lookup = self._table.lookup
        self.get = self._table.get
        self.generation = 0  # bumps on every change; flow entries compare against it

    def set(self, prefix: Name, routes: Iterable[Route]) -> None:
        routes = sorted(routes, key=lambda r: r.rank)
        if routes:
            self._table.set(prefix, FibEntry(prefix, routes))
        else:
            self._table.pop(prefix)
        self.generation += 1

    def entries(self) -> List[FibEntry]:
        return sorted(self._table.values(), key=lambda e: e.prefix)

    def __len__(self) -> int:
        return len(self._table)
