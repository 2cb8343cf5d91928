"""The lab's own records of what it created, so cleanup works after a crash.

Every lab or test run gets a folder under ``<repo>/runs/``.  Its
``records.jsonl`` is an append-only log, one JSON object per line, written and
fsync'd before (namespaces, links) or right after (processes) the thing it
names exists.  ``python -m topologies.clean`` replays it after a ``kill -9``
of the lab process.  Cleaning by our own records, never by name patterns, is
what keeps us from touching anything another user (or ``mn -c``) owns.

Entry kinds::

    {"kind": "netns", "name": "dm-1a2b3c-r1"}
    {"kind": "link", "name": "r1-eth0", "netns": "dm-1a2b3c-r1"}   # netns null = root namespace
    {"kind": "pid", "pid": 1234, "starttime": 567890, "argv0": "python3", "pgid": 1234}
    {"kind": "owner", "pid": 1200, "starttime": 567000, "argv0": "python3"}  # the lab/test process
    {"kind": "tc_filter", "dev": "r1-eth0", "netns": "dm-1a2b3c-r1"} # the fast path's tc program
    {"kind": "bpf_pins", "path": "/run/dmsc/bpf/0123456789abcdef"}   # a forwarder's pinned maps
    {"kind": "netns_etc", "path": "/etc/netns/dm-1a2b3c-h1p0"}      # a pod's resolv.conf
    {"kind": "done"}                                                 # run cleaned up after itself

While a run's owner is alive, ``clean`` without arguments leaves the run
alone: it is in use, not crashed.

Standard library only: ``clean`` must run even when the venv is gone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Optional

RECORDS_FILE = "records.jsonl"

#: Overrides the runs folder (tests point it at a temporary directory).
RUNS_DIR_ENV = "DMSC_RUNS_DIR"

_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def repo_root() -> Path:
    """The repository root: the parent of the ``topologies`` package."""
    return Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    """Where run folders live: ``$DMSC_RUNS_DIR`` or ``<repo>/runs``."""
    override = os.environ.get(RUNS_DIR_ENV)
    return Path(override) if override else repo_root() / "runs"


def new_run_dir(kind: str) -> Path:
    """Create ``runs/<kind>-<YYYYmmdd-HHMMSS>-<random>/`` and return it.

    The random suffix keeps two runs started in the same second apart.  For
    ``kind == "lab"`` the ``runs/latest`` symlink is pointed at the new folder
    (atomically, via rename) so people can find the current lab's logs.
    """
    if not _KIND_RE.match(kind):
        raise ValueError(f"run kind {kind!r} must match {_KIND_RE.pattern}")
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        run_dir = root / f"{kind}-{stamp}-{secrets.token_hex(3)}"
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    if kind == "lab":
        tmp = root / f".latest-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, root / "latest")
    return run_dir


def _read_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat, numbered so that ``fields[n - 1]`` is field n."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    head, _, tail = raw.rpartition(")")
    pid_str, _, comm = head.partition(" (")
    return [pid_str, comm] + tail.split()


def process_starttime(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat).

    Together with the pid it identifies a process uniquely, since pids are reused.
    Returns None when no such process exists.
    """
    fields = _read_stat(pid)
    if fields is None or len(fields) < 22:
        return None
    return int(fields[21])


def is_same_process(pid: int, starttime: Optional[int]) -> bool:
    """True if ``pid`` is still the live process that was recorded with ``starttime``.

    Guards against pid reuse: a different process that got the same pid has a
    different start time.  A zombie (exited, not yet reaped) counts as gone:
    signalling it is pointless and it holds no resources besides its pid.
    """
    if starttime is None:
        return False
    fields = _read_stat(pid)
    if fields is None or len(fields) < 22:
        return False
    return fields[2] not in ("Z", "X") and int(fields[21]) == starttime


def process_group(pid: int) -> Optional[int]:
    """Process group id of ``pid`` (field 5 of /proc/<pid>/stat), or None if it is gone."""
    fields = _read_stat(pid)
    return int(fields[4]) if fields is not None and len(fields) >= 5 else None


def _argv0(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode("utf-8", "replace") or None
    except OSError:
        return None


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """All entries of ``run_dir/records.jsonl``; [] if there is none.

    A crash can leave a half-written last line: undecodable lines are skipped.
    """
    path = Path(run_dir) / RECORDS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "kind" in entry:
            entries.append(entry)
    return entries


def live_owner(entries: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The run's owner entry if that process is still running, else None."""
    for e in entries:
        if e.get("kind") == "owner" and is_same_process(e.get("pid", -1), e.get("starttime")):
            return e
    return None


def is_done(entries: list[dict[str, Any]]) -> bool:
    """True if the last entry says the run cleaned up after itself.

    Only the last one counts: a run that was cleaned and then reused would
    append new entries after its ``done``.
    """
    return bool(entries) and entries[-1].get("kind") == "done"


class Records:
    """Append-only writer for one run folder's ``records.jsonl``.

    Each entry is flushed and fsync'd before the call returns, so the entry
    survives a crash of this process (or of the machine) right after.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / RECORDS_FILE

    def _append(self, entry: dict[str, Any]) -> None:
        self.many([entry])

    def many(self, entries: list[dict[str, Any]]) -> None:
        """Append entries under one fsync (a k=8 fat tree records ~1,500 things)."""
        if not entries:
            return
        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def owner(self, pid: Optional[int] = None) -> None:
        """Record the process that runs this lab or test (default: this one).

        Lets ``clean`` tell a run in progress from a crashed one.
        """
        pid = os.getpid() if pid is None else pid
        self._append({"kind": "owner", "pid": pid, "starttime": process_starttime(pid),
                      "argv0": _argv0(pid)})

    def netns(self, name: str) -> None:
        """Record a network namespace; call before ``ip netns add``."""
        self._append({"kind": "netns", "name": name})

    def link(self, name: str, netns: Optional[str] = None) -> None:
        """Record an interface (in ``netns``, or the root namespace if None); call before creating it."""
        self._append({"kind": "link", "name": name, "netns": netns})

    def pid(self, pid: int, argv0: Optional[str] = None) -> None:
        """Record a process we started, with its start time to guard against pid reuse.

        ``pgid`` is recorded too: when it equals ``pid`` the process leads its
        own process group (``start_new_session=True``), and ``clean`` signals
        the whole group, so a shell wrapper's children go with it.
        """
        self._append(self.pid_entry(pid, argv0))

    @staticmethod
    def pid_entry(pid: int, argv0: Optional[str] = None, pgid: Optional[int] = None) -> dict:
        """The record of one process, for `many` (pgid: when the group is known
        to be the process's own even before it has called setsid())."""
        return {"kind": "pid", "pid": pid, "starttime": process_starttime(pid),
                "argv0": argv0 if argv0 is not None else _argv0(pid),
                "pgid": pgid if pgid is not None else process_group(pid)}

    def netns_etc(self, path: str) -> None:
        """Record an /etc/netns/<namespace> folder we write (a pod's resolv.conf); call
        before writing it. `clean` removes it."""
        self._append({"kind": "netns_etc", "path": str(path)})

    def bpf_pins(self, path: str) -> None:
        """Record the bpffs folder where a process of ours pins its maps and tcx links;
        call before starting it. `clean` unlinks the pins in it (a link that loses its
        last pin detaches its program) and removes it."""
        self._append({"kind": "bpf_pins", "path": str(path)})

    def done(self) -> None:
        """Mark the run as cleaned up; ``clean`` then skips it."""
        self._append({"kind": "done"})
