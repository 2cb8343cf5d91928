#!/usr/bin/env python3
"""Chain benchmark: what one Service Router hop costs -- Python forwarder, kernel fast
path (eBPF), kernel IPv4 forwarding -- measured side by side in one run.

Topology (network namespaces, veth, static routes):  a -- r1 -- ... -- rN -- b, N = 2 and 8.
a and b are Service Gateways, r1..rN Service Routers.

  * DMSC (dataplane python, then ebpf): a closed loop of calls on one established flow
    from the client library at a to an echo service on the client library at b
    (16-byte payload). The two SGs' Python stays on the path in both modes (local
    faces are not offloaded); the routers are what changes.
  * kernel: the same veths with IPv4 addresses and routes (ip_forward on the routers),
    a UDP echo server in b and a client in a, both plain Python sockets in this process
    (as light as the DMSC echo service, which also runs in this process).
  * Each sample: one request-response, timed in the client (perf_counter_ns). The first
    200 are discarded (flow decisions, kernel entries, caches).
  * hop cost, one way: frames of one established flow sent from a raw socket on a's
    interface into r1 and taken off b's interface by a busy-polling raw socket, timed
    in this process (bench_forwarder.measure_latency), through 2 and 8 routers:
    (p50 with 8 - p50 with 2) / 6 is one router hop, with no SG on the path (DMSC: DATA
    frames to /node/b/_sink; kernel: UDP frames to b's address).
  * the same from the closed-loop RTTs: (p50 RTT with 8 routers - with 2) / (2 x 6),
    where the two SGs' Python and the applications' wake-ups add their noise.

Writes bench/results/chain.json: chain_rtt_us_p50_{python,ebpf,kernel} (8 routers),
their p99s, the 2-router figures (..._2sr), chain_hop_us_{python,ebpf,kernel} (one way,
from frames) and chain_hop_us_{python,ebpf,kernel}_rtt (from the RTTs).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forwarder.apps.client import Client  # noqa: E402
from topologies.fwd_net import ForwarderNet, intf_between, line_routes  # noqa: E402
from topologies.measure import loadavg, machine_facts, percentile, wait_for, write_result  # noqa: E402
from topologies.netns import NetnsNetwork  # noqa: E402
from topologies.nsenter import socket_in  # noqa: E402
from topologies.records import new_run_dir  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from bench_forwarder import mac_bytes, measure_latency, udp_frame  # noqa: E402
from forwarder.dataplane.names import Name  # noqa: E402
from forwarder.dataplane.wire import ETHERTYPE, Packet, PacketType  # noqa: E402

RESULTS = REPO / "bench" / "results"
PAYLOAD = b"0123456789abcdef"
WARMUP = 200
RESOLUTION_US = 0.5   # one-way p50s of the two chain lengths differ by noise below this
UDP_PORT = 7007


def chain(net: NetnsNetwork, n: int) -> List[str]:
    names = ["a"] + [f"r{i}" for i in range(1, n + 1)] + ["b"]
    for x in names:
        net.add_node(x)
    for x, y in zip(names, names[1:]):
        net.add_link(x, y)
    return names


def dmsc_rtts(net: NetnsNetwork, names: List[str], mode: str, samples: int) -> dict:
    fn = ForwarderNet(net)
    routes = line_routes(names, lambda x, y: intf_between(net, x, y))
    for x in names:
        extra = [{"prefix": "/echo", "face": intf_between(net, x, names[names.index(x) + 1])}] \
            if x != "b" else []
        fn.add(x, roles=["sg", "sr"] if x in ("a", "b") else ["sr"], log_level="warning",
               dataplane=mode, routes=routes[x] + extra)
    fn.start_all()
    try:
        with Client(fn["b"].app_socket) as server, Client(fn["a"].app_socket, timeout=2) as cli:
            server.serve("/echo", lambda payload, req: payload)
            wait_for(lambda: "/echo" in fn["b"].status()["local_prefixes"], 30, what="registration")
            out = []
            clock = time.perf_counter_ns
            for i in range(samples + WARMUP):
                t0 = clock()
                if cli.call("/echo", PAYLOAD) != PAYLOAD:
                    raise RuntimeError("the echo service answered something else")
                if i >= WARMUP:
                    out.append((clock() - t0) / 1000.0)
        oneway = oneway_dmsc(net, names, samples)
        routers = [x for x in names if x.startswith("r")]
        kernel = {x: fn[x].status()["dataplane"] for x in routers}
        return {"rtts": out, "oneway": oneway, "dataplane": kernel[routers[0]]["reason"],
                "routers_in_kernel": sum(1 for d in kernel.values()
                                         if d.get("verdicts", {}).get("redirected", 0) > 0)}
    finally:
        fn.stop_all()


def _ends(net: NetnsNetwork, names: List[str]) -> tuple:
    """(a's interface to r1, a's MAC, r1's MAC on that link, b's interface)."""
    a_if, r1_if = intf_between(net, "a", names[1]), intf_between(net, names[1], "a")
    return (a_if, mac_bytes(net.node("a").mac(a_if)), mac_bytes(net.node(names[1]).mac(r1_if)),
            intf_between(net, "b", names[-2]))


def sink_frame(dst_mac: bytes, src_mac: bytes, seq: int) -> bytes:
    """A DATA frame of one flow, to a name b owns and drops (no application reads it)."""
    pkt = Packet(PacketType.DATA, Name.parse("/node/b/_sink"), Name.parse("/node/a/_bench"),
                 PAYLOAD, flow_id=1, seq=seq & 0xFFFFFFFF).encode()
    return (dst_mac + src_mac + ETHERTYPE.to_bytes(2, "big") + pkt).ljust(60, b"\0")


def oneway_dmsc(net: NetnsNetwork, names: List[str], samples: int) -> List[float]:
    a_if, a_mac, r1_mac, b_if = _ends(net, names)
    return measure_latency(net, "a", a_if, "b", b_if, lambda i: sink_frame(r1_mac, a_mac, i),
                           ETHERTYPE, samples)


def kernel_rtts(net: NetnsNetwork, names: List[str], samples: int) -> dict:
    """IPv4 on the same veths: a /31 per link, routes both ways, a UDP echo in b."""
    links = list(zip(names, names[1:]))
    addr: Dict[tuple, str] = {}
    for i, (x, y) in enumerate(links):
        addr[(i, x)], addr[(i, y)] = f"10.88.{i}.0", f"10.88.{i}.1"
        net.node(x).add_addr(intf_between(net, x, y), f"{addr[(i, x)]}/31")
        net.node(y).add_addr(intf_between(net, y, x), f"{addr[(i, y)]}/31")
    a_ip, b_ip = addr[(0, "a")], addr[(len(links) - 1, "b")]
    for k, x in enumerate(names):
        if 0 < k < len(names) - 1:
            net.node(x).cmd(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        if k < len(names) - 1:   # towards b
            net.node(x).cmd(["ip", "route", "replace", f"{b_ip}/32", "via", addr[(k, names[k + 1])]])
        if k > 0:                # towards a
            net.node(x).cmd(["ip", "route", "replace", f"{a_ip}/32", "via", addr[(k - 1, names[k - 1])]])
    srv = socket_in(net.node("b").netns, socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind((b_ip, UDP_PORT))
    stop = threading.Event()

    def echo() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(2048)
            except socket.timeout:
                continue
            srv.sendto(data, peer)
    t = threading.Thread(target=echo, daemon=True)
    t.start()
    cli = socket_in(net.node("a").netns, socket.AF_INET, socket.SOCK_DGRAM)
    cli.settimeout(2)
    cli.connect((b_ip, UDP_PORT))
    out = []
    clock = time.perf_counter_ns
    try:
        for i in range(samples + WARMUP):
            t0 = clock()
            cli.send(PAYLOAD)
            if cli.recv(2048) != PAYLOAD:
                raise RuntimeError("the UDP echo answered something else")
            if i >= WARMUP:
                out.append((clock() - t0) / 1000.0)
    finally:
        stop.set()
        t.join(2)
        cli.close()
        srv.close()
    a_if, a_mac, r1_mac, b_if = _ends(net, names)
    oneway = measure_latency(net, "a", a_if, "b", b_if,
                             lambda i: udp_frame(r1_mac, a_mac, a_ip, b_ip, len(PAYLOAD)),
                             0x0800, samples)
    return {"rtts": out, "oneway": oneway}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000, help="round trips per path (default 3000)")
    ap.add_argument("--routers", default="2,8", help="chain lengths (default 2,8)")
    ap.add_argument("--out", type=Path, default=RESULTS / "chain.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_chain: needs root (network namespaces)", file=sys.stderr)
        return 2
    lengths = [int(x) for x in args.routers.split(",")]
    result: dict = {"bench": "chain", "machine": machine_facts(), "method": __doc__.strip(),
                    "samples": args.samples, "payload_bytes": len(PAYLOAD), "runs": {}}
    for n in lengths:
        run = new_run_dir(f"bench-chain-{n}")
        with NetnsNetwork(run) as net:
            names = chain(net, n)
            for mode in ("python", "ebpf"):
                r = dmsc_rtts(net, names, mode, args.samples)
                result["runs"][f"{mode}_{n}"] = {k: v for k, v in r.items()
                                                 if k not in ("rtts", "oneway")}
                result["runs"][f"{mode}_{n}"].update(p50_us=round(percentile(r["rtts"], 50), 1),
                                                     p99_us=round(percentile(r["rtts"], 99), 1),
                                                     oneway_p50_us=round(percentile(r["oneway"], 50), 1))
                print(f"{n} routers, {mode}: RTT p50 {percentile(r['rtts'], 50):.0f} us, "
                      f"p99 {percentile(r['rtts'], 99):.0f} us; one way through the routers "
                      f"p50 {percentile(r['oneway'], 50):.1f} us", flush=True)
            r = kernel_rtts(net, names, args.samples)
            result["runs"][f"kernel_{n}"] = {"p50_us": round(percentile(r["rtts"], 50), 1),
                                             "p99_us": round(percentile(r["rtts"], 99), 1),
                                             "oneway_p50_us": round(percentile(r["oneway"], 50), 1)}
            print(f"{n} routers, kernel: RTT p50 {percentile(r['rtts'], 50):.0f} us; one way "
                  f"p50 {percentile(r['oneway'], 50):.1f} us", flush=True)
    runs = result["runs"]
    long, short = max(lengths), min(lengths)
    for mode in ("python", "ebpf", "kernel"):
        if f"{mode}_{long}" not in runs:
            continue
        result[f"chain_rtt_us_p50_{mode}"] = runs[f"{mode}_{long}"]["p50_us"]
        result[f"chain_rtt_us_p99_{mode}"] = runs[f"{mode}_{long}"]["p99_us"]
        result[f"chain_rtt_us_p50_{mode}_{short}sr"] = runs[f"{mode}_{short}"]["p50_us"]
        if long > short:
            result[f"chain_hop_us_{mode}"] = round(
                (runs[f"{mode}_{long}"]["oneway_p50_us"] - runs[f"{mode}_{short}"]["oneway_p50_us"])
                / (long - short), 2)
            result[f"chain_hop_us_{mode}_rtt"] = round(
                (runs[f"{mode}_{long}"]["p50_us"] - runs[f"{mode}_{short}"]["p50_us"])
                / (2 * (long - short)), 2)
    # a kernel IPv4 hop adds less than this one-way method resolves (its 2- and 8-router
    # chains can come out equal): then there is no ratio, only both figures
    if (result.get("chain_hop_us_kernel") or 0) >= RESOLUTION_US:
        result["ebpf_vs_kernel_hop"] = round(result["chain_hop_us_ebpf"]
                                             / result["chain_hop_us_kernel"], 2)
    else:
        result["ebpf_vs_kernel_hop"] = None
        result["ebpf_vs_kernel_hop_note"] = (f"kernel hop {result.get('chain_hop_us_kernel')} us one "
                                             f"way: below the {RESOLUTION_US} us this method resolves")
    if result.get("chain_hop_us_kernel_rtt"):
        result["ebpf_vs_kernel_hop_rtt"] = round(result["chain_hop_us_ebpf_rtt"]
                                                 / result["chain_hop_us_kernel_rtt"], 2)
    result["targets"] = {"chain_hop_us_ebpf": "<= 1.5 x chain_hop_us_kernel"}
    result["machine"]["loadavg_at_end"] = loadavg()
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
