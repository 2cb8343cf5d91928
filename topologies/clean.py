"""Remove what crashed lab/test runs left behind, using only their own records.

Usage: ``python -m topologies.clean [--dry-run] [RUN_DIR ...]``

Without RUN_DIR, every run folder under ``runs/`` whose records are not marked
done and whose owner process (the lab or test that made it) is no longer
running is cleaned; given RUN_DIRs are cleaned even if marked done or still
owned (every step checks that the thing still exists, so repeating is harmless).

Per run: SIGTERM each recorded process that is still the same process (pid
*and* start time match), poll up to 2 s, SIGKILL what is left; a recorded
process that led its own process group (``pgid == pid``, as
``NsNode.popen`` starts them) is signalled as a group, and only while the
leader itself is verified alive, so a reused pid is never hit.  Then delete
recorded tc filters (the kernel fast path's, from runs before it used pinned
tcx links), links and namespaces that still
exist, and the recorded folders of pinned BPF maps; append ``{"kind": "done"}``.
Nothing that is not recorded is ever signalled or deleted; unlike ``mn -c``
this is safe on a shared machine.

Standard library only, so it runs with plain ``python3`` when the venv is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .records import (
    RECORDS_FILE, Records, is_done, is_same_process, live_owner, read_records, runs_root,
)

KILL_GRACE_S = 2.0  # after SIGTERM
KILL_WAIT_S = 2.0   # after SIGKILL (a process in D state may take a moment)
NETNS_DIR = Path("/run/netns")


def pending_runs(root: Optional[Path] = None) -> list[Path]:
    """Run folders under ``root`` (default ``runs/``) whose records are not marked done."""
    root = runs_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(
        d for d in root.iterdir()
        if d.is_dir() and not d.is_symlink() and (d / RECORDS_FILE).exists()
        and not is_done(read_records(d))
    )


def netns_exists(name: str) -> bool:
    """True if the named network namespace (``ip netns`` style) exists."""
    return (NETNS_DIR / name).exists()


def _ip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def _tc(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True)


def link_exists(name: str, netns: Optional[str] = None) -> bool:
    """True if interface ``name`` exists in ``netns`` (None: the root namespace)."""
    if netns is not None and not netns_exists(netns):
        return False
    ns_args = ["-n", netns] if netns else []
    return _ip([*ns_args, "link", "show", "dev", name]).returncode == 0


def _wait_gone(procs: list[tuple[int, Optional[int], str]], timeout: float) -> None:
    """Poll until none of ``(pid, starttime, argv0)`` is alive, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_same_process(p, s) for p, s, _ in procs):
        time.sleep(0.05)


class _Cleaner:
    """Counts and prints what one ``clean`` invocation does."""

    def __init__(self, dry_run: bool, log: Callable[[str], None]) -> None:
        self.dry_run = dry_run
        self.log = log
        self.counts = {"process": 0, "netns": 0, "link": 0, "tc_filter": 0, "bpf_pins": 0,
                       "netns_etc": 0}
        self.errors = 0

    def _did(self, what: str, text: str) -> None:
        self.counts[what] += 1
        self.log(("would remove " if self.dry_run else "removed ") + text)

    def fail(self, text: str) -> None:
        self.errors += 1
        self.log("FAILED " + text)

    def kill_processes(self, entries: list[dict]) -> None:
        live = [(e["pid"], e.get("starttime"), e.get("argv0") or "?") for e in entries
                if e.get("kind") == "pid" and is_same_process(e["pid"], e.get("starttime"))]
        # Group leaders, by (pid, starttime): a reused pid must not inherit the flag.
        leaders = {(e["pid"], e.get("starttime")) for e in entries
                   if e.get("kind") == "pid" and e.get("pgid") == e["pid"]}
        if self.dry_run:
            for pid, _, argv0 in live:
                self._did("process", f"process {pid} ({argv0})")
            return
        for pid, start, _ in live:
            self._signal(pid, signal.SIGTERM, (pid, start) in leaders)
        _wait_gone(live, KILL_GRACE_S)
        stubborn = {(pid, start) for pid, start, _ in live if is_same_process(pid, start)}
        for pid, start in stubborn:
            self._signal(pid, signal.SIGKILL, (pid, start) in leaders)
        _wait_gone(live, KILL_WAIT_S)
        for pid, start, argv0 in live:
            if is_same_process(pid, start):
                self.fail(f"process {pid} ({argv0}) survived SIGKILL")
            else:
                how = "SIGKILL" if (pid, start) in stubborn else "SIGTERM"
                self._did("process", f"process {pid} ({argv0}) by {how}")

    @staticmethod
    def _signal(pid: int, sig: int, group: bool) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def delete_links(self, entries: list[dict]) -> None:
        for e in entries:
            if e.get("kind") != "link" or not link_exists(e["name"], e.get("netns")):
                continue
            where = f" in netns {e['netns']}" if e.get("netns") else ""
            text = f"link {e['name']}{where}"
            if self.dry_run:
                self._did("link", text)
                continue
            ns_args = ["-n", e["netns"]] if e.get("netns") else []
            res = _ip([*ns_args, "link", "del", "dev", e["name"]])
            # Deleting one veth end removes its peer too: a vanished link is fine.
            if res.returncode == 0 or not link_exists(e["name"], e.get("netns")):
                self._did("link", text)
            else:
                self.fail(f"{text}: {res.stderr.strip()}")

    def delete_filters(self, entries: list[dict]) -> None:
        """The fast path's classic tc filters (clsact ingress and egress, pref 1
        handle 1) recorded by runs made before it attached through pinned tcx links
        (those go with the pin folder, delete_pins), on interfaces that outlive a
        crashed forwarder (an interface deleted with its namespace takes them along)."""
        for e in entries:
            if e.get("kind") != "tc_filter" or not link_exists(e["dev"], e.get("netns")):
                continue
            ns_args = ["-n", e["netns"]] if e.get("netns") else []
            for hook in ("ingress", "egress"):
                shown = _tc([*ns_args, "filter", "show", "dev", e["dev"], hook])
                if shown.returncode != 0 or " bpf " not in f" {shown.stdout} ":
                    continue
                text = (f"tc filter on {e['dev']} {hook}"
                        + (f" in netns {e['netns']}" if e.get("netns") else ""))
                if self.dry_run:
                    self._did("tc_filter", text)
                    continue
                res = _tc([*ns_args, "filter", "del", "dev", e["dev"], hook, "pref", "1",
                           "handle", "1", "bpf"])
                if res.returncode == 0:
                    self._did("tc_filter", text)
                else:
                    self.fail(f"{text}: {res.stderr.strip()}")

    def delete_pins(self, entries: list[dict]) -> None:
        """Unlink pinned BPF maps in a recorded pin folder, then the folder (only ours)."""
        for e in entries:
            if e.get("kind") != "bpf_pins":
                continue
            d = Path(e["path"])
            if not d.is_dir():
                continue
            text = f"pinned maps in {d}"
            if self.dry_run:
                self._did("bpf_pins", text)
                continue
            try:
                from forwarder.dataplane.fastpath.pins import remove_pin_dir
                remove_pin_dir(d)
                self._did("bpf_pins", text)
            except OSError as exc:
                self.fail(f"{text}: {exc}")

    def delete_netns_etc(self, entries: list[dict]) -> None:
        """A pod's /etc/netns/<namespace> folder (only a recorded one under /etc/netns)."""
        import shutil
        for e in entries:
            d = Path(e.get("path", "")) if e.get("kind") == "netns_etc" else None
            if d is None or d.parent != Path("/etc/netns") or not d.is_dir():
                continue
            if self.dry_run:
                self._did("netns_etc", f"folder {d}")
                continue
            shutil.rmtree(d, ignore_errors=True)
            if d.exists():
                self.fail(f"folder {d}: still there")
            else:
                self._did("netns_etc", f"folder {d}")

    def delete_namespaces(self, entries: list[dict]) -> None:
        for e in entries:
            if e.get("kind") != "netns" or not netns_exists(e["name"]):
                continue
            text = f"netns {e['name']}"
            if self.dry_run:
                self._did("netns", text)
                continue
            res = _ip(["netns", "del", e["name"]])
            if res.returncode == 0:
                self._did("netns", text)
            else:
                self.fail(f"{text}: {res.stderr.strip()}")

    def clean_run(self, run_dir: Path) -> None:
        entries = read_records(run_dir)
        before = self.errors
        self.kill_processes(entries)
        self.delete_filters(entries)
        self.delete_links(entries)
        self.delete_namespaces(entries)
        self.delete_netns_etc(entries)
        self.delete_pins(entries)
        if not self.dry_run and self.errors == before and not is_done(entries):
            Records(run_dir).done()


def clean(run_dirs: Optional[list[Path]] = None, dry_run: bool = False,
          log: Callable[[str], None] = print) -> int:
    """Clean the given run folders (default: all pending ones); return an exit status.

    Returns 0 when everything recorded is gone (or there was nothing to do),
    1 if something could not be removed (that run then stays pending).
    """
    cleaner = _Cleaner(dry_run, log)
    if run_dirs is None:
        runs = []
        for run_dir in pending_runs():
            owner = live_owner(read_records(run_dir))
            if owner:
                log(f"skipped {run_dir.name}: in use by running process {owner['pid']} "
                    f"({owner.get('argv0') or '?'}); name the folder to clean it anyway")
            else:
                runs.append(run_dir)
    else:
        runs = [Path(d) for d in run_dirs]
    for run_dir in runs:
        if not (run_dir / RECORDS_FILE).exists():
            cleaner.fail(f"{run_dir}: no {RECORDS_FILE} (not a run folder)")
            continue
        cleaner.clean_run(run_dir)
    c = cleaner.counts
    total = sum(c.values())
    verb = "would remove" if dry_run else "removed"
    if total == 0 and cleaner.errors == 0:
        log(f"clean: nothing to clean ({len(runs)} run folder(s) checked)")
    else:
        log(f"clean: {verb} {c['process']} process(es), {c['link']} link(s), "
            f"{c['netns']} namespace(s), {c['tc_filter']} tc filter(s), {c['bpf_pins']} pin "
            f"folder(s) from {len(runs)} run folder(s); {cleaner.errors} failure(s)")
    return 1 if cleaner.errors else 0


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m topologies.clean",
        description="Remove processes, namespaces and links recorded by crashed lab/test runs.")
    parser.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    parser.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR",
                        help="run folders to clean (default: every pending one under runs/)")
    args = parser.parse_args(argv)
    return clean(args.run_dirs or None, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
