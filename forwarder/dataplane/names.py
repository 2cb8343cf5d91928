"""Hierarchical service names (docs/protocol.md, section 2).

A :class:`Name` is an immutable tuple of byte components. Matching is always on
whole components, which is why names are never compared as strings.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence, Union

COMPONENT_MAX = 63
COMPONENTS_MAX = 8
NAME_BYTES_MAX = 255
FROM_WIRE_CACHE = 4096  # decoded names kept for reuse (emptied when full: no LRU bookkeeping)
_FROM_WIRE: dict = {}   # binary form -> Name

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193

_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class InvalidName(ValueError):
    """A name that breaks the syntax or the limits of section 2."""


def fnv1a32(data: bytes, state: int = FNV_OFFSET) -> int:
    """FNV-1a, 32 bit. `state` lets callers continue a hash (prefix hashes)."""
    for byte in data:
        state = ((state ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return state


def _escape(component: bytes) -> str:
    return "".join(chr(b) if b in _UNRESERVED else "%%%02X" % b for b in component)


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no byte form exists
        raise InvalidName(f"{text!r} is not encodable as UTF-8") from None
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # '%'
            hexpart = raw[i + 1:i + 3]
            if len(hexpart) != 2:
                raise InvalidName(f"truncated %-escape in {text!r}")
            # Check the digits explicitly: int(..., 16) alone would accept
            # "%+1", "%-0" or "% f", which are not escapes.
            if not all(d in _HEXDIGITS for d in hexpart):
                raise InvalidName(f"bad %-escape %{hexpart.decode(errors='replace')} in {text!r}")
            out.append(int(hexpart, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


class Name:
    """An immutable hierarchical name; hashable, ordered by components."""

    __slots__ = ("components", "_wire", "_hash", "_text")

    def __init__(self, components: Iterable[bytes] = ()) -> None:
        comps = tuple(bytes(c) for c in components)
        if len(comps) > COMPONENTS_MAX:
            raise InvalidName(f"{len(comps)} components; at most {COMPONENTS_MAX}")
        for c in comps:
            if not 1 <= len(c) <= COMPONENT_MAX:
                raise InvalidName(
                    f"component of {len(c)} bytes; each must be 1..{COMPONENT_MAX}")
        self.components = comps
        self._wire = None
        self._hash = None
        self._text = None
        if len(self.wire) > NAME_BYTES_MAX:
            raise InvalidName(f"encoded name of {len(self.wire)} bytes; at most {NAME_BYTES_MAX}")

    # construction ---------------------------------------------------------
    @classmethod
    def parse(cls, text: Union[str, "Name"]) -> "Name":
        """Parse the canonical text form; accepts a Name unchanged."""
        if isinstance(text, Name):
            return text
        if not isinstance(text, str):
            raise InvalidName(f"a name must be text, not {type(text).__name__}")
        if not text.startswith("/"):
            raise InvalidName(f"{text!r} does not start with '/'")
        body = text[1:]
        if body.endswith("/"):
            body = body[:-1]
        if not body:
            return cls(())
        parts = body.split("/")
        if any(p == "" for p in parts):
            raise InvalidName(f"{text!r} has an empty component")
        return cls(_unescape(p) for p in parts)

    @classmethod
    def from_wire(cls, data: bytes) -> "Name":
        """Decode the binary form; raises InvalidName on any inconsistency.

        A router decodes the same few hundred names (node names in hellos, LSAs
        and ACKs) over and over; a Name is immutable, so decoded ones are shared."""
        data = bytes(data)
        if cls is not Name:
            return cls._decode_wire(data)
        name = _FROM_WIRE.get(data)
        if name is None:
            name = cls._decode_wire(data)
            if len(_FROM_WIRE) >= FROM_WIRE_CACHE:
                _FROM_WIRE.clear()
            _FROM_WIRE[data] = name
        return name

    @classmethod
    def _decode_wire(cls, data: bytes) -> "Name":
        comps = []
        i = 0
        n = len(data)
        while i < n:
            ln = data[i]
            if ln == 0 or ln > COMPONENT_MAX or i + 1 + ln > n:
                raise InvalidName("component length byte inconsistent with the name")
            comps.append(bytes(data[i + 1:i + 1 + ln]))
            i += 1 + ln
        name = cls(comps)
        name._wire = data
        return name

    # forms ------------------------------------------------------------------
    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = b"".join(bytes((len(c),)) + c for c in self.components)
        return self._wire

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = "/" + "/".join(_escape(c) for c in self.components)
        return self._text

    @property
    def hash32(self) -> int:
        if self._hash is None:
            self._hash = fnv1a32(self.wire)
        return self._hash

    def bounds(self) -> list[int]:
        """End offset of each component within the binary form."""
        out, pos = [], 0
        for c in self.components:
            pos += 1 + len(c)
            out.append(pos)
        return out

    def prefix_hashes(self) -> list[int]:
        """FNV-1a of every prefix (1..n components), computed in one pass."""
        out, state = [], FNV_OFFSET
        for c in self.components:
            state = fnv1a32(bytes((len(c),)) + c, state)
            out.append(state)
        return out

    # structure ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.components)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.components)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return Name(self.components[item])
        return self.components[item]

    def prefix(self, n: int) -> "Name":
        return Name(self.components[:n])

    def append(self, *components: Union[str, bytes]) -> "Name":
        extra = [c.encode() if isinstance(c, str) else c for c in components]
        return Name(self.components + tuple(extra))

    def is_prefix_of(self, other: "Name") -> bool:
        n = len(self.components)
        return n <= len(other.components) and other.components[:n] == self.components

    def prefixes(self) -> Sequence["Name"]:
        """Every prefix, longest first, ending with the empty name."""
        return [Name(self.components[:k]) for k in range(len(self.components), -1, -1)]

    # identity -----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Name) and other.components == self.components

    def __lt__(self, other: "Name") -> bool:
        return self.components < other.components

    def __hash__(self) -> int:
        return hash(self.components)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Name({self.text!r})"


def name(text: Union[str, Name]) -> Name:
    """Shorthand for Name.parse."""
    return Name.parse(text)
