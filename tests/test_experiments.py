"""Smoke tests of the four experiments (root + Mininet; skipped with a reason otherwise).

Each runs one experiment with QUICK=1 (a run of under two minutes) as its own
process, into results/smoke/<name>/, then checks that the results folder holds
the configuration, the raw measurements, the plots and a summary with the
expected fields, and that the experiment's lab left no process or namespace
behind. They check that the experiments work and report, not the numbers
(which depend on the machine): every figure, the run's duration included, is in
the results folder with the load average beside it, and no test compares one
with a budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A QUICK run takes about a minute: 10 minutes means it hangs (the subprocess timeout
# fires first, with the run's output; pytest's own limit is raised above it).
pytestmark = [pytest.mark.mininet, pytest.mark.timeout(900)]
QUICK_HANG_S = 600

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "smoke"


def run_quick(name: str, *extra: str, timeout: float = QUICK_HANG_S) -> Path:
    env = dict(os.environ, QUICK="1", PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--out", str(OUT), *extra],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    latest = OUT / name / "latest"
    tail = (res.stdout[-3000:] + "\n--- stderr ---\n" + res.stderr[-5000:])
    assert res.returncode == 0, f"experiments.{name} exited with {res.returncode}:\n{tail}"
    assert latest.is_symlink(), f"no {latest} link:\n{tail}"
    d = latest.resolve()
    assert d.parent == OUT / name
    return d


def check_common(d: Path, raw: list, plots: list) -> dict:
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["quick"] is True and cfg["params"], cfg
    assert "machine" in cfg and "git_commit" in cfg
    for f in raw + plots + ["summary.md", "summary.json"]:
        p = d / f
        assert p.exists() and p.stat().st_size > 0, f"{f} missing or empty in {d}"
    for f in plots:
        assert (d / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{f} is not a PNG"
    summary = json.loads((d / "summary.json").read_text())
    assert "error" not in summary, summary.get("error")
    assert summary["quick"] is True
    assert _num(summary["duration_s"]) and summary["loadavg_end"], summary  # recorded, not judged
    # the lab of the experiment left nothing behind
    run_dir = cfg.get("lab_run_dir")
    assert run_dir, "config.json names no lab run folder"
    from topologies.clean import netns_exists
    from topologies.records import is_same_process, read_records
    entries = read_records(Path(run_dir))
    alive = [e for e in entries if e.get("kind") == "pid" and is_same_process(e["pid"], e.get("starttime"))]
    assert not alive, f"processes left running: {alive[:5]}"
    left = [e["name"] for e in entries if e["kind"] == "netns" and netns_exists(e["name"])]
    assert not left, f"namespaces left: {left[:5]}"
    return summary


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def test_failure_quick():
    d = run_quick("failure")
    s = check_common(d, ["calls-path.jsonl", "calls-anycast.jsonl", "events.jsonl", "events.csv"],
                     ["failure_timeline.png", "timeline_link_cut.png", "timeline_sr_kill.png",
                      "timeline_sg_kill.png", "timeline_link_flap.png"])
    for ev in ("link_cut", "sr_kill", "sg_kill", "pod_kill", "scsc_kill", "link_flap"):
        e = s["events"][ev]
        for k in ("detection_ms", "global_convergence_ms", "calls_failed", "calls_retried"):
            assert k in e, (ev, k, e)
        assert _num(e["calls_failed"]) and _num(e["calls_retried"]), e
        assert _num(e["global_convergence_ms"]), (ev, e)
    for ev in ("link_cut", "sr_kill", "sg_kill", "pod_kill", "link_flap"):
        assert _num(s["events"][ev]["detection_ms"]), (ev, s["events"][ev])
        assert _num(s["events"][ev]["local_failover_ms"]), (ev, s["events"][ev])
    # a cut link is seen through carrier (a netlink event, or the once-a-second poll of
    # /sys as the fallback) at both ends, not through a dead timer; how soon is recorded
    # in detection_ms
    by = s["events"]["link_cut"]["detected_by"]
    assert len(by) == 2 and set(by.values()) <= {"netlink", "poll"}, by
    assert s["stream_totals"]["path"]["calls"] > 100
    # the pod's open connection to the failed instance ended as TCP connections do, and
    # new connections were made and counted (when they worked again is recorded)
    pod = s["events"]["pod_kill"]["pod"]
    assert pod["open_connection"] in ("ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH"), pod
    assert pod["new_connections"] > 0 and pod["answered_by_the_dead_instance"] == 0, pod
    assert _num(pod["first_new_connection_elsewhere_ms"]), pod


def test_load_quick():
    d = run_quick("load")
    s = check_common(d, ["steps.csv", "served.csv", "scsc_policy.jsonl"],
                     ["load_sweep.png", "load_spread.png", "adaptive_tail.png", "adaptive_share.png"])
    assert list(d.glob("requests-sweep-*.jsonl")), "no raw requests of the sweep"
    assert _num(s["max_throughput_rps"]) and s["max_throughput_rps"] > 0
    assert len(s["sweep"]) >= 2
    for step in s["sweep"]:
        assert _num(step["lat_ms_p50"]) and _num(step["lat_ms_p99"]), step
        assert sum(step["served"].values()) > 0, step
    by_rate = s["adaptive"]["by_rate"]
    assert by_rate, s["adaptive"]
    for r in by_rate:
        for k in ("p99_on_ms", "p99_off_ms", "slow_share_on", "slow_share_off"):
            assert _num(r[k]), (k, r)


def test_telemetry_quick():
    d = run_quick("telemetry")
    s = check_common(d, ["idle_hops.csv", "queue_pings.csv", "backlog.csv", "train.csv", "loss.json",
                         "cost.csv"],
                     ["telemetry_hops.png", "telemetry_queue.png", "telemetry_bw.png",
                      "telemetry_loss.png", "telemetry_cost.png"])
    for k in ("bw_truth_mbps", "bw_train_estimate_mbps", "bw_counters_mbps", "loss_truth_pct",
              "loss_e2e_estimate_pct", "loss_counters_pct", "echo_per_s_on", "echo_per_s_off",
              "telemetry_throughput_cost_pct", "queue_abs_error_ms_p50", "hop_time_abs_error_ms_p50"):
        assert _num(s[k]), (k, s.get(k))
    assert s["idle"]["records_match_path"] > 0
    assert isinstance(s["delay_measured"], bool) and isinstance(s["netem_available"], bool)
    if not s["netem_available"]:
        assert "NOT MEASURED" in s["delay"]["note"]
        assert "netem" in (d / "summary.md").read_text()


def test_sidecar_quick():
    d = run_quick("sidecar")
    s = check_common(d, ["runs.csv", "memory.json", "scaling.csv"],
                     ["sidecar_latency.png", "sidecar_throughput.png", "sidecar_cpu.png",
                      "sidecar_scaling.png"])
    assert list((d / "wrk").glob("*.txt")), "no raw wrk output"
    modes = ("direct", "sidecar", "sidecar_haproxy", "dmsc", "dmsc_l7", "dmsc_l4")
    for m in modes:
        for k in (f"{m}_p50_us", f"{m}_rps", f"{m}_null_p50_us", f"{m}_null_rps"):
            assert _num(s[k]) and s[k] > 0, (k, s.get(k))
        for k in (f"{m}_comm_cpu_ms_per_1k", f"{m}_null_comm_cpu_ms_per_1k"):
            assert _num(s[k]), (k, s.get(k))
    for b in ("cart", "null"):   # every run of every mode answered every request
        assert all(s["by_backend"][b][m]["errors"] == 0 for m in modes if m != "dmsc"), s["by_backend"][b]
    assert s["dmsc_dataplane"] in ("ebpf", "python")
    assert {t["target"] for t in s["targets"]["cart"]} and s["targets"]["null"]
    assert s["proxies"]["sidecar"] > s["proxies"]["direct"] == 0
    assert s["proxies"]["sidecar_haproxy"] > 0
    assert s["scaling"]["rows"] and s["scaling"]["sidecar_mb_per_pod"] > 0
    md = (d / "summary.md").read_text()
    assert "Where DMSC wins" in md and "Where DMSC loses" in md
    assert s["wins"] or s["losses"]
