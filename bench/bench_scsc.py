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

Writes bench/results/scsc.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.rest_client import ScscRest  # noqa: E402
from topologies.fwd_net import wait_for  # noqa: E402

RESULTS = REPO / "bench" / "results"


def pct(values, q):
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(xs):
    return {"median": round(statistics.median(xs), 2), "p90": round(pct(xs, 0.9), 2),
            "min": round(min(xs), 2), "max": round(max(xs), 2), "rounds": len(xs)}


def bench_simulated(n: int, rounds_: int, interval: float) -> dict:
    from controller.simulate import start_agents
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

    def on_policy(i, version, t):
        with lock:
            last[i] = t
    agents = []
    try:
        wait_for(lambda: _up(rest), 15, what="the SCSC")
        agents = start_agents(n, ("127.0.0.1", port), interval, on_policy=on_policy)
        wait_for(lambda: _in_sync(rest, n), 60, interval=0.1, what=f"{n} simulated forwarders")
        _one_round(rest, n, 1000)  # warm-up
        _one_round(rest, n, 1001)
        agent_ms, client, scsc = [], [], []
        for k in range(rounds_):
            with lock:
                last.clear()
            c, s, st = _one_round(rest, n, k)
            client.append(c)
            scsc.append(s)
            with lock:
                if len(last) == n:
                    agent_ms.append((max(last.values()) - st) * 1000)
        return {"forwarders": n, "kind": "simulated: real ScscAgent on stand-in daemons (real pipeline), "
                                          "one process, loopback TCP",
                "telemetry_interval_s": interval,
                "client_ms": summary(client), "scsc_ms": summary(scsc),
                "agents_ms": summary(agent_ms) if agent_ms else None}
    finally:
        for a in agents:
            a.stop(0.2)
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
    from controller.netns_lab import ScscNode
    from topologies.fwd_net import ForwarderNet
    from topologies.netns import NetnsNetwork, require_netns
    from topologies.records import new_run_dir
    why = require_netns()
    if why:
        raise SystemExit(f"bench_scsc: {why}")
    with NetnsNetwork(new_run_dir("bench-scsc")) as net:
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
        for k in range(rounds_):
            c, s, _ = _one_round(scsc.rest, n, k)
            client.append(c)
            scsc_ms.append(s)
        # the rules really are in the forwarders' strategy tables
        rules = fn[names[-1]].api("GET", "/strategy")["rules"]
        assert not any(r["prefix"].startswith("/bench/q") for r in rules) or rounds_ % 2, rules
        fn.stop_all()
        scsc.stop()
        return {"forwarders": n, "kind": "real forwarder processes (python -m forwarder), one network "
                                          "namespace each, management bridge in its own namespace",
                "telemetry_interval_s": interval, "lab_up_s": round(up_s, 1),
                "client_ms": summary(client), "scsc_ms": summary(scsc_ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0, help="telemetry interval of the agents")
    ap.add_argument("--real", type=int, default=36, help="real forwarders (0: skip)")
    ap.add_argument("--sim", type=int, default=200, help="simulated forwarders (0: skip)")
    ap.add_argument("--out", default=str(RESULTS / "scsc.json"))
    args = ap.parse_args()
    sys.setswitchinterval(0.001)  # 200 agent threads share this interpreter, as in the SCSC
    result = {"benchmark": "scsc policy push: REST intent -> every forwarder acknowledged",
              "measure": "client round trip of POST /intents?wait=10 (returns after the last ack); "
                         "median over the rounds",
              "target_push_ms_200": 100,
              "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                       "python": platform.python_version()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.real:
        r = bench_real(args.real, args.rounds, args.interval)
        result[f"push_ms_{args.real}"] = r["client_ms"]["median"]
        result[f"real_{args.real}"] = r
        print(f"{args.real} real forwarders: push {r['client_ms']}")
    if args.sim:
        s = bench_simulated(args.sim, args.rounds, args.interval)
        result[f"push_ms_{args.sim}"] = s["client_ms"]["median"]
        result[f"simulated_{args.sim}"] = s
        print(f"{args.sim} simulated forwarders: push {s['client_ms']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
