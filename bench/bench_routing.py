#!/usr/bin/env python3
"""Routing benchmark: a k-ary fat tree of network namespaces, one forwarder per node.

  * failover_ms: link cut (ip link set down on one end) to the adjacent node
    taking the face down, from the node's own timestamp of the netlink event;
    from that moment its forwarding skips the face and uses the ECMP or
    loop-free-alternate next hops already in the FIB.
  * interruption_ms: the longest gap between successful calls of a client
    stream whose path crosses the cut link (what an application sees). The
    stream is closed-loop with a 0.5 s timeout and no retry, so a lost call
    shows as a 0.5 s gap; calls_failed_around_cut counts them.
  * convergence_ms: link cut to the last FIB change anywhere, once every node's
    link-state database digest agrees again (node timestamps, same clock).
  * control_pps_per_node: hellos + LSAs + ACKs sent per node per second at
    steady state.
  * dead_node_withdrawal_ms: kill -9 of a host's forwarder (its links stay up,
    so only its neighbour's hello dead interval can notice) to the last FIB
    change anywhere once the host's name is gone from every FIB (node clocks).
  * lsa_backlog: a forwarder x flooded by a stand-in neighbour with 20,000 LSAs
    a second for 3 s (as tests/test_routing_netns.py does): the longest
    silences of its hellos and of its ACKs while it works off the backlog, the
    backlog's peak, and how long it took.

Every figure is recorded with the load average (a shared machine).

Writes bench/results/routing.json.
"""
from __future__ import annotations

import argparse
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
from topologies.lsa_flood import lsa_flood_frames, send_flood  # noqa: E402
from topologies.measure import machine_facts, wait_for, write_result  # noqa: E402
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
        ok_times, failed_times, stop = [], [], threading.Event()

        def stream():
            while not stop.is_set():
                try:
                    cli.call("/bench/svc", b"x", retries=0)
                    ok_times.append(time.time())
                except DmscError:
                    failed_times.append(time.time())
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
        # a lost call shows as a gap of its timeout: how many there were around the cut
        result["calls_failed_around_cut"] = sum(1 for t in failed_times if t_cut - 1 <= t <= t_cut + 2)
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
    ap.add_argument("--no-backlog", dest="backlog", action="store_false",
                    help="skip the LSA backlog measurement")
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
        # a node killed: no carrier change, its neighbour's dead timer must notice
        victim = next(h for h in hosts[1:-1] if h not in (hosts[0], hosts[-1]))
        others = [n for n in nodes if n != victim]
        t_kill = time.time()
        fn[victim].kill()
        wait_for(lambda: all(f"/node/{victim}" not in {e["prefix"] for e in fn[n].api("GET", "/fib")["entries"]}
                             for n in others), 60, interval=0.1, what="the dead node's withdrawal")
        after = statuses(fn, others)
        changes = [s["routing"]["last_change"] for s in after.values()
                   if s["routing"]["last_change"] and s["routing"]["last_change"] >= t_kill]
        result["dead_node_withdrawal_ms"] = round((max(changes) - t_kill) * 1000, 1) if changes else None
        result["dead_node"] = victim
        result["dead_interval_ms"] = fn[victim].config.get("routing", {}).get("dead_ms", 300)
        print(f"dead node {victim}: withdrawn everywhere {result['dead_node_withdrawal_ms']} ms "
              f"after kill -9 (dead interval {result['dead_interval_ms']} ms)", flush=True)
    result["loadavg_after_fat_tree"] = [round(x, 2) for x in os.getloadavg()]
    if args.backlog:
        result["lsa_backlog"] = lsa_backlog()
        b = result["lsa_backlog"]
        print(f"LSA backlog of {b['lsa_queue_max']}: longest silence of hellos {b['longest_hello_gap_ms']} ms, "
              f"of ACKs {b['longest_ack_gap_ms']} ms, worked off in {b['drain_s']} s", flush=True)
    result["targets"] = {"failover_ms": "< 50", "convergence_ms": "< 500"}
    write_result(args.out, result)
    return 0


def lsa_backlog(hello_ms: int = 100, dead_ms: int = 3000) -> dict:
    """x flooded with LSAs by a raw-socket stand-in neighbour t; what x sends is timed."""
    import socket

    from forwarder.dataplane import wire
    from forwarder.dataplane.names import Name
    from topologies.nsenter import socket_in
    load = [round(x, 2) for x in os.getloadavg()]
    with NetnsNetwork(new_run_dir("bench-routing-backlog")) as net:
        net.add_node("x")
        net.add_node("t")
        net.add_link("x", "t")
        fn = ForwarderNet(net)
        fn.add("x", roles=["sr"], log_level="warning",
               routing={"enabled": True, "hello_ms": hello_ms, "dead_ms": dead_ms})
        fn.start_all()
        t_if = intf_between(net, "t", "x")
        x_mac = bytes.fromhex(net.node("x").mac(intf_between(net, "x", "t")).replace(":", ""))
        sock = socket_in(net.node("t").netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(wire.ETHERTYPE))
        sock.bind((t_if, wire.ETHERTYPE))
        eth = x_mac + b"\x02" * 6 + b"\x88\xb5"
        me, x = Name.parse("/node/t"), Name.parse("/node/x")
        hello = eth + wire.Packet(wire.PacketType.HELLO, dst=wire.HELLO_NAME, src=me, hop_limit=1,
                                  payload=wire.HelloBody(100, 5000, 1, wire.HelloBody.TWO_WAY).encode()).encode()
        heard = {"hello": [], "ack": []}
        stop = threading.Event()

        def listen():
            sock.settimeout(0.05)
            while not stop.is_set():
                try:
                    frame = sock.recv(65536)
                    p = wire.decode(frame[14:])
                except (socket.timeout, wire.DecodeError):
                    continue
                if p.src == x and p.type in (wire.PacketType.HELLO, wire.PacketType.ACK):
                    heard["hello" if p.type == wire.PacketType.HELLO else "ack"].append(time.monotonic())

        def say_hello():
            while not stop.wait(0.1):
                sock.send(hello)
        threads = [threading.Thread(target=listen, daemon=True), threading.Thread(target=say_hello, daemon=True)]
        for th in threads:
            th.start()
        try:
            wait_for(lambda: any(n["state"] == "up" for n in fn["x"].status()["routing"]["neighbors"]),
                     60, what="x's adjacency")
            start = time.monotonic()
            send_flood(sock, lsa_flood_frames(eth, me, x))
            wait_for(lambda: fn["x"].status()["routing"]["lsa_queue"] == 0, 300, interval=0.05,
                     what="x to work off its LSA queue")
            end = time.monotonic()
            routing = fn["x"].status()["routing"]
        finally:
            stop.set()
            for th in threads:
                th.join(2)
            sock.close()

    def longest_gap(times, a, b):
        inside = [t for t in times if a <= t <= b]
        return max(q - p for p, q in zip([a] + inside, inside + [b]))
    last_ack = max(heard["ack"] or [start])
    return {"setup": "x (one forwarder, hello 100 ms) and a raw-socket neighbour t sending 20,000 "
                     "30-prefix LSAs a second for 3 s (10 % sent twice)",
            "hello_ms": hello_ms, "dead_ms": dead_ms,
            "loadavg_at_start": load, "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
            "lsa_queue_max": routing["lsa_queue_max"], "lsa_queue_merged": routing["lsa_queue_merged"],
            "drain_s": round(end - start, 2),
            "longest_hello_gap_ms": round(longest_gap(heard["hello"], start, end) * 1000, 1),
            "longest_ack_gap_ms": round(longest_gap(heard["ack"], start, last_ack) * 1000, 1),
            "hellos_during": sum(1 for t in heard["hello"] if start <= t <= end)}


def cli_ok(cli) -> bool:
    try:
        cli.call("/bench/svc", b"warm", retries=0)
        return True
    except DmscError:
        return False


if __name__ == "__main__":
    sys.exit(main())
