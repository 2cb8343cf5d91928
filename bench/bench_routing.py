#!/usr/bin/env python3
"""Routing benchmark: a k-ary fat tree of network namespaces, one forwarder per node.

  * failover_ms: link cut (ip link set down on one end) to the adjacent node
    taking the face down, from the node's own timestamp of the netlink event;
    from that moment its forwarding skips the face and uses the ECMP or
    loop-free-alternate next hops already in the FIB.
  * interruption_ms: the longest gap between successful calls of a client
    stream whose path crosses the cut link (what an application sees).
  * convergence_ms: link cut to the last FIB change anywhere, once every node's
    link-state database digest agrees again (node timestamps, same clock).
  * control_pps_per_node: hellos + LSAs + ACKs sent per node per second at
    steady state.

Writes bench/results/routing.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forwarder.apps.client import Client, DmscError  # noqa: E402
from topologies.fwd_net import ForwarderNet, intf_between  # noqa: E402
from topologies.measure import machine_facts, wait_for  # noqa: E402
from topologies.netns import NetnsNetwork  # noqa: E402
from topologies.records import new_run_dir  # noqa: E402

RESULTS = REPO / "bench" / "results"


def fat_tree(k: int):
    """(nodes, links, hosts) of a k-ary fat tree: core c*, aggregation a*, edge e*, hosts h*."""
    half = k // 2
    cores = [f"c{j}" for j in range(half * half)]
    nodes, links, hosts = list(cores), [], []
    for p in range(k):
        aggs = [f"a{p}{i}" for i in range(half)]
        edges = [f"e{p}{i}" for i in range(half)]
        nodes += aggs + edges
        for i, a in enumerate(aggs):
            for j in range(half):
                links.append((cores[i * half + j], a))
            for e in edges:
                links.append((a, e))
        for i, e in enumerate(edges):
            for h in range(half):
                host = f"h{p}{i}{h}"
                nodes.append(host)
                hosts.append(host)
                links.append((e, host))
    return nodes, links, hosts


def statuses(fn, names):
    return {n: fn[n].status() for n in names}


def converged(fn, names):
    st = statuses(fn, names)
    return len({s["routing"]["lsdb_digest"] for s in st.values()}) == 1 and \
        all(s["fib_entries"] >= len(names) for s in st.values()), st


def control_sent(st) -> int:
    total = 0
    for s in st.values():
        r = s["routing"]["stats"]
        total += r.get("hellos_sent", 0) + r.get("lsas_sent", 0) + r.get("acks_sent", 0)
    return total


def build_fat_tree(net: NetnsNetwork, k: int):
    """Create the namespaces and links of `fat_tree(k)` on ``net``; returns (nodes, links, hosts)."""
    nodes, links, hosts = fat_tree(k)
    for n in nodes:
        net.add_node(n)
    for a, b in links:
        net.add_link(a, b)
    return nodes, links, hosts


def start_forwarders(net: NetnsNetwork, nodes, hosts, dataplane: str = "auto") -> ForwarderNet:
    """One forwarder per node (hosts are SG+SR, the rest SR), link-state routing, all started."""
    fn = ForwarderNet(net)
    for n in nodes:
        fn.add(n, roles=["sg", "sr"] if n in hosts else ["sr"], log_level="warning",
               routing={"enabled": True}, dataplane=dataplane)
    fn.start_all()
    return fn


def wait_converged(fn: ForwarderNet, nodes, timeout: float = 120) -> None:
    wait_for(lambda: converged(fn, nodes)[0], timeout, interval=0.2, what="initial convergence")


def measure_control_pps(fn: ForwarderNet, nodes, steady: float) -> float:
    """Hellos + LSAs + ACKs sent per node per second over ``steady`` seconds (after 1 s settle)."""
    time.sleep(1.0)
    c0, s0 = control_sent(statuses(fn, nodes)), time.monotonic()
    time.sleep(steady)
    c1, s1 = control_sent(statuses(fn, nodes)), time.monotonic()
    return round((c1 - c0) / (s1 - s0) / len(nodes), 1)


def cut_and_measure(net: NetnsNetwork, fn: ForwarderNet, nodes, links, hosts,
                    before_cut: Optional[Callable[[], None]] = None) -> dict:
    """Stream calls from the first host to the last, cut e00's link that the flow uses,
    measure failover, convergence and the stream's longest gap. ``before_cut`` is
    called right before the cut (another benchmark samples resources from there)."""
    result = {}
    src, dst = hosts[0], hosts[-1]
    with Client(fn[dst].app_socket) as server, Client(fn[src].app_socket, timeout=0.5) as cli:
        server.serve("/bench/svc", lambda p, r: p)
        wait_for(lambda: cli_ok(cli), 20, what="the service to be reachable")
        edge = "e00"
        flow_face = next(f["face_name"] for f in fn[edge].api("GET", "/flows")["flows"]
                         if f["dst"] == "/bench/svc")
        peer = next(b if a == edge else a for a, b in links
                    if edge in (a, b) and intf_between(net, edge, b if a == edge else a) == flow_face)
        ok_times, stop = [], threading.Event()

        def stream():
            while not stop.is_set():
                try:
                    cli.call("/bench/svc", b"x", retries=0)
                    ok_times.append(time.time())
                except DmscError:
                    pass
        th = threading.Thread(target=stream)
        th.start()
        wait_for(lambda: len(ok_times) > 100, 10, what="the stream")
        if before_cut is not None:
            before_cut()
        t_cut = time.time()
        net.node(edge).cmd(["ip", "link", "set", "dev", flow_face, "down"])
        wait_for(lambda: flow_face in fn[edge].status()["face_events"], 5, what="the cut to be seen")
        ev = fn[edge].status()["face_events"][flow_face]
        result["failover_ms"] = round((ev["time"] - t_cut) * 1000, 2)
        result["failover_detected_by"] = ev["source"]
        wait_for(lambda: converged(fn, nodes)[0] and all(
            (s["routing"]["last_change"] or 0) >= t_cut
            for n, s in statuses(fn, nodes).items() if n in (edge, peer)), 30,
            interval=0.05, what="re-convergence")
        time.sleep(0.5)
        _, after = converged(fn, nodes)
        changes = [s["routing"]["last_change"] for s in after.values()
                   if s["routing"]["last_change"] and s["routing"]["last_change"] >= t_cut]
        result["convergence_ms"] = round((max(changes) - t_cut) * 1000, 1)
        result["nodes_whose_routes_changed"] = len(changes)
        time.sleep(0.5)
        stop.set()
        th.join(5)
        around = [t for t in ok_times if t_cut - 1 <= t <= t_cut + 2]
        gaps = [b - a for a, b in zip(around, around[1:]) if b >= t_cut]
        result["interruption_ms"] = round(max(gaps) * 1000, 1) if gaps else None
        result["calls_in_stream"] = len(ok_times)
        result["cut_link"] = f"{edge}-{peer} ({flow_face})"
        result["cut_time"] = t_cut
        result["retries_or_lost_calls_note"] = "stream used retries=0; gaps include any lost call's timeout (0.5 s)"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steady", type=float, default=5.0, help="seconds to count control packets")
    ap.add_argument("--dataplane", choices=["auto", "ebpf", "python"], default="auto",
                    help="the forwarders' data plane (default auto: the kernel fast path where it loads)")
    ap.add_argument("--out", type=Path, default=RESULTS / "routing.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_routing: needs root (network namespaces)", file=sys.stderr)
        return 2
    run = new_run_dir("bench-routing")
    result = {"bench": "routing", "k": args.k, "machine": machine_facts(),
              "method": __doc__.strip(), "run_dir": str(run)}
    with NetnsNetwork(run) as net:
        t0 = time.monotonic()
        nodes, links, hosts = build_fat_tree(net, args.k)
        result.update({"nodes": len(nodes), "links": len(links)})
        t_net = time.monotonic()
        fn = start_forwarders(net, nodes, hosts, args.dataplane)
        t_up = time.monotonic()
        result["dataplane"] = fn[hosts[0]].status()["dataplane"]["reason"]
        wait_converged(fn, nodes)
        t_conv = time.monotonic()
        result.update({"namespaces_s": round(t_net - t0, 2), "start_s": round(t_up - t_net, 2),
                       "initial_convergence_s": round(t_conv - t_up, 2)})
        print(f"{len(nodes)} nodes, {len(links)} links: namespaces {t_net - t0:.1f}s, "
              f"forwarders {t_up - t_net:.1f}s, converged {t_conv - t_up:.1f}s later", flush=True)

        # steady state control traffic
        result["control_pps_per_node"] = measure_control_pps(fn, nodes, args.steady)
        print(f"control packets per node per second: {result['control_pps_per_node']}", flush=True)

        # a client stream from the first host to the last one, across the cut
        result.update(cut_and_measure(net, fn, nodes, links, hosts))
        print(f"failover {result['failover_ms']} ms ({result['failover_detected_by']}), "
              f"convergence {result['convergence_ms']} ms, "
              f"longest gap in the call stream {result['interruption_ms']} ms", flush=True)
    result["targets"] = {"failover_ms": "< 50", "convergence_ms": "< 500"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def cli_ok(cli) -> bool:
    try:
        cli.call("/bench/svc", b"warm", retries=0)
        return True
    except DmscError:
        return False


if __name__ == "__main__":
    sys.exit(main())
