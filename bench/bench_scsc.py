#!/usr/bin/env python3
"""SCSC policy push benchmark: intent posted on the REST API -> every forwarder acknowledged.

Two set-ups, each measured with the same client-side clock (the REST call
`POST /intents?wait=10` returns only after the last acknowledgement arrived):

* **36 real forwarders**: `python -m forwarder` processes, each in its own
  network namespace, joined to the SCSC (`python -m controller`, in its own
  namespace) by a management bridge in a namespace of its own (10.255.0.0/24).
  The forwarders have no data links: the push path (SCSC -> TCP -> agent thread
  -> forwarder loop -> strategy table -> ack) is the real one.
* **200 simulated forwarders**: real `forwarder.scsc_agent.ScscAgent`
  instances, each on a stand-in daemon with a real pipeline (`controller.simulate`),
  all in this process, connected over loopback to a real SCSC process. 200
  forwarder processes do not fit in 2 cores' worth of lab; the agent code, the
  protocol and the SCSC are the same.

Each round posts an intent that changes every forwarder's policy (a critical
class for a new prefix, alternately added and withdrawn). Reported: median and
p90 over the rounds of the client round trip (`push_ms_*`), of the SCSC's own
measure (intent received -> last ack processed) and, for the simulated set,
of the agents' clock (intent sent -> last agent installed its rules).
`scsc_sigterm_s`: SIGTERM to exit of the SCSC with 36 agents connected.

Two more set-ups measure what tests/test_scsc_netns.py checks without a clock:

* **critical** (`critical_*`): a - r - b with the SCSC, r -> b shaped to
  20 Mbit/s with a priority class for skb priority 6-7 (topologies/tc_prio.py);
  /crit marked critical. Round-trip times of /crit calls (one try each, 4 ms
  apart) and of best-effort /be calls, unloaded and with trafgen pushing
  25 Mbit/s of bulk frames through r, rounds alternating so that the machine's
  other work weighs on both alike; p50/p99 per side and the loaded/unloaded
  p99 ratio, with the classes' counters.
* **weights** (`weights_*`): a with two instances of /svc (d1, d2), telemetry
  every 0.5 s, a load of one new flow per call; d1 made 20 ms slow: seconds
  (and telemetry intervals) until a's rule gives d1 its floor weight, and after
  d1 is fast again until it has its share back.

Every set-up records the load average beside its figures (a shared machine).

Writes bench/results/scsc.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.rest_client import ScscRest  # noqa: E402
from topologies.measure import loadavg, machine_facts, percentile, wait_for  # noqa: E402

RESULTS = REPO / "bench" / "results"
SENT_MS: list = []  # per round: intent received -> policy sent to every forwarder (SCSC clock)


def cpu_idle(seconds: float = 1.0) -> float:
    """Share of CPU time idle over `seconds` (from /proc/stat)."""
    def read():
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return v[3] + v[4], sum(v)
    i0, t0 = read()
    time.sleep(seconds)
    i1, t1 = read()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(max_wait: float, threshold: float = 0.85) -> float:
    """Wait (up to max_wait s) until the machine is mostly idle: this is a shared lab
    machine, and a benchmark measured next to someone's 200-node emulation measures
    that emulation. Returns the idle share seen last."""
    deadline = time.monotonic() + max_wait
    idle = cpu_idle()
    while idle < threshold and time.monotonic() < deadline:
        idle = cpu_idle()
    return round(idle, 3)


def summary(xs):
    return {"median": round(statistics.median(xs), 2), "p90": round(percentile(xs, 90), 2),
            "min": round(min(xs), 2), "max": round(max(xs), 2), "rounds": len(xs)}


def worker(port: int, first: int, count: int, interval: float) -> int:
    """A process holding `count` simulated forwarders; reports each policy applied on stdout."""
    from controller.simulate import start_agents
    sys.setswitchinterval(0.001)
    out_lock = threading.Lock()

    def on_policy(i, version, t):
        with out_lock:
            sys.stdout.write(f"{first + i} {version} {t:.6f}\n")
            sys.stdout.flush()
    agents = start_agents(count, ("127.0.0.1", port), interval, prefix=f"/node/sim{first}_",
                          on_policy=on_policy)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        for a in agents:
            a.stop(0.2)
    return 0


def bench_simulated(n: int, rounds_: int, interval: float, procs: int) -> dict:
    from topologies.records import new_run_dir
    run = new_run_dir("bench-scsc-sim")
    port, rest_port = 17700 + os.getpid() % 200, 18700 + os.getpid() % 200
    log = open(run / "scsc.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--southbound", f"127.0.0.1:{port}",
                             "--rest", f"127.0.0.1:{rest_port}", "--policy-lifetime", "60"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    rest = ScscRest("127.0.0.1", rest_port)
    last = {}
    lock = threading.Lock()
    workers = []

    def reader(w):
        for line in w.stdout:
            i, _, t = line.split()
            with lock:
                last[int(i)] = float(t)
    try:
        wait_for(lambda: _up(rest), 15, what="the SCSC")
        per = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
        first = 0
        for count in per:
            w = subprocess.Popen([sys.executable, __file__, "--worker", "--port", str(port),
                                  "--first", str(first), "--count", str(count),
                                  "--interval", str(interval)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            threading.Thread(target=reader, args=(w,), daemon=True).start()
            workers.append(w)
            first += count
        wait_for(lambda: _in_sync(rest, n), 60, interval=0.1, what=f"{n} simulated forwarders")
        _one_round(rest, n, 1000)  # warm-up
        _one_round(rest, n, 1001)
        agent_ms, client, scsc = [], [], []
        SENT_MS.clear()
        for k in range(rounds_):
            with lock:
                last.clear()
            c, s, st = _one_round(rest, n, k)
            client.append(c)
            scsc.append(s)
            deadline = time.time() + 2
            while time.time() < deadline:
                with lock:
                    if len(last) == n:
                        agent_ms.append((max(last.values()) - st) * 1000)
                        break
                time.sleep(0.005)
        return {"forwarders": n,
                "kind": f"simulated: real ScscAgent instances on stand-in daemons (real pipeline and "
                        f"strategy table, no sockets), {procs} processes, loopback TCP",
                "telemetry_interval_s": interval,
                "client_ms": summary(client), "scsc_ms": summary(scsc),
                "scsc_sent_ms": summary(SENT_MS[-rounds_:]),
                "agents_ms": summary(agent_ms) if agent_ms else None}
    finally:
        for w in workers:
            try:
                w.stdin.close()
            except OSError:
                pass
        for w in workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _one_round(rest, n, k):
    prefix = f"/bench/q{k // 2}"
    body = {"kind": "critical", "prefix": prefix}
    if k % 2:
        body["remove"] = True
    t0 = time.time()
    status, out = rest.request("POST", "/intents?wait=10", body)
    ms = (time.time() - t0) * 1000
    if status != 200 or not out.get("applied") or out.get("forwarders") != n:
        raise RuntimeError(f"round {k}: push not acknowledged by all {n}: {status} {out}")
    time.sleep(0.05)
    SENT_MS.append(out["sent_ms"])
    return ms, out["push_ms"], t0


def _up(rest) -> bool:
    try:
        return rest.get("/health")["status"] == "ok"
    except Exception:
        rest.close()
        return False


def _in_sync(rest, n) -> bool:
    try:
        h = rest.get("/health")
    except Exception:
        rest.close()
        return False
    return h["connected"] >= n and h["in_sync"] >= n


def bench_real(n: int, rounds_: int, interval: float) -> dict:
    from topologies.fwd_net import ForwarderNet, ScscNode
    from topologies.netns import NetnsNetwork, require_netns
    from topologies.records import new_run_dir
    why = require_netns()
    if why:
        raise SystemExit(f"bench_scsc: {why}")
    net = NetnsNetwork(new_run_dir("bench-scsc"))
    try:
        mgmt = net.add_mgmt_network()
        scsc = ScscNode(net, mgmt, lifetime=60).start()
        fn = ForwarderNet(net)
        names = [f"f{i}" for i in range(n)]
        t0 = time.monotonic()
        for name in names:
            net.add_node(name)
            mgmt.attach(name)
            fn.add(name, scsc=scsc.southbound, telemetry_interval_s=interval)
        fn.start_all()
        wait_for(lambda: _in_sync(scsc.rest, n), 60, interval=0.1, what=f"{n} forwarders")
        up_s = time.monotonic() - t0
        _one_round(scsc.rest, n, 1000)
        _one_round(scsc.rest, n, 1001)
        client, scsc_ms = [], []
        SENT_MS.clear()
        for k in range(rounds_):
            c, s, _ = _one_round(scsc.rest, n, k)
            client.append(c)
            scsc_ms.append(s)
        # the rules really land in the forwarders' strategy tables
        _one_round(scsc.rest, n, 2000)
        rules = {r["prefix"]: r for r in fn[names[-1]].api("GET", "/strategy")["rules"]}
        if rules.get("/bench/q1000", {}).get("priority") != 7:
            raise RuntimeError(f"the pushed rule is not in {names[-1]}'s strategy table: {rules}")
        took = scsc.stop()
        return {"forwarders": n, "kind": "real forwarder processes (python -m forwarder), one network "
                                          "namespace each, management bridge in its own namespace",
                "telemetry_interval_s": interval, "lab_up_s": round(up_s, 1),
                "client_ms": summary(client), "scsc_ms": summary(scsc_ms),
                "scsc_sent_ms": summary(SENT_MS[-rounds_:]),
                "scsc_sigterm_s": round(took, 3) if took is not None else None}
    finally:
        try:  # SIGTERM to every process, SIGKILL after 3 s, namespaces deleted
            net.stop()
        except RuntimeError as exc:
            print(f"bench_scsc: warning: {exc}", file=sys.stderr)


def scsc_net(net, names, links, interval: float):
    """Nodes and links on `net`, an SCSC on its management network that every node
    reaches; returns (the ScscNode, a ForwarderNet, the forwarders' common settings)."""
    from topologies.fwd_net import ForwarderNet, ScscNode
    mgmt = net.add_mgmt_network()
    for n in names:
        net.add_node(n)
    scsc = ScscNode(net, mgmt, lifetime=30).start()
    for n in names:
        mgmt.attach(n)
    for a, b in links:
        net.add_link(a, b)
    common = dict(scsc=scsc.southbound, telemetry_interval_s=interval, log_level="warning")
    return scsc, ForwarderNet(net), common


def _line_with_scsc(net, interval: float):
    """a - r - b (static routes), every forwarder reporting to an SCSC; as tests/test_scsc_netns.py."""
    from topologies.fwd_net import intf_between
    scsc, fn, common = scsc_net(net, ("a", "r", "b"), (("a", "r"), ("r", "b")), interval)
    i = lambda x, y: intf_between(net, x, y)  # noqa: E731
    fn.add("a", routes=[{"prefix": p, "face": i("a", "r")} for p in ("/crit", "/be", "/node/b")], **common)
    fn.add("r", roles=["sr"], routes=[
        {"prefix": "/crit", "face": i("r", "b")}, {"prefix": "/be", "face": i("r", "b")},
        {"prefix": "/bulk", "face": i("r", "b")}, {"prefix": "/node/a", "face": i("r", "a")},
        {"prefix": "/node/b", "face": i("r", "b")}], **common)
    fn.add("b", routes=[{"prefix": "/node/a", "face": i("b", "r")}], **common)
    fn.start_all()
    wait_for(lambda: _in_sync(scsc.rest, 3), 60, interval=0.1, what="three agents")
    return fn, scsc


def _rtts_ms(cli, name: str, n: int, pause: float = 0.004, timeout: float = 3.0) -> list:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        try:
            cli.call(name, b"c", timeout=timeout, retries=0)
            out.append((time.perf_counter() - t) * 1000)
        except Exception:  # a lost call: counted at the timeout
            out.append(timeout * 1000)
        time.sleep(pause)
    return out


def bench_critical(rounds_: int, calls: int) -> dict:
    """Critical-class latency on a saturated shaped link (see the module docstring)."""
    import signal
    from forwarder.dataplane import wire
    from forwarder.apps.client import Client
    from forwarder.dataplane.names import Name
    from topologies import tc_prio
    from topologies.fwd_net import intf_between
    from topologies.netns import NetnsNetwork
    from topologies.records import new_run_dir
    net = NetnsNetwork(new_run_dir("bench-scsc-critical"))
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        fn, scsc = _line_with_scsc(net, 0.5)
        r_out, r = intf_between(net, "r", "b"), net.node("r")
        tc_prio.shape_with_priority_class(r, r_out, 20)
        out = scsc.rest.post_intent({"kind": "critical", "prefix": "/crit"}, wait=20)
        if not out.get("applied"):
            raise RuntimeError(f"critical intent not applied: {out}")
        a_if, r_if = intf_between(net, "a", "r"), intf_between(net, "r", "a")
        a_mac = bytes.fromhex(net.node("a").mac(a_if).replace(":", ""))
        r_mac = bytes.fromhex(r.mac(r_if).replace(":", ""))
        pkt = wire.Packet(wire.PacketType.REQUEST, Name.parse("/bulk/sink"), Name.parse("/node/g/bulk"),
                          b"\x5a" * 1300, flow_id=1, seq=1).encode()
        frame = r_mac + a_mac + wire.ETHERTYPE.to_bytes(2, "big") + pkt
        conf = net.run_dir / "bulk.cfg"
        conf.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
        stats = lambda: tc_prio.class_stats(r, r_out)  # noqa: E731
        unloaded, loaded, be_unloaded, be_loaded, backlog = [], [], [], [], []
        with Client(fn["b"].app_socket) as server, Client(fn["a"].app_socket, timeout=3) as cli:
            server.serve("/crit", lambda p, req: b"ok")
            server.serve("/be", lambda p, req: b"ok")
            for p in ("/crit", "/be"):
                wait_for(lambda: p in fn["b"].status()["local_prefixes"], 30, what="registration")
            _rtts_ms(cli, "/crit", 50)  # warm up
            for _ in range(rounds_):
                unloaded += _rtts_ms(cli, "/crit", calls)
                be_unloaded += _rtts_ms(cli, "/be", 10)
                gen = net.node("a").popen(["trafgen", "--dev", a_if, "--conf", str(conf), "--cpus", "1",
                                           "--no-sock-mem", "--gap", "250us", "--num", "0"], "trafgen")
                try:
                    wait_for(lambda: stats()[tc_prio.BULK_CLASS]["qlen"] >= 200, 60, interval=0.05,
                             what="the bulk queue to fill")
                    loaded += _rtts_ms(cli, "/crit", calls)
                    be_loaded += _rtts_ms(cli, "/be", 1, timeout=2.0)
                    backlog.append(stats()[tc_prio.BULK_CLASS]["qlen"])
                finally:
                    for sig in (signal.SIGINT, signal.SIGKILL):
                        try:
                            os.killpg(gen.pid, sig)
                            gen.wait(10)
                            break
                        except ProcessLookupError:
                            break
                        except subprocess.TimeoutExpired:
                            continue
                    wait_for(lambda: stats()[tc_prio.BULK_CLASS]["qlen"] == 0, 60, interval=0.05,
                             what="the queue to drain")
        u99, l99 = percentile(unloaded, 99), percentile(loaded, 99)
        return {"setup": "a - r - b, r -> b shaped to 20 Mbit/s: HTB with a priority class for skb "
                         "priority 6-7 (topologies/tc_prio.py); /crit critical (class 7); trafgen "
                         "1,350-byte frames every 250 us (~25 Mbit/s) as the load; rounds alternate "
                         "unloaded and loaded",
                "rounds": rounds_, "calls_per_side_per_round": calls,
                "loadavg_at_start": load, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "crit_ms_p50_unloaded": round(percentile(unloaded, 50), 3), "crit_ms_p99_unloaded": round(u99, 3),
                "crit_ms_p50_loaded": round(percentile(loaded, 50), 3), "crit_ms_p99_loaded": round(l99, 3),
                "crit_p99_loaded_over_unloaded": round(l99 / u99, 2) if u99 else None,
                "be_ms_p50_unloaded": round(percentile(be_unloaded, 50), 3),
                "be_ms_p50_loaded": round(percentile(be_loaded, 50), 3),
                "bulk_queue_packets_during_load": backlog, "classes_at_end": stats()}
    finally:
        try:
            net.stop()
        except RuntimeError as exc:
            print(f"bench_scsc: warning: {exc}", file=sys.stderr)


def bench_weights(rounds_: int, interval: float = 0.5) -> dict:
    """How long a slow anycast instance takes to lose its weight, and to get it back."""
    from forwarder.apps.client import Client, DmscError
    from topologies.fwd_net import intf_between
    from topologies.netns import NetnsNetwork
    from topologies.records import new_run_dir
    net = NetnsNetwork(new_run_dir("bench-scsc-weights"))
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        scsc, fn, common = scsc_net(net, ("a", "d1", "d2"), (("a", "d1"), ("a", "d2")), interval)
        i = lambda x, y: intf_between(net, x, y)  # noqa: E731
        fn.add("a", routes=[
            {"prefix": "/svc", "face": i("a", "d1"), "instance": "/node/d1"},
            {"prefix": "/svc", "face": i("a", "d2"), "instance": "/node/d2"},
            {"prefix": "/node/d1", "face": i("a", "d1")}, {"prefix": "/node/d2", "face": i("a", "d2")}],
            **common)
        for d in ("d1", "d2"):
            fn.add(d, routes=[{"prefix": "/node/a", "face": i(d, "a")}], **common)
        fn.start_all()
        wait_for(lambda: _in_sync(scsc.rest, 3), 60, interval=0.1, what="three agents")
        slow = {"d1": threading.Event(), "d2": threading.Event()}
        served = {"d1": 0, "d2": 0}
        stop = threading.Event()

        def handler(d):
            def h(payload, request):
                if slow[d].is_set():
                    time.sleep(0.02)
                return d.encode()
            return h

        def weight_d1():
            rules = {r["prefix"]: r for r in fn["a"].api("GET", "/strategy")["rules"]}
            r = rules.get("/svc")
            if not r or r["origin"] != "scsc" or not r["weights"]:
                return None
            return r["weights"].get("/node/d1", 0) / sum(r["weights"].values())

        lost, regained, share = [], [], []
        with Client(fn["d1"].app_socket) as s1, Client(fn["d2"].app_socket) as s2, \
                Client(fn["a"].app_socket, timeout=3) as cli:
            s1.serve("/svc", handler("d1"))
            s2.serve("/svc", handler("d2"))

            def load_():
                k = 0
                while not stop.is_set():
                    k += 1
                    try:
                        served[cli.call("/svc", b"q", flow=f"f{k}").decode()] += 1
                    except DmscError:
                        pass
                    time.sleep(0.002)
            th = threading.Thread(target=load_, daemon=True)
            th.start()
            try:
                for _ in range(rounds_):
                    wait_for(lambda: 0.05 < (weight_d1() or 0) < 0.95, 120, interval=0.05,
                             what="both instances weighted")
                    slow["d1"].set()
                    t0 = time.monotonic()
                    wait_for(lambda: (weight_d1() or 1) <= 0.1, 120, interval=0.02, what="d1 losing weight")
                    lost.append(time.monotonic() - t0)
                    before = dict(served)
                    time.sleep(4 * interval)
                    d1, d2 = served["d1"] - before["d1"], served["d2"] - before["d2"]
                    share.append(d1 / max(1, d1 + d2))
                    slow["d1"].clear()
                    t1 = time.monotonic()
                    wait_for(lambda: (weight_d1() or 0) >= 0.4, 120, interval=0.05, what="d1 regaining weight")
                    regained.append(time.monotonic() - t1)
            finally:
                stop.set()
                th.join(10)
        took = scsc.stop()
        return {"setup": "a with /svc at d1 and d2 (anycast), SCSC telemetry every "
                         f"{interval} s, one new flow per call; d1 made 20 ms slow, then fast again",
                "rounds": rounds_, "telemetry_interval_s": interval,
                "loadavg_at_start": load, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "lost_weight_s": summary(lost), "lost_weight_intervals_median":
                    round(statistics.median(lost) / interval, 2),
                "regained_weight_s": summary(regained), "regained_weight_intervals_median":
                    round(statistics.median(regained) / interval, 2),
                "d1_share_of_flows_while_slow": summary(share),
                "scsc_sigterm_s": round(took, 3) if took is not None else None}
    finally:
        try:
            net.stop()
        except RuntimeError as exc:
            print(f"bench_scsc: warning: {exc}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0, help="telemetry interval of the agents")
    ap.add_argument("--real", type=int, default=36, help="real forwarders (0: skip)")
    ap.add_argument("--sim", type=int, default=200, help="simulated forwarders (0: skip)")
    ap.add_argument("--procs", type=int, default=2, help="processes holding the simulated forwarders")
    ap.add_argument("--critical", type=int, default=4,
                    help="rounds of the critical-class latency set-up (0: skip)")
    ap.add_argument("--critical-calls", type=int, default=100, help="/crit calls per side per round")
    ap.add_argument("--weights", type=int, default=3,
                    help="rounds of the slow-instance weight set-up (0: skip)")
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="wait up to this many seconds for an idle machine before each set-up")
    ap.add_argument("--out", default=str(RESULTS / "scsc.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.port, args.first, args.count, args.interval)
    sys.setswitchinterval(0.001)  # 200 agent threads share this interpreter, as in the SCSC
    result = {"benchmark": "scsc policy push: REST intent -> every forwarder acknowledged",
              "measure": "client round trip of POST /intents?wait=10 (returns after the last ack); "
                         "median over the rounds",
              "target_push_ms_200": 100,
              "machine": machine_facts(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "loadavg_at_start": loadavg()}
    if args.real:
        result[f"cpu_idle_before_{args.real}"] = wait_idle(args.wait_idle)
        r = bench_real(args.real, args.rounds, args.interval)
        result[f"push_ms_{args.real}"] = r["client_ms"]["median"]
        result[f"real_{args.real}"] = r
        print(f"{args.real} real forwarders: push {r['client_ms']}")
    if args.sim:
        result[f"cpu_idle_before_{args.sim}"] = wait_idle(args.wait_idle)
        s = bench_simulated(args.sim, args.rounds, args.interval, args.procs)
        result[f"push_ms_{args.sim}"] = s["client_ms"]["median"]
        result[f"simulated_{args.sim}"] = s
        print(f"{args.sim} simulated forwarders: push {s['client_ms']}")
    if args.critical:
        result["cpu_idle_before_critical"] = wait_idle(args.wait_idle)
        c = bench_critical(args.critical, args.critical_calls)
        result["critical"] = c
        result["critical_p99_loaded_over_unloaded"] = c["crit_p99_loaded_over_unloaded"]
        print(f"critical class: p99 {c['crit_ms_p99_unloaded']} ms unloaded, "
              f"{c['crit_ms_p99_loaded']} ms loaded; best effort p50 {c['be_ms_p50_unloaded']} / "
              f"{c['be_ms_p50_loaded']} ms")
    if args.weights:
        result["cpu_idle_before_weights"] = wait_idle(args.wait_idle)
        w = bench_weights(args.weights)
        result["weights"] = w
        result["weights_lost_intervals"] = w["lost_weight_intervals_median"]
        print(f"slow instance: weight lost after {w['lost_weight_s']['median']} s "
              f"({w['lost_weight_intervals_median']} intervals), back after "
              f"{w['regained_weight_s']['median']} s")
    result["loadavg_at_end"] = loadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
