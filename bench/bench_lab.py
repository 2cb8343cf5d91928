#!/usr/bin/env python3
"""Lab bring-up benchmark: `topologies/fat_tree.py --up-only` for each k, as a user runs it.

Per topology:
  * up_s, converged_s: from the run's timings.json (start of the lab to every
    node up; to routing converged and the SCSC seeing every forwarder);
  * routing: what the lab used (auto picks link-state up to a node limit);
  * adjacency_downs, slow_loop_turns: adjacency_down and slow_turn events in
    the forwarders' events.jsonl (a loaded machine shows here first; a clean
    bring-up has no adjacency going down);
  * wall_s: the whole command, teardown included.

Targets (issue: the lab): k=4 converged in under 10 s; k=8 in under 90 s.
Writes bench/results/lab.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forwarder.runtime.events import EVENTS_FILE, read_events  # noqa: E402
from topologies.measure import loadavg, machine_facts, write_result  # noqa: E402
from topologies.records import new_run_dir  # noqa: E402
RESULTS = REPO / "bench" / "results"
TARGET_S = {4: 10.0, 8: 90.0}


def bring_up(k: int, timeout: float, scratch: Path) -> dict:
    """Run the lab once; everything measured comes from its report and run folder."""
    report = scratch / f"lab-k{k}-{time.monotonic_ns()}.json"
    argv = [sys.executable, str(REPO / "topologies" / "fat_tree.py"), "--k", str(k),
            "--up-only", "--timeout", str(timeout), "--report", str(report)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout + 300)
    wall = time.monotonic() - t0
    res = {"k": k, "exit": proc.returncode, "wall_s": round(wall, 1)}
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        res["error"] = tail or ["the lab wrote no report"]
        return res
    run = Path(rep["run_dir"])
    res["routing"], res["run_dir"] = rep["routing"], str(run)
    timings = rep.get("timings") or {}
    res["up_s"] = round(timings["up_s"], 1) if "up_s" in timings else None
    res["converged_s"] = round(timings["converged_s"], 1) if "converged_s" in timings else None
    nodes = sorted(run.glob(f"*/{EVENTS_FILE}"))
    res["forwarders"] = len(nodes)
    res["adjacency_downs"] = sum(len(read_events(p, kind="adjacency_down")) for p in nodes)
    res["slow_loop_turns"] = sum(len(read_events(p, kind="slow_turn")) for p in nodes)
    if rep.get("error"):
        res["error"] = [rep["error"]]
    target = TARGET_S.get(k)
    if target is not None and res["converged_s"] is not None:
        res["target_converged_s"] = target
        res["meets_target"] = res["converged_s"] < target
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8], help="fat-tree arities (default 4 8)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per k")
    ap.add_argument("--timeout", type=float, default=240, help="convergence timeout per run, s")
    ap.add_argument("--out", type=Path, default=RESULTS / "lab.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: needs root (Mininet)", file=sys.stderr)
        return 2
    result = {"bench": "lab", "machine": machine_facts(), "method": __doc__.strip(), "runs": []}
    scratch = new_run_dir("bench-lab")
    failed = False
    for k in args.k:
        for i in range(args.repeat):
            print(f"bench_lab: k={k} run {i + 1}/{args.repeat} ...", flush=True)
            r = bring_up(k, args.timeout, scratch)
            result["runs"].append(r)
            failed |= r["exit"] != 0
            print(f"  routing {r.get('routing')}, up {r.get('up_s')} s, converged {r.get('converged_s')} s, "
                  f"adjacency downs {r.get('adjacency_downs')}, exit {r['exit']}"
                  + (f": {r['error']}" if r.get("error") else ""), flush=True)
    result["loadavg_at_end"] = loadavg()
    write_result(args.out, result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
