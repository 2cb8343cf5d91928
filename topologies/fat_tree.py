#!/usr/bin/env python3
"""k-ary fat-tree DMSC lab: `sudo python topologies/fat_tree.py [--k 4] [--demo]`.

Core, aggregation and edge Service Routers; the servers are Service Gateways
hosting the demo shop. Brings the lab up, waits until routing has converged,
prints how long it took and opens the Mininet CLI with `dmsc` commands
(`help dmsc`); --demo runs the scripted tour instead. See docs/lab.md.
"""
import _bootstrap  # noqa: F401  (sys.path, venv)

from topologies.lab.builders import fat_tree
from topologies.lab.main import main


def add_args(p):
    p.add_argument("--k", type=int, default=4, help="fat-tree arity (even; default 4: 36 nodes)")


if __name__ == "__main__":
    main(__doc__, add_args, lambda a, opts: fat_tree(a.k, shop=not a.no_shop, opts=opts))
