"""Per-node application objects of the lab: a forwarder, a shop service, the SCSC.

Each has start()/stop()/restart() (and kill() for a crash), a work folder and
a log inside the run folder. Processes run in the node's network namespace
through ``ip netns exec`` (which also remounts /sys for that namespace, so a
forwarder reads its own interfaces' carrier), in their own session, and are
recorded in the run's records.jsonl for ``make clean``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from forwarder.ctl import CtlError, request

from ..records import Records

REPO = Path(__file__).resolve().parent.parent.parent
STOP_GRACE_S = 3.0


class LabError(RuntimeError):
    """The lab cannot do what was asked; str() says why."""


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Proc:
    """A recorded background process in a namespace: the base of every app."""

    def __init__(self, netns: str, workdir: Path, log_name: str, records: Records,
                 python: str = sys.executable) -> None:
        self.netns = netns
        self.workdir = Path(workdir)
        self.log = self.workdir / f"{log_name}.log"
        self.records = records
        self.python = python
        self.proc: Optional[subprocess.Popen] = None

    def argv(self) -> List[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    zygote: Optional["Zygote"] = None   # set by the lab: fork pre-imported programs

    def spawn(self, record: bool = True):
        if self.running:
            return self.proc
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # 200 processes should share cached bytecode
        argv = self.argv()
        if self.zygote is not None and argv[:2] == [self.python, "-m"] and argv[2] in ZYGOTE_MODULES:
            self.proc = self.zygote.spawn(self.netns, argv[2], argv[3:], self.log)
            if self.proc is not None:
                if record:  # the child calls setsid() first thing: it leads its own group
                    self.records._append({"kind": "pid", "pid": self.proc.pid,
                                          "starttime": self.proc.starttime, "argv0": self.python,
                                          "pgid": self.proc.pid})
                return self.proc
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *self.argv()],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
                                         start_new_session=True)
        if record:
            self.records.pid(self.proc.pid, argv0=self.argv()[0])
        return self.proc

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`."""
        p = self.proc
        if p is not None and p.poll() is None:
            _killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        elif p is not None and isinstance(p, subprocess.Popen):
            _killpg(p.pid, signal.SIGKILL)  # children left by a dead leader (our reaped child)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the process group: a crash."""
        p = self.proc
        if p is not None:
            _killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise LabError(f"{what} exited with status {self.proc.returncode}; "
                           f"log {self.log}:\n{_tail(self.log)}")


ZYGOTE_MODULES = ("forwarder", "experiments.shop.services")


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
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
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
            self.broken = f"the zygote did not start: {_tail(self.log, 600)}"
        return self._ready

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


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group is the process and its children
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(procs, grace: float = STOP_GRACE_S) -> None:
    """Stop many processes in one grace period: SIGTERM every group at once, wait
    up to `grace` for them together, then SIGKILL what is left."""
    procs = list(procs)
    for p in procs:
        if p.running:
            _killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        if p.proc is not None:
            try:
                p.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        p.kill()


class ForwarderApp(Proc):
    """The DMSC forwarder of one node (`python -m forwarder -c <workdir>/forwarder.yaml`)."""

    def __init__(self, name: str, netns: str, workdir: Path, records: Records,
                 config_fn: Callable[[], Dict[str, Any]], python: str = sys.executable) -> None:
        super().__init__(netns, workdir, "forwarder", records, python)
        self.name = name
        self.config_fn = config_fn      # current config (static routes change with failures)
        self.config_path = self.workdir / "forwarder.yaml"

    @property
    def mgmt(self) -> Path:
        return self.workdir / "mgmt.sock"

    @property
    def app_socket(self) -> Path:
        return self.workdir / "app.sock"

    def argv(self) -> List[str]:
        return [self.python, "-m", "forwarder", "-c", str(self.config_path)]

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML; it is also several times faster for the forwarder to parse.
        self.config_path.write_text(json.dumps(self.config_fn(), indent=1) + "\n")

    def start(self, wait: bool = True, timeout: float = 20.0) -> "ForwarderApp":
        if not self.running:
            self.write_config()
            try:
                self.mgmt.unlink()
            except OSError:
                pass
            self.spawn()
        if wait:
            deadline = time.monotonic() + timeout
            while not self.ready():
                if time.monotonic() > deadline:
                    raise LabError(f"forwarder on {self.name} did not answer within {timeout:.0f}s; "
                                   f"log {self.log}:\n{_tail(self.log)}")
                time.sleep(0.05)
        return self

    def ready(self) -> bool:
        self.check_alive(f"forwarder on {self.name}")
        if not self.mgmt.exists():
            return False
        try:
            self.api("GET", "/status", timeout=2.0)
            return True
        except CtlError:
            return False

    def socket_ready(self) -> bool:
        """The process runs and its management socket exists (it serves from then on)."""
        self.check_alive(f"forwarder on {self.name}")
        return os.path.exists(self.mgmt)

    def restart(self) -> "ForwarderApp":
        self.stop()
        return self.start()

    def api(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 30.0) -> Any:
        return request(("unix", str(self.mgmt)), method, path, body, timeout)

    def status(self) -> dict:
        return self.api("GET", "/status", timeout=5.0)


class ServiceApp(Proc):
    """One shop instance (experiments/shop/services.py) on a Service Gateway."""

    def __init__(self, node: str, app: str, prefix: str, kind: str, netns: str, workdir: Path,
                 records: Records, socket_path: Path, identity: Optional[Path] = None,
                 http: Optional[str] = None, python: str = sys.executable) -> None:
        super().__init__(netns, workdir, f"shop-{app}", records, python)
        self.node, self.app, self.prefix, self.kind = node, app, prefix, kind
        self.socket_path = socket_path
        self.identity = identity
        self.http = http

    def argv(self) -> List[str]:
        argv = [self.python, "-m", "experiments.shop.services", "--app", self.app,
                "--node", self.node, "--prefix", self.prefix]
        if self.kind == "http":
            argv += ["--http", self.http]
        else:
            argv += ["--socket", str(self.socket_path)]
            if self.identity is not None:
                argv += ["--identity", str(self.identity)]
        return argv

    def start(self) -> "ServiceApp":
        self.spawn()
        return self

    def restart(self) -> "ServiceApp":
        self.stop()
        return self.start()


class ScscApp(Proc):
    """The Scheduling Center (`python -m controller`), on its own host of the management net."""

    def __init__(self, netns: str, workdir: Path, records: Records, argv: List[str],
                 python: str = sys.executable) -> None:
        super().__init__(netns, workdir, "scsc", records, python)
        self._argv = argv

    def argv(self) -> List[str]:
        return [self.python, "-m", "controller", *self._argv]

    def start(self) -> "ScscApp":
        self.spawn()
        return self

    def restart(self) -> "ScscApp":
        self.stop()
        return self.start()
