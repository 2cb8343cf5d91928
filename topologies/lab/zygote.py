"""Start many Python programs fast: fork them from one process that imported them already.

A forwarder is a Python process that spends 0.25-0.4 s of CPU importing its
modules before it does anything; 200 of them starting at once on 2 cores is a
minute of CPU. The zygote imports the forwarder and the shop once, then forks
a child per request, which enters the node's network namespace the way
``ip netns exec`` does (setns, a private mount namespace with a fresh /sys so
the forwarder sees its own interfaces), becomes a session leader, points
stdout/stderr at its log and runs the program's ``main(argv)``.

Protocol (JSON lines on stdin/stdout)::

    {"netns": "dm-1a2b3c-h1", "module": "forwarder", "args": ["-c", "..."],
     "log": "/path/forwarder.log", "cwd": "/repo", "env": {...}}
    -> {"pid": 1234}    or    {"error": "..."}

The zygote runs in the root namespace, reaps its children (SIGCHLD ignored;
children get the default back) and exits when its stdin closes (the lab
stopped or died), leaving the children to the lab's records.
"""
from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2

MODULES = {
    "forwarder": ("forwarder.__main__", "main"),
    "experiments.shop.services": ("experiments.shop.services", "main"),
}


def _libc():
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_netns(name: str) -> None:
    """setns into /run/netns/<name>, then a private mount namespace with that netns's /sys."""
    libc = _libc()
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _check(libc.setns(fd, CLONE_NEWNET), f"setns {name}")
    finally:
        os.close(fd)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "make / rslave")
    libc.umount2(b"/sys", MNT_DETACH)  # may not be mounted separately: then just mount over
    _check(libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs")


def _child(req: dict) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()
    random.seed()
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    enter_netns(req["netns"])
    os.chdir(req.get("cwd") or "/")
    os.environ.update(req.get("env") or {})
    modname, func = MODULES[req["module"]]
    mod = sys.modules[modname]
    sys.argv = [f"python -m {req['module']}"] + list(req["args"])
    try:
        rc = getattr(mod, func)(list(req["args"]))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return int(rc or 0)


def serve() -> int:
    import importlib
    for modname, _ in MODULES.values():
        importlib.import_module(modname)
    # what the forwarder imports lazily at start-up, imported once here
    for extra in ("forwarder.daemon", "forwarder.mgmt", "forwarder.routing", "forwarder.backoff",
                  "forwarder.spa", "forwarder.carrier", "forwarder.scsc_agent",
                  "forwarder.http_proxy", "forwarder.client", "yaml", "pyroute2"):
        try:
            importlib.import_module(extra)
        except ImportError:
            pass
    # Objects imported so far move out of the collector's reach: a forked child then
    # does not touch (and copy) their pages every time it collects garbage.
    import gc
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the lab stops us by closing stdin
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req.get("module") not in MODULES:
                raise ValueError(f"unknown module {req.get('module')!r}")
        except ValueError as exc:
            out.write(json.dumps({"error": str(exc)}) + "\n")
            out.flush()
            continue
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                rc = _child(req)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except Exception:
                    pass
                os._exit(rc)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
