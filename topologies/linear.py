#!/usr/bin/env python3
"""Linear DMSC lab: `sudo python topologies/linear.py [--n 4 --hosts 1]`.

A chain of --n Service Routers r1 - r2 - ... with --hosts Service Gateways on
each. Same options, CLI and --demo as fat_tree.py; see docs/lab.md.
"""
import _bootstrap  # noqa: F401

from topologies.lab.builders import linear
from topologies.lab.main import main


def add_args(p):
    p.add_argument("--n", type=int, default=4, help="routers in the chain")
    p.add_argument("--hosts", type=int, default=1, help="Service Gateways per router")


if __name__ == "__main__":
    main(__doc__, add_args, lambda a, opts: linear(a.n, a.hosts, shop=not a.no_shop, opts=opts))
