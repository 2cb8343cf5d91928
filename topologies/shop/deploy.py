"""Where the demo shop's instances go on a topology's Service Gateways.

The shop: ``/shop/frontend`` (client library, calls the others),
``/shop/catalog`` (client library), ``/shop/cart`` and ``/shop/payment`` (plain
HTTP servers behind the SG's HTTP adapters). Instances are interleaved over the
SG list so that two instances of one service land on different SGs (and, in a
fat tree, usually in different pods).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

# prefix, app, kind, instances
SHOP: List[Tuple[str, str, str, int]] = [
    ("/shop/frontend", "frontend", "client", 2),
    ("/shop/catalog", "catalog", "client", 3),
    ("/shop/cart", "cart", "http", 2),
    ("/shop/payment", "payment", "http", 2),
]

HTTP_PORTS: Dict[str, int] = {"cart": 9001, "payment": 9002, "echo": 9003,
                              "catalog": 9004, "frontend": 9005}


def placement(sgs: Sequence[str]) -> List[Tuple[str, str, str, List[str]]]:
    """[(prefix, app, kind, [sg, ...])] for the given Service Gateways (in order)."""
    if not sgs:
        return []
    order: List[int] = []          # service index per instance slot, interleaved
    left = [n for _, _, _, n in SHOP]
    while any(left):
        for i, n in enumerate(left):
            if n:
                order.append(i)
                left[i] -= 1
    total = len(order)
    nodes: List[List[str]] = [[] for _ in SHOP]
    for j, svc in enumerate(order):
        sg = sgs[(j * len(sgs)) // total] if len(sgs) >= total else sgs[j % len(sgs)]
        if sg not in nodes[svc]:
            nodes[svc].append(sg)
    return [(p, a, k, nodes[i]) for i, (p, a, k, _) in enumerate(SHOP)]
