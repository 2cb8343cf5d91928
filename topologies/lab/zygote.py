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
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

from ..proc import REPO, python_env, tail
from ..records import Records

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2

MODULES = {
    "forwarder": ("forwarder.__main__", "main"),
    "topologies.shop.services": ("topologies.shop.services", "main"),
}


# ------------------------------------------------------------------ the lab's side
# The lab talks to the zygote through these (topologies.proc.Proc.zygote).

class ZygoteChild:
    """A process forked by the zygote: the parts of Popen the lab uses (it is not our child,
    so its liveness is read from /proc, pid and start time together)."""

    def __init__(self, pid: int) -> None:
        from ..records import process_starttime
        self.pid = pid
        self.starttime = process_starttime(pid)
        self.returncode: Optional[int] = None
        self.args = ["zygote child"]

    def poll(self) -> Optional[int]:
        from ..records import is_same_process
        if self.returncode is None and not is_same_process(self.pid, self.starttime):
            self.returncode = -1     # exit status unknown: the zygote reaped it
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode


class Zygote:
    """The lab's fork server (topologies/lab/zygote.py), in the root namespace."""

    def __init__(self, records: Records, workdir: Path, python: str = sys.executable) -> None:
        env = python_env()
        self.log = Path(workdir) / "zygote.log"
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([python, "-m", "topologies.lab.zygote"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(REPO),
                                         start_new_session=True)
        records.pid(self.proc.pid, argv0=python)
        self.env = {"PYTHONPATH": env["PYTHONPATH"], "PYTHONUNBUFFERED": "1"}
        self._ready = False
        self.broken: Optional[str] = None

    def _wait_ready(self) -> bool:
        if self._ready or self.broken:
            return self._ready
        line = self.proc.stdout.readline()
        try:
            self._ready = "ready" in json.loads(line)
        except ValueError:
            self._ready = False
        if not self._ready:
            self.broken = f"the zygote did not start: {tail(self.log, 600)}"
        return self._ready

    @staticmethod
    def can_run(module: str) -> bool:
        return module in MODULES

    def spawn(self, netns: str, module: str, args: List[str], log: Path) -> Optional[ZygoteChild]:
        """Fork `python -m module args` in netns; None if the zygote cannot (caller falls back)."""
        if not self._wait_ready():
            return None
        req = {"netns": netns, "module": module, "args": args, "log": str(log), "cwd": str(REPO),
               "env": self.env}
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            ans = json.loads(self.proc.stdout.readline())
        except (OSError, ValueError) as exc:
            self.broken = f"zygote: {exc}"
            return None
        if "pid" not in ans:
            self.broken = f"zygote: {ans.get('error')}"
            return None
        return ZygoteChild(ans["pid"])

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(3)



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
    for extra in ("forwarder.runtime.daemon", "forwarder.mgmt.endpoint", "forwarder.routing.linkstate",
                  "forwarder.routing.backoff", "forwarder.spa", "forwarder.runtime.carrier",
                  "forwarder.mgmt.scsc_agent", "forwarder.apps.http_proxy", "forwarder.apps.client",
                  "yaml", "pyroute2"):
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
