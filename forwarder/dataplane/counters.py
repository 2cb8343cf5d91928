"""Counters and latency histograms, with JSON and Prometheus text views.

Drops are always counted by reason: a forwarder that silently loses packets is
the most common complaint about lab daemons.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Dict, List, Optional

# Upper bounds, microseconds.
LATENCY_BUCKETS_US = (25, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000,
                      50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000)


def bucket_quantile(counts: List[int], q: float) -> Optional[float]:
    """Upper bound (us) of the bucket holding quantile q of bucket counts over
    LATENCY_BUCKETS_US (conservative); None when there are none. Shared with the
    SCSC, which reads the same histograms from telemetry."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank and c:
            return float(LATENCY_BUCKETS_US[i]) if i < len(LATENCY_BUCKETS_US) else float("inf")
    return float(LATENCY_BUCKETS_US[-1])


class Histogram:
    __slots__ = ("counts", "total", "sum_us")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.total = 0
        self.sum_us = 0.0

    def observe(self, us: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_US, us)] += 1
        self.total += 1
        self.sum_us += us

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (conservative); 0 when empty."""
        v = bucket_quantile(self.counts, q)
        return 0.0 if v is None else v

    def to_json(self) -> dict:
        return {"count": self.total, "sum_us": round(self.sum_us, 1),
                "p50_us": self.quantile(0.5), "p99_us": self.quantile(0.99),
                "buckets_us": list(LATENCY_BUCKETS_US), "counts": list(self.counts)}


class FaceCounters:
    __slots__ = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops")

    def __init__(self) -> None:
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.drops: Dict[str, int] = defaultdict(int)

    def to_json(self) -> dict:
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
                "drops": dict(self.drops)}


class PrefixCounters:
    """Per FIB prefix. At a client's SG: requests/responses/nacks and their latency.
    At an instance's SG: served requests and the local service time."""

    __slots__ = ("packets", "bytes", "requests", "responses", "nacks", "drops", "latency",
                 "served", "service_latency")

    def __init__(self) -> None:
        self.packets = self.bytes = self.requests = self.responses = self.nacks = self.served = 0
        self.drops: Dict[str, int] = defaultdict(int)
        self.latency = Histogram()
        self.service_latency = Histogram()

    def to_json(self) -> dict:
        return {"packets": self.packets, "bytes": self.bytes, "requests": self.requests,
                "responses": self.responses, "nacks": self.nacks, "drops": dict(self.drops),
                "latency": self.latency.to_json(), "served": self.served,
                "service_latency": self.service_latency.to_json()}


class Counters:
    def __init__(self) -> None:
        self.faces: Dict[int, FaceCounters] = defaultdict(FaceCounters)
        self.prefixes: Dict[str, PrefixCounters] = defaultdict(PrefixCounters)
        self.drops: Dict[str, int] = defaultdict(int)
        self.nacks_sent: Dict[str, int] = defaultdict(int)

    def drop(self, face_id: int, reason: str, prefix: str = "") -> None:
        self.drops[reason] += 1
        self.faces[face_id].drops[reason] += 1
        if prefix:
            self.prefixes[prefix].drops[reason] += 1

    def to_json(self, face_names: Dict[int, str]) -> dict:
        for f in face_names:  # every face appears, with zeros if it saw no traffic yet
            self.faces[f]
        return {"drops": dict(self.drops), "nacks_sent": dict(self.nacks_sent),
                "faces": {face_names.get(f, str(f)): c.to_json() for f, c in sorted(self.faces.items())},
                "prefixes": {p: c.to_json() for p, c in sorted(self.prefixes.items())}}

    def prometheus(self, node: str, face_names: Dict[int, str]) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: List[str] = []

        def emit(name: str, kind: str, help_: str, samples) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lab = ",".join(f'{k}="{_esc(v)}"' for k, v in (("node", node),) + labels)
                out.append(f"{name}{{{lab}}} {value}")

        faces = sorted(self.faces.items())
        for field, help_ in (("rx_packets", "packets received"), ("rx_bytes", "bytes received"),
                             ("tx_packets", "packets sent"), ("tx_bytes", "bytes sent")):
            emit(f"dmsc_face_{field}_total", "counter", f"DMSC {help_} per face",
                 [((("face", face_names.get(f, str(f))),), getattr(c, field)) for f, c in faces])
        emit("dmsc_drops_total", "counter", "packets dropped, by face and reason",
             [((("face", face_names.get(f, str(f))), ("reason", r)), n)
              for f, c in faces for r, n in sorted(c.drops.items())])
        emit("dmsc_nacks_sent_total", "counter", "NACKs sent, by reason",
             [((("reason", r),), n) for r, n in sorted(self.nacks_sent.items())])
        prefixes = sorted(self.prefixes.items())
        for field in ("packets", "bytes", "requests", "responses", "nacks", "served"):
            emit(f"dmsc_prefix_{field}_total", "counter", f"{field} per prefix",
                 [((("prefix", p),), getattr(c, field)) for p, c in prefixes])
        out.append("# HELP dmsc_request_latency_seconds request to response latency seen at the SG")
        out.append("# TYPE dmsc_request_latency_seconds histogram")
        for p, c in prefixes:
            h, acc = c.latency, 0
            base = f'node="{_esc(node)}",prefix="{_esc(p)}"'
            for bound, n in zip(LATENCY_BUCKETS_US, h.counts):
                acc += n
                out.append(f'dmsc_request_latency_seconds_bucket{{{base},le="{bound / 1e6:g}"}} {acc}')
            out.append(f'dmsc_request_latency_seconds_bucket{{{base},le="+Inf"}} {h.total}')
            out.append(f"dmsc_request_latency_seconds_sum{{{base}}} {h.sum_us / 1e6:.6f}")
            out.append(f"dmsc_request_latency_seconds_count{{{base}}} {h.total}")
        return "\n".join(out) + "\n"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
