"""The core's view of faces: ids, kinds, MTU and state.

The I/O layer owns the sockets; the core only needs to know which faces exist,
whether they are up, and how big a packet each can carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional

ETHER, UDP, LOCAL, SELF = "ether", "udp", "local", "self"
POD = "pod"       # a pod behind a Service Gateway: an IP application the SG speaks for
LOCAL_KINDS = frozenset((LOCAL, POD))  # faces of applications on this node
SELF_FACE = 0  # the node itself: echo targets, NACK and reply origination


@dataclass
class FaceInfo:
    face_id: int
    kind: str
    name: str
    mtu: int = 1500
    up: bool = True
    app_name: Optional[object] = None  # Name assigned to a local application or pod
    peer: Optional[str] = None          # neighbour node name, when known
    queued: int = 0                     # packets waiting in the I/O layer
    util_permille: int = 0
    network: bool = field(init=False)   # a link to another node (not the node or an app)

    def __post_init__(self) -> None:
        self.network = self.kind in (ETHER, UDP)


@dataclass
class FaceTable:
    faces: Dict[int, FaceInfo] = field(default_factory=dict)
    _next: int = 1

    def __post_init__(self) -> None:
        self.faces[SELF_FACE] = FaceInfo(SELF_FACE, SELF, "self", mtu=65535)

    def add(self, kind: str, name: str, mtu: int = 1500, **kw) -> FaceInfo:
        face = FaceInfo(self._next, kind, name, mtu, **kw)
        self.faces[face.face_id] = face
        self._next += 1
        return face

    def remove(self, face_id: int) -> Optional[FaceInfo]:
        return self.faces.pop(face_id, None)

    def get(self, face_id: int) -> Optional[FaceInfo]:
        return self.faces.get(face_id)

    def by_name(self, name: str) -> Optional[FaceInfo]:
        for f in self.faces.values():
            if f.name == name:
                return f
        return None

    def __iter__(self) -> Iterator[FaceInfo]:
        return iter(list(self.faces.values()))

    def __contains__(self, face_id: int) -> bool:
        return face_id in self.faces
