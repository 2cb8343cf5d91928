"""The SCSC's rule format: a strategy rule as the Scheduling Center and a
forwarder's agent exchange it on the southbound protocol (docs/scsc.md).

One definition for both ends (controller/ and forwarder.mgmt.scsc_agent), so
that "the same rule" means the same thing on both sides of the wire.
"""
from __future__ import annotations

from ..dataplane.strategy import Rule

# The keys a policy rule may carry besides its prefix.
RULE_KEYS = ("priority", "rate", "burst", "weights", "deny")


def canonical(rule: dict) -> dict:
    """A rule with only the keys that are set, in one form: two rules with the
    same effect compare equal as dicts."""
    out = {"prefix": rule["prefix"]}
    for k in ("priority", "rate", "burst"):
        if rule.get(k) is not None:
            out[k] = rule[k]
    if rule.get("weights"):
        out["weights"] = dict(rule["weights"])
    if rule.get("deny"):
        out["deny"] = True
    return out


def same_effect(a: Rule, b: Rule) -> bool:
    """Installed rules that forward alike (origin and expiry aside)."""
    return (a.deny == b.deny and a.rate == b.rate and a.burst == b.burst
            and a.priority == b.priority and a.weights == b.weights)
