#!/usr/bin/env python3
"""DMSC measured against the routing peer users would pick: FRR (zebra + ospfd + bfdd).

One invocation builds the k-ary fat tree of bench_routing.py (k=4: 36 nodes,
48 links, cost 1) twice, once per mode, one after the other:

  dmsc  one forwarder per node, link-state name routing, its default timers
        (bench_routing.py's own functions do the bring-up, the control packet
        count and the cut);
  frr   one FRR instance per node (topologies/frr.py): OSPF point-to-point on
        /31 links, a /32 loopback per node, BFD, the fastest sensible timers.

The same link is cut in both (e00's interface to a01, `ip link set down` on
e00's end).  Everything is timestamped with time.time() (one clock); a
netlink monitor (topologies/rtmon.py, a single-threaded child process at
SCHED_FIFO, so its receipt times never wait for this process's GIL) reads
every namespace's link, route and nexthop notifications and stamps each as it
reads it.

Per mode:
  * failover_ms: cut to the adjacent node (e00) forwarding around the cut.
    DMSC: the forwarder's own timestamp of the face going down (netlink).
    FRR: the netlink notification that e00's kernel route to the probe
    stream's destination no longer uses the cut interface.  Both measured from
    t_cut (taken just before `ip netns exec ... ip link set down` is spawned,
    as bench_routing does) and, as *_from_link_event, from the kernel's
    link-down notification of that interface (the true instant of the cut).
  * convergence_ms: cut to the last FIB change anywhere.  DMSC: the latest
    routing last_change over all nodes (node timestamps).  FRR: the latest
    route or nexthop notification in any namespace's main table, once the
    network has been quiet for 2 s.
  * interruption_ms: the longest gap between answered requests of a stream
    whose path crosses the cut link.  DMSC: bench_routing's call stream.
    FRR: UDP probes every ~1 ms from h000's loopback to a remote host's
    loopback chosen so that e00 hashes the flow onto the cut link (checked
    with `ip route get`), echoed back by a socket in that host's namespace;
    the gap is between receipt times of consecutive echoes.
  * control_pps_per_node: control packets sent per node per second at rest.
    DMSC: hellos + LSAs + ACKs from the forwarders' counters.  FRR: nftables
    counters on each namespace's output hook for IP protocol 89 (OSPF) and
    UDP to 3784/3785/4784 (BFD), read before and after the window.
  * cpu_s_per_node_rest / _convergence: CPU seconds (utime + stime from
    /proc/<pid>/stat) per node, summed over the node's processes (DMSC: the
    forwarder; FRR: zebra + ospfd + bfdd), over a fixed rest window and over
    the fixed window starting at the cut; also given per wall second.
  * rss_mb_per_node: VmRSS summed the same way, mean over nodes, at rest;
    the peak during the window after the cut as *_convergence.
  * bringup_s: from launching the daemons (namespaces and links exist) to
    converged.  DMSC: every node's LSDB digest agrees and each FIB holds every
    node (polled every 0.2 s).  FRR: every node has a kernel route to every
    other node's loopback, the time of the notification that installed the
    last missing one (also given as polled with `ip route`).

Writes bench/results/peers.json (peers-k<k>.json for another --k).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_routing as br  # noqa: E402
from forwarder.config import RoutingConfig  # noqa: E402
from topologies.frr import FrrNetwork, OspfTimers  # noqa: E402
from forwarder.runtime.events import EVENTS_FILE, read_events  # noqa: E402
from topologies.fwd_net import intf_between  # noqa: E402
from topologies.measure import machine_facts, proc_cpu_s, proc_mem_kb, wait_for  # noqa: E402
from topologies.netns import NetnsNetwork  # noqa: E402
from topologies.proc import run  # noqa: E402
from topologies.nsenter import socket_in  # noqa: E402
from topologies.records import new_run_dir  # noqa: E402
from topologies.records import Records  # noqa: E402
from topologies.rtmon import MonitorProcess  # noqa: E402

RESULTS = REPO / "bench" / "results"
EDGE, CUT_PEER = "e00", "a01"
PROBE_PORT = 47000
NFT_TABLE = "bench_ctl"


# -- per-process resources ------------------------------------------------------------
def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds, resident MB) of one process; (0, 0) if it is gone."""
    return proc_cpu_s(pid), proc_mem_kb(pid)["rss_kb"] / 1024.0


def node_usage(pids: Dict[str, List[int]]) -> Dict[str, tuple[float, float]]:
    """node -> (CPU seconds, RSS MB) summed over its processes."""
    out = {}
    for node, plist in pids.items():
        cpu = rss = 0.0
        for p in plist:
            c, r = proc_cpu_rss(p)
            cpu, rss = cpu + c, rss + r
        out[node] = (cpu, rss)
    return out


def cpu_window(pids: Dict[str, List[int]], seconds: float) -> dict:
    """CPU seconds per node over ``seconds`` of doing nothing else, and RSS at its end."""
    u0, t0 = node_usage(pids), time.monotonic()
    time.sleep(seconds)
    u1, t1 = node_usage(pids), time.monotonic()
    n = len(pids)
    cpu = sum(u1[k][0] - u0[k][0] for k in pids) / n
    return {"window_s": round(t1 - t0, 2), "cpu_s_per_node": round(cpu, 4),
            "cpu_s_per_node_per_s": round(cpu / (t1 - t0), 5),
            "rss_mb_per_node": round(sum(u1[k][1] for k in pids) / n, 2)}


class CutWindowSampler:
    """From start(): CPU over a fixed window and the peak of the mean RSS per node, sampled."""

    def __init__(self, pids: Dict[str, List[int]], seconds: float, interval: float = 0.1) -> None:
        self.pids, self.seconds, self.interval = pids, seconds, interval
        self.result: dict = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        u0, t0 = node_usage(self.pids), time.monotonic()
        n, peak = len(self.pids), 0.0
        while time.monotonic() - t0 < self.seconds:
            time.sleep(self.interval)
            u = node_usage(self.pids)
            peak = max(peak, sum(v[1] for v in u.values()) / n)
        t1 = time.monotonic()
        cpu = sum(u[k][0] - u0[k][0] for k in self.pids) / n
        self.result = {"window_s": round(t1 - t0, 2), "cpu_s_per_node": round(cpu, 4),
                       "cpu_s_per_node_per_s": round(cpu / (t1 - t0), 5),
                       "rss_mb_per_node_peak": round(peak, 2)}

    def join(self) -> dict:
        self._thread.join(self.seconds + 30)
        return self.result


# -- the UDP probe stream (FRR mode) -----------------------------------------------------
class UdpProbes:
    """Probes every ``interval`` s from (src_ns, src_ip) to (dst_ns, dst_ip), echoed back there.

    All three threads live in this process, so send and receive times share a clock.
    """

    def __init__(self, src_ns: str, src_ip: str, dst_ns: str, dst_ip: str,
                 interval: float = 0.001) -> None:
        self.interval = interval
        self.echo = socket_in(dst_ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.echo.bind((dst_ip, PROBE_PORT))
        self.echo.settimeout(0.2)
        self.tx = socket_in(src_ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind((src_ip, 0))
        self.tx.connect((dst_ip, PROBE_PORT))
        self.tx.settimeout(0.2)
        self.sent = 0
        self.send_times: List[float] = []  # index: seq
        self.answers: List[tuple[float, int]] = []  # (receipt time, seq)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True)
                         for f in (self._echo, self._recv, self._send)]

    def start(self) -> "UdpProbes":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.echo.close()
        self.tx.close()

    def losses(self, t_from: float) -> tuple[int, Optional[float]]:
        """Probes sent from ``t_from`` on that were never answered, and the longest run of
        them as the span between the send times of the answered probes around it."""
        answered = {seq for _, seq in self.answers}
        last = len(self.send_times) - 1
        while last >= 0 and last not in answered:  # the tail may still be in flight
            last -= 1
        lost, span, prev = 0, None, None
        for seq in range(last + 1):
            if seq in answered:
                if prev is not None and seq - prev > 1 and self.send_times[seq] >= t_from:
                    lost += seq - prev - 1
                    gap = self.send_times[seq] - self.send_times[prev]
                    span = gap if span is None else max(span, gap)
                prev = seq
        return lost, span

    def _echo(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.echo.recvfrom(64)
                self.echo.sendto(data, addr)
            except (socket.timeout, OSError):
                continue

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.tx.recv(64)
            except (socket.timeout, ConnectionRefusedError):
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self.answers.append((time.time(), struct.unpack_from("!I", data)[0]))

    def _send(self) -> None:
        nxt = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            now = time.time()
            self.send_times.append(now)
            try:
                self.tx.send(struct.pack("!Id", seq, now))
            except OSError:  # e.g. no route for a moment: a lost probe
                pass
            seq += 1
            self.sent = seq
            nxt += self.interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()


def longest_gap(times: List[float], t_cut: float, before: float = 1.0, after: float = 3.0):
    """Longest gap between consecutive times that ends at or after t_cut (s), and the
    longest one in the ``before`` seconds before the cut (the noise floor)."""
    around = sorted(t for t in times if t_cut - before <= t <= t_cut + after)
    gaps_after = [b - a for a, b in zip(around, around[1:]) if b >= t_cut]
    gaps_before = [b - a for a, b in zip(around, around[1:]) if b < t_cut]
    return (max(gaps_after) if gaps_after else None, max(gaps_before) if gaps_before else None)


# -- nftables control-packet counters (FRR mode) ----------------------------------------
NFT_RULES = f"""
table inet {NFT_TABLE} {{
    counter ospf {{ }}
    counter bfd {{ }}
    chain out {{
        type filter hook output priority 0; policy accept;
        meta l4proto 89 counter name ospf
        udp dport {{ 3784, 3785, 4784 }} counter name bfd
    }}
}}
"""


def nft_install(net: NetnsNetwork, nodes) -> None:
    for n in nodes:
        run(["nft", "-f", "-"], netns=net.node(n).netns, input=NFT_RULES)


def nft_counts(net: NetnsNetwork, nodes) -> Dict[str, int]:
    total = {"ospf": 0, "bfd": 0}
    for n in nodes:
        out = net.node(n).cmd(["nft", "-j", "list", "counters", "table", "inet", NFT_TABLE]).stdout
        for item in json.loads(out)["nftables"]:
            c = item.get("counter")
            if c and c.get("name") in total:
                total[c["name"]] += c["packets"]
    return total


# -- shared ---------------------------------------------------------------------------------
def link_event_time(mon: MonitorProcess, node: str, intf: str, t_from: float,
                    pred: Callable) -> Optional[float]:
    for e in mon.link_events:
        if e.node == node and e.intf == intf and e.time >= t_from - 0.5 and pred(e):
            return e.time
    return None


def ms(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x * 1000, 2)


def limits(run_dir: Optional[str]) -> dict:
    """What a failed mode ran into: load, memory, adjacencies lost (from the logs)."""
    out: dict = {"loadavg": os.getloadavg()}
    try:
        with open("/proc/meminfo") as f:
            mem = {l.split(":")[0]: int(l.split()[1]) for l in f}
        out["mem_available_gb"] = round(mem["MemAvailable"] / 2**20, 1)
        out["mem_total_gb"] = round(mem["MemTotal"] / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    if run_dir:
        run = Path(run_dir)
        out["ospf_adjacency_deletions_logged"] = sum(
            p.read_text(errors="replace").count("-> Deleted") for p in run.glob("*/frr-ospfd.log"))
        out["dmsc_adjacency_downs"] = sum(
            len(read_events(p, kind="adjacency_down")) for p in run.glob(f"*/{EVENTS_FILE}"))
    return out


def _fat_tree(net: NetnsNetwork, k: int, res: dict):
    """The fat tree's namespaces and links on `net`; its run folder and build time into res."""
    res["run_dir"] = str(net.run_dir)
    t0 = time.monotonic()
    nodes, links, hosts = br.build_fat_tree(net, k)
    res["namespaces_s"] = round(time.monotonic() - t0, 2)
    return nodes, links, hosts


# -- DMSC mode --------------------------------------------------------------------------------
def run_dmsc(k: int, rest_s: float, window_s: float, res: dict, dataplane: str = "auto") -> dict:
    with NetnsNetwork(new_run_dir("bench-peers-dmsc")) as net:
        nodes, links, hosts = _fat_tree(net, k, res)
        mon = MonitorProcess({n: net.node(n).netns for n in nodes}, Records(net.run_dir))
        try:
            wait_for(mon.synced, 30, what="netlink dumps")
            t_launch = time.monotonic()
            fn = br.start_forwarders(net, nodes, hosts, dataplane)
            t_started = time.monotonic()
            res["dataplane"] = fn[hosts[0]].status()["dataplane"]["reason"]
            br.wait_converged(fn, nodes)
            t_conv = time.monotonic()
            res["start_s"] = round(t_started - t_launch, 2)
            res["bringup_s"] = round(t_conv - t_launch, 2)
            print(f"dmsc: {len(nodes)} nodes up and converged in {res['bringup_s']} s", flush=True)
            pids = {n: [fn[n].proc.pid] for n in nodes}
            time.sleep(2.0)
            res["rest"] = cpu_window(pids, rest_s)
            res["control_pps_per_node"] = br.measure_control_pps(fn, nodes, rest_s)
            sampler = CutWindowSampler(pids, window_s)
            cut = br.cut_and_measure(net, fn, nodes, links, hosts, before_cut=sampler.start)
            res["cut_window"] = sampler.join()
            res.update(cut)
            mon.refresh()
            cut_intf = cut["cut_link"].split("(")[1].rstrip(")")
            t_cut_cmd = cut["cut_time"]
            t_link = link_event_time(mon, EDGE, cut_intf, t_cut_cmd, lambda e: not e.up)
            peer = cut["cut_link"].split()[0].split("-")[1]
            peer_intf = intf_between(net, peer, EDGE)
            t_carrier = link_event_time(mon, peer, peer_intf, t_cut_cmd, lambda e: not e.carrier)
            res["cut_link_event_ms"] = ms(t_link - t_cut_cmd) if t_link else None
            res["failover_ms_from_link_event"] = (
                round(cut["failover_ms"] - (t_link - t_cut_cmd) * 1000, 2) if t_link else None)
            res["convergence_ms_from_link_event"] = (
                round(cut["convergence_ms"] - (t_link - t_cut_cmd) * 1000, 1) if t_link else None)
            res["peer_carrier_loss_notified_ms"] = ms(t_carrier - t_cut_cmd) if t_carrier else None
        finally:
            mon.stop()
    return res


# -- FRR mode ---------------------------------------------------------------------------------
def pick_destination(net: NetnsNetwork, frr: FrrNetwork, src: str, hosts: List[str],
                     cut_intf: str) -> tuple[str, bool]:
    """A host in another pod whose flow from ``src`` leaves e00 over ``cut_intf``."""
    src_ip = frr.loopbacks[src]
    iif = intf_between(net, EDGE, src)
    candidates = [h for h in reversed(hosts) if h[:2] != src[:2]]
    for h in candidates:
        out = net.node(EDGE).cmd(["ip", "-j", "route", "get", frr.loopbacks[h], "from", src_ip,
                                  "iif", iif]).stdout
        if json.loads(out)[0].get("dev") == cut_intf:
            return h, True
    return candidates[0], False


def run_frr(k: int, rest_s: float, window_s: float, timers: OspfTimers,
            ignore_linkdown: bool, res: dict) -> dict:
    with NetnsNetwork(new_run_dir("bench-peers-frr")) as net:
        nodes, links, hosts = _fat_tree(net, k, res)
        frr = FrrNetwork(net, timers=timers, ignore_linkdown=ignore_linkdown)
        mon = MonitorProcess({n: net.node(n).netns for n in nodes}, Records(net.run_dir))
        try:
            wait_for(mon.synced, 30, what="netlink dumps")
            t1 = time.monotonic()
            frr.prepare()
            nft_install(net, nodes)
            res["config_checked_s"] = round(time.monotonic() - t1, 2)
            t_launch_wall, t_launch = time.time(), time.monotonic()
            frr.launch_all()
            res["start_s"] = round(time.monotonic() - t_launch, 2)
            # all_reach is O(nodes^2) in the monitor (a real-time process): poll it gently at k=8
            last = wait_for(lambda: mon.all_reach(frr.loopbacks), 300,
                            interval=0.05 if len(nodes) <= 64 else 0.5,
                            what="every node routing to every loopback")
            res["bringup_s"] = round(last - t_launch_wall, 3)
            polled = wait_for(lambda: frr.converged() and time.monotonic(), 60, interval=0.2,
                              what="ip route to agree")
            res["bringup_s_polled_ip_route"] = round(polled - t_launch, 2)
            print(f"frr: {len(nodes)} nodes up and converged in {res['bringup_s']} s", flush=True)
            pids = {n: list(frr[n].pids().values()) for n in nodes}
            time.sleep(2.0)
            c0, s0 = nft_counts(net, nodes), time.monotonic()
            res["rest"] = cpu_window(pids, rest_s)
            c1, s1 = nft_counts(net, nodes), time.monotonic()
            per = {p: (c1[p] - c0[p]) / (s1 - s0) / len(nodes) for p in c0}
            res["control_pps_per_node"] = round(sum(per.values()), 1)
            res["control_pps_per_node_by_protocol"] = {p: round(v, 1) for p, v in per.items()}

            # the stream and the cut
            cut_intf = intf_between(net, EDGE, CUT_PEER)
            peer_intf = intf_between(net, CUT_PEER, EDGE)
            src = hosts[0]
            dst, crosses = pick_destination(net, frr, src, hosts, cut_intf)
            res["stream"] = {"src": f"{src} {frr.loopbacks[src]}", "dst": f"{dst} {frr.loopbacks[dst]}",
                             "crosses_cut_link_at_e00": crosses}
            dst_lo, src_lo = frr.loopbacks[dst], frr.loopbacks[src]
            mon.watch(EDGE, dst_lo)
            mon.watch(CUT_PEER, src_lo)
            probes = UdpProbes(net.node(src).netns, src_lo, net.node(dst).netns, dst_lo).start()
            try:
                wait_for(lambda: len(probes.answers) > 500, 20, what="the probe stream")
                sampler = CutWindowSampler(pids, window_s)
                sampler.start()
                t_cut = time.time()
                net.node(EDGE).cmd(["ip", "link", "set", "dev", cut_intf, "down"])
                # quiet: no FIB change anywhere for 2 s and every loopback reachable again
                wait_for(lambda: time.time() - max(mon.last_fib_change(), t_cut) > 2.0
                         and mon.all_reach(frr.loopbacks) is not None, 60, interval=0.05,
                         what="re-convergence")
                res["cut_window"] = sampler.join()
                time.sleep(0.2)
            finally:
                probes.stop()
            mon.refresh()
            ev_e = next((e for e in mon.route_events if e.node == EDGE and e.prefix == dst_lo
                         and e.time >= t_cut and e.devs and cut_intf not in e.devs), None)
            ev_p = next((e for e in mon.route_events if e.node == CUT_PEER and e.prefix == src_lo
                         and e.time >= t_cut and e.devs and peer_intf not in e.devs), None)
            t_link = link_event_time(mon, EDGE, cut_intf, t_cut, lambda e: not e.up)
            t_carrier = link_event_time(mon, CUT_PEER, peer_intf, t_cut, lambda e: not e.carrier)
            t_last = mon.last_fib_change()
            res["cut_link"] = f"{EDGE}-{CUT_PEER} ({cut_intf})"
            res["failover_ms"] = ms(ev_e.time - t_cut) if ev_e else None
            res["failover_detected_by"] = "netlink route notification (kernel FIB on e00)"
            res["cut_link_event_ms"] = ms(t_link - t_cut) if t_link else None
            res["failover_ms_from_link_event"] = ms(ev_e.time - t_link) if ev_e and t_link else None
            res["peer_route_moved_ms"] = ms(ev_p.time - t_cut) if ev_p else None
            res["peer_carrier_loss_notified_ms"] = ms(t_carrier - t_cut) if t_carrier else None
            res["convergence_ms"] = ms(t_last - t_cut)
            res["convergence_ms_from_link_event"] = ms(t_last - t_link) if t_link else None
            changed = {n for n in nodes if mon.last_fib_change([n]) >= t_cut}
            res["nodes_whose_routes_changed"] = len(changed)
            gap, floor = longest_gap([t for t, _ in probes.answers], t_cut)
            res["interruption_ms"] = ms(gap)
            res["probe_gap_before_cut_ms"] = ms(floor)
            lost, span = probes.losses(t_cut - 1.0)
            res["probes"] = {"sent": probes.sent, "answered": len(probes.answers),
                             "interval_ms": probes.interval * 1000,
                             "lost_after_cut": lost, "loss_span_ms": ms(span),
                             "note": "interruption_ms is the longest gap between receipts of "
                                     "answered probes (it includes stalls of this measuring "
                                     "process on a loaded machine); loss_span_ms is the longest "
                                     "run of unanswered probes, from the send times around it"}
            res["netlink_overruns"] = mon.overruns()
            res["ospf_adjacency_deletions_logged"] = sum(
                (net.run_dir / n / "frr-ospfd.log").read_text(errors="replace").count("-> Deleted")
                for n in nodes)
        finally:
            mon.stop()
            left = frr.stop_all()
            if left:
                res["slow_to_stop"] = left[:10]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4, help="fat-tree arity (4: 36 nodes; 8: 208)")
    ap.add_argument("--rest", type=float, default=10.0, help="seconds of the rest window")
    ap.add_argument("--window", type=float, default=3.0, help="seconds of the window from the cut")
    ap.add_argument("--modes", default="dmsc,frr", help="comma-separated: dmsc,frr")
    ap.add_argument("--keep-linkdown-routes", action="store_true",
                    help="FRR: leave ignore_routes_with_linkdown at 0 (the kernel default)")
    ap.add_argument("--bfd-ms", type=int, default=OspfTimers.bfd_rx_ms,
                    help="FRR: BFD receive and transmit interval (default %(default)s; FRR allows 10)")
    ap.add_argument("--no-bfd", action="store_true", help="FRR: OSPF without BFD")
    ap.add_argument("--dataplane", choices=["auto", "ebpf", "python"], default="auto",
                    help="the DMSC forwarders' data plane (default auto: the kernel fast path where "
                         "it loads)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_peers: needs root (network namespaces)", file=sys.stderr)
        return 2
    out = args.out or RESULTS / ("peers.json" if args.k == 4 else f"peers-k{args.k}.json")
    nodes, links, _ = br.fat_tree(args.k)
    timers = OspfTimers(bfd=not args.no_bfd, bfd_rx_ms=args.bfd_ms, bfd_tx_ms=args.bfd_ms)
    timers.validate()
    result: dict = {
        "bench": "peers", "k": args.k, "nodes": len(nodes), "links": len(links),
        "machine": machine_facts(), "method": __doc__.strip(),
        "settings": {
            "dmsc": {"routing": dataclasses.asdict(RoutingConfig(enabled=True)),
                     "spf_backoff": "router default: RFC 8405 initial 0, short 50 ms, long 500 ms",
                     "carrier": "netlink link notifications take a face down at once"},
            "frr": {"version": subprocess.run(["/usr/lib/frr/zebra", "-v"], capture_output=True,
                                              text=True).stdout.splitlines()[0:1],
                    "daemons": "zebra, ospfd, bfdd per node, foreground, -u root -g frrvty",
                    "ospf": timers.describe(),
                    "ignore_routes_with_linkdown": not args.keep_linkdown_routes,
                    "carrier": "zebra follows link state over netlink; ospfd drops the "
                               "neighbour of an interface that goes down"},
        },
        "windows": {"rest_s": args.rest, "cut_s": args.window},
    }
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        r = {"mode": mode}
        try:
            if mode == "dmsc":
                run_dmsc(args.k, args.rest, args.window, r, args.dataplane)
            elif mode == "frr":
                run_frr(args.k, args.rest, args.window, timers, not args.keep_linkdown_routes, r)
            else:
                raise ValueError(f"unknown mode {mode!r}")
        except Exception as e:  # one mode failing (e.g. k=8 too big) still reports the other
            r["error"] = f"{type(e).__name__}: {e}"
            r["limits"] = limits(r.get("run_dir"))
            print(f"{mode}: FAILED: {r['error']}; {r['limits']}", file=sys.stderr, flush=True)
        result[mode] = r
        print(f"{mode}: " + json.dumps({k: r.get(k) for k in (
            "bringup_s", "failover_ms", "convergence_ms", "interruption_ms",
            "control_pps_per_node")}), flush=True)
    for key in ("failover_ms", "convergence_ms", "interruption_ms", "control_pps_per_node",
                "bringup_s"):
        for mode in modes:
            result[f"{mode}_{key}"] = result[mode].get(key)
    for mode in modes:
        r = result[mode]
        result[f"{mode}_rss_mb_per_node"] = r.get("rest", {}).get("rss_mb_per_node")
        result[f"{mode}_rss_mb_per_node_convergence"] = r.get("cut_window", {}).get("rss_mb_per_node_peak")
        result[f"{mode}_cpu_s_per_node_rest"] = r.get("rest", {}).get("cpu_s_per_node")
        result[f"{mode}_cpu_s_per_node_convergence"] = r.get("cut_window", {}).get("cpu_s_per_node")
    # what each stream lost at the cut (a lost call costs its 0.5 s timeout, a probe 1 ms)
    if "dmsc" in modes:
        result["dmsc_calls_lost_at_cut"] = result["dmsc"].get("calls_failed_around_cut")
    if "frr" in modes:
        result["frr_probes_lost_at_cut"] = result["frr"].get("probes", {}).get("lost_after_cut")
    result["machine"]["loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all("error" not in result[m] for m in modes) else 1


if __name__ == "__main__":
    sys.exit(main())
