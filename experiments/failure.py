"""Failure experiment: what calls see when links, routers, gateways and the SCSC fail.

On a k-ary fat tree (default k=4: 36 forwarders, the demo shop, SPA, the SCSC)
two steady open-loop streams of calls run throughout:

* path stream: the first SG calls /exp/path, a test service (experiments/testsvc.py)
  on the last SG, i.e. across the core; requests rotate over a few flows so they
  spread over the ECMP paths;
* anycast stream: an SG of a pod without a catalog instance calls /shop/catalog,
  which has three instances in other pods; requests rotate over a few flows, so
  all three instances answer.

Each call has up to --attempts attempts of --timeout seconds (an attempt is
retried on a timeout or a transient NACK). One after another, with the network
converged before and after each:

1. link_cut: the edge-aggregation link carrying most of the path stream's flows
   goes down (both ends, ``lab.fail``), later comes back;
2. sr_kill: the core router carrying most of the path stream's flows is killed
   (SIGKILL of its forwarder; its links stay up, so neighbours must notice by
   missing hellos), later restarted;
3. sg_kill: the SG hosting the catalog instance that answers most of the
   anycast stream is killed the same way, later restarted (its instance
   re-registers);
4. pod_kill: a client pod (``fcli``) holds one TCP connection to ``l4.exp.dmsc``
   (two instance pods, ``fsrv1`` and ``fsrv2``, behind SGs in other pods of the
   fabric, reached by name through their SGs: docs/protocol.md 13) and opens a
   new connection every 50 ms (topologies/podprobe.py); the node of the SG
   whose pod holds the connection fails (its forwarder killed and its links
   down: the pod behind it is cut off), later comes back. Measured besides the
   routing figures: how the open connection ends (a reset, a timeout, or never
   within the window: hung) and after how long, and when new connections work
   again (on the other instance);
5. scsc_kill: the SCSC is killed (SIGKILL) for --scsc-down seconds, then restarted;
6. link_flap: the link of event 1 goes down and up --flap-cycles times.

Measured per event (node timestamps, wall clock of the one machine):

* detection: failure to the first node noticing it: the carrier event in
  ``GET /status face_events`` (link), the ``adjacency_down`` line in a
  neighbour's log (killed forwarder: hello dead interval), the agents' "SCSC
  session ended" line (SCSC);
* local failover: failure to the moment the node next to it forwards around it:
  the face-down time for a carrier event (the pipeline skips a down face at
  once, using the ECMP/loop-free alternates already in its FIB), otherwise the
  first ``fib_changed_at`` after the failure at a neighbour (polled every few
  tens of ms);
* global convergence: failure to the last route change anywhere
  (``routing.last_change`` / ``fib_changed_at``) once every node's link-state
  database digest agrees again; for the SCSC: restart to every forwarder
  connected and in sync again;
* calls failed (every attempt failed) and calls retried (more than one attempt)
  of both streams from the failure until converged, and in the restore phase;
  disruption: failure to the send time of the last failing attempt.

Outputs: config.json, calls-path.jsonl and calls-anycast.jsonl (every call with its attempts), events.jsonl
(everything measured per event), events.csv, timeline_<event>.png and
failure_timeline.png (latency of each call around each event), summary.md/json.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from forwarder.runtime.events import EVENTS_FILE, read_events
from topologies.measure import loadavg, wait_for

from .common import (Experiment, fmt, issue_identity, lab_facts, md_table, parse_list,
                     ProcSet, Progress, Results, rnd, run_main, start_lab)

NAME = "failure"
EVENTS = ["link_cut", "sr_kill", "sg_kill", "pod_kill", "scsc_kill", "link_flap"]
PATH_PREFIX = "/exp/path"
ANY_PREFIX = "/shop/catalog"
POD_PREFIX, POD_HOST, POD_PORT = "/exp/l4", "l4.exp.dmsc", 7000
POD_CLIENT, POD_SERVERS = "fcli", ("fsrv1", "fsrv2")

DEFAULTS = dict(k=4, rate=50.0, timeout=0.5, attempts=3, flows=8, pre=3.0, post=2.0,
                flap_cycles=5, flap_down=0.5, flap_up=0.5, scsc_down=6.0, converge_timeout=60.0,
                events=",".join(EVENTS), kill_mode="process", hello_ms=None, dead_ms=None)
QUICK = dict(rate=40.0, pre=1.5, post=1.0, flap_cycles=3, flap_down=0.4, flap_up=0.4,
             scsc_down=3.0, converge_timeout=60.0)


def add_args(ap) -> None:
    ap.add_argument("--k", type=int, help="fat tree arity (even; default 4)")
    ap.add_argument("--rate", type=float, help="calls per second of each stream")
    ap.add_argument("--timeout", type=float, help="seconds per attempt")
    ap.add_argument("--attempts", type=int, help="attempts per call (1 = no retry)")
    ap.add_argument("--flows", type=int, help="flows each stream rotates over")
    ap.add_argument("--pre", type=float, help="seconds of steady calls before each event")
    ap.add_argument("--post", type=float, help="seconds kept after convergence")
    ap.add_argument("--flap-cycles", type=int)
    ap.add_argument("--flap-down", type=float, help="seconds down per flap")
    ap.add_argument("--flap-up", type=float, help="seconds up per flap")
    ap.add_argument("--scsc-down", type=float, help="seconds the SCSC stays dead")
    ap.add_argument("--converge-timeout", type=float,
                    help="seconds to wait for convergence before giving up (a hang limit; default 60)")
    ap.add_argument("--events", help=f"comma list of {','.join(EVENTS)}")
    ap.add_argument("--hello-ms", type=int, help="routing hello interval (default: the lab's, 200)")
    ap.add_argument("--dead-ms", type=int, help="routing dead interval (default: the lab's, 1000)")
    ap.add_argument("--kill-mode", choices=["process", "node"],
                    help="process: SIGKILL the forwarder, links stay up (default); "
                         "node: lab.fail (forwarder killed and its links down)")


# ---------------------------------------------------------------------------
# Helpers on the lab
# ---------------------------------------------------------------------------

class Net:
    """Thin layer over DmscLab for this experiment: alive nodes, polling, timestamps."""

    def __init__(self, lab, progress: Progress) -> None:
        self.lab = lab
        self.p = progress
        self.killed: Set[str] = set()

    def alive(self) -> List[str]:
        return [n for n in self.lab.live_nodes() if n not in self.killed]

    def status(self, node: str) -> Optional[dict]:
        try:
            return self.lab.fwd[node].api("GET", "/status", timeout=5.0)
        except Exception:
            return None

    def neighbours(self, node: str) -> List[str]:
        return [l.other(node) for l in self.lab.topo.links_of(node)]

    def link_intfs(self, a: str, b: str) -> Dict[str, str]:
        l = self.lab.topo.links_between(a, b)[0]
        return {a: l.intf_of(a), b: l.intf_of(b)}

    def converged_after(self, t0: float, must_change: Optional[List[str]], settle: float = 0.5,
                        gone: Optional[str] = None) -> Optional[dict]:
        """Statuses if converged after t0, else None.

        must_change: nodes whose routes must have changed after t0 (None: every alive node);
        gone: a node name that must have left every routing table.
        """
        nodes = self.alive()
        sts = self.lab.statuses(nodes)
        if any(s is None for s in sts.values()):
            return None
        digests = {s["routing"]["lsdb_digest"] for s in sts.values() if s.get("routing")}
        if len(digests) != 1:
            return None
        now = time.time()
        changers = nodes if must_change is None else [n for n in must_change if n in sts]
        for n in changers:
            lc = sts[n]["routing"]["last_change"] or 0
            if lc < t0:
                return None
        for s in sts.values():
            last = max(s.get("fib_changed_at") or 0, s["routing"]["last_change"] or 0)
            if now - last < settle:
                return None
        if gone is not None:
            for n in nodes:
                fib = self.lab.fwd[n].api("GET", "/fib", timeout=10.0)
                if any(e["prefix"] == f"/node/{gone}" for e in fib["entries"]):
                    return None
        return sts

    @staticmethod
    def last_change_after(sts: Dict[str, dict], t0: float) -> Optional[float]:
        ts = []
        for s in sts.values():
            for v in (s.get("fib_changed_at"), s["routing"]["last_change"]):
                if v and v >= t0:
                    ts.append(v)
        return max(ts) if ts else None

    @contextmanager
    def _killed_counted_dead(self):
        """The lab's convergence check, with the nodes this experiment killed counted as dead."""
        saved = set(self.lab.dead_nodes)
        self.lab.dead_nodes |= self.killed
        try:
            yield
        finally:
            self.lab.dead_nodes = saved

    def why_not_converged(self) -> str:
        """The lab's own list of what keeps it from being converged, for a timeout message."""
        try:
            with self._killed_counted_dead():
                return "; ".join(self.lab.convergence_problems()[:3]) or "converged now"
        except Exception as exc:  # a diagnosis must not hide the timeout
            return f"could not ask ({exc})"

    def fully_converged(self) -> bool:
        with self._killed_counted_dead():
            return not self.lab.convergence_problems()


class FibWatcher:
    """Polls a few nodes' /status quickly; keeps the first fib_changed_at after t0 seen at each."""

    def __init__(self, net: Net, nodes: List[str], t0: float, interval: float = 0.05) -> None:
        self.net, self.nodes, self.t0, self.interval = net, nodes, t0, interval
        self.first: Dict[str, float] = {}
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True, name="fibwatch")
        self.th.start()

    def _run(self) -> None:
        while not self.stop_ev.is_set() and len(self.first) < len(self.nodes):
            for n in self.nodes:
                if n in self.first or n in self.net.killed:
                    continue
                st = self.net.status(n)
                if st and (st.get("fib_changed_at") or 0) >= self.t0:
                    self.first[n] = st["fib_changed_at"]
            self.stop_ev.wait(self.interval)

    def stop(self) -> Dict[str, float]:
        self.stop_ev.set()
        self.th.join(5)
        return dict(self.first)


# ---------------------------------------------------------------------------
# Call accounting
# ---------------------------------------------------------------------------

def window_stats(records: List[dict], t_from: float, t_to: float) -> dict:
    """Calls scheduled in [t_from, t_to): failed, retried, and the last failing attempt."""
    calls = [r for r in records if t_from <= r["t_sched"] < t_to]
    failed = [r for r in calls if not r["ok"]]
    retried = [r for r in calls if r["attempts"] > 1]
    bad_tries = [t for r in records for t in r["tries"]
                 if not t[2] and t_from <= t[1] and t[0] < t_to]
    errors: Dict[str, int] = {}
    for r in failed:
        errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {"calls": len(calls), "failed": len(failed), "retried": len(retried),
            "failed_attempts": len(bad_tries),
            "last_bad_send": max((t[0] for t in bad_tries), default=None), "errors": errors}


def longest_gap(records: List[dict], t_from: float, t_to: float) -> Optional[float]:
    done = sorted(r["t_end"] for r in records if r["ok"] and t_from - 1 <= r["t_end"] <= t_to)
    gaps = [b - a for a, b in zip(done, done[1:]) if b >= t_from]
    return max(gaps) if gaps else None


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------

class StreamProc:
    """An open-loop call stream in its own process (experiments.loadgen) in the client's host.

    A separate process keeps this script's polling out of the measured latencies;
    every call lands in a JSON-lines file in the results folder as it completes.
    """

    def __init__(self, procs: ProcSet, lab, node: str, name: str, label: str, a, seed: int,
                 out: Path) -> None:
        from .loadgen import JsonlTail
        self.procs = procs
        self.tail = JsonlTail(out)
        self.proc = procs.python(
            node, f"loadgen-{label}", "experiments.loadgen", "--socket",
            str(lab.fwd[node].app_socket), "--name", name, "--rate", str(a.rate), "--duration", "0",
            "--timeout", str(a.timeout), "--attempts", str(a.attempts), "--flows", str(a.flows),
            "--tag", label[0], "--workers", "96", "--seed", str(seed), "--out", str(out))

    def snapshot(self) -> List[dict]:
        return list(self.tail.read())

    def stop(self) -> None:
        self.procs.stop([self.proc])
        self.tail.read()


class FailureExperiment(Experiment):
    def __init__(self, args, res: Results, progress: Progress) -> None:
        super().__init__(args, res, progress)
        self.net: Optional[Net] = None
        self.streams: Dict[str, Any] = {}
        self.events_out = res.jsonl("events.jsonl")
        self.results: List[dict] = []

    # ------------------------------------------------------------ set-up
    def setup(self) -> None:
        from forwarder.apps.client import Client
        from topologies.lab.builders import fat_tree
        a = self.a
        topo = fat_tree(a.k)
        sgs = topo.sgs
        self.path_client, self.path_server = sgs[0], sgs[-1]
        catalog = next(s for s in topo.services if s.prefix == ANY_PREFIX)
        pods_with = {topo.nodes[n].pod for n in catalog.nodes}
        cands = [n for n in sgs if topo.nodes[n].pod not in pods_with and n != self.path_client
                 and not topo.services_on(n)] or \
                [n for n in sgs if n not in catalog.nodes and n != self.path_client]
        self.any_client = cands[0]
        self.catalog_nodes = list(catalog.nodes)
        self.place_pods(topo)
        self.lab = start_lab(topo, self.res, self.p, run_kind="exp-failure",
                             hello_ms=a.hello_ms, dead_ms=a.dead_ms, dataplane=a.dataplane)
        self.net = Net(self.lab, self.p)
        self.procs = ProcSet(self.lab)
        ident = issue_identity(self.lab, PATH_PREFIX, "exppath", self.path_server)
        argv = ["--socket", str(self.lab.fwd[self.path_server].app_socket), "--prefix", PATH_PREFIX,
                "--node", self.path_server]
        if ident:
            argv += ["--identity", str(ident)]
        self.procs.python(self.path_server, "testsvc-path", "experiments.testsvc", *argv)
        self.res.write_config(**lab_facts(self.lab), path_client=self.path_client,
                              path_server=self.path_server, anycast_client=self.any_client,
                              anycast_instances=self.catalog_nodes)
        self.p.log(f"path stream {self.path_client} -> {PATH_PREFIX} on {self.path_server}; "
                   f"anycast stream {self.any_client} -> {ANY_PREFIX} on {', '.join(self.catalog_nodes)}")

        def reachable() -> bool:
            fib = self.lab.fwd[self.path_client].api("GET", "/fib")
            return any(e["prefix"] == PATH_PREFIX for e in fib["entries"])
        wait_for(reachable, a.converge_timeout, 0.2, f"{PATH_PREFIX} in {self.path_client}'s FIB", retry_on=(Exception,))
        for label, node, name in (("path", self.path_client, PATH_PREFIX),
                                  ("anycast", self.any_client, ANY_PREFIX)):
            with Client(str(self.lab.fwd[node].app_socket), timeout=1.0) as c:
                wait_for(lambda c=c, name=name: c.call(name, b"warm", timeout=1.0, retries=0),
                           20, 0.2, f"a first answer from {name}", retry_on=(Exception,))
            self.streams[label] = StreamProc(self.procs, self.lab, node, name, label, a,
                                             self.rng.randrange(1 << 30),
                                             self.res.path(f"calls-{label}.jsonl"))
        wait_for(lambda: all(sum(1 for r in g.snapshot() if r["ok"]) >= 20
                               for g in self.streams.values()), 30, 0.2, "both streams running", retry_on=(Exception,))
        self.p.log("both streams running (one generator process per stream, in its client's host)")

    def place_pods(self, topo) -> None:
        """pod_kill's pods: the client behind the second SG, an instance behind each of two
        SGs of other fabric pods that host nothing else and run neither stream's client
        (so the other events keep theirs)."""
        import sys as _sys
        sgs = topo.sgs
        client = sgs[1] if sgs[1] != self.any_client else sgs[2]
        busy = {n for s in topo.services for n in s.nodes} | {sgs[0], sgs[-1], client,
                                                              self.any_client}
        hosts: List[str] = []
        for n in sgs:
            if n not in busy and topo.nodes[n].pod != topo.nodes[client].pod and \
                    topo.nodes[n].pod not in {topo.nodes[h].pod for h in hosts}:
                hosts.append(n)
        hosts = (hosts + [n for n in sgs if n not in busy and n not in hosts])[:2]
        if len(hosts) < 2:
            self.pod_hosts = []
            return
        topo.add_pod(POD_CLIENT, client)
        for name, node in zip(POD_SERVERS, hosts):
            topo.add_pod(name, node, [POD_PREFIX],
                         [_sys.executable, "-m", "topologies.podprobe", "serve", "--port",
                          str(POD_PORT), "--name", name])
        self.pod_hosts = hosts

    # ----------------------------------------------------------- targets
    def _flow_faces(self, node: str, prefix: str) -> Dict[str, int]:
        faces: Dict[str, int] = {}
        for f in self.lab.fwd[node].api("GET", "/flows")["flows"]:
            if f["dst"].startswith(prefix) and f.get("face_name"):
                faces[f["face_name"]] = faces.get(f["face_name"], 0) + f.get("packets", 1)
        return faces

    def _peer_by_face(self, node: str, face: str) -> Optional[str]:
        for l in self.lab.topo.links_of(node):
            if l.intf_of(node) == face:
                return l.other(node)
        return None

    def pick_link(self) -> Tuple[str, str]:
        topo = self.lab.topo
        edge = self.net.neighbours(self.path_client)[0]
        faces = self._flow_faces(edge, PATH_PREFIX)
        ups = [n for n in self.net.neighbours(edge) if topo.nodes[n].role == "sr"]
        best = None
        if faces:
            face = max(faces, key=faces.get)
            best = self._peer_by_face(edge, face)
        if best not in ups:
            best = ups[0]
        return edge, best

    def pick_sr(self) -> str:
        topo = self.lab.topo
        edge = self.net.neighbours(self.path_client)[0]
        aggs = [n for n in self.net.neighbours(edge) if topo.nodes[n].layer == "agg"]
        counts: Dict[str, int] = {}
        for agg in aggs:
            for face, n in self._flow_faces(agg, PATH_PREFIX).items():
                peer = self._peer_by_face(agg, face)
                if peer and topo.nodes[peer].layer == "core":
                    counts[peer] = counts.get(peer, 0) + n
        if counts:
            return max(counts, key=counts.get)
        cores = [n for n in topo.nodes if topo.nodes[n].layer == "core"]
        return cores[0] if cores else aggs[0]

    def pick_sg(self) -> str:
        recs = self.streams["anycast"].snapshot()
        t = time.time() - 3
        counts: Dict[str, int] = {}
        for r in recs:
            if r["ok"] and r["t_end"] >= t:
                n = r["responder"].rsplit("/", 1)[-1]
                counts[n] = counts.get(n, 0) + 1
        # not an SG on the path client's edge router: keep the events independent
        shared = set(self.net.neighbours(self.net.neighbours(self.path_client)[0]))
        allowed = [n for n in self.catalog_nodes if n not in shared] or self.catalog_nodes
        counts = {n: c for n, c in counts.items() if n in allowed}
        return max(counts, key=counts.get) if counts else allowed[0]

    # ------------------------------------------------------------- events
    def _calls_between(self, t_from: float, t_to: float) -> Dict[str, dict]:
        return {label: window_stats(g.snapshot(), t_from, t_to) for label, g in self.streams.items()}

    def _wait(self, pred: Callable[[], Any], what: str) -> Any:
        try:
            return wait_for(pred, self.a.converge_timeout, 0.25, what, retry_on=(Exception,))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; the lab says: {self.net.why_not_converged()}") from None

    def _finish_event(self, ev: dict, t0: float, t_conv_seen: float, t_restore: float,
                      t_restored: float, affected: str) -> dict:
        a = self.a
        fail_calls = self._calls_between(t0, t_restore)
        restore_calls = self._calls_between(t_restore, t_restored + a.post)
        total_failed = sum(s["failed"] for s in fail_calls.values())
        total_retried = sum(s["retried"] for s in fail_calls.values())
        bad = [s["last_bad_send"] for s in fail_calls.values() if s["last_bad_send"]]
        recs = self.streams[affected].snapshot()
        ev.update({
            "t0": t0, "t_converged_seen": t_conv_seen, "t_restore": t_restore,
            "t_restored": t_restored, "affected_stream": affected,
            "calls": fail_calls, "restore_calls": restore_calls,
            "calls_failed": total_failed, "calls_retried": total_retried,
            "restore_calls_failed": sum(s["failed"] for s in restore_calls.values()),
            "restore_calls_retried": sum(s["retried"] for s in restore_calls.values()),
            "disruption_s": rnd(max(0.0, max(bad) - t0), 4) if bad else 0.0,
            "loadavg_after": loadavg(),
            "longest_gap_s": rnd(longest_gap(recs, t0, t_restore), 4),
            "restore_convergence_s": rnd(t_restored - t_restore, 3),
        })
        self.events_out.write(ev)
        self.results.append(ev)
        self.p.log(f"{ev['event']}: detection {fmt(_ms(ev.get('detection_s')))} ms, local failover "
                   f"{fmt(_ms(ev.get('local_failover_s')))} ms, global convergence "
                   f"{fmt(_ms(ev.get('global_convergence_s')))} ms, calls failed {total_failed}, "
                   f"retried {total_retried}")
        return ev

    def ev_link_cut(self, flap: bool = False) -> dict:
        a, net, lab = self.a, self.net, self.lab
        x, y = self.link if hasattr(self, "link") else self.pick_link()
        self.link = (x, y)
        intfs = net.link_intfs(x, y)
        time.sleep(a.pre)
        watch = FibWatcher(net, [x, y], time.time())
        t0 = time.time()
        watch.t0 = t0
        lab.fail(f"{x}-{y}")

        def seen() -> Optional[dict]:
            out = {}
            for n, intf in intfs.items():
                st = net.status(n)
                ev = (st or {}).get("face_events", {}).get(intf)
                if ev and not ev["up"] and ev["time"] >= t0:
                    out[n] = ev
            return out if len(out) == 2 else None
        faces = self._wait(seen, f"both ends of {x}-{y} to see carrier down")
        t_detect = min(e["time"] for e in faces.values())
        sts = self._wait(lambda: net.converged_after(t0, [x, y]), "convergence after the cut")
        t_seen = time.time()
        first = watch.stop()
        t_conv = net.last_change_after(sts, t0)
        ev = {"event": "link_cut", "target": f"{x}-{y}", "interfaces": intfs,
              "detected_by": {n: e["source"] for n, e in faces.items()},
              "detection_s": rnd(t_detect - t0, 4),
              "local_failover_s": rnd(t_detect - t0, 4),
              "local_failover_how": "carrier down: the pipeline skips the face at once "
                                    "(ECMP / loop-free alternate next hops already in the FIB)",
              "first_fib_change_s": {n: rnd(t - t0, 4) for n, t in first.items()},
              "global_convergence_s": rnd(t_conv - t0, 4) if t_conv else None,
              "nodes_changed": sum(1 for s in sts.values()
                                   if (s["routing"]["last_change"] or 0) >= t0)}
        time.sleep(a.post)
        t_restore = time.time()
        lab.restore(f"{x}-{y}")
        self._wait(lambda: net.converged_after(t_restore, [x, y]) and net.fully_converged(),
                   "convergence after the restore")
        return self._finish_event(ev, t0, t_seen, t_restore, time.time(), "path")

    def _kill(self, node: str, mode: str) -> None:
        if mode == "node":
            self.lab.fail(node)
        else:
            self.net.killed.add(node)
            self.lab.fwd[node].kill()

    def _revive(self, node: str, mode: str) -> None:
        if mode == "node":
            self.lab.restore(node)
        else:
            self.lab.fwd[node].start()
            self.net.killed.discard(node)

    def ev_kill(self, kind: str, node: str, affected: str, mode: Optional[str] = None,
                measure: Optional[Callable[[float, float], dict]] = None) -> dict:
        """Kill `node` (mode: --kill-mode unless given), measure, restore. `measure(t0,
        t_restore)` adds what else the event measured (ev["pod"])."""
        a, net, lab = self.a, self.net, self.lab
        mode = mode or a.kill_mode
        neigh = net.neighbours(node)
        time.sleep(a.pre)
        t_before = time.time()
        watch = FibWatcher(net, neigh, t_before)
        t0 = time.time()
        watch.t0 = t0
        self._kill(node, mode)

        def detected() -> Optional[Tuple[float, str]]:
            if mode == "node":
                best = None
                for n in neigh:
                    intf = net.link_intfs(n, node)[n]
                    e = (net.status(n) or {}).get("face_events", {}).get(intf)
                    if e and not e["up"] and e["time"] >= t0:
                        best = min(best or (e["time"], n), (e["time"], n))
                return best
            times = [(e["t"], n) for n in neigh
                     for e in read_events(lab.fwd[n].workdir / EVENTS_FILE, t0, "adjacency_down",
                                          neighbor=f"/node/{node}")]
            return min(times) if times else None
        t_detect, by = wait_for(detected, a.converge_timeout, 0.05, f"a neighbour of {node} to notice", retry_on=(Exception,))
        sts = self._wait(lambda: net.converged_after(t0, None, gone=node),
                         f"convergence after killing {node}")
        t_seen = time.time()
        first = watch.stop()
        t_local = min(first.values()) if first else None
        if mode == "node":
            t_local = min(t_detect, t_local or t_detect)
        t_conv = net.last_change_after(sts, t0)
        ev = {"event": kind, "target": node, "kill_mode": mode, "neighbours": neigh,
              "detected_by": by,
              "detection_how": "carrier (links down)" if mode == "node" else
                               "hello dead interval: adjacency_down in the neighbour's events",
              "detection_s": rnd(t_detect - t0, 4),
              "local_failover_s": rnd(t_local - t0, 4) if t_local else None,
              "local_failover_how": "first FIB change at a neighbour after the failure",
              "first_fib_change_s": {n: rnd(t - t0, 4) for n, t in first.items()},
              "global_convergence_s": rnd(t_conv - t0, 4) if t_conv else None,
              "dead_ms": lab.dead_ms, "hello_ms": lab.hello_ms}
        time.sleep(a.post)
        t_restore = time.time()
        if measure is not None:
            ev["pod"] = measure(t0, t_restore)
        self._revive(node, mode)
        self._wait(lambda: net.converged_after(t_restore, None) and net.fully_converged(),
                   f"convergence after restarting {node}")
        return self._finish_event(ev, t0, t_seen, t_restore, time.time(), affected)

    def ev_pod(self) -> dict:
        """pod_kill: an open connection and new ones from a pod while the node of the
        SG whose instance pod holds the connection fails."""
        from topologies.podprobe import read_events as probe_events
        py = self.lab.python
        probe = self.procs.start(POD_CLIENT, "pod-probe", [
            py, "-m", "topologies.podprobe", "connect", POD_HOST, "--port", str(POD_PORT),
            "--interval", "0.05", "--timeout", "60"])
        dialer = self.procs.start(POD_CLIENT, "pod-dial", [
            py, "-m", "topologies.podprobe", "dial", POD_HOST, "--port", str(POD_PORT),
            "--interval", "0.05", "--timeout", "1"])
        echoes = lambda: [e for e in probe_events(str(probe.log)) if e["event"] == "echo"]  # noqa: E731
        wait_for(lambda: len(echoes()) >= 10, self.a.converge_timeout, 0.1,
                 f"the pod's connection to {POD_HOST}", retry_on=(Exception,))
        peer = echoes()[-1]["peer"]
        node = self.lab.topo.pod(peer).node
        self.p.log(f"pod_kill: {POD_CLIENT}'s connection is held by {peer} behind {node}")

        def measure(t0: float, t_end: float) -> dict:
            return pod_outcome(probe_events(str(probe.log)), probe_events(str(dialer.log)),
                               peer, t0, t_end)
        try:
            return self.ev_kill("pod_kill", node, "path", mode="node", measure=measure)
        finally:
            self.procs.stop([probe, dialer])

    def ev_scsc(self) -> dict:
        a, net, lab = self.a, self.net, self.lab
        ev: Dict[str, Any] = {"event": "scsc_kill", "target": "scsc"}
        if lab.scsc is None:
            ev["skipped"] = f"no SCSC in this lab: {lab.scsc_reason}"
            self.p.log(f"scsc_kill skipped: {ev['skipped']}")
            t = time.time()
            return self._finish_event(ev, t, t, t, t, "anycast")
        time.sleep(a.pre)
        before = lab.scsc_api("GET", "/health")
        t0 = time.time()
        lab.scsc.kill()

        def noticed() -> Optional[Tuple[float, int]]:
            times = []
            for n in net.alive():
                ts = [e["t"] for e in read_events(lab.fwd[n].workdir / EVENTS_FILE, t0,
                                                  "scsc_session_down")]
                if ts:
                    times.append(min(ts))
            return (min(times), len(times)) if times else None
        try:
            t_detect, _ = wait_for(noticed, 10, 0.1, "a forwarder to notice the SCSC is gone", retry_on=(Exception,))
        except TimeoutError:
            t_detect = None
        # the SCSC stays down; calls go on
        rest = a.scsc_down - (time.time() - t0)
        if rest > 0:
            time.sleep(rest)
        seen = noticed()
        t_restore = time.time()
        lab.scsc.start()
        n_alive = len(net.alive())

        def back() -> Optional[dict]:
            try:
                h = lab.scsc_api("GET", "/health", timeout=3.0)
            except Exception:
                return None
            ok = h.get("connected", 0) >= n_alive and h.get("in_sync", 0) >= n_alive
            return h if ok else None
        health = self._wait(back, "every forwarder back with the SCSC")
        t_back = time.time()
        ev.update({"detection_s": rnd(t_detect - t0, 4) if t_detect else None,
                   "detection_how": "agents' log: session ended / closed / no word",
                   "forwarders_noticed": seen[1] if seen else 0,
                   "local_failover_s": None,
                   "local_failover_how": "none needed: forwarding never depends on the SCSC; "
                                         "rules stay until their lifetime runs out",
                   "global_convergence_s": rnd(t_back - t_restore, 4),
                   "global_convergence_how": "SCSC restart to every forwarder connected and in sync "
                                             "(GET /health)",
                   "scsc_down_s": rnd(t_restore - t0, 3), "health_before": before,
                   "health_after": health})
        return self._finish_event(ev, t0, t_back, t_restore, t_back, "anycast")

    def ev_flap(self) -> dict:
        a, net, lab = self.a, self.net, self.lab
        x, y = self.link if hasattr(self, "link") else self.pick_link()
        intfs = net.link_intfs(x, y)
        time.sleep(a.pre)
        stats0 = self._routing_totals()
        t0 = time.time()
        detections = []
        marks = []
        for c in range(a.flap_cycles):
            td = time.time()
            marks.append([td - t0, "down"])
            lab.fail(f"{x}-{y}")
            try:
                e = wait_for(lambda: (lambda ev: ev if ev and not ev["up"] and ev["time"] >= td
                                        else None)((net.status(x) or {}).get("face_events", {})
                                                   .get(intfs[x])), 3, 0.02, "carrier down", retry_on=(Exception,))
                detections.append(e["time"] - td)
            except TimeoutError:
                pass
            rest = a.flap_down - (time.time() - td)
            if rest > 0:
                time.sleep(rest)
            tu = time.time()
            marks.append([tu - t0, "up"])
            lab.restore(f"{x}-{y}")
            rest = a.flap_up - (time.time() - tu)
            if rest > 0 and c + 1 < a.flap_cycles:
                time.sleep(rest)
        # From the last restore, not from its return: the ends send a hello the moment
        # carrier comes back, so the adjacency (and its route change) can be up before
        # lab.restore() has seen both faces up.
        t_last = tu
        self._wait(lambda: net.converged_after(t_last, [x, y]) and net.fully_converged(),
                   "convergence after the flapping")
        t_done = time.time()
        sts = lab.statuses(net.alive())
        t_conv = net.last_change_after(sts, t_last - 0.01)
        stats1 = self._routing_totals()
        ev = {"event": "link_flap", "target": f"{x}-{y}", "cycles": a.flap_cycles,
              "down_s": a.flap_down, "up_s": a.flap_up,
              "detection_s": rnd(sum(detections) / len(detections), 4) if detections else None,
              "detection_s_each": [rnd(d, 4) for d in detections],
              "detection_how": "carrier down (face_events), mean over the cycles",
              "local_failover_s": rnd(sum(detections) / len(detections), 4) if detections else None,
              "local_failover_how": "carrier down: the pipeline skips the face at once",
              "global_convergence_s": rnd(t_conv - t_last, 4) if t_conv else 0.0,
              "global_convergence_how": "last restore to the last route change anywhere",
              "marks": marks, "plot_gc_s": rnd(t_conv - t0, 4) if t_conv else None,
              "routing_packets_sent": {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}}
        return self._finish_event(ev, t0, t_done, t_done, t_done, "path")

    def _routing_totals(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s in self.lab.statuses(self.net.alive()).values():
            for k, v in ((s or {}).get("routing") or {}).get("stats", {}).items():
                if isinstance(v, int) and k in ("hellos_sent", "lsas_sent", "lsas_originated",
                                                "acks_sent", "spf_runs"):
                    out[k] = out.get(k, 0) + v
        return out

    # --------------------------------------------------------------- run
    def run(self) -> None:
        events = [e for e in parse_list(self.a.events, str) if e]
        bad = [e for e in events if e not in EVENTS]
        if bad:
            raise SystemExit(f"unknown event(s) {bad}; choose from {EVENTS}")
        self.p.total = len(events) + 2
        self.p.step(f"bringing up a k={self.a.k} fat tree")
        self.setup()
        for e in events:
            if e == "link_cut":
                self.link = self.pick_link()
                self.p.step(f"link_cut: {self.link[0]}-{self.link[1]}")
                self.ev_link_cut()
            elif e == "sr_kill":
                node = self.pick_sr()
                self.p.step(f"sr_kill: {node} ({self.a.kill_mode})")
                self.ev_kill("sr_kill", node, "path")
            elif e == "sg_kill":
                node = self.pick_sg()
                self.p.step(f"sg_kill: {node} (instance of {ANY_PREFIX}, {self.a.kill_mode})")
                self.ev_kill("sg_kill", node, "anycast")
            elif e == "pod_kill":
                if not self.pod_hosts:
                    self.p.log("pod_kill skipped: the fabric has no two free SGs for the instance pods")
                    continue
                self.p.step(f"pod_kill: the node of the SG whose pod holds {POD_CLIENT}'s connection")
                self.ev_pod()
            elif e == "scsc_kill":
                self.p.step("scsc_kill")
                self.ev_scsc()
            elif e == "link_flap":
                if not hasattr(self, "link"):
                    self.link = self.pick_link()
                self.p.step(f"link_flap: {self.link[0]}-{self.link[1]} x{self.a.flap_cycles}")
                self.ev_flap()
        time.sleep(0.5)

    def stop_streams(self) -> None:
        for g in self.streams.values():
            g.stop()

    def teardown(self) -> None:
        try:
            self.stop_streams()
        finally:
            super().teardown()

    # ------------------------------------------------------------ report
    def report(self, error: Optional[str] = None) -> None:
        if self.lab is None or not hasattr(self, "path_client"):
            self.res.summary({"error": error or "no lab", "events": {}},
                             f"# Failure experiment\n\n**Failed before any event: {error}**\n")
            return
        self.plot()
        rows, csvrows, head = [], [], {}
        for ev in self.results:
            name = ev["event"]
            d = {"event": name, "target": ev.get("target"),
                 "detection_ms": _ms(ev.get("detection_s")),
                 "local_failover_ms": _ms(ev.get("local_failover_s")),
                 "global_convergence_ms": _ms(ev.get("global_convergence_s")),
                 "calls_failed": ev.get("calls_failed"), "calls_retried": ev.get("calls_retried"),
                 "disruption_ms": _ms(ev.get("disruption_s")),
                 "longest_gap_ms": _ms(ev.get("longest_gap_s")),
                 "restore_convergence_ms": _ms(ev.get("restore_convergence_s")),
                 "restore_calls_failed": ev.get("restore_calls_failed"),
                 "calls_in_window": sum(s["calls"] for s in ev.get("calls", {}).values()),
                 "errors": _merge_errors(ev.get("calls", {})),
                 "skipped": ev.get("skipped")}
            csvrows.append(d)
            head[name] = {k: v for k, v in d.items() if k not in ("event",)}
            head[name]["detected_by"] = ev.get("detected_by")
            if ev.get("pod"):
                head[name]["pod"] = ev["pod"]
            rows.append([name, d["target"], fmt(d["detection_ms"]), fmt(d["local_failover_ms"]),
                         fmt(d["global_convergence_ms"]), d["calls_failed"], d["calls_retried"],
                         d["calls_in_window"], _errs_text(d["errors"]), fmt(d["disruption_ms"]),
                         f"{fmt(d['restore_convergence_ms'])} / {d['restore_calls_failed']}"])
        self.res.write_csv("events.csv", csvrows)
        all_calls = {label: g.snapshot() for label, g in self.streams.items()}
        totals = {label: {"calls": len(r), "failed": sum(1 for x in r if not x["ok"]),
                          "retried": sum(1 for x in r if x["attempts"] > 1)}
                  for label, r in all_calls.items()}
        flat = {}
        for name, d in head.items():
            for k in ("detection_ms", "local_failover_ms", "global_convergence_ms",
                      "calls_failed", "calls_retried"):
                flat[f"{name}_{k}"] = d.get(k)
        a = self.a
        md = [f"# Failure experiment ({'QUICK' if a.quick else 'default'} run)", "",
              f"k={a.k} fat tree, lab run `{self.lab.run_dir}`, routing {self.lab.routing}, "
              f"hello {self.lab.hello_ms} ms / dead {self.lab.dead_ms} ms. Two open-loop streams of "
              f"{a.rate:g} calls/s each: path {self.path_client} -> {PATH_PREFIX} "
              f"({self.path_server}), anycast {self.any_client} -> {ANY_PREFIX} "
              f"({', '.join(self.catalog_nodes)}); {a.attempts} attempts of {a.timeout:g} s per call, "
              f"{a.flows} flows per stream; kill mode `{a.kill_mode}`.", "",
              md_table(rows, ["event", "target", "detection ms", "local failover ms",
                              "global convergence ms", "calls failed", "calls retried",
                              "calls in window", "why calls failed", "disruption ms",
                              "restore: convergence ms / failed"]),
              "",
              "Definitions: detection = failure to the first node noticing it (carrier event, or "
              "a neighbour's `adjacency_down` after the hello dead interval, or the agents losing "
              "the SCSC); local failover = failure to the node next to it forwarding around it "
              "(face down, or its first FIB change); global convergence = failure to the last "
              "route change anywhere once all link-state databases agree (SCSC: restart to every "
              "forwarder connected and in sync). Calls are counted from the failure until the "
              "restore; disruption = failure to the send time of the last failing attempt.", "",
              f"Whole run: " + ", ".join(f"{k}: {v['calls']} calls, {v['failed']} failed, "
                                         f"{v['retried']} retried" for k, v in totals.items()), "",
              "Plots: `failure_timeline.png` (all events), `timeline_<event>.png`.", ""]
        md += self.pod_section(flat)
        loops = {ev["event"]: _merge_errors(ev.get("calls", {})).get("nack:HOP_LIMIT_EXCEEDED", 0) +
                 _merge_errors(ev.get("restore_calls", {})).get("nack:HOP_LIMIT_EXCEEDED", 0)
                 for ev in self.results}
        loops = {k: v for k, v in loops.items() if v}
        if loops:
            md += [f"**Forwarding loops seen**: calls answered with NACK HOP_LIMIT_EXCEEDED during "
                   + ", ".join(f"{k} ({v})" for k, v in loops.items())
                   + ", i.e. some flow went round in circles until its hop limit ran out while (or "
                   "after) routing converged.", ""]
            flat["hop_limit_exceeded_calls"] = loops
        if error:
            md += [f"**The run stopped early: {error}** (the table holds the events measured "
                   "before that).", ""]
            flat["error"] = error
        notes = [ev for ev in self.results if ev.get("skipped")]
        for ev in notes:
            md.append(f"* {ev['event']} skipped: {ev['skipped']}")
        self.res.summary({"events": head, "stream_totals": totals, **flat}, "\n".join(md))

    def pod_section(self, flat: dict) -> List[str]:
        """pod_kill's own figures: summary.json's flat keys (into `flat`) and its paragraph."""
        pod = next((ev for ev in self.results if ev.get("pod")), None)
        if pod is None:
            return []
        o = pod["pod"]
        for k in ("open_connection", "open_connection_ended_ms", "new_connections_failed",
                  "first_new_connection_elsewhere_ms", "last_failed_new_connection_ms"):
            flat[f"pod_kill_{k}"] = o.get(k)
        return ["## A pod's TCP connections when its service's instance fails (pod_kill)", "",
                f"`{POD_CLIENT}` behind {self.lab.topo.pod(POD_CLIENT).node} held one connection "
                f"to `{POD_HOST}` (instance pods {', '.join(POD_SERVERS)} behind "
                f"{', '.join(self.pod_hosts)}), answered by `{o['instance_pod']}`, and opened a new "
                f"connection every 50 ms. Its instance's node ({pod['target']}) failed:", "",
                f"* the open connection: **{o['open_connection']}**"
                + (f" after {fmt(o['open_connection_ended_ms'])} ms" if o["open_connection_ended_ms"]
                   is not None else "") + " (a reset is what the SGs send: the other instance's "
                "SG for a segment of a connection it never held, or the client's SG once the "
                "network says the instance is gone; `hung` would mean neither happened);",
                f"* new connections: {o['new_connections_failed']} of {o['new_connections']} failed "
                f"({_errs_text(o['new_connection_errors'])}); the first one answered by the "
                f"other instance {fmt(o['first_new_connection_elsewhere_ms'])} ms after the failure, "
                f"the last failure at {fmt(o['last_failed_new_connection_ms'])} ms; the routing "
                f"figures of this event are in the table (global convergence "
                f"{fmt(_ms(pod.get('global_convergence_s')))} ms).", ""]

    def plot(self) -> None:
        if not self.results:
            return
        colors = {"path": "tab:blue", "anycast": "tab:purple"}
        records = {label: g.snapshot() for label, g in self.streams.items()}
        evs = [e for e in self.results if not e.get("skipped")]

        def draw(ax, ev) -> None:
            t0 = ev["t0"]
            lo, hi = t0 - self.a.pre, ev["t_restored"] + 0.5
            for label, recs in records.items():
                ok = [(r["t_sched"] - t0, r["latency_ms"]) for r in recs
                      if r["ok"] and lo <= r["t_sched"] <= hi]
                bad = [r["t_sched"] - t0 for r in recs if not r["ok"] and lo <= r["t_sched"] <= hi]
                if ok:
                    ax.scatter([x for x, _ in ok], [y for _, y in ok], s=5, alpha=0.6,
                               color=colors.get(label), label=f"{label} ok")
                retried = [(r["t_sched"] - t0, r["latency_ms"]) for r in recs
                           if r["ok"] and r["attempts"] > 1 and lo <= r["t_sched"] <= hi]
                if retried:
                    ax.scatter([x for x, _ in retried], [y for _, y in retried], s=18,
                               facecolors="none", edgecolors="orange", label=f"{label} retried")
                if bad:
                    ax.scatter(bad, [self.a.timeout * self.a.attempts * 1000 * 1.3] * len(bad),
                               marker="x", color="red", s=20, label=f"{label} failed")
            ax.axvline(0, color="black", lw=1, label="failure")
            for m, what in ev.get("marks", []):
                ax.axvline(m, color="black" if what == "down" else "tab:green", ls=":", lw=0.8)
            for key, col, lab in (("detection_s", "orange", "detection"),
                                  ("local_failover_s", "green", "local failover"),
                                  ("global_convergence_s", "red", "global convergence")):
                v = ev.get(key)
                if key == "global_convergence_s" and ev.get("plot_gc_s") is not None:
                    v = ev["plot_gc_s"]
                if v is not None:
                    ax.axvline(v, color=col, ls="--", lw=1, label=lab)
            ax.axvline(ev["t_restore"] - t0, color="grey", ls=":", lw=1, label="restore")
            ax.set_yscale("log")
            ax.set_xlim(lo - t0, hi - t0)
            ax.set_xlabel("seconds from the failure")
            ax.set_ylabel("call latency (ms)")
            ax.set_title(f"{ev['event']}: {ev.get('target')}")
            ax.grid(alpha=0.3)

        for ev in evs:
            with self.res.figure(f"timeline_{ev['event']}", size=(9, 4)) as (fig, axes):
                draw(axes[0][0], ev)
                axes[0][0].legend(fontsize=7, loc="upper right", ncol=2)
        if evs:
            with self.res.figure("failure_timeline", nrows=len(evs), size=(10, 3.2 * len(evs))) \
                    as (fig, axes):
                for i, ev in enumerate(evs):
                    draw(axes[i][0], ev)
                axes[0][0].legend(fontsize=7, loc="upper right", ncol=3)


def pod_outcome(probe: List[dict], dials: List[dict], peer: str, t0: float, t_end: float) -> dict:
    """What the pod saw from the failure at t0 to the restore at t_end: how its open
    connection ended (a reset, a timeout, or still nothing: hung), and the new
    connections (failed ones, the first one answered by another instance, the last
    failure)."""
    err = next((e for e in probe if e["event"] == "error" and e["t"] >= t0), None)
    after = [e for e in probe if e["event"] == "echo" and e["t"] >= t0]
    if err is not None:
        outcome, t_out = err["error"], err["t"]
    elif after and after[-1]["t"] >= t_end - 1.0:
        outcome, t_out = "still_answered", None      # the connection did not need the dead node
    else:
        outcome, t_out = "hung", None
    win = [d for d in dials if t0 <= d["t"] <= t_end]
    failed = [d for d in win if not d["ok"]]
    other = [d for d in win if d["ok"] and d.get("peer") != peer]
    errors: Dict[str, int] = {}
    for d in failed:
        errors[d.get("error", "?")] = errors.get(d.get("error", "?"), 0) + 1
    last_fail = max((d["t"] for d in failed), default=None)
    return {"instance_pod": peer, "open_connection": outcome,
            "open_connection_ended_ms": _ms(t_out - t0) if t_out else None,
            "echoes_after_failure": len(after),
            "new_connections": len(win), "new_connections_failed": len(failed),
            "new_connection_errors": errors,
            "first_new_connection_elsewhere_ms": _ms(min(d["t"] for d in other) - t0) if other else None,
            "last_failed_new_connection_ms": _ms(last_fail - t0) if last_fail else None,
            "answered_by_the_dead_instance": sum(1 for d in win if d["ok"] and d.get("peer") == peer
                                                 and d["t"] > t0 + 0.5)}


def _merge_errors(calls: Dict[str, dict]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for st in calls.values():
        for k, v in st.get("errors", {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _errs_text(errs: Dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "-"


def _ms(s: Optional[float]) -> Optional[float]:
    return None if s is None else round(s * 1000.0, 1)


def _check(args) -> None:
    if args.k < 2 or args.k % 2:
        sys.exit("failure: --k must be an even integer >= 2")


def main(argv=None) -> int:
    return run_main(NAME, __doc__, add_args, DEFAULTS, QUICK, FailureExperiment, argv, check=_check)


if __name__ == "__main__":
    sys.exit(main())
