"""Unit tests for the run records and for clean's process handling (no root needed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from topologies import clean
from topologies.netns import NetnsNetwork
from topologies.records import (
    Records, is_done, is_same_process, new_run_dir, process_starttime, read_records,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point runs/ at a temporary folder so tests never touch the real one."""
    monkeypatch.setenv("DMSC_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_records_file_format(tmp_path: Path) -> None:
    rec = Records(tmp_path / "run")
    rec.netns("dm-x-r1")
    rec.link("r1-eth0", "dm-x-r1")
    rec.link("s1-eth1")
    rec.pid(os.getpid())
    rec.done()
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries[0] == {"kind": "netns", "name": "dm-x-r1"}
    assert entries[1] == {"kind": "link", "name": "r1-eth0", "netns": "dm-x-r1"}
    assert entries[2] == {"kind": "link", "name": "s1-eth1", "netns": None}
    assert entries[3]["kind"] == "pid" and entries[3]["pid"] == os.getpid()
    assert entries[3]["starttime"] == process_starttime(os.getpid())
    assert entries[3]["argv0"]  # our interpreter's argv[0]
    assert entries[4] == {"kind": "done"}
    assert read_records(tmp_path / "run") == entries
    assert is_done(entries)


def test_read_records_skips_truncated_last_line(tmp_path: Path) -> None:
    rec = Records(tmp_path)
    rec.netns("a")
    with open(rec.path, "a") as f:
        f.write('{"kind": "netns", "na')  # what a crash mid-write leaves
    assert read_records(tmp_path) == [{"kind": "netns", "name": "a"}]
    assert not is_done(read_records(tmp_path))
    assert read_records(tmp_path / "missing") == []


def test_is_same_process_guards_pid_reuse() -> None:
    me = os.getpid()
    start = process_starttime(me)
    assert isinstance(start, int) and start > 0
    assert is_same_process(me, start)
    assert not is_same_process(me, start + 1)  # same pid, another process
    assert not is_same_process(me, None)
    dead = subprocess.Popen(["sleep", "1000"])
    dead_start = process_starttime(dead.pid)
    assert is_same_process(dead.pid, dead_start)
    dead.kill()
    dead.wait()
    assert not is_same_process(dead.pid, dead_start)
    assert process_starttime(2**22 + 7) is None  # above any pid_max


def test_is_same_process_treats_zombie_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    start = process_starttime(proc.pid)
    try:
        # Not reaped yet: it becomes a zombie, which still has a /proc entry.
        for _ in range(3000):  # 30 s: a hang limit
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert start is not None and process_starttime(proc.pid) == start
        assert not is_same_process(proc.pid, start)
    finally:
        proc.wait()


def test_new_run_dir(runs: Path) -> None:
    a = new_run_dir("test-x")
    b = new_run_dir("test-x")
    assert a != b and a.is_dir() and b.is_dir() and a.parent == runs
    assert re.fullmatch(r"test-x-\d{8}-\d{6}-[0-9a-f]{6}", a.name)
    assert not (runs / "latest").exists()  # only lab runs move "latest"
    lab = new_run_dir("lab")
    assert (runs / "latest").is_symlink() and (runs / "latest").resolve() == lab.resolve()
    lab2 = new_run_dir("lab")
    assert (runs / "latest").resolve() == lab2.resolve()
    with pytest.raises(ValueError):
        new_run_dir("../escape")


def test_clean_with_no_runs_folder(runs: Path, capsys: pytest.CaptureFixture) -> None:
    assert not runs.exists()
    assert clean.main([]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_clean_kills_only_recorded_processes(runs: Path, capsys: pytest.CaptureFixture) -> None:
    run = new_run_dir("test-clean")
    recorded = subprocess.Popen(["sleep", "1000"])
    unrelated = subprocess.Popen(["sleep", "1000"])
    try:
        rec = Records(run)
        rec.pid(recorded.pid)
        rec.netns("dm-never-created")  # gone already: must be skipped quietly
        rec.link("never-eth0")
        # A recorded pid whose start time does not match is a reused pid: hands off.
        rec._append({"kind": "pid", "pid": unrelated.pid,
                     "starttime": process_starttime(unrelated.pid) + 1, "argv0": "sleep"})

        assert clean.main(["--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"would remove process {recorded.pid} (sleep)" in out
        assert recorded.poll() is None and clean.pending_runs() == [run]

        assert clean.main([]) == 0
        out = capsys.readouterr().out
        assert f"removed process {recorded.pid} (sleep) by SIGTERM" in out
        assert "removed 1 process(es), 0 link(s), 0 namespace(s), 0 tc filter(s), 0 pin folder(s) from 1 run folder(s)" in out
        assert recorded.wait(timeout=5) == -15
        assert unrelated.poll() is None
        assert is_done(read_records(run)) and clean.pending_runs() == []

        assert clean.main([]) == 0
        assert "nothing to clean" in capsys.readouterr().out
    finally:
        for p in (recorded, unrelated):
            p.kill()
            p.wait()


def test_clean_sigkills_processes_ignoring_sigterm(runs: Path, capsys: pytest.CaptureFixture) -> None:
    run = new_run_dir("test-stubborn")
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(1000)"
    stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"
        Records(run).pid(stubborn.pid)
        assert clean.main([str(run)]) == 0
        assert "by SIGKILL" in capsys.readouterr().out
        assert stubborn.wait(timeout=5) == -9
    finally:
        stubborn.kill()
        stubborn.wait()


def test_clean_rejects_non_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert clean.main([str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().out


def test_node_names_that_make_too_long_interface_names_are_refused(tmp_path: Path) -> None:
    net = NetnsNetwork(tmp_path)  # validation happens before any `ip` command runs
    with pytest.raises(ValueError, match="at most 10 characters"):
        net.add_node("spine_0_long")
    with pytest.raises(ValueError, match="must match"):
        net.add_node("bad-name")
    assert [e["kind"] for e in read_records(tmp_path)] == ["owner"]  # nothing was created


def test_clean_kills_the_group_of_a_recorded_session_leader(runs: Path, capsys: pytest.CaptureFixture) -> None:
    """A wrapper started as its own session (as NsNode.popen does) takes its children with it."""
    run = new_run_dir("test-group")
    wrapper = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 1000 & echo $!; wait"],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(wrapper.stdout.readline())
    child_start = process_starttime(child)
    try:
        Records(run).pid(wrapper.pid)
        assert read_records(run)[0]["pgid"] == wrapper.pid
        assert clean.main([str(run)]) == 0
        assert f"removed process {wrapper.pid} (sh) by SIGKILL" in capsys.readouterr().out
        wrapper.wait(timeout=5)
        for _ in range(600):  # the child is reparented to init, which reaps it (30 s: a hang limit)
            if not is_same_process(child, child_start):
                break
            time.sleep(0.05)
        assert not is_same_process(child, child_start)
    finally:
        wrapper.kill()
        wrapper.wait()
        if is_same_process(child, child_start):
            os.kill(child, 9)


def test_clean_leaves_runs_with_a_live_owner_alone(runs: Path, capsys: pytest.CaptureFixture) -> None:
    """`make clean` during a running lab or test must not tear it down."""
    run = new_run_dir("test-owned")
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        rec = Records(run)
        rec.owner()  # this pytest process: alive
        rec.pid(sleeper.pid)
        assert clean.main([]) == 0
        out = capsys.readouterr().out
        assert f"skipped {run.name}: in use by running process {os.getpid()}" in out
        assert sleeper.poll() is None and clean.pending_runs() == [run]
        assert clean.main([str(run)]) == 0  # named explicitly: cleaned anyway
        assert sleeper.wait(timeout=5) == -15
    finally:
        sleeper.kill()
        sleeper.wait()
