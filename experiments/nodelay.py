"""Run a Python module with TCP_NODELAY on every socketserver connection.

    python -m experiments.nodelay forwarder.http_proxy --socket SG/app.sock --listen 127.0.0.1:8081

Python's http.server (BaseHTTPRequestHandler) writes a response's headers and
its body in two writes; without TCP_NODELAY the second one waits (Nagle) for
the client's acknowledgement of the first, which a keep-alive client delays
(delayed ACK, about 40 ms on Linux): every request on a reused connection then
takes 40 ms or more. Setting ``StreamRequestHandler.disable_nagle_algorithm``
(the standard library's own switch) before the module runs removes the stall
without touching the module. The sidecar experiment uses this to measure the
SG's HTTP proxy and the shop's HTTP server as they would run with the switch
set, next to the unmodified proxy; see docs/experiments.md.
"""
from __future__ import annotations

import runpy
import socketserver
import sys


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m experiments.nodelay MODULE [ARGS...]")
    module = sys.argv[1]
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
