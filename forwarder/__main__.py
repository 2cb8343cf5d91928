"""`python -m forwarder`: run one DMSC forwarder (Service Gateway and/or Service Router)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

from . import config as config_mod
from .config import ConfigError

EPILOG = """\
configuration (YAML; flags override it):
  node: /node/a              the node's own name; replies and pings reach it there
  roles: [sg, sr]            Service Gateway (accepts local apps), Service Router
  workdir: runs/x/a          log, pid file and sockets live here
  faces:                     point-to-point links
    - {name: a-eth0, type: ether, interface: a-eth0, mtu: 1500}
    - {name: u0, type: udp, local: 10.0.0.1:6464, remote: 10.0.0.2:6464}
  routes:                    static routes
    - {prefix: /shop/cart, face: a-eth0, cost: 1, instance: /node/b}
  rules:                     forwarding strategy (deny, rate, burst, priority, weights)
    - {prefix: /shop/cart, weights: {a-eth0: 3, a-eth1: 1}}
  local_socket: PATH         applications' Unix socket (default WORKDIR/app.sock)
  management: unix:PATH | tcp:HOST:PORT   (default unix:WORKDIR/mgmt.sock)
  http_proxy: 127.0.0.1:8080 the SG's HTTP adapter for unmodified clients
  http_services:             plain HTTP servers published under a prefix
    - {prefix: /shop/cart, backend: 127.0.0.1:9000}
  routing: {enabled: true, hello_ms: 100, dead_ms: 300, costs: {a-eth0: 10}}
  spa: {trust: [authority.pub], crl: crl.bin, enforce: true}
  scsc: 10.255.0.254:6653    the Scheduling Center; telemetry_interval_s: 1.0
  hop_limit: 32   flow_idle_s: 30   log_level: info
  dataplane: auto            ebpf: the kernel fast path repeats flow-table hits (tc);
                             python: every packet through this process; auto (default):
                             ebpf where it loads, else python (GET /status says why)

see docs/protocol.md for the wire format and README.md for the lab.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forwarder", description=__doc__,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML configuration file")
    p.add_argument("--node", help="node name, e.g. /node/a (overrides the file)")
    p.add_argument("--roles", help="comma-separated: sg,sr")
    p.add_argument("--workdir", help="work folder for log, pid file and sockets")
    p.add_argument("--face", action="append", default=[], metavar="IFACE",
                   help="add an Ethernet face on this interface (repeatable)")
    p.add_argument("--route", action="append", default=[], metavar="PREFIX=FACE[:COST]",
                   help="add a static route (repeatable)")
    p.add_argument("--management", help="unix:/path or tcp:HOST:PORT")
    p.add_argument("--local-socket", help="Unix socket path for applications")
    p.add_argument("--http-proxy", metavar="HOST:PORT", help="run the HTTP proxy adapter here")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--dataplane", choices=["auto", "ebpf", "python"],
                   help="kernel fast path (ebpf), Python only, or ebpf where it loads (auto)")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    return p


def merged_config(args: argparse.Namespace) -> config_mod.NodeConfig:
    data: dict = {}
    base = Path(".")
    if args.config:
        import yaml
        path = Path(args.config)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(f"{path}{f' line {mark.line + 1}' if mark else ''}: not valid YAML") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        base = path.parent
    for key in ("node", "workdir", "management", "local_socket", "http_proxy", "log_level",
                "dataplane"):
        v = getattr(args, key)
        if v is not None:
            data[key] = v
    if args.roles:
        data["roles"] = [r.strip() for r in args.roles.split(",") if r.strip()]
    if args.face:
        data.setdefault("faces", [])
        data["faces"] = list(data["faces"]) + [{"name": f, "type": "ether", "interface": f}
                                               for f in args.face]
    for spec in args.route:
        prefix, sep, rest = spec.partition("=")
        if not sep:
            raise ConfigError(f"--route {spec!r}: expected PREFIX=FACE[:COST]")
        face, _, cost = rest.partition(":")
        data.setdefault("routes", [])
        data["routes"] = list(data["routes"]) + [
            {"prefix": prefix, "face": face, **({"cost": int(cost)} if cost else {})}]
    try:
        cfg = config_mod.parse(data, base)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}" if args.config else str(exc)) from None
    return cfg


def _link_sockets(cfg: config_mod.NodeConfig) -> List[Path]:
    """WORKDIR/app.sock and WORKDIR/mgmt.sock point at sockets that live elsewhere
    (a short /run/dmsc path when the work folder's path is too long)."""
    made = []
    for name, real in (("app.sock", cfg.local_socket), ("mgmt.sock", cfg.mgmt_socket)):
        if real is None:
            continue
        real.parent.mkdir(parents=True, exist_ok=True)
        link = cfg.workdir / name
        if link.absolute() == real.absolute():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(real.absolute())
        made.append(link)
    return made


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = merged_config(args)
    except ConfigError as exc:
        print(f"forwarder: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"forwarder: configuration of {cfg.node} is valid")
        return 0
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    links = _link_sockets(cfg)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .runtime.daemon import Daemon
    from .mgmt import endpoint as mgmt
    daemon = Daemon(cfg)
    try:
        daemon.open()
    except OSError as exc:
        print(f"forwarder: {exc.strerror or exc}", file=sys.stderr)
        return 1
    server = mgmt.serve(daemon, cfg.management)
    agent = None
    if cfg.scsc:
        from .mgmt.scsc_agent import ScscAgent
        agent = ScscAgent(daemon, cfg.scsc, interval=cfg.telemetry_interval_s)
        agent.start()
    pidfile = cfg.workdir / "forwarder.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    if cfg.http_proxy or cfg.http_services:
        daemon.start_children()
    profile = os.environ.get("DMSC_PROFILE")
    try:
        if profile:  # where the forwarder spends its time: python -m pstats FILE
            import cProfile  # FILE may hold {node}: one profile per forwarder of a lab
            cProfile.runctx("daemon.run()", globals(), {"daemon": daemon},
                            profile.replace("{node}", cfg.node.text.strip("/").replace("/", "_")))
        else:
            daemon.run()
    finally:
        server.server_close()
        daemon.shutdown_routing()
        if agent:
            agent.stop()
        daemon.close()
        if cfg.mgmt_socket is not None:
            try:
                cfg.mgmt_socket.unlink()
            except OSError:
                pass
        for path in [pidfile] + links:
            try:
                path.unlink()
            except OSError:
                pass
        logging.getLogger("dmsc.forwarder").info("forwarder %s stopped", cfg.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
