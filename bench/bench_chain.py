#!/usr/bin/env python3
"""Chain benchmark: what one Service Router hop costs -- Python forwarder, kernel fast
path (eBPF), kernel IPv4 forwarding -- measured side by side.

Topology (network namespaces, veth, static routes): a and b joined by two lines of
routers, a 2-router one (s1, s2) and an 8-router one (l1..l8), in one network: one
pair of end points for both lengths, so that the two paths differ by their routers
alone. (With one network per length, the end points' processes differ, and their own
RTTs differed by more than the 6 routers did: the eBPF hop moved between 0.2 and 1.5 us
from one build to the next.) a and b are Service Gateways, the others Service Routers.

  * DMSC (dataplane python, or ebpf): a closed loop of calls on one established flow per
    path from the client library at a (16-byte payload) to an echo service on the
    client library at b, /echo2 along the short path and /echo8 along the long one; the
    client's source name differs per path (flow "p2", "p8") and b routes each back along
    the path it came by. The two SGs' Python stays on the path in both modes (local
    faces are not offloaded); the routers are what changes.
  * kernel: the same topology built again in its own namespaces, veths with IPv4
    addresses and routes (ip_forward on the routers); per path, a UDP echo socket at b
    and a client socket at a (plain Python sockets in this process, as light as the
    DMSC echo service, which also runs in this process).
  * Each call: one request-response, timed in the client (perf_counter_ns), after 200
    unrecorded ones per path (flow decisions, kernel entries, caches).
  * One way: frames of one established flow sent from a raw socket on a's interface into
    the path's first router and taken off b's interface by a busy-polling raw socket,
    timed in this process (bench_forwarder.measure_latency), with no SG on the path
    (DMSC: DATA frames to /node/b/_sink; kernel: UDP frames to b's address).
  * Side by side: eBPF and kernel are measured together, call by call: each round makes
    calls on the eBPF 2- and 8-router paths and the kernel's, one call each in turn,
    then sends frames into the four in turn, frame by frame (the order alternating round
    by round). A DMSC call's routers run after the SGs' Python, which leaves the CPU's
    caches cold for them; a kernel call made alone follows only the light UDP echo and
    finds its routers' code and data warm. Taken in turn, both find the caches as the
    other's call left them, and the machine's drift (frequency, other load) falls on
    both alike. The kernel is then measured once more alone ("kernel_alone": its
    figures and the eBPF/kernel-alone ratios are reported beside the side-by-side ones).
    The Python data plane is measured alone.
  * One router hop, one way: (p50 RTT with 8 - with 2) / (2 x 6) from the calls, the
    issue's measure; and (p50 with 8 - p50 with 2) / 6 from the single frames, each 2 ms
    after the last (caches cold for every path). Each is also computed round by round;
    the standard error of those estimates is recorded beside it, and an eBPF/kernel
    ratio is given only where both hops stand out from zero by two standard errors.
  * Repetitions (--repeat, default 3): the whole measurement again on networks built
    afresh; each figure below is the median of the repetitions', every repetition's is
    kept beside it.

Writes bench/results/chain.json: chain_rtt_us_p50_{python,ebpf,kernel,kernel_alone}
(8 routers), their p99s, the 2-router figures (..._2sr), chain_hop_us_<plane> (one way,
from the calls) and chain_hop_us_<plane>_frames (from the frames), each with
_repetitions and _stderr_within (each repetition's standard error over its rounds);
ebpf_vs_kernel_hop(_frames) (side by side) and ebpf_vs_kernel_alone_hop(_frames), each
the median of the repetitions' ratios (or None, with a _note, when a hop was not
resolved) with _of_medians (the ratio of the two medians); every repetition's runs
under "repetitions".
"""
from __future__ import annotations

import argparse
import math
import os
import selectors
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
from topologies.fwd_net import ForwarderNet, intf_between  # noqa: E402
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
CLIENT = "/node/a/_app/1"   # the one client attached at a: its source names, per path


def build_paths(net: NetnsNetwork, lengths: List[int]) -> Dict[int, List[str]]:
    """a and b joined by one line of routers per length (routers s1..sN on the
    shorter, l1..lN on the longer): {length: [a, routers..., b]}. One pair of end
    points for both lengths, so that what differs between the two paths' RTTs is the
    routers alone, not the end points' processes."""
    net.add_node("a")
    net.add_node("b")
    paths: Dict[int, List[str]] = {}
    for tag, n in zip("sl", sorted(lengths)):
        names = ["a"] + [f"{tag}{i}" for i in range(1, n + 1)] + ["b"]
        for x in names[1:-1]:
            net.add_node(x)
        for x, y in zip(names, names[1:]):
            net.add_link(x, y)
        paths[n] = names
    return paths


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


class PathView:
    """One path of a two-path set-up, as interleaved() uses it: calls, one-way frames,
    and the facts of its routers."""

    def __init__(self, paths, n: int) -> None:
        self.paths, self.n = paths, n

    def rtt_block(self, k: int) -> List[float]:
        return self.paths.rtt_block(self.n, k)

    def oneway_probe(self) -> tuple:
        return self.paths.oneway_probe(self.n)

    def facts(self) -> dict:
        return self.paths.facts(self.n)


class DmscPaths:
    """Forwarders on both paths (data plane `mode`); at b one echo service per path
    (/echo<N>), at a one client calling /echo<N> with its own source name per path
    (flow "p<N>"), which b routes back along the same path: both directions of a
    call cross the path's N routers."""

    def __init__(self, net: NetnsNetwork, paths: Dict[int, List[str]], mode: str) -> None:
        self.net, self.paths, self.mode = net, paths, mode
        self.fn = ForwarderNet(net)
        short = min(paths)
        ends: Dict[str, List[dict]] = {"a": [], "b": []}
        for n, names in paths.items():
            a_if, b_if = intf_between(net, "a", names[1]), intf_between(net, "b", names[-2])
            ends["a"].append({"prefix": f"/echo{n}", "face": a_if})
            # b: the caller's answers go back the way its calls came (LPM on the source)
            ends["b"].append({"prefix": "/node/a" if n == short else f"{CLIENT}/p{n}",
                              "face": b_if})
            for k, x in enumerate(names[1:-1], start=1):
                toward_b, toward_a = intf_between(net, x, names[k + 1]), intf_between(net, x, names[k - 1])
                self.fn.add(x, roles=["sr"], log_level="warning", dataplane=mode,
                            routes=[{"prefix": f"/echo{n}", "face": toward_b},
                                    {"prefix": "/node/b", "face": toward_b},
                                    {"prefix": "/node/a", "face": toward_a}])
        for x in ("a", "b"):
            self.fn.add(x, roles=["sg", "sr"], log_level="warning", dataplane=mode, routes=ends[x])
        self._stack = ExitStack()

    def __enter__(self) -> "DmscPaths":
        self._stack.callback(self.fn.stop_all)
        self.fn.start_all()
        server = self._stack.enter_context(Client(self.fn["b"].app_socket))
        self.cli = self._stack.enter_context(Client(self.fn["a"].app_socket, timeout=2))
        if self.cli.name.text != CLIENT:
            raise RuntimeError(f"the client at a is {self.cli.name.text}, not {CLIENT}: "
                               "b's route back along the longer path would miss it")
        for n in self.paths:
            server.serve(f"/echo{n}", lambda payload, req: payload)
        wait_for(lambda: all(f"/echo{n}" in self.fn["b"].status()["local_prefixes"] for n in self.paths),
                 30, what="registration")
        for n in self.paths:
            self.rtt_block(n, WARMUP)   # flow decisions, kernel entries, caches
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def rtt_block(self, n: int, k: int) -> List[float]:
        return timed(k, lambda: self.cli.call(f"/echo{n}", PAYLOAD, flow=f"p{n}"))

    def oneway_probe(self, n: int) -> tuple:
        """(a probe from a's interface to b's on path n, the i-th frame of one flow)."""
        a_if, a_mac, r1_mac, b_if = _ends(self.net, self.paths[n])
        return (OneWayProbe(self.net, "a", a_if, "b", b_if, ETHERTYPE),
                lambda i: sink_frame(r1_mac, a_mac, i))

    def facts(self, n: int) -> dict:
        routers = self.paths[n][1:-1]
        kernel = {x: self.fn[x].status()["dataplane"] for x in routers}
        return {"dataplane": kernel[routers[0]]["reason"],
                "routers_in_kernel": sum(1 for d in kernel.values()
                                         if d.get("verdicts", {}).get("redirected", 0) > 0),
                "routers_redirecting_to_peer": sum(1 for d in kernel.values()
                                                   if d.get("redirected_to_peer", 0) > 0)}


def _ends(net: NetnsNetwork, names: List[str]) -> tuple:
    """(a's interface to the path's first router, a's MAC, that router's MAC on the link,
    b's interface on the path)."""
    a_if, r1_if = intf_between(net, "a", names[1]), intf_between(net, names[1], "a")
    return (a_if, mac_bytes(net.node("a").mac(a_if)), mac_bytes(net.node(names[1]).mac(r1_if)),
            intf_between(net, "b", names[-2]))


def sink_frame(dst_mac: bytes, src_mac: bytes, seq: int) -> bytes:
    """A DATA frame of one flow, to a name b owns and drops (no application reads it)."""
    pkt = Packet(PacketType.DATA, Name.parse("/node/b/_sink"), Name.parse("/node/a/_bench"),
                 PAYLOAD, flow_id=1, seq=seq & 0xFFFFFFFF).encode()
    return (dst_mac + src_mac + ETHERTYPE.to_bytes(2, "big") + pkt).ljust(60, b"\0")


class KernelPaths:
    """IPv4 on the same veths: a /31 per link; per path, an address for a and one for b
    (those of the path's first and last links) with routes along it both ways; at b a
    UDP echo socket per path, at a a client socket per path bound to its address
    (plain sockets in this process, as light as the DMSC echo service)."""

    def __init__(self, net: NetnsNetwork, paths: Dict[int, List[str]]) -> None:
        self.net, self.paths = net, paths
        self.ends: Dict[int, tuple] = {}
        j = 0
        for n, names in paths.items():
            addr: Dict[tuple, str] = {}
            for k, (x, y) in enumerate(zip(names, names[1:])):
                addr[(k, x)], addr[(k, y)] = f"10.88.{j}.0", f"10.88.{j}.1"
                net.node(x).add_addr(intf_between(net, x, y), f"{addr[(k, x)]}/31")
                net.node(y).add_addr(intf_between(net, y, x), f"{addr[(k, y)]}/31")
                j += 1
            a_ip, b_ip = addr[(0, "a")], addr[(len(names) - 2, "b")]
            self.ends[n] = (a_ip, b_ip)
            for k, x in enumerate(names):
                if 0 < k < len(names) - 1:
                    net.node(x).cmd(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
                if k < len(names) - 1:   # towards b
                    net.node(x).cmd(["ip", "route", "replace", f"{b_ip}/32", "via", addr[(k, names[k + 1])]])
                if k > 0:                # towards a
                    net.node(x).cmd(["ip", "route", "replace", f"{a_ip}/32", "via", addr[(k - 1, names[k - 1])]])
        self._stop = threading.Event()

    def __enter__(self) -> "KernelPaths":
        self.srv: Dict[int, socket.socket] = {}
        self.cli: Dict[int, socket.socket] = {}
        for n, (a_ip, b_ip) in self.ends.items():
            srv = socket_in(self.net.node("b").netns, socket.AF_INET, socket.SOCK_DGRAM)
            srv.bind((b_ip, UDP_PORT))
            self.srv[n] = srv
            cli = socket_in(self.net.node("a").netns, socket.AF_INET, socket.SOCK_DGRAM)
            cli.settimeout(2)
            cli.bind((a_ip, 0))
            cli.connect((b_ip, UDP_PORT))
            self.cli[n] = cli
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()
        for n in self.paths:
            self.rtt_block(n, WARMUP)
        return self

    def _echo(self) -> None:
        with selectors.DefaultSelector() as sel:
            for srv in self.srv.values():
                srv.setblocking(False)
                sel.register(srv, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    try:
                        data, peer = key.fileobj.recvfrom(2048)
                    except BlockingIOError:
                        continue
                    key.fileobj.sendto(data, peer)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in list(self.cli.values()) + list(self.srv.values()):
            sock.close()

    def rtt_block(self, n: int, k: int) -> List[float]:
        cli = self.cli[n]

        def call() -> bytes:
            cli.send(PAYLOAD)
            return cli.recv(2048)
        return timed(k, call)

    def oneway_probe(self, n: int) -> tuple:
        a_if, a_mac, r1_mac, b_if = _ends(self.net, self.paths[n])
        a_ip, b_ip = self.ends[n]
        frame = udp_frame(r1_mac, a_mac, a_ip, b_ip, len(PAYLOAD))
        return OneWayProbe(self.net, "a", a_if, "b", b_if, 0x0800), lambda i: frame

    def facts(self, n: int) -> dict:
        return {}


def interleaved(chains: Dict[tuple, object], samples: int, frames: int, blocks: int
                ) -> Dict[tuple, dict]:
    """`blocks` rounds; in each, a block of calls made on the chains in turn, call by call,
    then a block of one-way frames sent into the chains in turn, frame by frame, 2 ms
    apart (the chains' order alternating round by round): a drift of the machine's state
    (frequency, caches, the neighbours' load) falls on every chain length alike.

    `chains` are keyed (data plane, length) and taken length by length, the data planes
    in turn within each: with two data planes every call follows one of the other's,
    in both orders (ebpf 2, kernel 2, ebpf 8, kernel 8; then backwards), so that no
    length of one data plane always follows its own other length."""
    per = max(1, samples // blocks)
    per_frames = max(1, frames // blocks)
    out = {n: {"rtts": [], "oneway": [], "block_rtt_p50": [], "block_oneway_p50": []} for n in chains}
    probes = {n: chains[n].oneway_probe() for n in chains}
    try:
        seq = 0
        for probe, make in probes.values():   # unrecorded: caches and flow tables
            for _ in range(ONEWAY_WARMUP):
                probe.sample(make(seq))
                seq += 1
        for rnd in range(blocks):
            order = sorted(chains, key=lambda c: (c[1], c[0]), reverse=rnd % 2 == 1)
            calls: Dict[int, List[float]] = {n: [] for n in chains}
            for _ in range(per):
                for n in order:
                    calls[n] += chains[n].rtt_block(1)
            for n in chains:
                out[n]["rtts"] += calls[n]
                out[n]["block_rtt_p50"].append(percentile(calls[n], 50))
            got: Dict[int, List[float]] = {n: [] for n in chains}
            for _ in range(per_frames):
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


def groups_of(modes: List[str]) -> List[List[str]]:
    """Which data planes are measured together, call by call: eBPF and kernel (the pair
    the target compares), each other one alone."""
    pair = [m for m in modes if m in ("ebpf", "kernel")]
    out: List[List[str]] = []
    for m in modes:
        if m in pair:
            if pair not in out:
                out.append(pair)
        else:
            out.append([m])
    return out


def _record(out: dict, label: str, got: Dict[tuple, dict], key: str, lengths: List[int],
            facts: Dict[int, dict]) -> None:
    """One data plane's runs (per length) and hop estimates into `out` under `label`."""
    short, long = lengths
    for n in lengths:
        r = got[(key, n)]
        run = dict(facts.get(n, {}), p50_us=round(percentile(r["rtts"], 50), 1),
                   p99_us=round(percentile(r["rtts"], 99), 1),
                   oneway_p50_us=round(percentile(r["oneway"], 50), 1),
                   block_rtt_p50_us=[round(x, 1) for x in r["block_rtt_p50"]],
                   block_oneway_p50_us=[round(x, 1) for x in r["block_oneway_p50"]])
        out["runs"][f"{label}_{n}"] = run
        print(f"  {n} routers, {label}: RTT p50 {run['p50_us']:.0f} us, p99 {run['p99_us']:.0f} us; "
              f"one way through the chain p50 {run['oneway_p50_us']:.1f} us", flush=True)
    rt = hop_estimate(got[(key, long)], got[(key, short)], long - short, "rtt")
    ow = hop_estimate(got[(key, long)], got[(key, short)], long - short, "oneway")
    out["hops"][label] = {"calls": rt, "frames": ow}
    print(f"  one {label} hop, one way: {rt['us']} us from the calls (standard error "
          f"{rt['stderr_us']}), {ow['us']} us from single frames 2 ms apart "
          f"(standard error {ow['stderr_us']})", flush=True)


def repetition(lengths: List[int], modes: List[str], samples: int, frames: int, blocks: int,
               rep: int) -> dict:
    """One repetition, on networks built afresh: each group of groups_of(modes) in its
    own network(s) (one per data plane, the same two paths in each), its data planes'
    calls and frames interleaved one by one; then, where eBPF and kernel ran together,
    the kernel alone once more on its network ("kernel_alone").
    {"runs": per data plane and length, "hops": per data plane (calls, frames)}."""
    short, long = lengths
    out: dict = {"runs": {}, "hops": {}}
    for group in groups_of(modes):
        with ExitStack() as stack:
            nets = {m: stack.enter_context(NetnsNetwork(new_run_dir(f"bench-chain-{m}")))
                    for m in group}
            paths = {m: build_paths(nets[m], lengths) for m in group}
            planes = {m: stack.enter_context(DmscPaths(nets[m], paths[m], m) if m != "kernel"
                                             else KernelPaths(nets[m], paths[m]))
                      for m in group}
            chains = {(m, n): PathView(planes[m], n) for m in group for n in lengths}
            print(f"[{rep}] {' and '.join(group)}: {blocks} rounds on the {short}- and "
                  f"{long}-router paths{', call by call in turn' if len(group) > 1 else ''} ...",
                  flush=True)
            got = interleaved(chains, samples, frames, blocks)
            for m in group:
                _record(out, m, got, m, lengths, {n: chains[(m, n)].facts() for n in lengths})
            if "kernel" in group and len(group) > 1:
                print(f"[{rep}] kernel alone: {blocks} rounds ...", flush=True)
                alone = interleaved({("kernel", n): chains[("kernel", n)] for n in lengths},
                                    samples, frames, blocks)
                _record(out, "kernel_alone", alone, "kernel", lengths, {})
    if "ebpf" in out["hops"] and "kernel" in out["hops"]:
        for against in ("kernel", "kernel_alone"):
            for kind in ("calls", "frames"):
                ratio, why = hop_ratio(out["hops"]["ebpf"][kind], out["hops"][against][kind])
                out[f"ebpf_vs_{against}_hop_{kind}"] = ratio if ratio is not None else why
    return out


def median_of(values: List[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000,
                    help="round trips per path (default 20000: the hop is about 2%% of a DMSC "
                         "call's RTT, and the SGs' Python spreads the RTT; fewer calls leave "
                         "the eBPF hop with a standard error of a third of itself)")
    ap.add_argument("--frames", type=int, default=3000,
                    help="one-way frames per path, 2 ms apart (default 3000)")
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
    if args.blocks < 2 or args.samples < args.blocks or args.frames < args.blocks:
        ap.error("--blocks must be at least 2 and at most --samples and --frames")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    modes = [m.strip() for m in args.dataplanes.split(",") if m.strip()]
    if not modes or any(m not in ("python", "ebpf", "kernel") for m in modes) or len(set(modes)) != len(modes):
        ap.error("--dataplanes takes distinct names among python, ebpf, kernel, e.g. ebpf,kernel")
    short, long = lengths
    result: dict = {"bench": "chain", "machine": machine_facts(), "method": __doc__.strip(),
                    "dataplanes": modes, "samples": args.samples, "frames": args.frames, "blocks": args.blocks,
                    "repeat": args.repeat, "payload_bytes": len(PAYLOAD)}
    reps = [repetition(lengths, modes, args.samples, args.frames, args.blocks, r + 1) for r in range(args.repeat)]
    result["repetitions"] = reps
    labels = list(modes) + (["kernel_alone"] if "ebpf" in modes and "kernel" in modes else [])
    for mode in labels:
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
        for against in ("kernel", "kernel_alone"):
            for kind, suffix in (("calls", ""), ("frames", "_frames")):
                name = f"ebpf_vs_{against}_hop{suffix}"
                each = [r[f"ebpf_vs_{against}_hop_{kind}"] for r in reps]
                result[f"{name}_repetitions"] = each
                nums = [x for x in each if isinstance(x, (int, float))]
                result[name] = median_of(nums) if len(nums) == len(each) else None
                # the same question asked of the two medians above (not paired by repetition)
                result[f"{name}_of_medians"] = round(
                    result[f"chain_hop_us_ebpf{suffix}"] / result[f"chain_hop_us_{against}{suffix}"], 2) \
                    if result[f"chain_hop_us_{against}{suffix}"] > 0 else None
                if len(nums) != len(each):
                    result[f"{name}_note"] = \
                        "a repetition's hops were not resolved from zero (see _repetitions)"
            print(f"eBPF / {against.replace('_', ' ')} hop, median of {args.repeat}: "
                  f"{result[f'ebpf_vs_{against}_hop']} from the calls "
                  f"{result[f'ebpf_vs_{against}_hop_repetitions']}, "
                  f"{result[f'ebpf_vs_{against}_hop_frames']} from the frames "
                  f"{result[f'ebpf_vs_{against}_hop_frames_repetitions']}", flush=True)
    result["targets"] = {"chain_hop_us_ebpf": "<= 1.5 x chain_hop_us_kernel"}
    result["machine"]["loadavg_at_end"] = loadavg()
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
