"""Longest-prefix match on whole name components, shared by the FIB and the strategy table.

Entries are keyed by the binary form of the prefix. A packet carries the end
offset of each destination component (dst_bounds), so a lookup slices the
destination bytes at those offsets and probes a dict at most 8 times, longest
first: constant work per packet whatever the table size, no name parsing.
"""
from __future__ import annotations

from typing import Dict, Generic, Iterator, Optional, TypeVar

from .names import Name

T = TypeVar("T")


class PrefixTable(Generic[T]):
    """prefix (binary form) -> value, with longest-prefix match."""

    __slots__ = ("_by_wire",)

    def __init__(self) -> None:
        self._by_wire: Dict[bytes, T] = {}

    def set(self, prefix: Name, value: T) -> None:
        self._by_wire[prefix.wire] = value

    def pop(self, prefix: Name) -> Optional[T]:
        return self._by_wire.pop(prefix.wire, None)

    def get(self, prefix: Name) -> Optional[T]:
        """Exact match."""
        return self._by_wire.get(prefix.wire)

    def lookup_wire(self, dst_wire: bytes, bounds: bytes, ncomp: int) -> Optional[T]:
        """Longest match for a destination given as its binary form and dst_bounds."""
        table = self._by_wire
        if not table:
            return None
        for k in range(ncomp - 1, -1, -1):
            v = table.get(dst_wire[:bounds[k]])
            if v is not None:
                return v
        return table.get(b"")

    def lookup(self, name: Name) -> Optional[T]:
        b = name.bounds()
        return self.lookup_wire(name.wire, bytes(b), len(b)) if b else self._by_wire.get(b"")

    def remove_where(self, dead) -> list:
        """Remove the values for which dead(value) is true; return them."""
        gone = [k for k, v in self._by_wire.items() if dead(v)]
        return [self._by_wire.pop(k) for k in gone]

    def values(self) -> Iterator[T]:
        return iter(list(self._by_wire.values()))

    def __len__(self) -> int:
        return len(self._by_wire)

    def __bool__(self) -> bool:
        return bool(self._by_wire)
