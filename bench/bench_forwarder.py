#!/usr/bin/env python3
"""Forwarder benchmark: one DMSC hop three ways -- the Python forwarder, the Python
forwarder with the kernel fast path (eBPF), and kernel IPv4 forwarding -- on the same
path with the same generator, in one run.

Topology (network namespaces, veth):   g --- r --- s      plus a direct link g2 --- s2
  * throughput: trafgen in g sends as fast as it can (pinned to CPU 0); r runs the DMSC
    forwarder (pinned to CPU 1; dataplane python or ebpf) or kernel IPv4 forwarding;
    frames/s = rise of s's interface rx counter over the measurement window. The flow is
    established first (one frame decided by the forwarder), as in a running network.
  * CPU per forwarded frame: trafgen at a fixed rate every path carries whole
    (--cpu-rate); the busy CPU time of the machine (/proc/stat, all cores, softirq
    included: where the kernel and eBPF paths do their work) minus trafgen's own, over
    the frames s received.
  * latency: one process holds raw sockets in g and s (same clock); a frame is sent
    every 2 ms and timestamped on arrival. Added latency = sample - median of the same
    measurement over the direct link g2 - s2.
  * memory: VmRSS of the idle forwarder.

Writes bench/results/forwarder.json: keys dmsc_* (the Python data plane, as before),
ebpf_*, kernel_*, cpu_us_per_frame_{python,ebpf,kernel}.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forwarder.dataplane.names import Name  # noqa: E402
from forwarder.dataplane.wire import ETHERTYPE, Packet, PacketType  # noqa: E402
from topologies.fwd_net import ForwarderNet  # noqa: E402
from topologies.measure import (CLK_TCK, children_map, loadavg, machine_facts, percentile,  # noqa: E402
                                proc_cpu_s, proc_mem_kb, with_descendants, write_result)
from topologies.netns import NetnsNetwork  # noqa: E402
from topologies.nsenter import socket_in  # noqa: E402
from topologies.records import new_run_dir  # noqa: E402

RESULTS = REPO / "bench" / "results"


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def dmsc_frame(dst_mac: bytes, src_mac: bytes, payload_len: int, seq: int = 0) -> bytes:
    pkt = Packet(PacketType.REQUEST, Name.parse("/bench/sink"), Name.parse("/node/g"),
                 b"\x5a" * payload_len, flow_id=1, seq=seq).encode()
    frame = dst_mac + src_mac + ETHERTYPE.to_bytes(2, "big") + pkt
    return frame.ljust(60, b"\0")


def udp_frame(dst_mac: bytes, src_mac: bytes, src_ip: str, dst_ip: str, payload_len: int) -> bytes:
    udp_len = 8 + payload_len
    total = 20 + udp_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                      socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    csum = _ip_checksum(hdr)
    hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
    udp = struct.pack("!HHHH", 40000, 9, udp_len, 0) + b"\x5a" * payload_len
    return (dst_mac + src_mac + b"\x08\x00" + hdr + udp).ljust(60, b"\0")


def _ip_checksum(b: bytes) -> int:
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def trafgen_conf(path: Path, frame: bytes) -> None:
    path.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")


def rx_packets(net: NetnsNetwork, node: str, intf: str) -> int:
    out = net.node(node).cmd(["cat", f"/sys/class/net/{intf}/statistics/rx_packets"]).stdout
    return int(out)


def measure_fps(net: NetnsNetwork, frame: bytes, g_intf: str, s_intf: str, work: Path,
                warmup: float, window: float) -> dict:
    conf = work / f"frame-{len(frame)}-{frame[12:14].hex()}.cfg"
    trafgen_conf(conf, frame)
    g = net.node("g")
    gen = g.popen(["taskset", "-c", "0", "trafgen", "--dev", g_intf, "--conf", str(conf),
                   "--cpus", "1", "--no-sock-mem", "--num", "0"], f"trafgen-{conf.stem}")
    try:
        time.sleep(warmup)  # the generator needs a moment to reach full rate
        tx0 = int(g.cmd(["cat", f"/sys/class/net/{g_intf}/statistics/tx_packets"]).stdout)
        rx0, t0 = rx_packets(net, "s", s_intf), time.monotonic()
        time.sleep(window)
        rx1, t1 = rx_packets(net, "s", s_intf), time.monotonic()
        tx1 = int(g.cmd(["cat", f"/sys/class/net/{g_intf}/statistics/tx_packets"]).stdout)
    finally:
        stop_generator(gen)
    dt = t1 - t0
    return {"fps": round((rx1 - rx0) / dt), "offered_fps": round((tx1 - tx0) / dt),
            "window_s": round(dt, 3)}


def stop_generator(gen: subprocess.Popen) -> None:
    """SIGINT to trafgen and its worker (the whole group), SIGKILL if it lingers."""
    os.killpg(gen.pid, signal.SIGINT)
    try:
        gen.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(gen.pid, signal.SIGKILL)
        gen.wait(5)


class OneWayProbe:
    """Two raw sockets held by this process: one sends a frame on src's interface, the
    other takes it off dst's interface; `sample` gives the one-way time in us.

    The receiver busy-polls (non-blocking recv in a loop), so the measuring
    process's own wake-up is not part of the sample; the same method is used
    for every path compared."""

    def __init__(self, net: NetnsNetwork, src: str, src_intf: str, dst: str, dst_intf: str,
                 proto: int) -> None:
        self.tx = socket_in(net.node(src).netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind((src_intf, 0))
        self.rx = socket_in(net.node(dst).netns, socket.AF_PACKET, socket.SOCK_RAW,
                            socket.htons(proto))
        self.rx.bind((dst_intf, proto))
        self.rx.setblocking(False)

    def sample(self, frame: bytes, match: Optional[Callable[[bytes], bool]] = None
               ) -> Optional[float]:
        """us from send to receipt of the frame `match` recognises (default: any frame
        that arrives); None if none came within a second. Whatever waited on the
        receiving socket before the send (a late frame, a neighbour's hello) is
        dropped first."""
        while True:
            try:
                self.rx.recv(65536)
            except BlockingIOError:
                break
        clock = time.perf_counter_ns
        t0 = clock()
        self.tx.send(frame)
        deadline = t0 + 1_000_000_000
        while clock() < deadline:
            try:
                data, addr = self.rx.recvfrom(65536)
            except BlockingIOError:
                continue
            if addr[2] != socket.PACKET_OUTGOING and (match is None or match(data)):
                return (clock() - t0) / 1000.0
        return None

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


def measure_latency(net: NetnsNetwork, src: str, src_intf: str, dst: str, dst_intf: str,
                    make_frame, proto: int, samples: int) -> list:
    """`samples` one-way latencies (us) through OneWayProbe, 2 ms apart, after 50
    unrecorded ones (the first warm caches and flow tables)."""
    probe = OneWayProbe(net, src, src_intf, dst, dst_intf, proto)
    out = []
    try:
        for i in range(samples + 50):
            got = probe.sample(make_frame(i))
            if got is not None and i >= 50:
                out.append(got)
            time.sleep(0.002)
    finally:
        probe.close()
    return out


def machine_busy_ticks() -> int:
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    vals = [int(x) for x in first[1:8]]
    return sum(vals) - vals[3] - vals[4]  # all but idle and iowait


def cpu_per_frame(net: NetnsNetwork, frame: bytes, g_intf: str, s_intf: str, work: Path,
                  rate_pps: int, window: float) -> dict:
    """Busy CPU of the whole machine, less the generator's, per frame s received, with
    trafgen at a rate every path forwards whole."""
    conf = work / f"cpu-{len(frame)}-{frame[12:14].hex()}.cfg"
    trafgen_conf(conf, frame)
    g = net.node("g")
    gen = g.popen(["taskset", "-c", "0", "trafgen", "--dev", g_intf, "--conf", str(conf),
                   "--cpus", "1", "--no-sock-mem", "--num", "0", "--rate", f"{rate_pps}pps"],
                  f"trafgen-{conf.stem}")
    try:
        time.sleep(1.0)
        kids = children_map()
        procs = with_descendants([gen.pid], kids)
        b0, c0 = machine_busy_ticks(), sum(proc_cpu_s(p) for p in procs)
        rx0, t0 = rx_packets(net, "s", s_intf), time.monotonic()
        time.sleep(window)
        rx1, t1 = rx_packets(net, "s", s_intf), time.monotonic()
        b1, c1 = machine_busy_ticks(), sum(proc_cpu_s(p) for p in procs)
    finally:
        stop_generator(gen)
    frames = rx1 - rx0
    busy = (b1 - b0) / CLK_TCK - (c1 - c0)
    return {"frames": frames, "fps": round(frames / (t1 - t0)), "busy_cpu_s": round(busy, 3),
            "cpu_us_per_frame": round(busy / max(1, frames) * 1e6, 3)}


def prime(net: NetnsNetwork, g_intf: str, s_intf: str, frame: bytes) -> None:
    """One frame of the flow through r, so that the flow is decided (and, with the
    kernel fast path, installed) before anything is measured; waits for it at s."""
    rx = socket_in(net.node("s").netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    rx.bind((s_intf, ETHERTYPE))
    rx.settimeout(5)
    tx = socket_in(net.node("g").netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.bind((g_intf, 0))
    try:
        for _ in range(3):
            tx.send(frame)
            try:
                while True:
                    _, addr = rx.recvfrom(65536)
                    if addr[2] != socket.PACKET_OUTGOING:
                        return
            except socket.timeout:
                continue
        raise RuntimeError("no frame of the flow crossed r")
    finally:
        rx.close()
        tx.close()


def bench_dmsc(net: NetnsNetwork, run: Path, args, mode: str, result: dict) -> None:
    """The forwarder on r with one data plane: throughput, CPU per frame, latency, RSS."""
    key = "dmsc" if mode == "python" else "ebpf"
    pre = "" if mode == "python" else "ebpf_"   # the Python path keeps its earlier key names
    l1, l2, l3 = net.links
    g_if, rg_if, rs_if, s_if = l1.intf_a, l1.intf_b, l2.intf_a, l2.intf_b
    fn = ForwarderNet(net)
    fwd = fn.add("r", faces=[{"name": rg_if, "interface": rg_if}, {"name": rs_if, "interface": rs_if}],
                 routes=[{"prefix": "/bench", "face": rs_if}, {"prefix": "/node/g", "face": rg_if}],
                 roles=["sr"], log_level="warning", dataplane=mode)
    fwd.start()
    try:
        result[f"{key}_dataplane"] = fwd.status()["dataplane"]["reason"]
        pid = int((fwd.workdir / "forwarder.pid").read_text())
        subprocess.run(["taskset", "-p", "-c", "1", str(pid)], check=True, capture_output=True)
        time.sleep(0.5)
        result[f"{pre}rss_mb_idle"] = round(proc_mem_kb(pid)["rss_kb"] / 1024, 1)
        g_mac, r_mac = mac_bytes(net.node("g").mac(g_if)), mac_bytes(net.node("r").mac(rg_if))
        for size in (64, 1000):
            frame = dmsc_frame(r_mac, g_mac, size)
            prime(net, g_if, s_if, frame)
            res = measure_fps(net, frame, g_if, s_if, run, args.warmup, args.window)
            result[f"{key}_fps_{size}"] = res["fps"]
            result[f"{key}_offered_fps_{size}"] = res["offered_fps"]
            print(f"{mode}: {size}-byte payload: {res['fps']} frames/s forwarded "
                  f"(offered {res['offered_fps']})", flush=True)
        cpu = cpu_per_frame(net, dmsc_frame(r_mac, g_mac, 64), g_if, s_if, run, args.cpu_rate,
                            args.window)
        result[f"cpu_us_per_frame_{mode}"] = cpu["cpu_us_per_frame"]
        result[f"cpu_run_{mode}"] = cpu
        print(f"{mode}: {cpu['cpu_us_per_frame']} us of CPU per frame at {cpu['fps']} frames/s",
              flush=True)
        st = fwd.status()
        result[f"{key}_forwarder_drops"] = st["drops"]
        if mode == "ebpf":
            result["ebpf_verdicts"] = st["dataplane"]["verdicts"]
        s2_mac = mac_bytes(net.node("s2").mac(l3.intf_b))
        g2_mac = mac_bytes(net.node("g2").mac(l3.intf_a))
        through = measure_latency(net, "g", g_if, "s", s_if,
                                  lambda i: dmsc_frame(r_mac, g_mac, 64, seq=i), ETHERTYPE,
                                  args.samples)
        direct = measure_latency(net, "g2", l3.intf_a, "s2", l3.intf_b,
                                 lambda i: dmsc_frame(s2_mac, g2_mac, 64, seq=i), ETHERTYPE,
                                 args.samples)
        base = statistics.median(direct)
        added = [x - base for x in through]
        result.update({f"{pre}hop_latency_us_p50": round(percentile(added, 50), 1),
                       f"{pre}hop_latency_us_p99": round(percentile(added, 99), 1),
                       f"{pre}path_latency_us_p50": round(percentile(through, 50), 1),
                       "direct_link_latency_us_p50": round(base, 1),
                       f"{pre}latency_samples": len(added)})
        print(f"{mode}: added latency of one hop p50 {result[f'{pre}hop_latency_us_p50']} us, "
              f"p99 {result[f'{pre}hop_latency_us_p99']} us (direct link p50 {base:.1f} us)",
              flush=True)
    finally:
        fwd.stop()


def bench_kernel(net: NetnsNetwork, run: Path, args, result: dict) -> None:
    """Kernel IPv4 forwarding on the same nodes and links, same generator."""
    l1, l2, l3 = net.links
    g_if, rg_if, rs_if, s_if = l1.intf_a, l1.intf_b, l2.intf_a, l2.intf_b
    g_mac, r_mac = mac_bytes(net.node("g").mac(g_if)), mac_bytes(net.node("r").mac(rg_if))
    net.node("g").add_addr(g_if, "10.77.1.1/24")
    net.node("r").add_addr(rg_if, "10.77.1.254/24")
    net.node("r").add_addr(rs_if, "10.77.2.254/24")
    net.node("s").add_addr(s_if, "10.77.2.1/24")
    net.node("r").cmd(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    net.node("g").cmd(["ip", "route", "add", "10.77.2.0/24", "via", "10.77.1.254"])
    net.node("s").cmd(["ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.254"])
    # Resolve ARP for r's next hop so no frame waits on neighbour discovery.
    net.node("r").cmd(["ping", "-c", "1", "-W", "1", "10.77.2.1"], check=False)
    net.node("g").cmd(["ping", "-c", "1", "-W", "1", "10.77.1.254"], check=False)
    for size in (64, 1000):
        res = measure_fps(net, udp_frame(r_mac, g_mac, "10.77.1.1", "10.77.2.1", size), g_if,
                          s_if, run, args.warmup, args.window)
        result[f"kernel_fps_{size}"] = res["fps"]
        result[f"kernel_offered_fps_{size}"] = res["offered_fps"]
        print(f"kernel IPv4 forwarding, {size}-byte UDP payload: {res['fps']} frames/s "
              f"(offered {res['offered_fps']})", flush=True)
    cpu = cpu_per_frame(net, udp_frame(r_mac, g_mac, "10.77.1.1", "10.77.2.1", 64), g_if, s_if,
                        run, args.cpu_rate, args.window)
    result["cpu_us_per_frame_kernel"] = cpu["cpu_us_per_frame"]
    result["cpu_run_kernel"] = cpu
    print(f"kernel: {cpu['cpu_us_per_frame']} us of CPU per frame at {cpu['fps']} frames/s",
          flush=True)
    base = result["direct_link_latency_us_p50"]
    kern = measure_latency(net, "g", g_if, "s", s_if,
                           lambda i: udp_frame(r_mac, g_mac, "10.77.1.1", "10.77.2.1", 64),
                           0x0800, args.samples)
    result["kernel_hop_latency_us_p50"] = round(percentile([x - base for x in kern], 50), 1)
    result["kernel_hop_latency_us_p99"] = round(percentile([x - base for x in kern], 99), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=3.0, help="seconds measured per throughput point")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=2000, help="latency samples per path")
    ap.add_argument("--cpu-rate", type=int, default=30000,
                    help="frames/s offered for the CPU-per-frame measurement (default 30000)")
    ap.add_argument("--dataplanes", default="python,ebpf",
                    help="DMSC data planes measured beside the kernel (default python,ebpf)")
    ap.add_argument("--out", type=Path, default=RESULTS / "forwarder.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_forwarder: needs root (network namespaces)", file=sys.stderr)
        return 2
    run = new_run_dir("bench-forwarder")
    result: dict = {"bench": "forwarder", "machine": machine_facts(),
                    "method": __doc__.strip(), "run_dir": str(run)}
    with NetnsNetwork(run) as net:
        for n in ("g", "r", "s", "g2", "s2"):
            net.add_node(n)
        net.add_link("g", "r")
        net.add_link("r", "s")
        net.add_link("g2", "s2")
        for mode in [m.strip() for m in args.dataplanes.split(",") if m.strip()]:
            bench_dmsc(net, run, args, mode, result)
        bench_kernel(net, run, args, result)
    for k in ("dmsc", "ebpf"):
        if f"{k}_fps_64" in result:
            result[f"{k}_vs_kernel_fps_64"] = round(result[f"{k}_fps_64"] / max(1, result["kernel_fps_64"]), 3)
    # A path that forwarded (nearly) everything offered was limited by the generator,
    # not by the forwarder: then the ratio above is a lower bound for that path.
    for key in [k for k in result if k.endswith(("_fps_64", "_fps_1000")) and "offered" not in k
                and "_vs_" not in k]:
        offered = result[key.replace("_fps_", "_offered_fps_")]
        result[key.replace("_fps_", "_limited_by_")] = \
            "generator" if result[key] >= 0.95 * offered else "forwarding path"
    result["machine"]["loadavg_at_end"] = loadavg()
    result["targets"] = {"ebpf_fps_64": ">= 0.9 x kernel_fps_64", "dmsc_fps_64": ">= 100000",
                         "hop_latency_us_p50": "< 20", "rss_mb_idle": "< 30"}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
