"""Link emulation: bandwidth with tc, loss with nftables, delay with netem when it exists.

* bandwidth: ``tc qdisc replace dev X root tbf rate <bw>mbit`` on both ends
  (or netem's ``rate`` when netem is available and a delay is asked too);
* loss: an nftables ``netdev`` table in each end's namespace with an ingress
  chain per interface, ``numgen random mod 10000 < p*100 drop``. It drops any
  EtherType (DMSC is 0x88B5) and needs no netem. The forwarder's packet socket
  is bound to 0x88B5, so it sees frames after the netdev ingress hook;
* delay: netem only. This kernel may have no sch_netem: then every delayed
  link gets a warning naming it, and the delay is not applied (never silently).
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, List, Optional

from .model import LinkOpts, LinkSpec

_netem: Optional[bool] = None


def _run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)


def netem_available(netns: str) -> bool:
    """True if a netem qdisc can be added (probed once on a namespace's loopback)."""
    global _netem
    if _netem is None:
        res = _run(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root",
                    "netem", "delay", "1ms"])
        _netem = res.returncode == 0
        if _netem:
            _run(["ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", "lo", "root"])
    return _netem


def tc_commands(intf: str, opts: LinkOpts, netem: bool) -> List[List[str]]:
    """tc argv lists for one interface (run inside its namespace)."""
    if netem and opts.delay:
        cmd = ["tc", "qdisc", "replace", "dev", intf, "root", "netem", "delay", f"{opts.delay:g}ms"]
        if opts.bw:
            cmd += ["rate", f"{opts.bw:g}mbit"]
        return [cmd]
    if opts.bw:
        rate_bytes = opts.bw * 1e6 / 8
        burst = max(4 * opts.mtu, int(rate_bytes / 100))      # 10 ms worth, at least 4 frames
        return [["tc", "qdisc", "replace", "dev", intf, "root", "tbf", "rate", f"{opts.bw:g}mbit",
                 "burst", str(burst), "latency", "100ms"]]
    return []


def nft_loss_ruleset(table: str, intfs: List[tuple]) -> str:
    """An nftables netdev table dropping a random share of ingress frames per interface.

    intfs: [(interface, loss percent)].
    """
    lines = [f"table netdev {table} {{"]
    for intf, loss in intfs:
        chain = "loss_" + intf.replace("-", "_")
        threshold = max(0, min(10000, round(loss * 100)))
        lines += [f"  chain {chain} {{",
                  f'    type filter hook ingress device "{intf}" priority 0; policy accept;',
                  f"    numgen random mod 10000 < {threshold} counter drop",
                  "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply_link_options(links: List[LinkSpec], netns_of: Callable[[str], str],
                       workdir_of: Callable[[str], Path], warn: Callable[[str], None]) -> List[str]:
    """Apply bw/loss/delay of every link; returns the warnings given."""
    warnings: List[str] = []
    loss_by_node: dict = {}
    for link in links:
        o = link.opts
        if not (o.bw or o.delay or o.loss):
            continue
        netem = bool(o.delay) and netem_available(netns_of(link.a))
        if o.delay and not netem:
            msg = (f"link {link.key}: delay {o.delay:g} ms NOT applied: this kernel has no netem "
                   "(sch_netem); bandwidth and loss still apply")
            warnings.append(msg)
            warn(msg)
        for node in (link.a, link.b):
            intf = link.intf_of(node)
            for cmd in tc_commands(intf, o, netem):
                res = _run(["ip", "netns", "exec", netns_of(node), *cmd])
                if res.returncode != 0:
                    msg = f"link {link.key}: {' '.join(cmd)} failed: {res.stderr.strip()}"
                    warnings.append(msg)
                    warn(msg)
            if o.loss:
                loss_by_node.setdefault(node, []).append((intf, o.loss))
    for node, intfs in loss_by_node.items():
        path = workdir_of(node) / "loss.nft"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(nft_loss_ruleset("dmsc_loss", intfs))
        res = _run(["ip", "netns", "exec", netns_of(node), "nft", "-f", str(path)])
        if res.returncode != 0:
            msg = f"node {node}: nftables loss rules failed ({res.stderr.strip()}); loss NOT applied"
            warnings.append(msg)
            warn(msg)
    return warnings
