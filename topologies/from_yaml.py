#!/usr/bin/env python3
"""DMSC lab from a YAML file: `sudo python topologies/from_yaml.py FILE [--check]`.

The schema is in docs/lab.md ("YAML topologies") and topologies/lab/yamltopo.py;
examples are in topologies/examples/. A bad file is reported with its line and
the problem, before anything is created. --check only validates the file
(no root needed).
"""
import _bootstrap  # noqa: F401

from topologies.lab.main import main
from topologies.lab.yamltopo import load_topology


def add_args(p):
    p.add_argument("file", help="topology YAML file")
    p.add_argument("--check", action="store_true", help="validate the file, print a summary, exit")


if __name__ == "__main__":
    main(__doc__, add_args, lambda a, opts: load_topology(a.file, shop=not a.no_shop, opts=opts))
