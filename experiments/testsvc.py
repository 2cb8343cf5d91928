"""A test microservice for the experiments: answers at once, or slowly on demand.

    python -m experiments.testsvc --socket SG/app.sock --prefix /exp/work --node h5 \
        [--identity spa/services/work-h5.key] [--control FILE] [--workers 8]

It attaches to its Service Gateway with the client library, registers the
prefix (with an SPA proof when given an identity) and answers every request
with a small JSON object naming the instance (``{"instance": "/node/h5", "n":
42}``), plus the request payload echoed when it is short.

Making an instance slow: the control file (JSON, re-read whenever it changes)
holds ``{"delay_ms": 20, "concurrency": 1}``: each request then takes
``delay_ms`` and at most ``concurrency`` requests are served at once (the
others queue inside the instance, as they would in a saturated server). Write
``{}`` or remove the file to make it fast again. The instance's gateway
measures the resulting service time (GET /counters prefixes[p].service_latency),
which is what the SCSC's adaptive weights react to.

Like the shop's services it re-attaches and registers again when its gateway
restarts (a failure experiment kills gateways).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

from forwarder.apps.client import Client, DmscError, NackError

log = logging.getLogger("testsvc")


class Control:
    """delay_ms / concurrency from a JSON file, re-read when its mtime changes."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.mtime: Optional[float] = None
        self.delay_s = 0.0
        self.concurrency = 0
        self.sem: Optional[threading.Semaphore] = None
        self.lock = threading.Lock()

    def current(self):
        if not self.path:
            return 0.0, None
        try:
            m = os.stat(self.path).st_mtime
        except OSError:
            m = None
        if m != self.mtime:
            with self.lock:
                if m != self.mtime:
                    cfg = {}
                    if m is not None:
                        try:
                            with open(self.path) as f:
                                cfg = json.load(f) or {}
                        except (OSError, ValueError):
                            cfg = {}
                    self.delay_s = max(0.0, float(cfg.get("delay_ms", 0))) / 1000.0
                    c = int(cfg.get("concurrency", 0) or 0)
                    if c != self.concurrency:
                        self.concurrency = c
                        self.sem = threading.Semaphore(c) if c > 0 else None
                    self.mtime = m
                    log.info("control: delay %.1f ms, concurrency %s", self.delay_s * 1000,
                             c or "unlimited")
        return self.delay_s, self.sem


def make_handler(instance: str, control: Control):
    counter = {"n": 0}
    lock = threading.Lock()

    def handle(payload: bytes, request) -> bytes:
        delay, sem = control.current()
        if delay > 0:
            if sem is not None:
                with sem:
                    time.sleep(delay)
            else:
                time.sleep(delay)
        with lock:
            counter["n"] += 1
            n = counter["n"]
        out = {"instance": instance, "n": n}
        if len(payload) <= 64:
            out["echo"] = payload.decode(errors="replace")
        return json.dumps(out).encode()
    return handle


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.testsvc", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True, help="the Service Gateway's app socket")
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--node", required=True, help="the SG's node name (for answers)")
    ap.add_argument("--identity", help="SPA service key (NAME.key with NAME.auth beside)")
    ap.add_argument("--control", help="JSON control file: delay_ms, concurrency")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ident = None
    if args.identity:
        from forwarder.spa import ServiceIdentity
        ident = ServiceIdentity.load(args.identity)
    handler = make_handler(f"/node/{args.node}", Control(args.control))
    waiting = False
    while not stop.is_set():
        try:
            client = Client(args.socket, identity=ident, timeout=2.0)
        except DmscError as exc:
            if not waiting:
                log.info("waiting for the gateway: %s", exc)
                waiting = True
            stop.wait(0.2)
            continue
        waiting = False
        try:
            client.serve(args.prefix, handler, workers=args.workers)
            print(f"testsvc: serving {args.prefix} on /node/{args.node} as {client.name.text}",
                  flush=True)
            while not stop.is_set() and not client.closed:
                stop.wait(0.2)
        except (DmscError, NackError) as exc:
            log.warning("registration of %s failed: %s", args.prefix, exc)
            stop.wait(0.5)
        finally:
            client.close(drain=0.5)
            if not stop.is_set():
                log.warning("gateway connection lost; re-attaching")
    return 0


if __name__ == "__main__":
    sys.exit(main())
