"""Telemetry experiment: per-hop telemetry (HOP_RECORD TLVs) against ground truth, and its cost.

Topology (its own; every node a forwarder, SPA and the SCSC as in the lab)::

    h1 --- r1 --- r2 --- r3 --- h2        the clean path (idle per-hop times, cost)
                  |      |
                  s1     l1
          r2-s1: --bw Mbit/s (tc tbf) and --delay ms (netem, only where it exists)
          r3-l1: --loss % per direction (nftables netdev ingress, numgen random)

Echo requests with the TELEMETRY flag collect one HOP_RECORD per forwarder
(node hash, faces, receive time in ns, packets queued on the egress face,
egress utilisation per mille) on the way out and back; the client here reads
them all (experiments/telemetry.py: HopClient, on top of forwarder.client).

1. idle: per-hop forward times on the clean path; every record's node must be
   the path's next node;
2. queueing (bandwidth ground truth): a raw-socket sender in r2 puts filler
   frames (EtherType 0x88B6, invisible to the forwarders) on r2's shaped egress
   at --load-levels times the link rate; telemetry pings h1 -> /node/s1 measure
   the r2 -> s1 hop time, compared with the ground truth: the kernel's receive
   timestamps (SO_TIMESTAMPNS on packet sockets in r2 and s1) of the same
   echo; and with the queueing delay the tbf qdisc's backlog predicts
   (``tc -s qdisc``, sampled every 50 ms, interpolated to the echo's arrival)
   times 8 / rate, plus the idle hop time. Also kept: the HOP_RECORD queue and
   utilisation fields at r2, and the SCSC's view of that face (its queue, which
   includes the qdisc backlog, and the capacity it learnt from the qdisc);
3. bandwidth: a train of back-to-back 1,200-byte echoes; the spacing of their
   receive times at s1 (telemetry timestamps) estimates the shaped rate;
   the same from the forwarders' own byte counters while r2's egress is full;
4. loss: echoes h1 -> /node/l1 across the lossy link: the end-to-end estimate
   1 - sqrt(received/sent), and per direction from the forwarders' face
   counters (frames sent by one end, received by the other), against the
   nftables drop counters (ground truth) and the configured rate;
5. delay: the r2 -> s1 hop minus the r1 -> r2 hop at idle, against --delay,
   only where netem exists; without netem the lab's warning is recorded and
   the delay is reported as not measured;
6. cost: echo throughput (several threads, closed loop) and round-trip time
   over the clean path with TELEMETRY on and off, alternating; bytes added per hop.

Outputs: config.json, idle_hops.csv, queue_pings.csv, backlog.csv, train.csv,
loss.json, cost.csv, telemetry_*.png, summary.md/json.
"""
from __future__ import annotations

import json
import re
import socket
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from forwarder.dataplane import wire
from forwarder.apps.client import Client
from forwarder.dataplane.names import Name
from forwarder.dataplane.wire import EchoBody, HopRecord, Packet, PacketType, TlvType

from topologies.measure import percentile, proc_cpu_s, wait_for

from .common import (Experiment, fmt, lab_facts, md_head, md_table, ns_run, parse_list, Progress, Results,
                     rnd, run_main, start_lab)

NAME = "telemetry"
FILLER_ETHERTYPE = 0x88B6
HOP_TLV_BYTES = 4 + wire.HOP.size   # TLV header + HOP_RECORD

DEFAULTS = dict(bw=10.0, delay=5.0, loss=5.0, load_levels="0,0.5,0.9,1.2", level_s=4.0,
                ping_interval=0.05, loss_pings=600, train=40, cost_rounds=3, cost_s=4.0,
                cost_threads=8)
QUICK = dict(load_levels="0,0.9,1.2", level_s=2.5, loss_pings=300, train=30, cost_rounds=2,
             cost_s=2.5)


def add_args(ap) -> None:
    ap.add_argument("--bw", type=float, help="rate of the shaped link r2-s1, Mbit/s (tbf)")
    ap.add_argument("--delay", type=float, help="delay of r2-s1, ms (netem only)")
    ap.add_argument("--loss", type=float, help="loss of r3-l1 per direction, percent (nftables)")
    ap.add_argument("--load-levels", help="filler load on r2's shaped egress, fractions of --bw")
    ap.add_argument("--level-s", type=float, help="seconds of telemetry pings per load level")
    ap.add_argument("--ping-interval", type=float, help="seconds between telemetry pings")
    ap.add_argument("--loss-pings", type=int, help="echoes across the lossy link")
    ap.add_argument("--train", type=int, help="echoes in the bandwidth train")
    ap.add_argument("--cost-rounds", type=int, help="on/off rounds of the cost measurement")
    ap.add_argument("--cost-s", type=float, help="seconds per cost run")
    ap.add_argument("--cost-threads", type=int, help="concurrent pingers in the cost runs")


# ---------------------------------------------------------------------------
# A client that keeps the hop records
# ---------------------------------------------------------------------------

class HopClient(Client):
    """forwarder's Client, with echoes reported with their HOP_RECORDs decoded.

    Client.ping() reports only the number of hops; Client.echoes() keeps the
    replies and their arrival times, which this turns into the experiment's rows.
    """

    @staticmethod
    def _result(pkt: Packet, ans: Optional[Packet], t_recv_ns: Optional[int]) -> dict:
        sent = EchoBody.decode(pkt.payload).send_time_ns
        if ans is None:
            return {"ok": False, "t_send_ns": sent}
        if ans.type == PacketType.NACK:
            return {"ok": False, "t_send_ns": sent, "nack": True}
        recs = [HopRecord.decode(v) for t, v in ans.tlvs if t == TlvType.HOP_RECORD]
        return {"ok": True, "t_send_ns": sent, "t_recv_ns": t_recv_ns,
                "echo_id": EchoBody.decode(pkt.payload).echo_id,
                "rtt_ms": (t_recv_ns - sent) / 1e6, "records": recs,
                "reply_bytes": len(ans.encode())}

    def echo_batch(self, name: str, count: int, interval: float, *, size: int = 0,
                   telemetry: bool = True, timeout: float = 1.0) -> List[dict]:
        """`count` echoes, one every `interval` s (0: back to back), as result rows."""
        return [self._result(r.request, r.reply, r.arrived_ns)
                for r in self.echoes(name, count, interval, size=size, telemetry=telemetry,
                                     timeout=timeout)]


def node_hashes(nodes) -> Dict[int, str]:
    return {Name.parse(f"/node/{n}").hash32: n for n in nodes}


def forward_records(res: dict, names: Dict[int, str]) -> List[Tuple[str, HopRecord]]:
    """The records up to and including the responder's (egress 0xFFFF)."""
    out = []
    for r in res.get("records", []):
        out.append((names.get(r.node_hash, f"#{r.node_hash:08x}"), r))
        if r.out_face == wire.NO_FACE:
            break
    return out


def hop_delta_ms(res: dict, names: Dict[int, str], a: str, b: str) -> Optional[float]:
    fw = dict(forward_records(res, names))
    if a in fw and b in fw:
        return (fw[b].time_ns - fw[a].time_ns) / 1e6
    return None


# ---------------------------------------------------------------------------
# Ground truth helpers
# ---------------------------------------------------------------------------

class Filler:
    """Paced raw frames of another EtherType on one interface (loads its qdisc only)."""

    def __init__(self, netns: str, intf: str, rate_bps: float, frame: int = 1400) -> None:
        from topologies.nsenter import socket_in
        self.sock = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind((intf, 0))
        self.rate = rate_bps
        self.frame = (b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" +
                      FILLER_ETHERTYPE.to_bytes(2, "big")).ljust(frame, b"\x5a")
        self.sent = 0
        self.refused = 0
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True, name="filler")

    def _run(self) -> None:
        per_s = self.rate / (8 * len(self.frame))
        t0 = time.monotonic()
        while not self.stop_ev.is_set():
            due = int((time.monotonic() - t0) * per_s) - (self.sent + self.refused)
            for _ in range(max(0, due)):
                try:
                    self.sock.send(self.frame)
                    self.sent += 1
                except OSError:      # the qdisc is full (ENOBUFS): dropped, as any sender's frame
                    self.refused += 1
            self.stop_ev.wait(0.002)

    def start(self) -> "Filler":
        if self.rate > 0:
            self.th.start()
        return self

    def stop(self) -> None:
        self.stop_ev.set()
        if self.th.is_alive():
            self.th.join(2)
        self.sock.close()


SO_TIMESTAMPNS = 35         # Linux, asm-generic/socket.h (Python's socket module lacks it)


class KernelTap:
    """Kernel receive timestamps (SO_TIMESTAMPNS) of echo requests arriving on an interface.

    The ground truth for a hop time: when the kernel received the frame at one
    node and at the next, on the same clock, independent of the forwarders'
    own timestamps (which are taken when their loop gets to the frame).
    """

    def __init__(self, netns: str, intf: str) -> None:
        from topologies.nsenter import socket_in
        self.sock = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(wire.ETHERTYPE))
        self.sock.bind((intf, wire.ETHERTYPE))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self.times: Dict[int, int] = {}
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True, name=f"tap-{intf}")
        self.th.start()

    def _run(self) -> None:
        import struct
        while not self.stop_ev.is_set():
            try:
                data, anc, _, addr = self.sock.recvmsg(65535, 256)
            except socket.timeout:
                continue
            except OSError:
                break
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ts = None
            for lvl, typ, d in anc:
                if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(d) >= 16:
                    sec, nsec = struct.unpack("qq", d[:16])
                    ts = sec * 1_000_000_000 + nsec
            if ts is None:
                continue
            try:
                pkt = wire.decode(data[14:])
                if pkt.type != PacketType.ECHO_REQUEST:
                    continue
                self.times.setdefault(EchoBody.decode(pkt.payload).echo_id, ts)
            except Exception:
                continue

    def stop(self) -> Dict[int, int]:
        self.stop_ev.set()
        self.th.join(2)
        self.sock.close()
        return self.times


_BACKLOG = re.compile(r"backlog (\d+)b (\d+)p")
_DROPPED = re.compile(r"dropped (\d+)")


def qdisc_backlog(lab, node: str, intf: str) -> Tuple[int, int, int]:
    """(bytes, packets, dropped) of the root qdisc of intf in node."""
    out = ns_run(lab, node, ["tc", "-s", "qdisc", "show", "dev", intf], timeout=5).stdout
    m = _BACKLOG.search(out)
    d = _DROPPED.search(out)
    return (int(m.group(1)), int(m.group(2)), int(d.group(1)) if d else 0) if m else (0, 0, 0)


class BacklogSampler:
    def __init__(self, lab, node: str, intf: str, interval: float = 0.05) -> None:
        self.lab, self.node, self.intf, self.interval = lab, node, intf, interval
        self.samples: List[Tuple[float, int, int, int]] = []
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True, name="backlog")

    def _run(self) -> None:
        while not self.stop_ev.is_set():
            t = time.time()
            try:
                b, p, d = qdisc_backlog(self.lab, self.node, self.intf)
                self.samples.append(((t + time.time()) / 2, b, p, d))
            except Exception:
                pass
            self.stop_ev.wait(self.interval)

    def start(self) -> "BacklogSampler":
        self.th.start()
        return self

    def stop(self) -> List[Tuple[float, int, int, int]]:
        self.stop_ev.set()
        self.th.join(5)
        return self.samples

    def at(self, t: float) -> Optional[Tuple[float, int, int, int]]:
        """The backlog at time t, linearly interpolated between the samples around it."""
        if not self.samples:
            return None
        before = [s for s in self.samples if s[0] <= t]
        after = [s for s in self.samples if s[0] > t]
        if not before or not after:
            return min(self.samples, key=lambda s: abs(s[0] - t))
        a, b = before[-1], after[0]
        w = (t - a[0]) / (b[0] - a[0]) if b[0] > a[0] else 0.0
        return (t, round(a[1] + w * (b[1] - a[1])), round(a[2] + w * (b[2] - a[2])), b[3])


def nft_drops(lab, node: str) -> Dict[str, int]:
    """Packets dropped per interface by the lab's nftables loss table in node."""
    res = ns_run(lab, node, ["nft", "-j", "list", "table", "netdev", "dmsc_loss"], check=False)
    out: Dict[str, int] = {}
    if res.returncode != 0:
        return out
    try:
        data = json.loads(res.stdout)
    except ValueError:
        return out
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                out[rule["chain"]] = out.get(rule["chain"], 0) + int(expr["counter"]["packets"])
    return out


def face_counts(lab, node: str, intf: str) -> Dict[str, int]:
    c = lab.fwd[node].api("GET", "/counters")["faces"].get(intf, {})
    return {"tx": int(c.get("tx_packets", 0)), "rx": int(c.get("rx_packets", 0)),
            "tx_bytes": int(c.get("tx_bytes", 0))}


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------

def build_topology(a):
    from topologies.lab.model import LinkOpts, Topology
    t = Topology("telemetry-line")
    for n, role, layer in (("h1", "sg", "server"), ("r1", "sr", "router"), ("r2", "sr", "router"),
                           ("r3", "sr", "router"), ("h2", "sg", "server"), ("s1", "sr", "shaped"),
                           ("l1", "sr", "lossy")):
        t.add_node(n, role, layer)
    t.add_link("h1", "r1")
    t.add_link("r1", "r2")
    t.add_link("r2", "r3")
    t.add_link("r3", "h2")
    t.add_link("r2", "s1", LinkOpts(bw=a.bw, delay=a.delay or None))
    t.add_link("r3", "l1", LinkOpts(loss=a.loss))
    return t


class TelemetryExperiment(Experiment):
    def __init__(self, args, res: Results, progress: Progress) -> None:
        super().__init__(args, res, progress)
        self.client: Optional[HopClient] = None
        self.head: Dict[str, Any] = {}
        self.md: List[str] = []

    def setup(self) -> None:
        topo = build_topology(self.a)

        def configure(lab) -> None:
            lab.telemetry_s = 1.0
        self.lab = start_lab(topo, self.res, self.p, run_kind="exp-telemetry", shop=False,
                             configure=configure, dataplane=self.a.dataplane)
        self.names = node_hashes(topo.nodes)
        self.shaped = {n: topo.links_between("r2", "s1")[0].intf_of(n) for n in ("r2", "s1")}
        self.lossy = {n: topo.links_between("r3", "l1")[0].intf_of(n) for n in ("r3", "l1")}
        self.client = HopClient(str(self.lab.fwd["h1"].app_socket), timeout=1.0)
        wait_for(lambda: all(self.client.echo_batch(f"/node/{n}", 1, 0, timeout=1.0)[0]["ok"]
                               for n in ("h2", "s1")), 30, 0.2, "echo answers", retry_on=(Exception,))
        self.netem = not any("NOT applied" in w for w in self.lab.warnings)
        self.res.write_config(**lab_facts(self.lab), shaped_interfaces=self.shaped,
                              lossy_interfaces=self.lossy, netem_available=self.netem)

    # ------------------------------------------------------------- 1. idle
    def idle(self) -> None:
        path = ["h1", "r1", "r2", "r3", "h2"]
        res = self.client.echo_batch("/node/h2", 100 if not self.a.quick else 50, 0.02, timeout=1.0)
        rows, ok_paths = [], 0
        deltas: Dict[str, List[float]] = {}
        for i, r in enumerate(res):
            if not r["ok"]:
                continue
            fw = forward_records(r, self.names)
            if [n for n, _ in fw] == path:
                ok_paths += 1
            for (a, ra), (b, rb) in zip(fw, fw[1:]):
                d = (rb.time_ns - ra.time_ns) / 1e6
                deltas.setdefault(f"{a}->{b}", []).append(d)
                rows.append({"ping": i, "hop": f"{a}->{b}", "delta_ms": d, "queue": rb.queue,
                             "util_permille": rb.util_permille})
            total = len(r["records"])
            rows.append({"ping": i, "hop": "rtt", "delta_ms": r["rtt_ms"], "records": total})
        self.res.write_csv("idle_hops.csv", rows)
        self.idle_deltas = deltas
        ok = [r for r in res if r["ok"]]
        self.head["idle"] = {"pings": len(res), "answered": len(ok),
                             "records_match_path": ok_paths,
                             "records_per_reply": statistics.median(len(r["records"]) for r in ok) if ok else None,
                             "hop_ms_p50": {h: rnd(percentile(v, 50), 3) for h, v in deltas.items()},
                             "rtt_ms_p50": rnd(percentile([r["rtt_ms"] for r in ok], 50), 3)}
        with self.res.figure("telemetry_hops", size=(8, 4)) as (fig, ax):
            keys = list(deltas)
            ax[0][0].boxplot([deltas[k] for k in keys], tick_labels=keys, showfliers=False)
            ax[0][0].set_ylabel("forward hop time (ms)")
            ax[0][0].set_title("idle per-hop times from HOP_RECORD timestamps (h1 -> /node/h2)")
            ax[0][0].grid(alpha=0.3)
        self.p.log(f"idle: {ok_paths}/{len(ok)} replies carry the exact path; hop p50 "
                   + ", ".join(f"{h} {fmt(v, 3)}" for h, v in self.head["idle"]["hop_ms_p50"].items()))

    # -------------------------------------------------------- 2. queueing
    def queueing(self) -> None:
        """Echoes across a shaped link at rising filler loads: the r2 -> s1 hop time the
        telemetry reports, against kernel timestamps and the qdisc's own backlog."""
        rows, backlog_rows, levels = [], [], []
        kernel_all: List[Tuple[float, float, float]] = []   # (level, kernel hop, telemetry hop)
        base: Optional[float] = None
        for f in parse_list(self.a.load_levels):
            level, lrows, lbacklog, lkernel = self._queue_level(f)
            rows += lrows
            backlog_rows += lbacklog
            kernel_all += lkernel
            levels.append(level)
            if f == 0 and level["_meas"]:
                base = statistics.median(level["_meas"])
        base = base if base is not None else 0.0
        errs = self._queue_errors(levels, base)
        self.res.write_csv("queue_pings.csv", rows)
        self.res.write_csv("backlog.csv", backlog_rows)
        self._queue_plot(levels, kernel_all, base)
        for L in levels:
            L.pop("_meas")
            L.pop("_exp")
        sat = [L for L in levels if L["level"] >= 1.0]
        allerr = [t - k for _, k, t in kernel_all]
        self.head["queueing"] = {"idle_hop_ms": rnd(base, 3), "levels": levels,
                                 "kernel_abs_error_ms_p50": rnd(percentile([abs(e) for e in allerr], 50), 4),
                                 "kernel_abs_error_ms_p99": rnd(percentile([abs(e) for e in allerr], 99), 4),
                                 "kernel_error_ms_mean": rnd(sum(allerr) / len(allerr), 4) if allerr else None,
                                 "kernel_matched": len(allerr),
                                 "abs_error_ms_p50_all": rnd(percentile([abs(e) for e in errs], 50), 3),
                                 "saturated_hop_ms_p50": sat[-1]["hop_ms_p50"] if sat else None,
                                 "saturated_truth_queue_ms_p50": sat[-1]["truth_queue_ms_p50"] if sat else None,
                                 "record_queue_max": max((L["record_queue_max"] or 0) for L in levels),
                                 "record_util_permille_max": max((L["record_util_permille_max"] or 0)
                                                                 for L in levels)}

    def _queue_level(self, f: float):
        """One filler level: (summary, per-echo rows, backlog samples, kernel points)."""
        a = self.a
        intf = self.shaped["r2"]
        rate_bps = a.bw * 1e6
        topo = self.lab.topo
        tap_at = {"r2": topo.links_between("r1", "r2")[0].intf_of("r2"), "s1": self.shaped["s1"]}
        taps = {n: KernelTap(self.lab.netns[n], i) for n, i in tap_at.items()}
        filler = Filler(self.lab.netns["r2"], intf, f * rate_bps).start()
        time.sleep(1.0 if f else 0.2)           # let the queue reach its steady state
        sampler = BacklogSampler(self.lab, "r2", intf).start()
        n = max(5, int(a.level_s / a.ping_interval))
        res = self.client.echo_batch("/node/s1", n, a.ping_interval, timeout=1.5)
        scsc = self._scsc_face("r2", intf)
        samples = sampler.stop()
        filler.stop()
        time.sleep(0.3)
        tapped = {n: t.stop() for n, t in taps.items()}
        rows, kernel = [], []
        meas, exp, qf, uf, kerr, khop = [], [], [], [], [], []
        for r in res:
            d = hop_delta_ms(r, self.names, "r2", "s1") if r["ok"] else None
            fw = dict(forward_records(r, self.names)) if r["ok"] else {}
            t_r2 = fw["r2"].time_ns / 1e9 if "r2" in fw else r["t_send_ns"] / 1e9
            s = sampler.at(t_r2)
            q_ms = (s[1] * 8 / rate_bps * 1000) if s else None
            k_r2 = tapped["r2"].get(r.get("echo_id"))
            k_s1 = tapped["s1"].get(r.get("echo_id"))
            k_ms = (k_s1 - k_r2) / 1e6 if k_r2 and k_s1 else None
            if k_ms is not None and d is not None:
                kerr.append(d - k_ms)
                khop.append(k_ms)
                kernel.append((f, k_ms, d))
            rows.append({"level": f, "ok": r["ok"], "hop_ms": d, "kernel_hop_ms": k_ms,
                         "telemetry_minus_kernel_ms": (d - k_ms) if k_ms is not None and d is not None
                         else None,
                         "backlog_bytes": s[1] if s else None,
                         "backlog_packets": s[2] if s else None, "truth_queue_ms": q_ms,
                         "rec_queue": fw["r2"].queue if "r2" in fw else None,
                         "rec_util_permille": fw["r2"].util_permille if "r2" in fw else None,
                         "rtt_ms": r.get("rtt_ms")})
            if d is not None and q_ms is not None:
                meas.append(d)
                exp.append(q_ms)
            if "r2" in fw:
                qf.append(fw["r2"].queue)
                uf.append(fw["r2"].util_permille)
        backlog = [{"level": f, "t": s[0], "backlog_bytes": s[1], "backlog_packets": s[2],
                    "qdisc_dropped": s[3]} for s in samples]
        level = {"level": f, "filler_mbps": rnd(f * a.bw, 2), "pings": len(res),
                 "answered": sum(1 for r in res if r["ok"]),
                 "hop_ms_p50": rnd(percentile(meas, 50), 3),
                 "kernel_hop_ms_p50": rnd(percentile(khop, 50), 3),
                 "kernel_abs_error_ms_p50": rnd(percentile([abs(e) for e in kerr], 50), 3),
                 "kernel_abs_error_ms_p99": rnd(percentile([abs(e) for e in kerr], 99), 3),
                 "kernel_matched": len(kerr),
                 "truth_queue_ms_p50": rnd(percentile(exp, 50), 3),
                 "backlog_bytes_p50": percentile([s[1] for s in samples], 50),
                 "filler_frames_sent": filler.sent, "filler_frames_refused": filler.refused,
                 "record_queue_max": max(qf) if qf else None,
                 "record_util_permille_max": max(uf) if uf else None,
                 "scsc_face": scsc, "_meas": meas, "_exp": exp}
        self.p.log(f"queueing at {f:g}x{a.bw:g} Mbit/s: hop r2->s1 p50 "
                   f"{fmt(level['hop_ms_p50'], 2)} ms (kernel timestamps "
                   f"{fmt(level['kernel_hop_ms_p50'], 2)} ms, |error| p50 "
                   f"{fmt(level['kernel_abs_error_ms_p50'], 3)} ms), qdisc backlog predicts "
                   f"{fmt(level['truth_queue_ms_p50'], 2)} ms of queueing")
        return level, rows, backlog, kernel

    @staticmethod
    def _queue_errors(levels: List[dict], base: float) -> List[float]:
        """Telemetry minus the backlog model (idle hop + backlog / rate), per level and in all."""
        errs = []
        for L in levels:
            e = [m - (base + x) for m, x in zip(L["_meas"], L["_exp"])]
            L["error_ms_p50"] = rnd(percentile(e, 50), 3)
            L["abs_error_ms_p50"] = rnd(percentile([abs(x) for x in e], 50), 3)
            if L["truth_queue_ms_p50"]:
                L["rel_error_p50"] = rnd(percentile([abs(x) for x in e], 50)
                                         / max(1e-9, L["truth_queue_ms_p50"]), 3)
            errs += e
        return errs

    def _queue_plot(self, levels: List[dict], kernel_all, base: float) -> None:
        with self.res.figure("telemetry_queue", ncols=2, size=(12, 5)) as (fig, ax):
            m = 1.0
            for f in sorted({k[0] for k in kernel_all}):
                xs = [k for lv, k, _ in kernel_all if lv == f]
                ys = [t for lv, _, t in kernel_all if lv == f]
                ax[0][0].scatter(xs, ys, s=8, alpha=0.6, label=f"filler {f:g}x rate")
                m = max([m] + xs + ys)
            ax[0][0].plot([0, m], [0, m], ":", color="grey", label="telemetry = kernel")
            ax[0][0].set_xlabel("ground truth: kernel receive time at s1 - at r2 (ms)")
            ax[0][0].set_ylabel("telemetry: r2 -> s1 hop time (ms)")
            ax[0][0].set_title("per echo, against kernel timestamps")
            ax[0][0].legend(fontsize=8)
            ax[0][0].grid(alpha=0.3)
            m = 1.0
            for L in levels:
                xs = [base + x for x in L["_exp"]]
                ax[0][1].scatter(xs, L["_meas"], s=8, alpha=0.6, label=f"filler {L['level']:g}x rate")
                m = max([m] + xs + L["_meas"])
            ax[0][1].plot([0, m], [0, m], ":", color="grey", label="telemetry = model")
            ax[0][1].set_xlabel("model: idle hop time + sampled qdisc backlog x 8 / rate (ms)")
            ax[0][1].set_ylabel("telemetry: r2 -> s1 hop time (ms)")
            ax[0][1].set_title(f"queueing on the {self.a.bw:g} Mbit/s link (tbf backlog)")
            ax[0][1].legend(fontsize=8)
            ax[0][1].grid(alpha=0.3)

    def _scsc_face(self, node: str, intf: str) -> Optional[dict]:
        if self.lab.scsc is None:
            return None
        try:
            t = self.lab.scsc_api("GET", f"/telemetry?node=/node/{node}", timeout=5.0)
            return t["forwarders"][f"/node/{node}"]["faces"].get(intf)
        except Exception:
            return None

    # ------------------------------------------------------- 3. bandwidth
    def bandwidth(self) -> None:
        a = self.a
        size = 1200
        rows, ests = [], []
        for attempt in range(3):
            res = self.client.echo_batch("/node/s1", a.train, 0, size=size, timeout=2.0)
            times = []
            for i, r in enumerate(res):
                fw = dict(forward_records(r, self.names)) if r["ok"] else {}
                if "s1" in fw and "r2" in fw:
                    times.append((i, fw["r2"].time_ns / 1e9, fw["s1"].time_ns / 1e9))
                    rows.append({"train": attempt, "i": i, "t_r2": fw["r2"].time_ns / 1e9,
                                 "t_s1": fw["s1"].time_ns / 1e9})
            # frame on the shaped link: the request as r2 sent it (r2's record included)
            frame = 14 + self._request_len(size, hops=3)
            tail = sorted(times, key=lambda x: x[2])[len(times) // 3:]  # after the tbf bucket
            if len(tail) >= 5:
                span = tail[-1][2] - tail[0][2]
                if span > 0:
                    ests.append((len(tail) - 1) * frame * 8 / span / 1e6)
            time.sleep(0.5)
        self.res.write_csv("train.csv", rows)
        # counters while the egress is full of DMSC traffic: a flood of echoes from threads
        before = face_counts(self.lab, "r2", self.shaped["r2"])
        t0 = time.time()
        stop = time.time() + 3.0

        def flood() -> None:
            while time.time() < stop:
                self.client.echo_batch("/node/s1", 8, 0, size=size, timeout=1.0, telemetry=False)
        ths = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(10)
        after = face_counts(self.lab, "r2", self.shaped["r2"])
        dt = time.time() - t0
        pkts = after["tx"] - before["tx"]
        bytes_l2 = (after["tx_bytes"] - before["tx_bytes"]) + 14 * pkts
        counters_mbps = bytes_l2 * 8 / dt / 1e6
        scsc = self._scsc_face("r2", self.shaped["r2"])
        est = statistics.median(ests) if ests else None
        self.head["bandwidth"] = {
            "truth_mbps": a.bw, "train_estimate_mbps": rnd(est, 3),
            "train_estimates_mbps": [rnd(e, 3) for e in ests],
            "train_error_pct": rnd((est - a.bw) / a.bw * 100, 2) if est else None,
            "counters_mbps": rnd(counters_mbps, 3),
            "counters_error_pct": rnd((counters_mbps - a.bw) / a.bw * 100, 2),
            "scsc_capacity_bps": (scsc or {}).get("capacity_bps"),
            "scsc_tx_bps": (scsc or {}).get("tx_bps"),
            "method": "train: receive-time spacing at s1 of the back-to-back echoes after the first "
                      "third (the tbf burst); counters: r2's face tx bytes (+14 B Ethernet header "
                      "per frame) during a 3 s flood of echoes"}
        with self.res.figure("telemetry_bw", size=(7, 4)) as (fig, ax):
            for k in sorted({r["train"] for r in rows}):
                pts = sorted((r["t_s1"] for r in rows if r["train"] == k))
                if pts:
                    ax[0][0].plot([(t - pts[0]) * 1000 for t in pts], range(len(pts)), ".-",
                                  label=f"train {k + 1}")
            ax[0][0].set_xlabel("receive time at s1 (ms from the first echo)")
            ax[0][0].set_ylabel("echo index")
            ax[0][0].set_title(f"packet train over the {a.bw:g} Mbit/s link: estimate "
                               f"{fmt(est, 2)} Mbit/s")
            ax[0][0].legend()
            ax[0][0].grid(alpha=0.3)
        self.p.log(f"bandwidth: truth {a.bw:g} Mbit/s, train {fmt(est, 2)}, counters "
                   f"{fmt(counters_mbps, 2)} Mbit/s")

    def _request_len(self, size: int, hops: int) -> int:
        dst, src = Name.parse("/node/s1"), self.client.name
        return wire.HEADER_LEN + len(dst.wire) + len(src.wire) + hops * HOP_TLV_BYTES + \
            EchoBody(0, 0, b"\0" * size).encode().__len__()

    # ------------------------------------------------------------ 4. loss
    def loss(self) -> None:
        a = self.a
        nft0 = {n: nft_drops(self.lab, n) for n in self.lossy}
        c0 = {n: face_counts(self.lab, n, self.lossy[n]) for n in self.lossy}
        res = self.client.echo_batch("/node/l1", a.loss_pings, 0.01, timeout=1.0, telemetry=False)
        time.sleep(1.0)
        nft1 = {n: nft_drops(self.lab, n) for n in self.lossy}
        c1 = {n: face_counts(self.lab, n, self.lossy[n]) for n in self.lossy}
        got = sum(1 for r in res if r["ok"])
        e2e = 1 - (got / len(res)) ** 0.5 if res else None
        d = {n: {k: c1[n][k] - c0[n][k] for k in ("tx", "rx")} for n in self.lossy}
        drops = {n: sum(nft1[n].values()) - sum(nft0[n].values()) for n in self.lossy}
        fwd = 1 - d["l1"]["rx"] / d["r3"]["tx"] if d["r3"]["tx"] else None   # r3 -> l1
        rev = 1 - d["r3"]["rx"] / d["l1"]["tx"] if d["l1"]["tx"] else None   # l1 -> r3
        truth_fwd = drops["l1"] / d["r3"]["tx"] if d["r3"]["tx"] else None
        truth_rev = drops["r3"] / d["l1"]["tx"] if d["l1"]["tx"] else None
        out = {"configured_pct": a.loss, "echoes": len(res), "answered": got,
               "e2e_estimate_pct": rnd(e2e * 100, 3) if e2e is not None else None,
               "counters_r3_to_l1_pct": rnd(fwd * 100, 3) if fwd is not None else None,
               "counters_l1_to_r3_pct": rnd(rev * 100, 3) if rev is not None else None,
               "nft_r3_to_l1_pct": rnd(truth_fwd * 100, 3) if truth_fwd is not None else None,
               "nft_l1_to_r3_pct": rnd(truth_rev * 100, 3) if truth_rev is not None else None,
               "nft_drops": drops, "face_deltas": d,
               "method": "e2e: 1 - sqrt(answered/sent) of echoes crossing the link both ways; "
                         "counters: frames one end's forwarder sent vs the other end's received; "
                         "ground truth: the nftables rule's drop counter at the receiving end"}
        self.res.write_json("loss.json", out)
        self.head["loss"] = out
        with self.res.figure("telemetry_loss", size=(7, 4)) as (fig, ax):
            labels = ["configured", "nft r3->l1", "nft l1->r3", "counters r3->l1", "counters l1->r3",
                      "echo end to end"]
            vals = [a.loss, out["nft_r3_to_l1_pct"], out["nft_l1_to_r3_pct"],
                    out["counters_r3_to_l1_pct"], out["counters_l1_to_r3_pct"], out["e2e_estimate_pct"]]
            ax[0][0].bar(labels, [v or 0 for v in vals],
                         color=["grey", "black", "black", "tab:blue", "tab:blue", "tab:purple"])
            ax[0][0].set_ylabel("loss (%)")
            ax[0][0].tick_params(axis="x", rotation=25)
            ax[0][0].set_title("loss on r3-l1: ground truth and estimates")
        self.p.log(f"loss: configured {a.loss:g}%, nft {out['nft_r3_to_l1_pct']}/{out['nft_l1_to_r3_pct']}%, "
                   f"counters {out['counters_r3_to_l1_pct']}/{out['counters_l1_to_r3_pct']}%, "
                   f"end to end {out['e2e_estimate_pct']}%")

    # ----------------------------------------------------------- 5. delay
    def delay(self) -> None:
        a = self.a
        warn = [w for w in self.lab.warnings if "delay" in w]
        r1r2 = self.idle_deltas.get("r1->r2", [])
        res = self.client.echo_batch("/node/s1", 60 if not a.quick else 30, 0.02, timeout=1.0)
        r2s1 = [d for d in (hop_delta_ms(r, self.names, "r2", "s1") for r in res if r["ok"])
                if d is not None]
        diff = (percentile(r2s1, 50) - percentile(r1r2, 50)) if r1r2 and r2s1 else None
        out = {"configured_ms": a.delay, "netem_available": self.netem,
               "r2_s1_hop_ms_p50": rnd(percentile(r2s1, 50), 3),
               "r1_r2_hop_ms_p50": rnd(percentile(r1r2, 50), 3),
               "difference_ms": rnd(diff, 3), "lab_warnings": warn}
        if not self.netem:
            out["measured"] = False
            out["note"] = (f"NOT MEASURED: this kernel has no netem (sch_netem), so the {a.delay:g} ms "
                           "delay asked for r2-s1 was not applied (the lab warned, see lab_warnings); "
                           "the difference shown is what the idle hops differ by without it")
        else:
            out["measured"] = True
            out["error_ms"] = rnd(diff - a.delay, 3) if diff is not None else None
        self.head["delay"] = out
        self.p.log("delay: " + (out.get("note") or f"measured {fmt(diff, 2)} ms for {a.delay:g} ms"))

    # ------------------------------------------------------------ 6. cost
    def cost(self) -> None:
        a = self.a
        rows = []

        def run(tele: bool) -> dict:
            stop = time.time() + a.cost_s
            counts, rtts, lock = [0], [], threading.Lock()

            def worker() -> None:
                n, mine = 0, []
                while time.time() < stop:
                    try:
                        r = self.client.ping("/node/h2", timeout=1.0, telemetry=tele)
                        n += 1
                        mine.append(r["rtt_ms"])
                    except Exception:
                        pass
                with lock:
                    counts[0] += n
                    rtts.extend(mine)
            pids = [self.lab.fwd[n].pid for n in ("h1", "r1", "r2", "r3", "h2")]
            cpu0 = sum(proc_cpu_s(p) for p in pids)
            t0 = time.time()
            ths = [threading.Thread(target=worker, daemon=True) for _ in range(a.cost_threads)]
            for th in ths:
                th.start()
            for th in ths:
                th.join(a.cost_s + 5)
            dt = time.time() - t0
            cpu = sum(proc_cpu_s(p) for p in pids) - cpu0
            return {"telemetry": tele, "echo_per_s": counts[0] / dt, "rtt_ms_p50": percentile(rtts, 50),
                    "rtt_ms_p99": percentile(rtts, 99), "echoes": counts[0],
                    "forwarder_cpu_s": round(cpu, 3),
                    "forwarder_cpu_us_per_echo": round(cpu / counts[0] * 1e6, 1) if counts[0] else None}
        order = []
        for i in range(a.cost_rounds):
            order += [True, False] if i % 2 == 0 else [False, True]
        for tele in order:
            r = run(tele)
            r["round"] = len(rows) // 2
            rows.append(r)
            self.p.log(f"cost: telemetry {'on ' if tele else 'off'}: {r['echo_per_s']:.0f} echoes/s, "
                       f"rtt p50 {fmt(r['rtt_ms_p50'], 2)} ms")
        self.res.write_csv("cost.csv", rows)
        on = [r for r in rows if r["telemetry"]]
        off = [r for r in rows if not r["telemetry"]]
        on_rate = statistics.median(r["echo_per_s"] for r in on)
        off_rate = statistics.median(r["echo_per_s"] for r in off)
        one = self.client.echo_batch("/node/h2", 1, 0, timeout=1.0)[0]
        plain = self.client.echo_batch("/node/h2", 1, 0, timeout=1.0, telemetry=False)[0]
        self.head["cost"] = {
            "echo_per_s_on": rnd(on_rate, 1), "echo_per_s_off": rnd(off_rate, 1),
            "throughput_cost_pct": rnd((off_rate - on_rate) / off_rate * 100, 2) if off_rate else None,
            "rtt_ms_p50_on": rnd(statistics.median(r["rtt_ms_p50"] for r in on), 3),
            "rtt_ms_p50_off": rnd(statistics.median(r["rtt_ms_p50"] for r in off), 3),
            "forwarder_cpu_us_per_echo_on": rnd(statistics.median(
                r["forwarder_cpu_us_per_echo"] or 0 for r in on), 1),
            "forwarder_cpu_us_per_echo_off": rnd(statistics.median(
                r["forwarder_cpu_us_per_echo"] or 0 for r in off), 1),
            "bytes_per_hop": HOP_TLV_BYTES,
            "reply_bytes_on": one.get("reply_bytes"), "reply_bytes_off": plain.get("reply_bytes"),
            "records_per_reply": len(one.get("records", [])), "threads": a.cost_threads,
            "rounds": a.cost_rounds, "seconds_per_run": a.cost_s}
        with self.res.figure("telemetry_cost", ncols=2, size=(10, 4)) as (fig, ax):
            for r in rows:
                ax[0][0].bar(f"r{r['round'] + 1} {'on' if r['telemetry'] else 'off'}",
                             r["echo_per_s"], color="tab:orange" if r["telemetry"] else "tab:blue")
            ax[0][0].set_ylabel("echoes per second (closed loop)")
            ax[0][0].set_title("throughput, TELEMETRY on / off")
            ax[0][0].tick_params(axis="x", rotation=30)
            ax[0][1].bar(["on", "off"], [self.head["cost"]["rtt_ms_p50_on"],
                                         self.head["cost"]["rtt_ms_p50_off"]],
                         color=["tab:orange", "tab:blue"])
            ax[0][1].set_ylabel("round trip p50 (ms)")
            ax[0][1].set_title("h1 -> /node/h2 (4 forwarders + responder)")

    # ------------------------------------------------------------- run
    def run(self) -> None:
        self.p.total = 7
        self.p.step("bringing up the telemetry line (7 forwarders)")
        self.setup()
        self.p.step("idle per-hop telemetry")
        self.idle()
        self.p.step("queueing against the qdisc backlog")
        self.queueing()
        self.p.step("bandwidth")
        self.bandwidth()
        self.p.step("loss")
        self.loss()
        self.p.step("delay")
        self.delay()
        self.p.step("cost of telemetry")
        self.cost()

    def teardown(self) -> None:
        if self.client is not None:
            try:
                self.client.close(drain=0.2)
            except Exception:
                pass
        super().teardown()

    def report(self, error: Optional[str]) -> None:
        a, h = self.a, self.head
        if error:
            h["error"] = error
        q, bw, lo, dl, c, idle = (h.get(k, {}) for k in ("queueing", "bandwidth", "loss", "delay",
                                                          "cost", "idle"))
        flat = {"bw_truth_mbps": a.bw, "bw_train_estimate_mbps": bw.get("train_estimate_mbps"),
                "bw_counters_mbps": bw.get("counters_mbps"),
                "queue_abs_error_ms_p50": q.get("abs_error_ms_p50_all"),
                "hop_time_abs_error_ms_p50": q.get("kernel_abs_error_ms_p50"),
                "hop_time_abs_error_ms_p99": q.get("kernel_abs_error_ms_p99"),
                "loss_truth_pct": a.loss, "loss_e2e_estimate_pct": lo.get("e2e_estimate_pct"),
                "loss_counters_pct": lo.get("counters_r3_to_l1_pct"),
                "delay_measured": dl.get("measured"), "netem_available": dl.get("netem_available"),
                "telemetry_throughput_cost_pct": c.get("throughput_cost_pct"),
                "echo_per_s_on": c.get("echo_per_s_on"), "echo_per_s_off": c.get("echo_per_s_off"),
                "record_util_permille_max": q.get("record_util_permille_max"),
                "record_queue_max": q.get("record_queue_max")}
        md = md_head("Telemetry experiment", a.quick, error)
        md += ["Line h1 - r1 - r2 - r3 - h2 with r2 - s1 shaped to "
               f"{a.bw:g} Mbit/s (tbf{', delay ' + format(a.delay, 'g') + ' ms' if a.delay else ''}) and "
               f"r3 - l1 losing {a.loss:g}% per direction (nftables). "
               + (f"Lab run `{self.lab.run_dir}`." if self.lab else ""), ""]
        if idle:
            md += [f"**Per-hop records**: {idle.get('records_match_path')} of {idle.get('answered')} "
                   f"replies named exactly the path h1, r1, r2, r3, h2 ({idle.get('records_per_reply')} "
                   "records per reply, out and back). Idle hop times p50 (ms): "
                   + ", ".join(f"{k} {v}" for k, v in (idle.get("hop_ms_p50") or {}).items()) + ".", ""]
        if q:
            md += ["**Queueing** on the shaped link: the r2 -> s1 hop time from the HOP_RECORD timestamps "
                   "against the kernel's receive timestamps of the same echo at r2 and at s1 (ground "
                   "truth), and against the queueing the tbf backlog predicts (idle hop + backlog x 8 / "
                   "rate, backlog sampled every 50 ms):", "",
                   md_table([[f"{L['level']:g}", fmt(L["filler_mbps"], 1), fmt(L["hop_ms_p50"], 2),
                              fmt(L["kernel_hop_ms_p50"], 2), fmt(L["kernel_abs_error_ms_p50"], 3),
                              fmt(L["kernel_abs_error_ms_p99"], 3),
                              fmt((q.get("idle_hop_ms") or 0) + (L["truth_queue_ms_p50"] or 0), 2),
                              f"{L['answered']}/{L['pings']}",
                              L["record_queue_max"], L["record_util_permille_max"],
                              (L.get("scsc_face") or {}).get("queued")] for L in q["levels"]],
                            ["filler x rate", "filler Mbit/s", "telemetry hop ms p50",
                             "kernel hop ms p50", "|telemetry - kernel| ms p50", "p99",
                             "backlog model ms p50", "answered", "HOP queue max",
                             "HOP util max (per mille)", "SCSC face queue (pkts)"]), "",
                   f"Over all {q.get('kernel_matched')} echoes the telemetry hop time is within "
                   f"{q.get('kernel_abs_error_ms_p50')} ms (p50) / {q.get('kernel_abs_error_ms_p99')} ms "
                   f"(p99) of the kernel's (mean error {q.get('kernel_error_ms_mean')} ms: each forwarder "
                   "stamps a packet when its loop gets to it, not when the kernel received it). The "
                   "backlog model is coarser: the qdisc queue changes between 50 ms samples.", ""]
            if not q.get("record_util_permille_max"):
                md += ["The HOP_RECORD utilisation field stayed 0 even on a saturated link: the forwarder "
                       "does not fill it in (FaceInfo.util_permille is never updated). Its queue field "
                       "counts only the forwarder's own queue, not the qdisc's, so it stays near 0 while "
                       "the kernel queue is full; the timestamps do show the queueing.", ""]
        if bw:
            md += [f"**Bandwidth**: ground truth {a.bw:g} Mbit/s; packet-train estimate from the "
                   f"telemetry timestamps {fmt(bw.get('train_estimate_mbps'), 2)} Mbit/s "
                   f"({fmt(bw.get('train_error_pct'), 1)}%); forwarder byte counters while saturated "
                   f"{fmt(bw.get('counters_mbps'), 2)} Mbit/s ({fmt(bw.get('counters_error_pct'), 1)}%); "
                   f"the SCSC's capacity for that face: {bw.get('scsc_capacity_bps')} bit/s.", ""]
        if lo:
            md += [f"**Loss**: configured {a.loss:g}% per direction; nftables drop counters "
                   f"{lo.get('nft_r3_to_l1_pct')}% (r3->l1) / {lo.get('nft_l1_to_r3_pct')}% (l1->r3); "
                   f"forwarder face counters {lo.get('counters_r3_to_l1_pct')}% / "
                   f"{lo.get('counters_l1_to_r3_pct')}%; end-to-end echo estimate "
                   f"{lo.get('e2e_estimate_pct')}% ({lo.get('answered')}/{lo.get('echoes')} answered).", ""]
        if dl:
            md += ["**Delay**: " + (dl.get("note") or f"configured {a.delay:g} ms, measured "
                                    f"{fmt(dl.get('difference_ms'), 2)} ms (r2->s1 minus r1->r2 hop)."), ""]
        if c:
            md += [f"**Cost**: {c.get('threads')} closed-loop pingers, {c.get('rounds')} alternating rounds "
                   f"of {c.get('seconds_per_run'):g} s: {c.get('echo_per_s_off')} echoes/s without "
                   f"TELEMETRY, {c.get('echo_per_s_on')} with it ({fmt(c.get('throughput_cost_pct'), 1)}% "
                   f"less); RTT p50 {c.get('rtt_ms_p50_off')} -> {c.get('rtt_ms_p50_on')} ms; CPU of the "
                   f"five forwarders on the path per echo {c.get('forwarder_cpu_us_per_echo_off')} -> "
                   f"{c.get('forwarder_cpu_us_per_echo_on')} us; "
                   f"{c.get('bytes_per_hop')} bytes per hop per packet (reply "
                   f"{c.get('reply_bytes_off')} -> {c.get('reply_bytes_on')} bytes with "
                   f"{c.get('records_per_reply')} records).", ""]
        md.append("Plots: `telemetry_hops.png`, `telemetry_queue.png`, `telemetry_bw.png`, "
                  "`telemetry_loss.png`, `telemetry_cost.png`.")
        self.res.summary({**flat, **h}, "\n".join(md))


def main(argv=None) -> int:
    return run_main(NAME, __doc__, add_args, DEFAULTS, QUICK, TelemetryExperiment, argv)


if __name__ == "__main__":
    sys.exit(main())
