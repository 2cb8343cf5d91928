"""The SCSC policy engine: measurements and intents in, per-forwarder strategy rules out.

Pure: no sockets, no clocks, no threads (times are passed in), so every decision
is unit-tested (tests/test_scsc_policy.py). The os-ken application
(controller/app.py) feeds it and pushes what it returns.

What it decides:

* **Instance weights** for anycast prefixes (a prefix hosted by two or more
  Service Gateways). Each instance's service time per telemetry interval (mean
  of the service-latency histogram delta at the instance's SG) and error ratio
  are compared with the best instance's. An instance enters the *degraded* state
  when it is clearly slower (``slow_enter`` times the best and ``slow_abs_ms``
  more) or fails (``err_enter``), and leaves it only when it is back close to
  the best (``slow_exit``, ``err_exit``): two thresholds, so weights do not
  flap around one. Degraded instances keep ``min_weight`` (they still get a
  trickle of new flows, which is how recovery is seen); healthy ones share the
  rest in inverse proportion to their service time. A new set of weights is
  adopted only when the degraded set changed or some weight moved by at least
  ``deadband`` points (of 100): the second guard against oscillation.
  Weight rules go to the Service Gateways whose FIB reaches two or more of the
  instances (the ingress, where flows are created).
* **Priority classes**: a prefix marked critical gets its class (7 unless told)
  on every forwarder, since each hop reads the class from its own rule.
* **Rate limits**: a token bucket per ingress Service Gateway.
* **Path steering**: a face that drops packets or runs above ``util_enter`` of
  its known capacity is *congested* until it is below ``util_exit`` with no
  drops for ``clear_intervals`` reports. A forwarder with an alternative next
  hop for a prefix gets face weights that send new flows around it.

`diff` turns two policies into the set/remove lists the southbound protocol
pushes, so only what changed is sent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

# A node's policy: prefix text -> rule dict (keys: prefix, priority, rate, burst, weights).
NodePolicy = Dict[str, dict]
Policy = Dict[str, NodePolicy]

MAX_CLASS = 7
CRITICAL_CLASS = 7


class IntentError(ValueError):
    """An invalid intent; str() is the reason given back with HTTP 400."""


# --------------------------------------------------------------------- names
def check_prefix(value: Any, what: str = "prefix") -> str:
    """Validate a name prefix (same rules as forwarder.names) and return its canonical text."""
    if not isinstance(value, str) or not value:
        raise IntentError(f"{what}: expected a name such as /shop/cart, got {value!r}")
    try:
        from forwarder.dataplane.names import InvalidName, Name
    except ImportError:  # pragma: no cover - the controller ships with the forwarder package
        if not value.startswith("/"):
            raise IntentError(f"{what}: {value!r} must start with /")
        return value
    try:
        n = Name.parse(value)
    except InvalidName as exc:
        raise IntentError(f"{what}: {exc}") from None
    if len(n) == 0:
        raise IntentError(f"{what}: the root name / cannot carry a policy")
    return n.text


def _number(value: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not lo <= value <= hi:
        raise IntentError(f"{what}: expected a number in {lo:g}..{hi:g}, got {value!r}")
    return float(value)


# -------------------------------------------------------------------- intents
@dataclass
class Intents:
    """What an operator asked for. `revision` increases with every change."""

    critical: Dict[str, int] = field(default_factory=dict)              # prefix -> class
    pinned: Dict[str, Dict[str, float]] = field(default_factory=dict)   # prefix -> instance -> w
    rate_limits: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    revision: int = 0

    def to_json(self) -> dict:
        return {"revision": self.revision,
                "critical": [{"prefix": p, "class": c} for p, c in sorted(self.critical.items())],
                "pinned_weights": [{"prefix": p, "weights": dict(w)}
                                   for p, w in sorted(self.pinned.items())],
                "rate_limits": [{"prefix": p, **r} for p, r in sorted(self.rate_limits.items())]}

    @classmethod
    def from_json(cls, d: Any) -> "Intents":
        """Parse what to_json wrote (e.g. recovered from a forwarder); IntentError if invalid."""
        if not isinstance(d, dict):
            raise IntentError("intents: expected an object")
        it = cls(revision=int(d.get("revision", 0)))
        for c in d.get("critical") or []:
            kind, value = parse_intent({"kind": "critical", **c})
            it.apply(kind, value)
        for c in d.get("pinned_weights") or []:
            kind, value = parse_intent({"kind": "pin_weights", **c})
            it.apply(kind, value)
        for c in d.get("rate_limits") or []:
            kind, value = parse_intent({"kind": "rate_limit", **c})
            it.apply(kind, value)
        it.revision = int(d.get("revision", 0))
        return it

    def apply(self, kind: str, value: dict) -> bool:
        """Apply a parsed intent; True when something changed (revision is bumped)."""
        p = value["prefix"]
        before = self.to_json()
        if kind == "critical":
            if value.get("remove"):
                self.critical.pop(p, None)
            else:
                self.critical[p] = value["class"]
        elif kind == "pin_weights":
            if value.get("remove"):
                self.pinned.pop(p, None)
            else:
                self.pinned[p] = dict(value["weights"])
        elif kind == "rate_limit":
            if value.get("remove"):
                self.rate_limits.pop(p, None)
            else:
                self.rate_limits[p] = {"rate": value["rate"], "burst": value.get("burst")}
        else:  # parse_intent only returns the kinds above
            raise IntentError(f"unknown intent kind {kind!r}")
        changed = self.to_json() != before
        if changed:
            self.revision += 1
        return changed

    def copy(self) -> "Intents":
        return Intents({**self.critical}, {p: dict(w) for p, w in self.pinned.items()},
                       {p: dict(r) for p, r in self.rate_limits.items()}, self.revision)


INTENT_KINDS = ("critical", "pin_weights", "rate_limit")


def parse_intent(body: Any) -> Tuple[str, dict]:
    """Validate one intent as posted on the REST API; (kind, normalised value) or IntentError.

    ``{"kind": "critical", "prefix": "/pay", "class": 7}``
    ``{"kind": "pin_weights", "prefix": "/svc", "weights": {"/node/d1": 1, "/node/d2": 3}}``
    ``{"kind": "rate_limit", "prefix": "/bulk", "rate": 500, "burst": 50}``
    Any of them with ``"remove": true`` (and only the prefix) withdraws the intent.
    """
    if not isinstance(body, dict):
        raise IntentError("an intent must be a JSON object")
    kind = body.get("kind")
    if kind not in INTENT_KINDS:
        raise IntentError(f"kind: expected one of {', '.join(INTENT_KINDS)}, got {kind!r}")
    allowed = {"kind", "prefix", "remove"} | {
        "critical": {"class"}, "pin_weights": {"weights"}, "rate_limit": {"rate", "burst"}}[kind]
    extra = set(body) - allowed
    if extra:
        raise IntentError(f"unknown field(s) for a {kind} intent: {', '.join(sorted(extra))}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    prefix = check_prefix(body.get("prefix"))
    remove = body.get("remove", False)
    if not isinstance(remove, bool):
        raise IntentError(f"remove: expected true or false, got {remove!r}")
    if remove:
        return kind, {"prefix": prefix, "remove": True}
    if kind == "critical":
        cls = body.get("class", CRITICAL_CLASS)
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls <= MAX_CLASS:
            raise IntentError(f"class: expected an integer in 0..{MAX_CLASS}, got {cls!r}")
        return kind, {"prefix": prefix, "class": cls}
    if kind == "pin_weights":
        w = body.get("weights")
        if not isinstance(w, dict) or not w:
            raise IntentError("weights: expected a non-empty object of instance (node name) "
                              "or face name -> weight")
        out = {}
        for k, v in w.items():
            if not isinstance(k, str) or not k:
                raise IntentError(f"weights: bad key {k!r}")
            key = check_prefix(k, f"weights[{k}]") if k.startswith("/") else k
            out[key] = _number(v, f"weights[{k}]", 0, 1e6)
        if not any(v > 0 for v in out.values()):
            raise IntentError("weights: at least one weight must be > 0")
        return kind, {"prefix": prefix, "weights": out}
    rate = _number(body.get("rate"), "rate (requests per second)", 0.001, 1e9)
    burst = body.get("burst")
    if burst is not None:
        burst = _number(burst, "burst (requests)", 1, 1e9)
    return kind, {"prefix": prefix, "rate": rate, "burst": burst}


# ---------------------------------------------------------------- measurements
@dataclass
class NextHop:
    face: str
    instance: Optional[str] = None
    up: bool = True
    rank: Tuple[int, ...] = ()


@dataclass
class NodeInfo:
    """What the SCSC knows of one forwarder's tables."""

    node: str
    roles: Tuple[str, ...] = ("sg", "sr")
    fib: Dict[str, List[NextHop]] = field(default_factory=dict)
    local_prefixes: Tuple[str, ...] = ()
    connected: bool = True


@dataclass
class InstanceSample:
    """One instance's measurement over (about) one telemetry interval."""

    served: int = 0               # requests it served
    mean_ms: Optional[float] = None  # mean service time; None without samples
    errors: int = 0               # NACKs/drops for the prefix at its SG


@dataclass
class FaceSample:
    tx_bps: float = 0.0
    drops: int = 0                # new drops on the face (forwarder + kernel + qdisc)
    queued: int = 0
    capacity_bps: Optional[float] = None
    up: bool = True


@dataclass
class Params:
    slow_enter: float = 2.0      # degraded when mean > slow_enter x best ...
    slow_exit: float = 1.4       # ... healthy again when mean < slow_exit x best
    slow_abs_ms: float = 1.0     # and at least this much slower (sub-ms noise is not "slow")
    err_enter: float = 0.05      # error ratio that degrades an instance
    err_exit: float = 0.01
    min_weight: int = 5          # a degraded instance keeps this share (of 100)
    deadband: int = 10           # weights move only by at least this many points
    min_samples: int = 3         # samples needed before a mean is trusted ...
    max_pending: int = 3         # ... or this many intervals, whichever comes first
    util_enter: float = 0.85     # congested above this share of a known capacity ...
    util_exit: float = 0.60      # ... or with drops; clear below this, without drops,
    clear_intervals: int = 2     # for this many consecutive reports
    queue_enter: int = 64        # packets waiting in the forwarder's face queue
    steer_weight: int = 1        # congested face weight vs. 10 for the others
    critical_class: int = CRITICAL_CLASS


def percent_weights(raw: Dict[str, float], floor: Dict[str, int]) -> Dict[str, int]:
    """Scale `raw` (>= 0) so that everything, floors included, sums to 100 (integers)."""
    fixed = sum(floor.values())
    rest = max(0, 100 - fixed)
    total = sum(raw.values())
    out = dict(floor)
    if not raw:
        return out
    if total <= 0:
        raw = {k: 1.0 for k in raw}
        total = float(len(raw))
    shares = {k: rest * v / total for k, v in raw.items()}
    ints = {k: int(math.floor(s)) for k, s in shares.items()}
    # largest remainders get the points lost to rounding, ties broken by name
    left = rest - sum(ints.values())
    for k in sorted(shares, key=lambda k: (-(shares[k] - ints[k]), k))[:left]:
        ints[k] += 1
    out.update(ints)
    return out


class PolicyEngine:
    """Holds the hysteresis state; `observe_*` feed it, `compute` derives the policy."""

    def __init__(self, params: Optional[Params] = None) -> None:
        self.p = params or Params()
        self.latency: Dict[str, Dict[str, float]] = {}       # prefix -> instance -> mean ms
        self.err_ratio: Dict[str, Dict[str, float]] = {}
        self._pending: Dict[Tuple[str, str], Tuple[int, float, int, int]] = {}
        self.degraded: Dict[str, Set[str]] = {}
        self.weights: Dict[str, Dict[str, int]] = {}          # adopted weights per anycast prefix
        self._adopted_deg: Dict[str, Set[str]] = {}
        self.congested: Dict[str, Set[str]] = {}              # node -> faces
        self._clear_count: Dict[Tuple[str, str], int] = {}
        self.changes = 0                                      # weight adoptions, for the record

    # ------------------------------------------------------------ instances
    def adopt_weights(self, prefix: str, weights: Dict[str, float]) -> None:
        """Take over instance weights a forwarder still holds from an earlier SCSC
        run (after a restart), so the new run does not start from equal weights."""
        self.weights[prefix] = {k: int(v) for k, v in weights.items()}
        self._adopted_deg[prefix] = {k for k, v in weights.items() if v <= self.p.min_weight}
        self.degraded[prefix] = set(self._adopted_deg[prefix])

    def observe_instance(self, prefix: str, instance: str, s: InstanceSample) -> bool:
        """One interval's sample of one instance; True when its estimate was updated.

        Samples accumulate until `min_samples` are in or `max_pending` intervals
        passed, so an instance holding only the minimum weight is still measured.
        """
        key = (prefix, instance)
        n, sum_ms, errors, rounds = self._pending.get(key, (0, 0.0, 0, 0))
        if s.mean_ms is not None and s.served > 0:
            n += s.served
            sum_ms += s.mean_ms * s.served
        errors += s.errors
        rounds += 1
        if n < self.p.min_samples and rounds < self.p.max_pending and errors == 0:
            self._pending[key] = (n, sum_ms, errors, rounds)
            return False
        self._pending.pop(key, None)
        if n == 0 and errors == 0:
            return False  # no traffic at all: keep the last estimate
        if n:
            self.latency.setdefault(prefix, {})[instance] = sum_ms / n
        self.err_ratio.setdefault(prefix, {})[instance] = errors / max(1, n + errors)
        return True

    def forget_instance(self, prefix: str, instance: str) -> None:
        for table in (self.latency, self.err_ratio, self.degraded):
            t = table.get(prefix)
            if t is not None:
                t.discard(instance) if isinstance(t, set) else t.pop(instance, None)
        self._pending.pop((prefix, instance), None)

    def _update_degraded(self, prefix: str, instances: Iterable[str]) -> Set[str]:
        p = self.p
        lat = self.latency.get(prefix, {})
        err = self.err_ratio.get(prefix, {})
        known = [lat[i] for i in instances if i in lat and err.get(i, 0.0) < p.err_enter]
        best = min(known) if known else None
        deg = self.degraded.setdefault(prefix, set())
        for i in instances:
            e = err.get(i, 0.0)
            m = lat.get(i)
            slow_in = best is not None and m is not None and \
                m > max(best * p.slow_enter, best + p.slow_abs_ms)
            slow_out = best is None or m is None or \
                m < max(best * p.slow_exit, best + p.slow_abs_ms / 2)
            if i in deg:
                if slow_out and e <= p.err_exit:
                    deg.discard(i)
            elif slow_in or e >= p.err_enter:
                deg.add(i)
        for i in list(deg):
            if i not in instances:
                deg.discard(i)
        return deg

    def instance_weights(self, prefix: str, instances: Iterable[str]) -> Dict[str, int]:
        """Weights (summing to 100) for an anycast prefix, with hysteresis and a deadband."""
        inst = sorted(set(instances))
        if len(inst) < 2:
            self.weights.pop(prefix, None)
            return {}
        deg = set(self._update_degraded(prefix, inst))
        if len(deg) == len(inst):
            deg = set()  # all bad: nothing to move load to; share equally
        lat = self.latency.get(prefix, {})
        healthy = [i for i in inst if i not in deg]
        known = [lat[i] for i in healthy if i in lat]
        ref = min(known) if known else 1.0
        raw = {i: (ref / max(lat[i], 1e-3)) if i in lat else 1.0 for i in healthy}
        target = percent_weights(raw, {i: self.p.min_weight for i in deg})
        old = self.weights.get(prefix)
        if old is not None and set(old) == set(target):
            moved = max(abs(target[i] - old[i]) for i in target)
            if moved < self.p.deadband and self._adopted_deg.get(prefix) == deg:
                return dict(old)
        if old != target:
            self.changes += 1
        self.weights[prefix] = target
        self._adopted_deg[prefix] = deg
        return dict(target)

    # ---------------------------------------------------------------- faces
    def observe_faces(self, node: str, faces: Dict[str, FaceSample]) -> Set[str]:
        """One report of a node's faces; returns the node's congested faces."""
        p = self.p
        cong = self.congested.setdefault(node, set())
        for name, f in faces.items():
            util = (f.tx_bps / f.capacity_bps) if f.capacity_bps else 0.0
            hot = f.up and (f.drops > 0 or f.queued >= p.queue_enter or util >= p.util_enter)
            calm = f.drops == 0 and f.queued < p.queue_enter // 2 and util < p.util_exit
            key = (node, name)
            if hot:
                cong.add(name)
                self._clear_count[key] = 0
            elif name in cong:
                if calm or not f.up:
                    self._clear_count[key] = self._clear_count.get(key, 0) + 1
                    if self._clear_count[key] >= p.clear_intervals or not f.up:
                        cong.discard(name)
                        self._clear_count.pop(key, None)
                else:
                    self._clear_count[key] = 0
        for name in list(cong):
            if name not in faces:
                cong.discard(name)
        return set(cong)

    # -------------------------------------------------------------- compute
    def compute(self, nodes: Dict[str, NodeInfo], intents: Intents) -> Policy:
        """The whole policy: node -> prefix -> rule dict. Deterministic for equal inputs."""
        p = self.p
        policy: Policy = {n: {} for n in nodes}
        instances = instances_by_prefix(nodes)

        def rule(node: str, prefix: str) -> dict:
            return policy[node].setdefault(prefix, {"prefix": prefix})

        # instance weights for anycast prefixes, at the ingress SGs that reach >= 2 instances
        anycast = {pf: insts for pf, insts in instances.items() if len(insts) >= 2}
        inst_w: Dict[str, Dict[str, float]] = {}
        for prefix, insts in sorted(anycast.items()):
            inst_w[prefix] = self.instance_weights(prefix, insts)
        for prefix in [pf for pf in self.weights if pf not in anycast]:
            self.weights.pop(prefix, None)
            self._adopted_deg.pop(prefix, None)
        for prefix, w in intents.pinned.items():
            inst_w[prefix] = dict(w)
        for prefix, w in sorted(inst_w.items()):
            if not w:
                continue
            for name, info in nodes.items():
                if "sg" not in info.roles:
                    continue
                hops = info.fib.get(prefix)
                if not hops:
                    continue
                reached = {h.instance for h in hops if h.instance in w} | \
                    {h.face for h in hops if h.face in w}
                if prefix in intents.pinned:
                    if not reached:
                        continue
                elif len(reached) < 2 or prefix in info.local_prefixes:
                    continue
                rule(name, prefix)["weights"] = {k: v for k, v in sorted(w.items())
                                                 if k in reached}

        # path steering around congested faces
        for name, info in nodes.items():
            cong = self.congested.get(name)
            if not cong:
                continue
            for prefix, hops in sorted(info.fib.items()):
                up = [h for h in hops if h.up]
                faces = {h.face for h in up}
                if len(faces) < 2 or not (faces & cong) or not (faces - cong):
                    continue
                if prefix in intents.pinned:
                    continue  # the operator's word wins
                if any(h.face == "" for h in up):
                    continue
                per_face: Dict[str, Set[Optional[str]]] = {}
                for h in up:
                    per_face.setdefault(h.face, set()).add(h.instance)
                iw = inst_w.get(prefix) or {}
                existing = policy[name].get(prefix, {}).get("weights")
                if existing and any(len(v) > 1 for v in per_face.values()):
                    continue  # instance-keyed weights cannot be refined per face here
                weights = {}
                for face, insts in sorted(per_face.items()):
                    base = 10.0
                    if iw:
                        base = float(sum(iw.get(i, 0) for i in insts if i) or 0) / max(1, len(insts))
                    factor = p.steer_weight / 10.0 if face in cong else 1.0
                    weights[face] = round(base * factor, 3)
                if not any(v > 0 for v in weights.values()):
                    continue
                rule(name, prefix)["weights"] = weights

        # priority classes for critical prefixes, on every forwarder
        for prefix, cls in sorted(intents.critical.items()):
            for name in nodes:
                rule(name, prefix)["priority"] = cls

        # rate limits at every ingress Service Gateway
        for prefix, rl in sorted(intents.rate_limits.items()):
            for name, info in nodes.items():
                if "sg" in info.roles:
                    r = rule(name, prefix)
                    r["rate"] = rl["rate"]
                    if rl.get("burst") is not None:
                        r["burst"] = rl["burst"]
        return policy


def instances_by_prefix(nodes: Dict[str, NodeInfo]) -> Dict[str, List[str]]:
    """prefix -> sorted node names hosting an instance: SGs that originate it, and the
    instances that connected forwarders' FIB next hops name (routes carry `instance`)."""
    out: Dict[str, Set[str]] = {}
    for name, info in nodes.items():
        if not info.connected:
            continue
        for prefix in info.local_prefixes:
            out.setdefault(prefix, set()).add(name)
        for prefix, hops in info.fib.items():
            for h in hops:
                if h.instance:
                    out.setdefault(prefix, set()).add(h.instance)
    return {p: sorted(v) for p, v in out.items()}


def diff(old: NodePolicy, new: NodePolicy) -> Tuple[List[dict], List[str]]:
    """(rules to set, prefixes to remove) that turn `old` into `new`."""
    to_set = [new[p] for p in sorted(new) if old.get(p) != new[p]]
    to_remove = [p for p in sorted(old) if p not in new]
    return to_set, to_remove


def apply_diff(old: NodePolicy, to_set: List[dict], to_remove: List[str]) -> NodePolicy:
    out = {p: r for p, r in old.items() if p not in to_remove}
    for r in to_set:
        out[r["prefix"]] = r
    return out
