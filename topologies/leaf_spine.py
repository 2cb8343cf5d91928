#!/usr/bin/env python3
"""Leaf-spine DMSC lab: `sudo python topologies/leaf_spine.py [--spines 2 --leaves 4 --hosts 2]`.

Every leaf SR links to every spine SR; each leaf has --hosts Service Gateways.
Same options, CLI and --demo as fat_tree.py; see docs/lab.md.
"""
import _bootstrap  # noqa: F401

from topologies.lab.builders import leaf_spine
from topologies.lab.main import main


def add_args(p):
    p.add_argument("--spines", type=int, default=2)
    p.add_argument("--leaves", type=int, default=4)
    p.add_argument("--hosts", type=int, default=2, help="Service Gateways per leaf")


if __name__ == "__main__":
    main(__doc__, add_args,
         lambda a, opts: leaf_spine(a.spines, a.leaves, a.hosts, shop=not a.no_shop, opts=opts))
