"""Forwarding strategy table: policy rules that take precedence over the FIB.

A rule applies to a destination prefix (longest match wins) and may deny, rate
limit (token bucket), pin a priority class, or choose among next hops or
anycast instances by weight. Rules come from configuration, the management API
or the SCSC.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .lpm import PrefixTable
from .names import Name
from .rib import Route


class TokenBucket:
    """rate tokens/s, up to burst; one token per packet."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.stamp = float(burst), None

    def take(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Rule:
    prefix: Name
    deny: bool = False
    rate: Optional[float] = None      # packets per second
    burst: Optional[float] = None
    priority: Optional[int] = None    # 0..7
    weights: Dict[str, float] = field(default_factory=dict)  # face name or instance -> weight
    origin: str = "static"
    expires: Optional[float] = None   # absolute time; None = never
    bucket: Optional[TokenBucket] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.priority is not None and not 0 <= self.priority <= 7:
            raise ValueError(f"priority {self.priority} outside 0..7")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be >= 0")
        if self.rate is not None:
            self.bucket = TokenBucket(self.rate, self.burst or max(1.0, self.rate / 10))

    def to_json(self) -> dict:
        return {"prefix": self.prefix.text, "deny": self.deny, "rate": self.rate,
                "burst": self.burst, "priority": self.priority, "weights": dict(self.weights),
                "origin": self.origin, "expires": self.expires}

    @classmethod
    def from_json(cls, d: dict) -> "Rule":
        known = {"prefix", "deny", "rate", "burst", "priority", "weights", "origin", "expires"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown rule field(s): {', '.join(sorted(extra))}")
        if "prefix" not in d:
            raise ValueError("a rule needs a prefix")
        return cls(prefix=Name.parse(d["prefix"]), deny=bool(d.get("deny", False)),
                   rate=d.get("rate"), burst=d.get("burst"), priority=d.get("priority"),
                   weights={str(k): float(v) for k, v in (d.get("weights") or {}).items()},
                   origin=d.get("origin", "static"), expires=d.get("expires"))


class StrategyTable:
    def __init__(self, seed: Optional[int] = None) -> None:
        self._table: PrefixTable[Rule] = PrefixTable()
        self.lookup_wire = self._table.lookup_wire   # the per-packet call, without a hop
        self.lookup = self._table.lookup
        self.get = self._table.get
        self.generation = 0
        self.rng = random.Random(seed)

    def set(self, rule: Rule) -> None:
        self._table.set(rule.prefix, rule)
        self.generation += 1

    def remove(self, prefix: Name) -> bool:
        found = self._table.pop(prefix) is not None
        if found:
            self.generation += 1
        return found

    def expire(self, now: float) -> int:
        dead = self._table.remove_where(lambda r: r.expires is not None and r.expires <= now)
        if dead:
            self.generation += 1
        return len(dead)

    @staticmethod
    def weight(rule: Rule, route: Route, face_name) -> float:
        """The rule's weight for a route: by its instance, else by its face name; 0 if unnamed."""
        w = rule.weights.get(route.instance) if route.instance is not None else None
        if w is None:
            w = rule.weights.get(face_name(route.face_id))
        return w or 0.0

    def choose(self, rule: Rule, candidates: Sequence[Route], face_name) -> Optional[Route]:
        """Weighted pick among candidate routes; None when the weights name none of them."""
        weighted = []
        for r in candidates:
            w = self.weight(rule, r, face_name)
            if w > 0:
                weighted.append((r, w))
        if not weighted:
            return None
        total = sum(w for _, w in weighted)
        x = self.rng.random() * total
        for r, w in weighted:
            x -= w
            if x < 0:
                return r
        return weighted[-1][0]

    def rules(self) -> List[Rule]:
        return sorted(self._table.values(), key=lambda r: r.prefix)

    def __len__(self) -> int:
        return len(self._table)
