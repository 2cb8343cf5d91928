"""`python -m forwarder.ctl <node> <command>`: ask a running forwarder what it decided.

<node> is a node's folder name in the run (runs/latest/<node>/mgmt.sock), a path
to a management socket, or tcp:HOST:PORT. Output is for people; --json gives the
same data to scripts.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional, Tuple
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUN = Path(os.environ.get("DMSC_RUN", REPO / "runs" / "latest"))


class CtlError(Exception):
    pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def resolve(node: str, run: Path) -> Tuple[str, str]:
    """Map a node argument to ('unix', path) or ('tcp', 'host:port')."""
    if node.startswith("tcp:"):
        return "tcp", node[4:]
    p = Path(node)
    if node.endswith(".sock") or p.is_socket():
        return "unix", str(p)
    cand = run / node / "mgmt.sock"
    if cand.exists() or cand.is_symlink():
        return "unix", str(cand)
    raise CtlError(f"no management socket for node {node!r} (looked for {cand}); "
                   f"is the lab running? pass --run RUN_DIR or a socket path")


def request(endpoint: Tuple[str, str], method: str, path: str, body: Optional[dict] = None,
            timeout: float = 60.0) -> Any:
    kind, where = endpoint
    if kind == "unix":
        # the path may be a link to a short /run/dmsc socket (sun_path is 108 bytes)
        conn: http.client.HTTPConnection = _UnixHTTPConnection(os.path.realpath(where), timeout)
    else:
        host, _, port = where.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise CtlError(f"cannot reach the forwarder at {where}: {exc}") from None
    finally:
        conn.close()
    ctype = resp.getheader("Content-Type", "")
    result = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
    if resp.status != 200:
        msg = result.get("error") if isinstance(result, dict) else result
        raise CtlError(f"{method} {path}: {resp.status}: {msg}")
    return result


# ----------------------------------------------------------------- rendering
def _table(rows, headers) -> str:
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render(cmd: str, data: Any) -> str:
    if cmd == "status":
        faces = _table([[f["id"], f["name"], f["kind"], "up" if f["up"] else "DOWN", f["mtu"],
                         f["app"] or f["peer_mac"] or "", f["queued"]] for f in data["faces"]],
                       ["id", "face", "kind", "state", "mtu", "peer/app", "queued"])
        drops = ", ".join(f"{k}={v}" for k, v in sorted(data["drops"].items())) or "none"
        dp = data.get("dataplane") or {}
        kernel = ""
        if dp.get("mode") == "ebpf":
            v = dp.get("verdicts") or {}
            kernel = (f"; kernel: {dp.get('kernel_flows', 0)} flows, {v.get('redirected', 0)} frames "
                      f"forwarded, {sum(n for k, n in v.items() if k != 'redirected')} passed up")
        return (f"node {data['node']}  roles {','.join(data['roles'])}  pid {data['pid']}  "
                f"up {data['uptime_s']:.1f}s\n"
                f"data plane: {dp.get('reason', '?')}{kernel}\n"
                f"fib {data['fib_entries']} entries (digest {data['fib_digest']}), "
                f"rib {data['rib_routes']} routes, {data['flows']} flows, {data['rules']} rules\n"
                f"local prefixes: {', '.join(data['local_prefixes']) or 'none'}\n"
                f"drops: {drops}\n\n{faces}")
    if cmd == "fib":
        rows = []
        for e in data["entries"]:
            for i, nh in enumerate(e["nexthops"]):
                rows.append([e["prefix"] if i == 0 else "", nh["face_name"], nh["cost"],
                             nh["origin"], nh["instance"] or "", "" if nh["up"] else "down"])
        return _table(rows, ["prefix", "face", "cost", "origin", "instance", "state"])
    if cmd == "rib":
        return _table([[r["prefix"], r["face_name"], r["cost"], r["priority"], r["origin"],
                        r["instance"] or ""] for r in data["routes"]],
                      ["prefix", "face", "cost", "priority", "origin", "instance"])
    if cmd == "flows":
        return _table([[f["dst"], f["src"], f["face_name"], f["packets"], f["bytes"], f["idle_s"],
                        f["priority"]] for f in data["flows"]],
                      ["dst", "src", "face", "packets", "bytes", "idle_s", "prio"])
    if cmd == "strategy":
        return _table([[r["prefix"], "deny" if r["deny"] else "", r["rate"] or "",
                        r["priority"] if r["priority"] is not None else "",
                        ", ".join(f"{k}={v:g}" for k, v in r["weights"].items()), r["origin"]]
                       for r in data["rules"]],
                      ["prefix", "deny", "rate/s", "prio", "weights", "origin"])
    if cmd == "counters":
        faces = _table([[n, c["rx_packets"], c["rx_bytes"], c["tx_packets"], c["tx_bytes"],
                         ", ".join(f"{k}={v}" for k, v in sorted(c["drops"].items()))]
                        for n, c in data["faces"].items()],
                       ["face", "rx_pkts", "rx_bytes", "tx_pkts", "tx_bytes", "drops"])
        prefixes = _table([[p, c["packets"], c["requests"], c["responses"], c["nacks"],
                            c["latency"]["p50_us"] if c["latency"]["count"] else "",
                            c["latency"]["p99_us"] if c["latency"]["count"] else ""]
                           for p, c in data["prefixes"].items()],
                          ["prefix", "packets", "requests", "responses", "nacks", "p50_us", "p99_us"])
        return f"{faces}\n\n{prefixes}"
    if cmd == "ping":
        lines = []
        for r in data["results"]:
            if r["ok"]:
                lines.append(f"reply from {r['responder']}: hops={r['hops']} time={r['rtt_ms']:.3f} ms")
            elif r["error"] == "nack":
                lines.append(f"NACK {r['reason']} from {r['from']}")
            else:
                lines.append(f"timeout after {r['rtt_ms']:.0f} ms")
        loss = 100.0 * (data["sent"] - data["received"]) / data["sent"]
        lines.append(f"--- {data['name']}: {data['sent']} sent, {data['received']} received, "
                     f"{loss:.0f}% loss" + (f", rtt min/avg/max {data['rtt_ms_min']:.3f}/"
                                             f"{data['rtt_ms_avg']:.3f}/{data['rtt_ms_max']:.3f} ms"
                                             if data["received"] else ""))
        return "\n".join(lines)
    if cmd == "trace":
        lines = [f"trace to {data['name']}"]
        for h in data["hops"]:
            extra = " (destination)" if h.get("reached") else (f" {h['error']}" if h.get("error") else "")
            if h.get("lost"):
                extra += f" ({h['lost']} probe(s) unanswered)"
            lines.append(f"{h['hop']:3d}  {h['node'] or '*'}  {h['rtt_ms']:.3f} ms{extra}")
        if not data["reached"]:
            lines.append("destination not reached")
        return "\n".join(lines)
    if isinstance(data, str):
        return data.rstrip("\n")
    return json.dumps(data, indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forwarder.ctl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder (default runs/latest)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("node", help="node folder name, socket path, or tcp:HOST:PORT")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    for c, h in (("status", "faces, table sizes, FIB digest, drops"), ("fib", "the FIB"),
                 ("rib", "every route from every origin"), ("flows", "the data flow table"),
                 ("strategy", "forwarding strategy rules"), ("counters", "per face and per prefix"),
                 ("metrics", "Prometheus text")):
        sub.add_parser(c, help=h)
    sp = sub.add_parser("ping", help="DMSC echo to a node or service name")
    sp.add_argument("name")
    sp.add_argument("-c", "--count", type=int, default=3)
    sp.add_argument("-W", "--timeout", type=float, default=1.0)
    sp.add_argument("-i", "--interval", type=float, default=0.2)
    sp.add_argument("-s", "--size", type=int, default=0, help="padding bytes")
    tp = sub.add_parser("trace", help="the path a name takes, hop by hop")
    tp.add_argument("name")
    tp.add_argument("-m", "--max-hops", type=int,
                    help="give up after this many hops (default: the forwarder's, 16)")
    tp.add_argument("-q", "--probes", type=int, default=3,
                    help="probes per hop when one gets no answer (default 3, like traceroute)")
    rp = sub.add_parser("route", help="add or delete a static route")
    rp.add_argument("action", choices=["add", "del"])
    rp.add_argument("prefix")
    rp.add_argument("face")
    rp.add_argument("--cost", type=int, default=1)
    rp.add_argument("--instance")
    up = sub.add_parser("rule", help="add or delete a strategy rule")
    up.add_argument("action", choices=["add", "del"])
    up.add_argument("prefix")
    up.add_argument("--deny", action="store_true")
    up.add_argument("--rate", type=float)
    up.add_argument("--burst", type=float)
    up.add_argument("--priority", type=int)
    up.add_argument("--weight", action="append", default=[], metavar="FACE_OR_INSTANCE=W")
    return p


def run(args: argparse.Namespace) -> Tuple[str, Any]:
    ep = resolve(args.node, args.run)
    c = args.cmd
    if c in ("status", "fib", "rib", "flows", "strategy", "counters", "metrics"):
        return c, request(ep, "GET", "/" + c)
    if c == "ping":
        return c, request(ep, "POST", "/ping", {"name": args.name, "count": args.count,
                                               "timeout": args.timeout, "interval": args.interval,
                                               "size": args.size})
    if c == "trace":
        body = {"name": args.name, "probes": args.probes}
        if args.max_hops is not None:
            body["max_hops"] = args.max_hops
        return c, request(ep, "POST", "/trace", body)
    if c == "route":
        if args.action == "add":
            body = {"prefix": args.prefix, "face": args.face, "cost": args.cost}
            if args.instance:
                body["instance"] = args.instance
            return c, request(ep, "POST", "/routes", body)
        return c, request(ep, "DELETE", "/routes?" + urlencode({"prefix": args.prefix,
                                                                 "face": args.face}))
    if c == "rule":
        if args.action == "del":
            return c, request(ep, "DELETE", "/strategy?" + urlencode({"prefix": args.prefix}))
        weights = {}
        for w in args.weight:
            k, sep, v = w.rpartition("=")
            if not sep:
                raise CtlError(f"--weight {w!r}: expected FACE_OR_INSTANCE=W")
            weights[k] = float(v)
        body = {"prefix": args.prefix, "deny": args.deny, "weights": weights}
        for k in ("rate", "burst", "priority"):
            if getattr(args, k) is not None:
                body[k] = getattr(args, k)
        return c, request(ep, "POST", "/strategy", body)
    raise CtlError(f"unknown command {c}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cmd, data = run(args)
    except CtlError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=1) if args.json and not isinstance(data, str) else render(cmd, data))
    if cmd == "ping":
        return 0 if data["received"] == data["sent"] else 1
    if cmd == "trace":
        return 0 if data["reached"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
