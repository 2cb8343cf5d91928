"""Processes in a node's network namespace: the one place that runs a command in
a node, and the one supervisor of the background processes every harness starts.

The lab (Mininet), the namespace harness of the tests and benchmarks, and the
experiments all go through here, so a process is started, recorded for
``make clean``, stopped and reported the same way wherever it runs.

* `run` runs a command (in a namespace with ``ip netns exec`` when one is
  named) and waits; a failure raises `CommandError` with stderr in its message.
* `Proc` is one recorded background process: its own session (so a Ctrl-C in
  the terminal reaches the harness first), its log in its node's work folder
  (never /tmp: ``mn -c`` deletes /tmp/*.log), SIGTERM to its process group on
  stop, SIGKILL after a grace period.

``ip netns exec`` also remounts /sys for the namespace, so a forwarder reads its
own interfaces' carrier there.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence

from .records import Records

REPO = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 3.0


class CommandError(subprocess.CalledProcessError):
    """A failed command; unlike CalledProcessError its message includes stderr."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        return super().__str__() + (f": {err[:500]}" if err else "")


def in_netns(netns: Optional[str], argv: Sequence[str]) -> List[str]:
    """argv, prefixed so that it runs in network namespace `netns` (None: here)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(argv: Sequence[str], netns: Optional[str] = None, check: bool = True,
        timeout: float = 30, input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run argv (in `netns` if given) and wait; stdout and stderr captured as text."""
    full = in_netns(netns, argv)
    res = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                         stdin=None if input is not None else subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise CommandError(res.returncode, full, res.stdout, res.stderr)
    return res


def killpg(pid: int, sig: int) -> None:
    """Signal a process group we started (start_new_session: its id is the leader's pid)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, n: int = 1500) -> str:
    """The end of a log, for error messages."""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def python_env(extra: Optional[Mapping[str, str]] = None) -> dict:
    """The environment of a project process: the checkout importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # 200 processes should share cached bytecode
    if extra:
        env.update(extra)
    return env


class LabError(RuntimeError):
    """The harness cannot do what was asked (bad input, a process that died or did
    not come up); str() says why, with the end of the process's log where there is one."""


class Proc:
    """One recorded background process in a namespace: the base of every app.

    Subclasses say what to run (`argv`). A fork server (`zygote`, set by the lab)
    may start pre-imported Python programs instead of a fresh interpreter.
    """

    zygote = None  # an object with .spawn(netns, module, args, log) -> child or None

    def __init__(self, netns: Optional[str], workdir: Path, log_name: str, records: Records,
                 python: str = sys.executable, argv: Optional[Sequence[str]] = None,
                 env: Optional[Mapping[str, str]] = None) -> None:
        self.netns = netns
        self.workdir = Path(workdir)
        self.log = self.workdir / f"{log_name}.log"
        self.records = records
        self.python = python
        self._argv = list(argv) if argv is not None else None
        self.env = dict(env or {})
        self.proc = None  # subprocess.Popen, or the zygote's child

    def argv(self) -> List[str]:
        if self._argv is None:
            raise NotImplementedError(f"{type(self).__name__} must say what to run")
        return list(self._argv)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def spawn(self, record: bool = True):
        """Start the process (once); record it unless the caller records many at once."""
        if self.running:
            return self.proc
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        z = self.zygote
        if z is not None and argv[:2] == [self.python, "-m"] and z.can_run(argv[2]):
            self.proc = z.spawn(self.netns, argv[2], argv[3:], self.log)
            if self.proc is not None:
                if record:  # the child calls setsid() first thing: it leads its own group
                    self.records.many([Records.pid_entry(self.proc.pid, self.python,
                                                         pgid=self.proc.pid)])
                return self.proc
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(in_netns(self.netns, argv), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=python_env(self.env), cwd=str(REPO),
                                         start_new_session=True)
        if record:
            self.records.pid(self.proc.pid, argv0=argv[0])
        return self.proc

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`."""
        p = self.proc
        if p is not None and p.poll() is None:
            killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        elif p is not None and isinstance(p, subprocess.Popen):
            killpg(p.pid, signal.SIGKILL)  # children left by a dead leader (our reaped child)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the process group: a crash."""
        p = self.proc
        if p is not None:
            killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise LabError(f"{what} exited with status {self.proc.returncode}; "
                            f"log {self.log}:\n{tail(self.log)}")


def stop_all(procs: Iterable[Proc], grace: float = STOP_GRACE_S) -> List[str]:
    """Stop many processes in one grace period: SIGTERM every group at once, wait
    up to `grace` for them together, then SIGKILL what is left. Returns what
    survived SIGKILL (normally nothing)."""
    procs = list(procs)
    for p in procs:
        if p.running:
            killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        if p.proc is not None:
            try:
                p.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    survivors = []
    for p in procs:
        child = p.proc
        p.kill()
        if child is not None and child.poll() is None:
            survivors.append(f"process {child.pid} survived SIGKILL")
    return survivors
