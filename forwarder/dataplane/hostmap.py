"""HTTP host names <-> DMSC service prefixes, for the HTTP adapters.

The documented rule: a host under the pseudo top-level domain ``.dmsc`` names
the prefix made of its labels in reverse order, without the ``dmsc`` label::

    cart.shop.dmsc        -> /shop/cart
    v2.cart.shop.dmsc:80  -> /shop/cart/v2      (port ignored)
    Cart.Shop.DMSC.       -> /shop/cart          (case-insensitive, FQDN dot ok)

DNS reads right to left from the general to the specific, DMSC names read left
to right, hence the reversal. Only labels that are also plain name components
are accepted (``a-z 0-9 - _``, 1..63 bytes, 1..8 of them, the first not the
reserved ``_dmsc``), so the mapping is a bijection and ``prefix_to_host``
inverts it. A configuration may add explicit overrides (``host=prefix``) for
hosts that do not follow the rule, e.g. ``localhost=/shop/echo``; an override
wins over the rule.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional, Union

from .names import COMPONENTS_MAX, InvalidName, Name

SUFFIX = "dmsc"
_LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
_RESERVED_FIRST = "_dmsc"


def normalize_host(host: str) -> str:
    """Lower-case, strip the port and one trailing dot: the key used for lookups."""
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal, optionally with a port
        end = h.find("]")
        return h[:end + 1] if end >= 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h.endswith("."):
        h = h[:-1]
    return h


def host_to_prefix(host: str, overrides: Optional[Mapping[str, Union[str, Name]]] = None) -> Name:
    """Map an HTTP Host value to the service prefix it names.

    Raises ValueError with a message saying what is wrong with the host.
    """
    if not host or not host.strip():
        raise ValueError("no host given (the request has no Host header)")
    key = normalize_host(host)
    if overrides:
        hit = overrides.get(key)
        if hit is not None:
            return Name.parse(hit)
    labels = key.split(".")
    if len(labels) < 2 or labels[-1] != SUFFIX:
        raise ValueError(f"host {host!r} is not a DMSC service host: it must end in "
                         f".{SUFFIX} (e.g. cart.shop.{SUFFIX} for /shop/cart)")
    labels = labels[:-1]
    for lab in labels:
        if not _LABEL.match(lab):
            raise ValueError(f"host {host!r}: label {lab!r} is not a valid name component "
                             "(1..63 of a-z 0-9 - _)")
    if len(labels) > COMPONENTS_MAX:
        raise ValueError(f"host {host!r} has {len(labels)} labels before .{SUFFIX}; "
                         f"a name has at most {COMPONENTS_MAX} components")
    labels.reverse()
    if labels[0] == _RESERVED_FIRST:
        raise ValueError(f"host {host!r} maps into the reserved /{_RESERVED_FIRST} names")
    try:
        return Name(lab.encode() for lab in labels)
    except InvalidName as exc:  # e.g. over 255 bytes in binary form
        raise ValueError(f"host {host!r}: {exc}") from None


def prefix_to_host(prefix: Union[str, Name]) -> str:
    """The host name for a prefix (inverse of the rule); ValueError if none exists."""
    p = Name.parse(prefix)
    if len(p) == 0:
        raise ValueError("the empty name / has no host name")
    labels = []
    for c in p.components:
        try:
            text = c.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not _LABEL.match(text):
            raise ValueError(f"{p.text}: component {c!r} cannot be a host label "
                             "(1..63 of a-z 0-9 - _, lower case)")
        labels.append(text)
    return ".".join(reversed(labels)) + "." + SUFFIX


class HostMap:
    """The rule plus configured overrides; what the HTTP proxy consults."""

    def __init__(self, overrides: Optional[Mapping[str, Union[str, Name]]] = None) -> None:
        self.overrides: Dict[str, Name] = {}
        for host, prefix in (overrides or {}).items():
            self.add(host, prefix)

    def add(self, host: str, prefix: Union[str, Name]) -> None:
        key = normalize_host(host)
        if not key:
            raise ValueError(f"empty host in override {host!r}")
        try:
            p = Name.parse(prefix)
        except InvalidName as exc:
            raise ValueError(f"override {host}={prefix}: {exc}") from None
        if len(p) == 0:
            raise ValueError(f"override {host}={prefix}: the prefix must not be empty")
        self.overrides[key] = p

    @classmethod
    def from_args(cls, items: Iterable[str]) -> "HostMap":
        """Build from ``host=prefix`` strings (the proxy's ``--map`` options)."""
        hm = cls()
        for item in items:
            host, sep, prefix = item.partition("=")
            if not sep:
                raise ValueError(f"--map {item!r}: expected host=prefix")
            hm.add(host, prefix.strip())
        return hm

    def lookup(self, host: str) -> Name:
        return host_to_prefix(host, self.overrides)
