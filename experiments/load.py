"""Load experiment: throughput, latency and load spread under an open-loop rate sweep,
and the SCSC's adaptive weights on and off while one instance is slow.

Set-up (default: the k=4 fat tree with the shop, SPA and the SCSC): a test
service /exp/work (experiments/testsvc.py) runs on --instances SGs, one per
pod other than the client's, so every instance is the same distance from the
client SG (the first SG). An open-loop generator (experiments/loadgen.py, its
own process in the client SG's host; Poisson arrivals; every request its own
flow, so anycast and ECMP choices are per request) offers each rate for
--duration seconds.

1. sweep: for each --rates value, the offered and achieved request rate,
   latency p50/p90/p99 (from the scheduled send time: open loop), errors, and
   how the load spread over the instances: the served counters at the
   instances' SGs (GET /counters prefixes[/exp/work].served), before and after
   the step.
2. slow instance: one instance is made slow (its control file: --slow-delay-ms
   per request, at most --slow-concurrency at a time, i.e. a capacity of
   concurrency/delay requests/s). Then the --slow-rates sweep twice:
   * adaptive on: the SCSC measures service times and moves weight away from
     the slow instance (docs/scsc.md: a degraded instance keeps 5 of 100); the
     time from "slow" to the client SG holding such a rule is reported;
   * adaptive off: the same weights everywhere, pinned equal with a
     ``pin_weights`` intent (the SCSC and its telemetry still run, so both
     sweeps carry the same overhead).
   On and off are measured side by side at each rate (alternating order), so
   background load on a shared machine hits both alike.
   Tail latency (p99, p95) and the slow instance's share, on against off.

Outputs: config.json, steps.csv (one row per step), requests-<phase>-<rate>.jsonl
(every request), served.csv (per-instance served counters per step),
scsc_policy.jsonl, load_sweep.png, load_spread.png, adaptive_tail.png,
adaptive_share.png, summary.md/json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from topologies.measure import wait_for

from .common import (build_topology, Experiment, fmt, issue_identity, lab_facts, md_head, md_table,
                     parse_list, ProcSet, Progress, Results, rnd, run_main, settle, start_lab)
from .loadgen import run_in_lab

NAME = "load"
PREFIX = "/exp/work"

DEFAULTS = dict(topology="fat-tree:4", rates="50,100,200,300,400,500,600", duration=8.0,
                slow_rates="40,80,120,160,200", slow_delay_ms=20.0, slow_concurrency=1, instances=3,
                timeout=2.0, telemetry_interval=1.0, adapt_timeout=30.0, workers=128, hello_ms=300,
                dead_ms=3000)
QUICK = dict(rates="50,150,300", duration=4.0, slow_rates="60,180", adapt_timeout=20.0)


def add_args(ap) -> None:
    ap.add_argument("--topology", help="fat-tree:K, leaf-spine:SxLxH or linear:N (default fat-tree:4)")
    ap.add_argument("--rates", help="offered request rates of the sweep, comma separated (req/s)")
    ap.add_argument("--duration", type=float, help="seconds per rate")
    ap.add_argument("--slow-rates", help="offered rates of the slow-instance sweeps")
    ap.add_argument("--slow-delay-ms", type=float, help="service time of the slow instance")
    ap.add_argument("--slow-concurrency", type=int, help="requests the slow instance serves at once")
    ap.add_argument("--instances", type=int, help="instances of /exp/work")
    ap.add_argument("--timeout", type=float, help="seconds before a request counts as failed")
    ap.add_argument("--telemetry-interval", type=float, help="forwarders' SCSC report interval")
    ap.add_argument("--adapt-timeout", type=float, help="seconds to wait for the SCSC to react")
    ap.add_argument("--workers", type=int, help="generator threads (requests in flight at most)")
    ap.add_argument("--hello-ms", type=int, help="routing hello interval (default 300)")
    ap.add_argument("--dead-ms", type=int,
                    help="routing dead interval (default 3000, so that overload does not flap "
                         "adjacencies on a 2-core machine)")


class LoadExperiment(Experiment):
    def __init__(self, args, res: Results, progress: Progress) -> None:
        super().__init__(args, res, progress)
        self.steps: List[dict] = []
        self.served_rows: List[dict] = []
        self.policy_out = res.jsonl("scsc_policy.jsonl")
        self.adapt: Dict[str, Any] = {}

    # --------------------------------------------------------------- set-up
    def setup(self) -> None:
        a = self.a
        topo = build_topology(a.topology)

        def configure(lab) -> None:
            lab.telemetry_s = a.telemetry_interval
        self.lab = start_lab(topo, self.res, self.p, run_kind="exp-load", configure=configure,
                             hello_ms=a.hello_ms, dead_ms=a.dead_ms, dataplane=a.dataplane)
        self.procs = ProcSet(self.lab)
        sgs = topo.sgs
        self.client = sgs[0]
        pods: Dict[Any, List[str]] = {}
        for n in sgs:
            pods.setdefault(topo.nodes[n].pod, []).append(n)
        cpod = topo.nodes[self.client].pod
        inst = [ns[0] for pod, ns in pods.items() if pod != cpod]
        if len(inst) < a.instances:
            inst += [n for n in sgs if n != self.client and n not in inst]
        self.instances = inst[:a.instances]
        if len(self.instances) < 2:
            raise SystemExit("load: the topology needs at least 3 SGs (a client and 2 instances)")
        self.slow = self.instances[len(self.instances) // 2]
        self.controls: Dict[str, Path] = {}
        for n in self.instances:
            ctl = self.lab.run_dir / n / "testsvc-work.control.json"
            ctl.parent.mkdir(parents=True, exist_ok=True)
            ctl.write_text("{}\n")
            self.controls[n] = ctl
            ident = issue_identity(self.lab, PREFIX, "expwork", n)
            argv = ["--socket", str(self.lab.fwd[n].app_socket), "--prefix", PREFIX, "--node", n,
                    "--control", str(ctl), "--workers", "16"]
            if ident:
                argv += ["--identity", str(ident)]
            self.procs.python(n, "testsvc-work", "experiments.testsvc", *argv)

        def ready() -> bool:
            fib = self.lab.fwd[self.client].api("GET", "/fib")
            e = next((e for e in fib["entries"] if e["prefix"] == PREFIX), None)
            return e is not None and len({h.get("instance") for h in e["nexthops"]}) >= len(self.instances)
        wait_for(ready, 60, 0.25, f"every instance of {PREFIX} in {self.client}'s FIB", retry_on=(Exception,))
        self.res.write_config(**lab_facts(self.lab), client=self.client, instances=self.instances,
                              slow_instance=self.slow)
        self.p.log(f"client {self.client}; {PREFIX} on {', '.join(self.instances)}; "
                   f"slow instance will be {self.slow}")

    # ---------------------------------------------------------------- steps
    def served(self) -> Dict[str, int]:
        out = {}
        for n in self.instances:
            try:
                c = self.lab.fwd[n].api("GET", "/counters", timeout=10.0)
                out[n] = int(c["prefixes"].get(PREFIX, {}).get("served", 0))
            except Exception:
                out[n] = 0
        return out

    def policy(self, phase: str, rate: Optional[float]) -> Optional[dict]:
        if self.lab.scsc is None:
            return None
        try:
            pol = self.lab.scsc_api("GET", "/policy", timeout=5.0)
        except Exception:
            return None
        client_rule = next((r for r in pol.get("forwarders", {}).get(f"/node/{self.client}", {})
                            .get("rules", []) if r.get("prefix") == PREFIX), None)
        rec = {"t": time.time(), "phase": phase, "rate": rate,
               "weights": pol.get("weights", {}).get(PREFIX),
               "degraded": pol.get("degraded", {}).get(PREFIX, []), "client_rule": client_rule}
        self.policy_out.write(rec)
        return rec

    def step(self, phase: str, rate: float) -> dict:
        a = self.a
        settled = settle(self.lab, 60)
        before = self.served()
        tag = f"{phase}-{rate:g}"
        recs, summ = run_in_lab(self.procs, self.lab, self.client, PREFIX, rate, a.duration,
                                self.res.path(f"requests-{tag}.jsonl"),
                                self.lab.run_dir / self.client / f"loadgen-{tag}.summary.json",
                                timeout=a.timeout, attempts=1, flows=0, tag="r",
                                workers=a.workers, seed=self.rng.randrange(1 << 30),
                                label=f"loadgen-{tag}")
        after = self.served()
        delta = {n: after[n] - before[n] for n in self.instances}
        total = sum(delta.values()) or 1
        pol = self.policy(phase, rate)
        row = {"phase": phase, "offered_rps_target": rate, "duration_s": a.duration,
               **{k: summ.get(k) for k in ("sent", "ok", "failed", "offered_rps", "throughput_rps",
                                           "error_ratio", "lat_ms_p50", "lat_ms_p90", "lat_ms_p95",
                                           "lat_ms_p99", "lat_ms_mean", "lat_ms_max", "lag_ms_p99")},
               "errors": summ.get("errors"),
               "slow_share": rnd(delta.get(self.slow, 0) / total, 4) if phase != "sweep" else None,
               "spread_cv": rnd(_cv(list(delta.values())), 4),
               "served": delta, "weights": (pol or {}).get("weights"), "settle_s": round(settled, 2)}
        for n in self.instances:
            self.served_rows.append({"phase": phase, "rate": rate, "instance": n, "served": delta[n],
                                     "share": rnd(delta[n] / total, 4),
                                     "answered_as_seen_by_client": summ.get("by_instance", {})
                                     .get(f"/node/{n}", 0)})
        self.steps.append(row)
        self.p.log(f"{phase} {rate:g}/s: throughput {fmt(row['throughput_rps'])}/s, p50 "
                   f"{fmt(row['lat_ms_p50'], 2)} ms, p99 {fmt(row['lat_ms_p99'], 2)} ms, errors "
                   f"{row['failed']}, served {delta}")
        return row

    def set_slow(self, on: bool) -> None:
        cfg = {"delay_ms": self.a.slow_delay_ms, "concurrency": self.a.slow_concurrency} if on else {}
        self.controls[self.slow].write_text(json.dumps(cfg) + "\n")

    def client_rule_starves(self) -> bool:
        """Does the client SG hold an SCSC rule giving the slow instance at most 10 %?"""
        rules = self.lab.fwd[self.client].api("GET", "/strategy")["rules"]
        rule = next((r for r in rules if r["prefix"] == PREFIX), None)
        if not rule or not rule.get("weights"):
            return False
        w = rule["weights"]
        return w.get(f"/node/{self.slow}", 0) / (sum(w.values()) or 1) <= 0.1

    def pin_equal(self, on: bool) -> None:
        if self.lab.scsc is None or getattr(self, "pinned", False) == on:
            return
        self.pinned = on
        if on:
            w = {f"/node/{n}": 1 for n in self.instances}
            self.lab.scsc_api("POST", "/intents?wait=10",
                              {"kind": "pin_weights", "prefix": PREFIX, "weights": w}, timeout=20)
        else:
            self.lab.scsc_api("DELETE", f"/intents?kind=pin_weights&prefix={PREFIX}&wait=10",
                              timeout=20)

    def wait_adapted(self) -> Optional[float]:
        """Load at a moderate rate until the client SG holds a rule starving the slow instance."""
        a = self.a
        if self.lab.scsc is None:
            return None
        t0 = time.time()
        slow = f"/node/{self.slow}"
        deadline = t0 + a.adapt_timeout
        rate = min(parse_list(a.slow_rates))
        while time.time() < deadline:
            recs, _ = run_in_lab(self.procs, self.lab, self.client, PREFIX, rate, 2.0,
                                 self.lab.run_dir / self.client / "loadgen-adapt.jsonl",
                                 self.lab.run_dir / self.client / "loadgen-adapt.summary.json",
                                 timeout=a.timeout, flows=0, tag="w", workers=a.workers,
                                 label="loadgen-adapt")
            pol = self.policy("adapting", rate)
            if self.client_rule_starves():
                rules = self.lab.fwd[self.client].api("GET", "/strategy")["rules"]
                rule = next((r for r in rules if r["prefix"] == PREFIX), None)
                self.adapt = {"adaptation_s": rnd(time.time() - t0, 2), "rule": rule,
                              "degraded": (pol or {}).get("degraded")}
                return time.time() - t0
        self.adapt = {"adaptation_s": None, "note": f"no rule starving {slow} within "
                                                    f"{a.adapt_timeout:g}s"}
        return None

    def run(self) -> None:
        a = self.a
        rates = parse_list(a.rates)
        slow_rates = parse_list(a.slow_rates)
        self.p.total = 3 + len(rates) + 2 * len(slow_rates)
        self.p.step(f"bringing up {a.topology}")
        self.setup()
        # warm-up: flows, caches, the SCSC's first measurements
        run_in_lab(self.procs, self.lab, self.client, PREFIX, min(rates), 2.0,
                   self.lab.run_dir / self.client / "loadgen-warm.jsonl",
                   self.lab.run_dir / self.client / "loadgen-warm.summary.json",
                   timeout=a.timeout, tag="w", workers=a.workers, label="loadgen-warm")
        for r in rates:
            self.p.step(f"sweep: {r:g} req/s for {a.duration:g}s")
            self.step("sweep", r)
        self.p.step(f"making {self.slow} slow ({a.slow_delay_ms:g} ms, concurrency "
                    f"{a.slow_concurrency}); waiting for the SCSC to adapt")
        self.set_slow(True)
        took = self.wait_adapted()
        self.p.log(f"adaptive weights in place after {fmt(took, 1)} s" if took is not None else
                   f"the SCSC did not starve the slow instance: {self.adapt.get('note')}")
        # on and off side by side at each rate (the order alternates), so that the machine's
        # background load hits both alike
        self.p.step("one slow instance: adaptive on and off at each rate")
        for i, r in enumerate(slow_rates):
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                self.pin_equal(mode == "off")
                if mode == "on" and self.lab.scsc is not None:
                    try:
                        wait_for(self.client_rule_starves, 15, 0.25, "the adaptive weights back", retry_on=(Exception,))
                    except TimeoutError as exc:
                        self.p.log(str(exc))
                self.p.step(f"slow, adaptive {mode}: {r:g} req/s")
                self.step(f"adaptive_{mode}", r)
        self.pin_equal(False)
        self.set_slow(False)

    # --------------------------------------------------------------- report
    def report(self, error: Optional[str]) -> None:
        a = self.a
        self.res.write_csv("steps.csv", self.steps)
        self.res.write_csv("served.csv", self.served_rows)
        sweep = [s for s in self.steps if s["phase"] == "sweep"]
        on = {s["offered_rps_target"]: s for s in self.steps if s["phase"] == "adaptive_on"}
        off = {s["offered_rps_target"]: s for s in self.steps if s["phase"] == "adaptive_off"}
        self.plot(sweep, on, off)
        head: Dict[str, Any] = {}
        if error:
            head["error"] = error
        if sweep:
            best = max(sweep, key=lambda s: s["throughput_rps"] or 0)
            head.update({
                "max_throughput_rps": best["throughput_rps"],
                "max_throughput_at_offered_rps": best["offered_rps_target"],
                "sweep": [{k: s[k] for k in ("offered_rps_target", "offered_rps", "throughput_rps",
                                             "lat_ms_p50", "lat_ms_p99", "error_ratio", "spread_cv",
                                             "served")} for s in sweep],
                "lowest_rate_p50_ms": sweep[0]["lat_ms_p50"], "lowest_rate_p99_ms": sweep[0]["lat_ms_p99"],
            })
        comp = []
        for r in sorted(set(on) & set(off)):
            comp.append({"offered_rps": r, "p99_on_ms": on[r]["lat_ms_p99"],
                         "p99_off_ms": off[r]["lat_ms_p99"], "p95_on_ms": on[r]["lat_ms_p95"],
                         "p95_off_ms": off[r]["lat_ms_p95"], "p50_on_ms": on[r]["lat_ms_p50"],
                         "p50_off_ms": off[r]["lat_ms_p50"], "slow_share_on": on[r]["slow_share"],
                         "slow_share_off": off[r]["slow_share"], "errors_on": on[r]["failed"],
                         "errors_off": off[r]["failed"]})
        head["adaptive"] = {"slow_instance": f"/node/{getattr(self, 'slow', '?')}",
                            "slow_delay_ms": a.slow_delay_ms, "slow_concurrency": a.slow_concurrency,
                            **self.adapt, "by_rate": comp}
        if comp:
            last = comp[-1]
            head["adaptive_p99_on_ms"] = last["p99_on_ms"]
            head["adaptive_p99_off_ms"] = last["p99_off_ms"]
            if last["p99_on_ms"] and last["p99_off_ms"]:
                head["adaptive_p99_off_over_on"] = round(last["p99_off_ms"] / last["p99_on_ms"], 2)
        md = md_head("Load experiment", a.quick, error)
        if self.lab is not None and hasattr(self, "instances"):
            md += [f"{a.topology}, lab run `{self.lab.run_dir}`; client SG {self.client}, "
                   f"{PREFIX} on {', '.join(self.instances)} (equidistant); open-loop Poisson "
                   f"arrivals, one flow per request, {a.duration:g} s per rate, timeout {a.timeout:g} s; "
                   f"SCSC telemetry every {a.telemetry_interval:g} s.", ""]
        if sweep:
            md += ["## Rate sweep (all instances fast)", "",
                   md_table([[fmt(s["offered_rps_target"], 0), fmt(s["offered_rps"]),
                              fmt(s["throughput_rps"]), fmt(s["lat_ms_p50"], 2),
                              fmt(s["lat_ms_p99"], 2), s["failed"], fmt(s["lag_ms_p99"], 1),
                              " / ".join(str(s["served"][n]) for n in self.instances)]
                             for s in sweep],
                            ["target req/s", "offered req/s", "throughput req/s", "p50 ms", "p99 ms",
                             "failed", "generator lag p99 ms",
                             "served " + " / ".join(self.instances)]), "",
                   f"Highest throughput: {head['max_throughput_rps']} req/s (offered "
                   f"{head['max_throughput_at_offered_rps']:g}). Spread: `spread_cv` in steps.csv is the "
                   "coefficient of variation of the per-instance served counts (0 = perfectly even).",
                   ""]
        if comp:
            md += [f"## One slow instance ({self.slow}: {a.slow_delay_ms:g} ms per request, "
                   f"{a.slow_concurrency} at a time = {1000 * a.slow_concurrency / a.slow_delay_ms:.0f} "
                   "req/s capacity)", "",
                   f"Adaptive weights reached the client SG after "
                   f"{fmt(self.adapt.get('adaptation_s'), 1)} s of load.", "",
                   md_table([[fmt(c["offered_rps"], 0), fmt(c["p50_on_ms"], 2), fmt(c["p50_off_ms"], 2),
                              fmt(c["p95_on_ms"], 2), fmt(c["p95_off_ms"], 2), fmt(c["p99_on_ms"], 2),
                              fmt(c["p99_off_ms"], 2), fmt(c["slow_share_on"], 3),
                              fmt(c["slow_share_off"], 3), f"{c['errors_on']} / {c['errors_off']}"]
                             for c in comp],
                            ["req/s", "p50 on", "p50 off", "p95 on", "p95 off", "p99 on", "p99 off",
                             "slow share on", "slow share off", "errors on / off"]), "",
                   "Times in ms. *on*: the SCSC's measured weights; *off*: equal weights pinned with "
                   "a `pin_weights` intent (same SCSC, same telemetry).", ""]
        md.append("Plots: `load_sweep.png`, `load_spread.png`, `adaptive_tail.png`, `adaptive_share.png`.")
        self.res.summary(head, "\n".join(md))

    def plot(self, sweep: List[dict], on: Dict[float, dict], off: Dict[float, dict]) -> None:
        if sweep:
            x = [s["offered_rps"] for s in sweep]
            with self.res.figure("load_sweep", ncols=2, size=(11, 4.2)) as (fig, ax):
                ax[0][0].plot(x, [s["throughput_rps"] for s in sweep], "o-", label="throughput")
                m = max(x + [s["throughput_rps"] or 0 for s in sweep])
                ax[0][0].plot([0, m], [0, m], ":", color="grey", label="offered = achieved")
                ax[0][0].set_xlabel("offered load (req/s)")
                ax[0][0].set_ylabel("achieved throughput (req/s)")
                ax[0][0].legend()
                ax[0][0].grid(alpha=0.3)
                for key, lab in (("lat_ms_p50", "p50"), ("lat_ms_p90", "p90"), ("lat_ms_p99", "p99")):
                    ax[0][1].plot(x, [s[key] for s in sweep], "o-", label=lab)
                ax[0][1].set_yscale("log")
                ax[0][1].set_xlabel("offered load (req/s)")
                ax[0][1].set_ylabel("latency (ms)")
                ax[0][1].legend()
                ax[0][1].grid(alpha=0.3)
            with self.res.figure("load_spread", size=(8, 4)) as (fig, ax):
                bottom = [0.0] * len(sweep)
                labels = [f"{s['offered_rps_target']:g}" for s in sweep]
                for n in self.instances:
                    vals = []
                    for s in sweep:
                        tot = sum(s["served"].values()) or 1
                        vals.append(s["served"][n] / tot)
                    ax[0][0].bar(labels, vals, bottom=bottom, label=n)
                    bottom = [b + v for b, v in zip(bottom, vals)]
                ax[0][0].set_xlabel("offered load (req/s)")
                ax[0][0].set_ylabel("share of requests served")
                ax[0][0].set_title(f"{PREFIX}: served counters at the instances' SGs")
                ax[0][0].legend()
        rates = sorted(set(on) & set(off))
        if rates:
            with self.res.figure("adaptive_tail", size=(8, 4.2)) as (fig, ax):
                for d, lab, st in ((on, "adaptive on", "-"), (off, "adaptive off (equal weights)", "--")):
                    ax[0][0].plot(rates, [d[r]["lat_ms_p99"] for r in rates], "o" + st, label=f"p99, {lab}")
                    ax[0][0].plot(rates, [d[r]["lat_ms_p95"] for r in rates], "s" + st, alpha=0.6,
                                  label=f"p95, {lab}")
                    ax[0][0].plot(rates, [d[r]["lat_ms_p50"] for r in rates], "^" + st, alpha=0.6,
                                  label=f"p50, {lab}")
                ax[0][0].set_yscale("log")
                ax[0][0].set_xlabel("offered load (req/s)")
                ax[0][0].set_ylabel("latency (ms)")
                ax[0][0].set_title(f"one slow instance ({self.slow}: {self.a.slow_delay_ms:g} ms)")
                ax[0][0].legend(fontsize=7)
                ax[0][0].grid(alpha=0.3)
            with self.res.figure("adaptive_share", size=(7, 4)) as (fig, ax):
                ax[0][0].plot(rates, [on[r]["slow_share"] for r in rates], "o-", label="adaptive on")
                ax[0][0].plot(rates, [off[r]["slow_share"] for r in rates], "o--", label="adaptive off")
                ax[0][0].set_xlabel("offered load (req/s)")
                ax[0][0].set_ylabel(f"share served by {self.slow}")
                ax[0][0].set_ylim(0, 1)
                ax[0][0].legend()
                ax[0][0].grid(alpha=0.3)


def _cv(values: List[float]) -> Optional[float]:
    if not values or not sum(values):
        return None
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / len(values)
    return var ** 0.5 / m


def main(argv=None) -> int:
    return run_main(NAME, __doc__, add_args, DEFAULTS, QUICK, LoadExperiment, argv)


if __name__ == "__main__":
    sys.exit(main())
