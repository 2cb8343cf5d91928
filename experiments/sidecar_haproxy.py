"""The sidecar mesh's second proxy: HAProxy, as a drop-in for nginx's :class:`Sidecar`.

:class:`HaproxySidecar` takes the same arguments and has the same attributes
(``node``, ``name``, ``dir``, ``conf``, ``proc``, ``pid``, ``inbound``,
``out_port``) as :class:`experiments.sidecar_mesh.Sidecar`, so an experiment
can build its mesh with either:

* inbound: a listener on the pod address that proxies to the pod's app on
  127.0.0.1:app_port;
* outbound: a listener on 127.0.0.1:out_port that routes by Host header (port
  ignored, like nginx's server_name) to the inbound listeners of the
  destination service's instances, one backend per service host, round robin;
  a Host that names no service gets HAProxy's 503.

One HAProxy per pod, one process with one thread (``nbthread 1``), master-worker
off: the pid ProcSet records is the process that does all the work, so its CPU
and memory are the sidecar's, with no idle master to add (nginx's Sidecar is a
master + 1 worker). HTTP mode, keep-alive on both sides, upstream connections
shared across client connections (``http-reuse always``, like Envoy's pools and
nginx's ``keepalive``), no health checks (as the nginx mesh). Only failed or
aborted requests are logged, one line each, to stderr, which ProcSet sends to
the process's log ``<lab run folder>/<node>/<name>.log`` (never syslog).

The config is checked with ``haproxy -c`` before the start: a refused config
raises :class:`HaproxyConfigError` with HAProxy's own message. Everything is
in the pod's folder ``<lab run folder>/<node>/<name>/``: haproxy.cfg,
haproxy.pid (written here: HAProxy 2.6 writes its pid file only in daemon or
master-worker mode) and the admin socket haproxy.sock.
"""
from __future__ import annotations

import csv
import io
import os
import re
import socket
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from topologies.proc import run

from .common import ProcSet
from .sidecar_mesh import ProxyFolder

MAXCONN = 4096            # as nginx's worker_connections
SOCKET = "haproxy.sock"   # the admin socket, relative to the pod's folder (haproxy -C)
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class HaproxyConfigError(RuntimeError):
    """`haproxy -c` refused a generated config; str() holds HAProxy's own message."""


def haproxy_config(inbound: Optional[Tuple[str, int, int]], out_port: Optional[int],
                   services: Dict[str, Sequence[Tuple[str, int]]]) -> str:
    """The haproxy.cfg of one pod's sidecar (see the module's docstring)."""
    if inbound is None and out_port is None:
        raise ValueError("a sidecar needs an inbound listener, an outbound one, or both")
    g = ["# written by experiments/sidecar_haproxy.py",
         "global",
         "  nbthread 1                    # one thread per pod, as nginx's one worker",
         f"  maxconn {MAXCONN}".ljust(32) + "# as nginx's worker_connections",
         "  log stderr format raw local0 info  # to the process's log, never syslog",
         # relative: HAProxy runs in the pod's folder (-C), whose path may be longer than
         # the 107 bytes of a UNIX socket's
         f"  stats socket unix@{SOCKET} mode 600 level admin",
         "",
         "defaults",
         "  mode http",
         "  log global",
         "  option httplog",
         "  option dontlog-normal         # log failed or aborted requests only",
         f"  maxconn {MAXCONN}",
         "  timeout connect 5s",
         "  timeout client 120s",
         "  timeout server 120s",
         "  timeout http-keep-alive 120s  # as nginx's keepalive_timeout",
         "  option http-keep-alive        # keep-alive with clients and with servers",
         "  http-reuse always             # idle server connections serve any client's request",
         "  balance roundrobin",
         "  retries 3",
         "  option redispatch 1           # a failed connect moves on, as nginx's proxy_next_upstream"]
    if inbound is not None:
        ip, port, app_port = inbound
        g += ["",
              "frontend in",
              f"  bind {ip}:{port}",
              "  default_backend in_app",
              "",
              "backend in_app",
              f"  server app 127.0.0.1:{app_port}"]
    if out_port is not None:
        rules: List[str] = []
        backends: List[str] = []
        for host, ends in sorted(services.items()):
            if not _HOST_RE.match(host):
                raise ValueError(f"service host {host!r} is not a host name")
            if not ends:
                raise ValueError(f"service host {host!r} has no instance")
            rules.append(f"  use_backend out_{host} if {{ req.hdr(host),host_only -i {host} }}")
            backends += ["", f"backend out_{host}"]
            backends += [f"  server s{i} {ip}:{p}" for i, (ip, p) in enumerate(ends)]
        g += ["", "frontend out", f"  bind 127.0.0.1:{out_port}", *rules, *backends]
    return "\n".join(g) + "\n"


def check_config(conf: Path) -> str:
    """`haproxy -c` on conf, zero-warning mode (a warning on a generated config is a
    mistake too); returns HAProxy's report, raises HaproxyConfigError if refused."""
    res = run(["haproxy", "-c", "-dW", "-C", str(conf.parent), "-f", str(conf)], check=False,
              timeout=30)
    lines = (res.stderr + "\n" + res.stdout).splitlines()
    report = "\n".join(ln for ln in lines if ln.strip() and not ln.startswith("[NOTICE]"))
    if res.returncode != 0:
        raise HaproxyConfigError(f"haproxy -c refused {conf} (status {res.returncode}):\n{report}")
    return report


class HaproxySidecar(ProxyFolder):
    """A pod's sidecar: inbound (pod address -> local app) and outbound (Host -> instances)."""

    CONF_NAME = "haproxy.cfg"

    def __init__(self, procs: ProcSet, node: str, name: str, *, inbound: Optional[Tuple[str, int, int]],
                 out_port: Optional[int], services: Dict[str, Sequence[Tuple[str, int]]]) -> None:
        super().__init__(procs, node, name)
        self.conf.write_text(haproxy_config(inbound, out_port, services))
        check_config(self.conf)
        self.inbound = inbound
        self.out_port = out_port
        self.stats = self.dir / SOCKET
        self.start(procs, ["haproxy", "-db", "-C", str(self.dir), "-f", str(self.conf)])
        (self.dir / "haproxy.pid").write_text(f"{self.pid}\n")

    def admin(self, command: str, timeout: float = 5.0) -> str:
        """One command on HAProxy's admin socket (e.g. "show info"); its answer."""
        folder = os.open(self.dir, os.O_PATH)   # a short path to it, whatever its length
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(f"/proc/self/fd/{folder}/{SOCKET}")
                s.sendall(command.encode() + b"\n")
                chunks = []
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
        finally:
            os.close(folder)
        return b"".join(chunks).decode(errors="replace")

    def stat(self) -> List[Dict[str, str]]:
        """The rows of "show stat" (pxname, svname, req_tot, scur, stot, ...): FRONTEND,
        BACKEND and one row per server of every proxy."""
        text = self.admin("show stat").lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))
