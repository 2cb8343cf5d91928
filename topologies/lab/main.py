"""Command line shared by topologies/fat_tree.py, leaf_spine.py, linear.py and from_yaml.py."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

from ..proc import LabError
from .model import AUTO_LINKSTATE_NODES_PER_CPU, LinkOpts, Topology, TopologyError


def build_parser(doc: str, add_args: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    g = p.add_argument_group("lab")
    g.add_argument("--demo", action="store_true",
                   help="run the scripted tour instead of the CLI; exit 0 only if every step passed")
    g.add_argument("--routing", choices=["auto", "linkstate", "static"], default="auto",
                   help="linkstate: the forwarders' link-state routing; static: shortest-path routes "
                        "computed by the lab (re-pushed on fail/restore); auto (default): linkstate when "
                        f"the forwarder supports it and there are at most "
                        f"{AUTO_LINKSTATE_NODES_PER_CPU} nodes per CPU, else static")
    g.add_argument("--scsc", choices=["auto", "off"], default="auto",
                   help="start the SCSC (python -m controller) on host scsc when it exists")
    g.add_argument("--no-spa", action="store_true", help="no SPA authority (nodes trust nothing)")
    g.add_argument("--no-shop", action="store_true", help="do not deploy the demo shop")
    g.add_argument("--pods", action="store_true",
                   help="the shop's HTTP services (cart, payment) run in pods behind their SGs, "
                        "reached by name with no proxy from any pod (and through the SGs' HTTP "
                        "adapters as before); a client pod (cli1, ...) behind each frontend SG. "
                        "`dmsc pods` lists them, `dmsc pod cli1 curl -s "
                        "http://cart.shop.dmsc/items?user=ann` calls the cart from one")
    g.add_argument("--proxies", choices=["entry", "services", "all", "none"], default="entry",
                   help="which SGs run the HTTP proxy on 127.0.0.1:8080: entry (default) = SGs "
                        "hosting /shop/frontend and the last SG; services = every SG hosting a "
                        "service; all; none")
    g.add_argument("--bw", type=float, help="bandwidth of every link, Mbit/s (tc)")
    g.add_argument("--delay", type=float, help="delay of every link, ms (netem; warns if absent)")
    g.add_argument("--loss", type=float, help="loss of every link, percent (nftables)")
    g.add_argument("--hello-ms", type=int, help="routing hello interval, ms (default 250; 1000 above 80 nodes); "
                        "the dead interval is 5 hellos, at least 2500 ms")
    g.add_argument("--timeout", type=float, help="convergence timeout, seconds")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="forwarders' log level")
    g.add_argument("--dataplane", choices=["auto", "ebpf", "python"], default="auto",
                   help="the forwarders' data plane: ebpf (the kernel fast path repeats flow-table "
                        "decisions), python (every packet through the Python forwarder), auto "
                        "(default: ebpf where it loads; `dmsc status NODE` says which and why)")
    g.add_argument("--no-zygote", action="store_true",
                   help="start every forwarder as its own `python -m forwarder` (slower start-up; "
                        "by default they are forked from one pre-imported process)")
    g.add_argument("--up-only", action="store_true",
                   help="bring the lab up, report the times, tear it down (no CLI)")
    g.add_argument("--report", type=Path, metavar="FILE",
                   help="write a JSON report when the lab stops: run folder, routing, timings, "
                        "exit status, error (for scripts and benchmarks)")
    return p


def main(doc: str, add_args: Callable[[argparse.ArgumentParser], None],
         make_topo: Callable[[argparse.Namespace, Optional[LinkOpts]], Topology],
         argv=None) -> None:
    args = build_parser(doc, add_args).parse_args(argv)
    opts = None
    if args.bw is not None or args.delay is not None or args.loss is not None:
        opts = LinkOpts(bw=args.bw, delay=args.delay, loss=args.loss)
    try:
        topo = make_topo(args, opts)
        if getattr(args, "pods", False):
            from .builders import shop_in_pods
            shop_in_pods(topo, sys.executable)
        topo.validate()
    except TopologyError as exc:
        sys.exit(f"error: {exc}")
    if getattr(args, "check", False):
        print(f"ok: {topo.summary()}")
        return
    if os.geteuid() != 0:
        sys.exit("error: the lab needs root (network namespaces): run it with sudo")
    sys.exit(run(topo, args))


def run(topo: Topology, args: argparse.Namespace) -> int:
    from .net import DmscLab

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    lab = DmscLab(topo, routing=args.routing, scsc=args.scsc, spa=not args.no_spa,
                  shop=not args.no_shop, proxies=args.proxies, hello_ms=args.hello_ms,
                  log_level=args.log_level, zygote=not args.no_zygote, dataplane=args.dataplane)
    rc, error = 0, None
    try:
        lab.start(converge_timeout=args.timeout)
        if args.demo:
            from .demo import run_demo
            rc = 0 if run_demo(lab) else 1
        elif not args.up_only:
            from .cli import DmscCLI
            print("*** DMSC commands: `help dmsc`; try `dmsc call h1 /shop/frontend/checkout` "
                  "or `dmsc route h1 /shop/catalog`. `exit` stops the lab.")
            DmscCLI(lab)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc, error = 1, str(exc)
    except Exception as exc:  # a bug: show it, but still clean up below
        import traceback
        traceback.print_exc()
        rc, error = 1, f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        print("\n*** interrupted", file=sys.stderr)
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        print("*** stopping the lab")
        lab.stop()
        print(f"*** stopped; logs in {lab.run_dir}")
        if args.report is not None:
            args.report.write_text(json.dumps({
                "run_dir": str(lab.run_dir) if lab.run_dir else None, "routing": lab.routing,
                "dataplane": lab.dataplane_in_use,
                "timings": lab.timings, "exit": rc, "error": error}, indent=1) + "\n")
    return rc
