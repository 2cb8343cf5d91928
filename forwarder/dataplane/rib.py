"""RIB: every route known for a prefix, from every origin.

The RIB keeps all candidates so that withdrawing one (a dead face, a service
deregistering, a routing update) falls back to the next without asking anyone;
the FIB is derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from .names import Name

# Lower wins; a connected (locally registered) instance beats everything.
ADMIN_DISTANCE = {"connected": 0, "static": 1, "routing": 2, "scsc": 3}


@dataclass(frozen=True)
class Route:
    prefix: Name
    face_id: int
    cost: int = 1
    priority: int = 0          # lower preferred, before admin distance
    origin: str = "static"
    instance: Optional[str] = None  # the node hosting this instance (anycast)
    authorization: bytes = field(default=b"", repr=False)  # SPA authorization, when registered with one

    @property
    def rank(self) -> Tuple[int, int, int]:
        return (self.priority, ADMIN_DISTANCE.get(self.origin, 9), self.cost)

    def to_json(self) -> dict:
        return {"prefix": self.prefix.text, "face": self.face_id, "cost": self.cost,
                "priority": self.priority, "origin": self.origin, "instance": self.instance}


class Rib:
    def __init__(self) -> None:
        self._routes: Dict[Name, Dict[Tuple[str, int, Optional[str]], Route]] = {}

    def add(self, route: Route) -> bool:
        """Add or replace; returns True when the table changed."""
        if route.origin not in ADMIN_DISTANCE:
            raise ValueError(f"unknown route origin {route.origin!r}")
        slot = self._routes.setdefault(route.prefix, {})
        key = (route.origin, route.face_id, route.instance)
        if slot.get(key) == route:
            return False
        slot[key] = route
        return True

    def remove(self, prefix: Name, origin: str, face_id: int,
               instance: Optional[str] = None) -> bool:
        slot = self._routes.get(prefix)
        if not slot or slot.pop((origin, face_id, instance), None) is None:
            return False
        if not slot:
            del self._routes[prefix]
        return True

    def remove_face(self, face_id: int) -> List[Name]:
        """Drop every route through a face (a local app left); returns touched prefixes."""
        touched = []
        for prefix, slot in list(self._routes.items()):
            for key in [k for k, r in slot.items() if r.face_id == face_id]:
                del slot[key]
                touched.append(prefix)
            if not slot:
                del self._routes[prefix]
        return touched

    def replace_origin(self, origin: str, routes: List[Route]) -> List[Name]:
        """Swap every route of one origin at once (a routing run); returns touched prefixes."""
        touched = set()
        for prefix, slot in list(self._routes.items()):
            for key in [k for k in slot if k[0] == origin]:
                del slot[key]
                touched.add(prefix)
            if not slot:
                del self._routes[prefix]
        for r in routes:
            self.add(r)
            touched.add(r.prefix)
        return sorted(touched)

    def routes(self, prefix: Name) -> List[Route]:
        return sorted(self._routes.get(prefix, {}).values(), key=lambda r: r.rank)

    def prefixes(self) -> List[Name]:
        return sorted(self._routes)

    def __iter__(self) -> Iterator[Route]:
        for prefix in sorted(self._routes):
            yield from self.routes(prefix)

    def __len__(self) -> int:
        return sum(len(s) for s in self._routes.values())
