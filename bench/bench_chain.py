#!/usr/bin/env python3
"""Chain benchmark: what one Service Router hop costs -- Python forwarder, kernel fast
path (eBPF), kernel IPv4 forwarding -- measured side by side in one run.

Topology (network namespaces, veth, static routes):  a -- r1 -- ... -- rN -- b, N = 2 and 8,
both chains built at once (two sets of namespaces). a and b are Service Gateways, r1..rN
Service Routers.

  * DMSC (dataplane python, then ebpf): a closed loop of calls on one established flow
    from the client library at a to an echo service on the client library at b
    (16-byte payload). The two SGs' Python stays on the path in both modes (local
    faces are not offloaded); the routers are what changes.
  * kernel: the same veths with IPv4 addresses and routes (ip_forward on the routers),
    a UDP echo server in b and a client in a, both plain Python sockets in this process
    (as light as the DMSC echo service, which also runs in this process).
  * Each call: one request-response, timed in the client (perf_counter_ns), after 200
    unrecorded ones (flow decisions, kernel entries, caches).
  * One way: frames of one established flow sent from a raw socket on a's interface into
    r1 and taken off b's interface by a busy-polling raw socket, timed in this process
    (bench_forwarder.measure_latency), with no SG on the path (DMSC: DATA frames to
    /node/b/_sink; kernel: UDP frames to b's address).
  * Interleaved: per data plane, the samples are taken in rounds (--blocks); each round
    makes calls on the 2-router chain and the 8-router one in turn, call by call, then
    sends frames into the two chains in turn, frame by frame (the order alternating
    round by round), so that the machine's drift (frequency, caches, other load) falls
    on both lengths alike.
  * One router hop, one way: (p50 RTT with 8 - with 2) / (2 x 6) from the calls, the
    issue's measure (the SGs' Python and the applications' wake-ups add their noise,
    and run between calls: the routers' caches are as the rest of the machine leaves
    them); and (p50 with 8 - p50 with 2) / 6 from the single frames, each 2 ms after the
    last (caches cold for every path). Each is also computed round by round; the
    standard error of those estimates is recorded beside it, and the eBPF/kernel ratio
    is given only where both hops stand out from zero by two standard errors.

  * Repetitions (--repeat, default 3): the whole measurement again on chains built
    afresh (where the kernel puts the maps, programs and queues moves the eBPF figures
    between builds more than within one); each figure below is the median of the
    repetitions', every repetition's is kept beside it.

Writes bench/results/chain.json: chain_rtt_us_p50_{python,ebpf,kernel} (8 routers),
their p99s, the 2-router figures (..._2sr), chain_hop_us_{python,ebpf,kernel} (one way,
from the calls) and chain_hop_us_{python,ebpf,kernel}_frames (from the frames), each
with _repetitions and _stderr_within (each repetition's standard error over its
rounds), ebpf_vs_kernel_hop(_frames) (the median of the repetitions' ratios) or a note
saying why there is none, ebpf_vs_kernel_hop(_frames)_of_medians (the ratio of the two
medians), and every repetition's runs under "repetitions".
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import socket
import sys
import threading
import time
from contextlib import ExitStack
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
from bench_forwarder import OneWayProbe, mac_bytes, udp_frame  # noqa: E402
from forwarder.dataplane.names import Name  # noqa: E402
from forwarder.dataplane.wire import ETHERTYPE, Packet, PacketType  # noqa: E402

RESULTS = REPO / "bench" / "results"
PAYLOAD = b"0123456789abcdef"
WARMUP = 200
ONEWAY_WARMUP = 50
SEQ_AT = slice(26, 30)   # the frame one-way probes match on: a DMSC seq (14 + 12), an IPv4 source
UDP_PORT = 7007


def chain(net: NetnsNetwork, n: int) -> List[str]:
    names = ["a"] + [f"r{i}" for i in range(1, n + 1)] + ["b"]
    for x in names:
        net.add_node(x)
    for x, y in zip(names, names[1:]):
        net.add_link(x, y)
    return names


def timed(k: int, call) -> List[float]:
    """k request-responses, each timed in microseconds; the echo must return PAYLOAD."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(k):
        t0 = clock()
        if call() != PAYLOAD:
            raise RuntimeError("the echo answered something else")
        out.append((clock() - t0) / 1000.0)
    return out


class DmscChain:
    """Forwarders on one chain (data plane `mode`), an echo service on the client library
    at b, a client at a; blocks of closed-loop calls and of one-way frames on demand."""

    def __init__(self, net: NetnsNetwork, names: List[str], mode: str) -> None:
        self.net, self.names, self.mode = net, names, mode
        self.fn = ForwarderNet(net)
        routes = line_routes(names, lambda x, y: intf_between(net, x, y))
        for x in names:
            extra = [{"prefix": "/echo", "face": intf_between(net, x, names[names.index(x) + 1])}] \
                if x != "b" else []
            self.fn.add(x, roles=["sg", "sr"] if x in ("a", "b") else ["sr"], log_level="warning",
                        dataplane=mode, routes=routes[x] + extra)
        self._stack = ExitStack()

    def __enter__(self) -> "DmscChain":
        self._stack.callback(self.fn.stop_all)
        self.fn.start_all()
        server = self._stack.enter_context(Client(self.fn["b"].app_socket))
        self.cli = self._stack.enter_context(Client(self.fn["a"].app_socket, timeout=2))
        server.serve("/echo", lambda payload, req: payload)
        wait_for(lambda: "/echo" in self.fn["b"].status()["local_prefixes"], 30, what="registration")
        self.rtt_block(WARMUP)   # flow decisions, kernel entries, caches
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def rtt_block(self, k: int) -> List[float]:
        return timed(k, lambda: self.cli.call("/echo", PAYLOAD))

    def oneway_probe(self) -> tuple:
        """(a probe from a's interface to b's, the i-th frame of one flow)."""
        a_if, a_mac, r1_mac, b_if = _ends(self.net, self.names)
        return (OneWayProbe(self.net, "a", a_if, "b", b_if, ETHERTYPE),
                lambda i: sink_frame(r1_mac, a_mac, i))

    def facts(self) -> dict:
        routers = [x for x in self.names if x.startswith("r")]
        kernel = {x: self.fn[x].status()["dataplane"] for x in routers}
        return {"dataplane": kernel[routers[0]]["reason"],
                "routers_in_kernel": sum(1 for d in kernel.values()
                                         if d.get("verdicts", {}).get("redirected", 0) > 0),
                "routers_redirecting_to_peer": sum(1 for d in kernel.values()
                                                   if d.get("redirected_to_peer", 0) > 0)}


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


class KernelChain:
    """IPv4 on the same veths: a /31 per link, routes both ways, a UDP echo in b (a plain
    socket in this process, as light as the DMSC echo service) and a client in a."""

    def __init__(self, net: NetnsNetwork, names: List[str]) -> None:
        self.net, self.names = net, names
        links = list(zip(names, names[1:]))
        addr: Dict[tuple, str] = {}
        for i, (x, y) in enumerate(links):
            addr[(i, x)], addr[(i, y)] = f"10.88.{i}.0", f"10.88.{i}.1"
            net.node(x).add_addr(intf_between(net, x, y), f"{addr[(i, x)]}/31")
            net.node(y).add_addr(intf_between(net, y, x), f"{addr[(i, y)]}/31")
        self.a_ip, self.b_ip = addr[(0, "a")], addr[(len(links) - 1, "b")]
        for k, x in enumerate(names):
            if 0 < k < len(names) - 1:
                net.node(x).cmd(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            if k < len(names) - 1:   # towards b
                net.node(x).cmd(["ip", "route", "replace", f"{self.b_ip}/32", "via", addr[(k, names[k + 1])]])
            if k > 0:                # towards a
                net.node(x).cmd(["ip", "route", "replace", f"{self.a_ip}/32", "via", addr[(k - 1, names[k - 1])]])
        self._stop = threading.Event()

    def __enter__(self) -> "KernelChain":
        self.srv = socket_in(self.net.node("b").netns, socket.AF_INET, socket.SOCK_DGRAM)
        self.srv.bind((self.b_ip, UDP_PORT))
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()
        self.cli = socket_in(self.net.node("a").netns, socket.AF_INET, socket.SOCK_DGRAM)
        self.cli.settimeout(2)
        self.cli.connect((self.b_ip, UDP_PORT))
        self.rtt_block(WARMUP)
        return self

    def _echo(self) -> None:
        self.srv.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, peer = self.srv.recvfrom(2048)
            except socket.timeout:
                continue
            self.srv.sendto(data, peer)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.cli.close()
        self.srv.close()

    def rtt_block(self, k: int) -> List[float]:
        def call() -> bytes:
            self.cli.send(PAYLOAD)
            return self.cli.recv(2048)
        return timed(k, call)

    def oneway_probe(self) -> tuple:
        a_if, a_mac, r1_mac, b_if = _ends(self.net, self.names)
        frame = udp_frame(r1_mac, a_mac, self.a_ip, self.b_ip, len(PAYLOAD))
        return OneWayProbe(self.net, "a", a_if, "b", b_if, 0x0800), lambda i: frame

    def facts(self) -> dict:
        return {}


def interleaved(chains: Dict[int, object], samples: int, blocks: int) -> Dict[int, dict]:
    """`blocks` rounds; in each, a block of calls made on the chains in turn, call by call,
    then a block of one-way frames sent into the chains in turn, frame by frame, 2 ms
    apart (the chains' order alternating round by round): a drift of the machine's state
    (frequency, caches, the neighbours' load) falls on every chain length alike."""
    per = max(1, samples // blocks)
    out = {n: {"rtts": [], "oneway": [], "block_rtt_p50": [], "block_oneway_p50": []} for n in chains}
    probes = {n: chains[n].oneway_probe() for n in chains}
    try:
        seq = 0
        for probe, make in probes.values():   # unrecorded: caches and flow tables
            for _ in range(ONEWAY_WARMUP):
                probe.sample(make(seq))
                seq += 1
        for rnd in range(blocks):
            order = sorted(chains) if rnd % 2 == 0 else sorted(chains, reverse=True)
            calls: Dict[int, List[float]] = {n: [] for n in chains}
            for _ in range(per):
                for n in order:
                    calls[n] += chains[n].rtt_block(1)
            for n in chains:
                out[n]["rtts"] += calls[n]
                out[n]["block_rtt_p50"].append(percentile(calls[n], 50))
            got: Dict[int, List[float]] = {n: [] for n in chains}
            for _ in range(per):
                for n in order:
                    probe, make = probes[n]
                    frame = make(seq)
                    us = probe.sample(frame, lambda got: got[SEQ_AT] == frame[SEQ_AT])
                    seq += 1
                    if us is not None:
                        got[n].append(us)
                    time.sleep(0.002)
            for n in chains:
                if not got[n]:
                    raise RuntimeError(f"no frame crossed the {n}-router chain in round {rnd}")
                out[n]["oneway"] += got[n]
                out[n]["block_oneway_p50"].append(percentile(got[n], 50))
    finally:
        for probe, _ in probes.values():
            probe.close()
    return out


def hop_estimate(long: dict, short: dict, hops: int, kind: str) -> dict:
    """One router hop, one way, from the two chains' p50s (`kind` "oneway": frames; "rtt":
    calls, halved): pooled, and round by round -- the spread of the rounds' estimates says
    how far the pooled figure can be trusted."""
    samples, per_way = ("rtts", 2) if kind == "rtt" else ("oneway", 1)
    pooled = (percentile(long[samples], 50) - percentile(short[samples], 50)) / (per_way * hops)
    rounds = [(lg - sh) / (per_way * hops)
              for lg, sh in zip(long[f"block_{kind}_p50"], short[f"block_{kind}_p50"])]
    sem = statistics.stdev(rounds) / math.sqrt(len(rounds)) if len(rounds) > 1 else None
    return {"us": round(pooled, 2), "rounds_us": [round(x, 2) for x in rounds],
            "stderr_us": round(sem, 2) if sem is not None else None}


def hop_ratio(ebpf: dict, kernel: dict) -> tuple:
    """ebpf / kernel, or None with the reason when the kernel's hop is not resolved from zero
    (below two standard errors of its rounds' estimates) or the eBPF one is not either."""
    for name, h in (("kernel", kernel), ("ebpf", ebpf)):
        if h["stderr_us"] is None or h["us"] <= 2 * h["stderr_us"]:
            return None, (f"{name} hop {h['us']} us, standard error {h['stderr_us']} us over "
                          f"{len(h['rounds_us'])} rounds: not resolved from zero")
    return round(ebpf["us"] / kernel["us"], 2), None


def repetition(lengths: List[int], modes: List[str], samples: int, blocks: int,
               rep: int) -> dict:
    """One repetition: both chains built afresh, every data plane measured on them in
    turn. {"runs": per mode and length, "hops": per mode (calls, frames) estimates}."""
    short, long = lengths
    out: dict = {"runs": {}, "hops": {}}
    with ExitStack() as stack:
        nets = {n: stack.enter_context(NetnsNetwork(new_run_dir(f"bench-chain-{n}"))) for n in lengths}
        names = {n: chain(nets[n], n) for n in lengths}
        for mode in modes:
            with ExitStack() as mstack:
                chains = {n: mstack.enter_context(DmscChain(nets[n], names[n], mode) if mode != "kernel"
                                                  else KernelChain(nets[n], names[n]))
                          for n in lengths}
                print(f"[{rep}] {mode}: {blocks} rounds on the {short}- and {long}-router chains ...",
                      flush=True)
                got = interleaved(chains, samples, blocks)
                facts = {n: chains[n].facts() for n in lengths}
            for n in lengths:
                r = got[n]
                run = dict(facts[n], p50_us=round(percentile(r["rtts"], 50), 1),
                           p99_us=round(percentile(r["rtts"], 99), 1),
                           oneway_p50_us=round(percentile(r["oneway"], 50), 1),
                           block_rtt_p50_us=[round(x, 1) for x in r["block_rtt_p50"]],
                           block_oneway_p50_us=[round(x, 1) for x in r["block_oneway_p50"]])
                out["runs"][f"{mode}_{n}"] = run
                print(f"  {n} routers, {mode}: RTT p50 {run['p50_us']:.0f} us, p99 {run['p99_us']:.0f} us; "
                      f"one way through the chain p50 {run['oneway_p50_us']:.1f} us", flush=True)
            rt = hop_estimate(got[long], got[short], long - short, "rtt")
            ow = hop_estimate(got[long], got[short], long - short, "oneway")
            out["hops"][mode] = {"calls": rt, "frames": ow}
            print(f"  one {mode} hop, one way: {rt['us']} us from the calls (standard error "
                  f"{rt['stderr_us']}), {ow['us']} us from single frames 2 ms apart "
                  f"(standard error {ow['stderr_us']})", flush=True)
    if "ebpf" in out["hops"] and "kernel" in out["hops"]:
        for kind in ("calls", "frames"):
            ratio, why = hop_ratio(out["hops"]["ebpf"][kind], out["hops"]["kernel"][kind])
            out[f"ebpf_vs_kernel_hop_{kind}"] = ratio if ratio is not None else why
    return out


def median_of(values: List[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000, help="round trips and frames per path (default 3000)")
    ap.add_argument("--blocks", type=int, default=10,
                    help="rounds the samples are split into, chains alternating (default 10)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repetitions, each on chains built afresh; the keys are their medians "
                         "(default 3)")
    ap.add_argument("--routers", default="2,8", help="two chain lengths (default 2,8)")
    ap.add_argument("--dataplanes", default="python,ebpf,kernel",
                    help="which paths to measure, in this order (default python,ebpf,kernel); "
                         "the eBPF/kernel ratio needs both")
    ap.add_argument("--out", type=Path, default=RESULTS / "chain.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_chain: needs root (network namespaces)", file=sys.stderr)
        return 2
    lengths = sorted(int(x) for x in args.routers.split(","))
    if len(lengths) != 2 or lengths[0] == lengths[1] or lengths[0] < 1:
        ap.error("--routers takes two different chain lengths of at least 1, e.g. 2,8")
    if args.blocks < 2 or args.samples < args.blocks:
        ap.error("--blocks must be at least 2 and at most --samples")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    modes = [m.strip() for m in args.dataplanes.split(",") if m.strip()]
    if not modes or any(m not in ("python", "ebpf", "kernel") for m in modes) or len(set(modes)) != len(modes):
        ap.error("--dataplanes takes distinct names among python, ebpf, kernel, e.g. ebpf,kernel")
    short, long = lengths
    result: dict = {"bench": "chain", "machine": machine_facts(), "method": __doc__.strip(),
                    "dataplanes": modes, "samples": args.samples, "blocks": args.blocks,
                    "repeat": args.repeat, "payload_bytes": len(PAYLOAD)}
    reps = [repetition(lengths, modes, args.samples, args.blocks, r + 1) for r in range(args.repeat)]
    result["repetitions"] = reps
    for mode in modes:
        for key, n in ((f"chain_rtt_us_p50_{mode}", long), (f"chain_rtt_us_p50_{mode}_{short}sr", short)):
            result[key] = median_of([r["runs"][f"{mode}_{n}"]["p50_us"] for r in reps])
        result[f"chain_rtt_us_p99_{mode}"] = median_of([r["runs"][f"{mode}_{long}"]["p99_us"] for r in reps])
        for kind, suffix in (("calls", ""), ("frames", "_frames")):
            each = [r["hops"][mode][kind]["us"] for r in reps]
            result[f"chain_hop_us_{mode}{suffix}"] = median_of(each)
            result[f"chain_hop_us_{mode}{suffix}_repetitions"] = each
            result[f"chain_hop_us_{mode}{suffix}_stderr_within"] = \
                [r["hops"][mode][kind]["stderr_us"] for r in reps]
    if "ebpf" in modes and "kernel" in modes:
        for kind, suffix in (("calls", ""), ("frames", "_frames")):
            each = [r[f"ebpf_vs_kernel_hop_{kind}"] for r in reps]
            result[f"ebpf_vs_kernel_hop{suffix}_repetitions"] = each
            nums = [x for x in each if isinstance(x, (int, float))]
            result[f"ebpf_vs_kernel_hop{suffix}"] = median_of(nums) if len(nums) == len(each) else None
            # the same question asked of the two medians above (not paired by repetition)
            result[f"ebpf_vs_kernel_hop{suffix}_of_medians"] = round(
                result[f"chain_hop_us_ebpf{suffix}"] / result[f"chain_hop_us_kernel{suffix}"], 2) \
                if result[f"chain_hop_us_kernel{suffix}"] > 0 else None
            if len(nums) != len(each):
                result[f"ebpf_vs_kernel_hop{suffix}_note"] = \
                    "a repetition's hops were not resolved from zero (see _repetitions)"
        print(f"eBPF / kernel hop, median of {args.repeat}: {result['ebpf_vs_kernel_hop']} from the "
              f"calls {result['ebpf_vs_kernel_hop_repetitions']}, {result['ebpf_vs_kernel_hop_frames']} "
              f"from the frames {result['ebpf_vs_kernel_hop_frames_repetitions']}", flush=True)
    result["targets"] = {"chain_hop_us_ebpf": "<= 1.5 x chain_hop_us_kernel"}
    result["machine"]["loadavg_at_end"] = loadavg()
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
