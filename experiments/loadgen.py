"""Open-loop load generation over DMSC with the client library.

Requests are *scheduled* at a given rate (Poisson arrivals by default, or evenly
spaced) and each is sent at its scheduled time by a worker thread, whether or
not earlier requests have been answered: the offered load does not fall when
the system slows down (no coordinated omission). Latency is measured from the
scheduled time, so time spent waiting for a free worker counts too; how late
the generator itself was is kept per request (``lag_ms``), so a generator that
cannot keep up is visible rather than hidden.

Each call may be retried (``attempts`` > 1) on a timeout or on a transient NACK
(NO_ROUTE, INSTANCE_UNREACHABLE, which routing convergence produces); every
attempt is recorded, which is how the failure experiment counts calls retried
and calls failed.

Flows: every request can be its own flow (``flows=0``: the source name
``<client>/<tag><i>``, so anycast and ECMP choices are made per request and
the SCSC's weights apply at once), or requests can rotate over a fixed set of
flows (``flows=N``), each sticking to one path and instance.

    python -m experiments.loadgen --socket runs/latest/h1/app.sock --name /shop/catalog \
        --rate 200 --duration 10
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

from forwarder.apps.client import RETRYABLE_NACKS, CallTimeout, Client, DmscError, NackError
from topologies.measure import percentile


def instance_of(src_text: str) -> str:
    """'/node/h15/_app/1' -> '/node/h15' (the node hosting the answering instance)."""
    parts = [p for p in src_text.split("/") if p]
    return "/" + "/".join(parts[:2]) if len(parts) >= 2 else src_text


def one_call(client: Client, name: str, payload: bytes, flow: Optional[str], timeout: float,
             attempts: int, backoff: float = 0.02) -> dict:
    """A call with up to `attempts` attempts; returns the record of every attempt."""
    tries: List[list] = []
    responder, ok, error = "", False, ""
    for a in range(max(1, attempts)):
        t_send = time.time()
        try:
            reply = client.request(name, payload, timeout=timeout, retries=0, flow=flow)
            tries.append([t_send, time.time(), True, ""])
            responder, ok, error = instance_of(reply.src.text), True, ""
            break
        except CallTimeout:
            error = "timeout"
            tries.append([t_send, time.time(), False, error])
            continue
        except NackError as exc:
            error = f"nack:{exc.reason_name}"
            tries.append([t_send, time.time(), False, error])
            if exc.reason not in RETRYABLE_NACKS:
                break
            time.sleep(backoff)
            continue
        except DmscError as exc:
            error = f"error:{exc}"[:120]
            tries.append([t_send, time.time(), False, error])
            time.sleep(backoff)
            continue
    return {"ok": ok, "error": error, "attempts": len(tries), "responder": responder, "tries": tries}


class OpenLoop:
    """Schedule calls at `rate`/s for `duration` s (None: until stop()), send them on time."""

    def __init__(self, client: Client, name: str, rate: float, duration: Optional[float], *,
                 payload: bytes = b"", timeout: float = 2.0, attempts: int = 1, flows: int = 0,
                 tag: str = "q", workers: int = 64, poisson: bool = True,
                 rng: Optional[random.Random] = None,
                 on_result: Optional[Callable[[dict], None]] = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.client = client
        self.name = name
        self.rate = float(rate)
        self.duration = duration
        self.payload = payload
        self.timeout = timeout
        self.attempts = attempts
        self.flows = flows
        self.tag = tag
        self.workers = workers
        self.poisson = poisson
        self.rng = rng or random.Random(1)
        self.on_result = on_result
        self.results: List[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.started_at: Optional[float] = None
        self.scheduled = 0

    def _flow(self, i: int) -> Optional[str]:
        if self.flows < 0:
            return None
        return f"{self.tag}{i}" if self.flows == 0 else f"{self.tag}{i % self.flows}"

    def _one(self, i: int, t_sched: float) -> None:
        t_start = time.time()
        flow = self._flow(i)
        rec = one_call(self.client, self.name, self.payload, flow, self.timeout, self.attempts)
        t_end = time.time()
        rec.update({"i": i, "flow": flow, "t_sched": t_sched, "t_end": t_end,
                    "lag_ms": (t_start - t_sched) * 1000.0,
                    "latency_ms": (t_end - t_sched) * 1000.0})
        with self._lock:
            self.results.append(rec)
        if self.on_result is not None:
            self.on_result(rec)

    def run(self) -> List[dict]:
        """Blocking: generate, then wait for the last answers; returns the records."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"load-{self.tag}") as pool:
            t0 = time.time()
            self.started_at = t0
            mono0 = time.monotonic()
            next_off, i = 0.0, 0
            while not self._stop.is_set():
                if self.duration is not None and next_off >= self.duration:
                    break
                wait = mono0 + next_off - time.monotonic()
                if wait > 0:
                    if self._stop.wait(wait):
                        break
                pool.submit(self._one, i, t0 + next_off)
                i += 1
                gap = self.rng.expovariate(self.rate) if self.poisson else 1.0 / self.rate
                next_off += gap
            self.scheduled = i
        return self.results

    def start(self) -> "OpenLoop":
        """Run in a background thread (until stop() when duration is None)."""
        self._thread = threading.Thread(target=self.run, name=f"openloop-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> List[dict]:
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(self.timeout * self.attempts + 10)
        return self.results

    def snapshot(self) -> List[dict]:
        with self._lock:
            return list(self.results)


def summarize(records: List[dict], duration: float, warmup: float = 0.0) -> dict:
    """Offered/achieved rate, errors, latency percentiles (ms) of the records after `warmup`."""
    from .common import lat_stats
    if records:
        t0 = min(r["t_sched"] for r in records)
        recs = [r for r in records if r["t_sched"] - t0 >= warmup]
    else:
        recs = []
    span = max(1e-9, duration - warmup)
    ok = [r for r in recs if r["ok"]]
    by_inst: Dict[str, int] = {}
    for r in ok:
        by_inst[r["responder"]] = by_inst.get(r["responder"], 0) + 1
    out = {"sent": len(recs), "ok": len(ok), "failed": len(recs) - len(ok),
           "offered_rps": round(len(recs) / span, 2), "throughput_rps": round(len(ok) / span, 2),
           "error_ratio": round((len(recs) - len(ok)) / len(recs), 4) if recs else None,
           "retried": sum(1 for r in recs if r["attempts"] > 1),
           "by_instance": by_inst}
    out.update(lat_stats([r["latency_ms"] for r in ok], "lat_ms_"))
    lags = [r["lag_ms"] for r in recs]
    out["lag_ms_p99"] = round(percentile(lags, 99), 3) if lags else None
    errs: Dict[str, int] = {}
    for r in recs:
        if not r["ok"]:
            errs[r["error"]] = errs.get(r["error"], 0) + 1
    out["errors"] = errs
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.loadgen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True, help="a Service Gateway's app socket")
    ap.add_argument("--name", required=True, help="service name to call")
    ap.add_argument("--rate", type=float, required=True, help="requests per second (offered)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until SIGTERM")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    ap.add_argument("--attempts", type=int, default=1)
    ap.add_argument("--flows", type=int, default=0,
                    help="0: one flow per request; N: rotate over N flows; -1: one flow")
    ap.add_argument("--tag", default="q", help="flow name prefix")
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--constant", action="store_true", help="evenly spaced, not Poisson")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--payload", default="")
    ap.add_argument("--out", help="write every call as a JSON line here (flushed per call)")
    ap.add_argument("--summary", help="write the summary JSON here")
    args = ap.parse_args(argv)
    import signal
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    lock = threading.Lock()

    def on_result(rec: dict) -> None:
        if out is not None:
            line = json.dumps(rec, sort_keys=True) + "\n"
            with lock:
                out.write(line)
                out.flush()
    with Client(args.socket, timeout=args.timeout) as client:
        gen = OpenLoop(client, args.name, args.rate, args.duration or None,
                       payload=args.payload.encode(), timeout=args.timeout, attempts=args.attempts,
                       flows=args.flows, tag=args.tag, workers=args.workers,
                       poisson=not args.constant, rng=random.Random(args.seed),
                       on_result=on_result)
        signal.signal(signal.SIGTERM, lambda *_: gen.stop(wait=False))
        signal.signal(signal.SIGINT, lambda *_: gen.stop(wait=False))
        print(f"loadgen: {args.rate:g}/s to {args.name} from {client.name.text}", flush=True)
        recs = gen.run()
        elapsed = time.time() - (gen.started_at or time.time())
    if out is not None:
        out.close()
    summary = summarize(recs, args.duration or elapsed)
    summary["counters"] = client.counters
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
    else:
        print(json.dumps(summary, indent=1))
    return 0


class JsonlTail:
    """Reads a growing JSON-lines file incrementally (what a generator process writes)."""

    def __init__(self, path) -> None:
        self.path = path
        self.offset = 0
        self.records: List[dict] = []
        self._partial = ""

    def read(self) -> List[dict]:
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                f.seek(self.offset)
                data = f.read()
                self.offset = f.tell()
        except OSError:
            return self.records
        data = self._partial + data
        lines = data.split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    pass
        return self.records


if __name__ == "__main__":
    sys.exit(main())


def run_in_lab(procs, lab, node: str, name: str, rate: float, duration: float, out, summary,
               *, timeout: float = 2.0, attempts: int = 1, flows: int = 0, tag: str = "q",
               workers: int = 128, seed: int = 1, label: str = "loadgen") -> tuple:
    """One generator process in `node`'s host for `duration` s; (records, summary dict)."""
    from pathlib import Path
    for p in (out, summary):
        try:
            Path(p).unlink()
        except OSError:
            pass
    proc = procs.python(node, label, "experiments.loadgen", "--socket",
                        str(lab.fwd[node].app_socket), "--name", name, "--rate", str(rate),
                        "--duration", str(duration), "--timeout", str(timeout), "--attempts",
                        str(attempts), "--flows", str(flows), "--tag", tag, "--workers",
                        str(workers), "--seed", str(seed), "--out", str(out), "--summary", str(summary))
    try:
        proc.proc.wait(duration + timeout * attempts + 60)
    except Exception:
        procs.stop([proc])
        raise RuntimeError(f"the load generator in {node} did not finish; log {proc.log}")
    rc = proc.proc.returncode
    if proc in procs.procs:
        procs.procs.remove(proc)
    if rc != 0:
        raise RuntimeError(f"the load generator in {node} exited with {rc}; log {proc.log}")
    with open(summary) as f:
        summ = json.load(f)
    return JsonlTail(out).read(), summ
