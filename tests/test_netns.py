"""Integration tests for the namespace harness and crash cleanup (root + netns).

All traffic stays inside the namespaces these tests create.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from topologies.netns import NetnsNetwork
from topologies.records import is_done, is_same_process, new_run_dir, read_records

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.netns


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def test_two_nodes_ping(netns_net: NetnsNetwork) -> None:
    a = netns_net.add_node("a")
    b = netns_net.add_node("b")
    link = netns_net.add_link("a", "b")
    assert (link.intf_a, link.intf_b) == ("a-eth0", "b-eth0")
    assert a.intfs == ["a-eth0"] and b.intfs == ["b-eth0"]
    assert a.netns != b.netns and a.netns.startswith("dm-") and a.netns.endswith("-a")
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", a.mac("a-eth0"))
    assert a.mac("a-eth0") != b.mac("b-eth0")
    # No IPv6 on the veths: no router solicitations in captures.
    assert a.cmd(["sysctl", "-n", "net.ipv6.conf.a-eth0.disable_ipv6"]).stdout.strip() == "1"
    assert "UP" in a.cmd(["ip", "link", "show", "lo"]).stdout

    a.add_addr("a-eth0", "10.0.0.1/30")
    b.add_addr("b-eth0", "10.0.0.2/30")
    res = a.cmd(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.2"], check=False)
    assert res.returncode == 0, res.stdout + res.stderr

    netns_net.link_down("a", "b")
    assert a.cmd(["ping", "-c", "1", "-W", "1", "10.0.0.2"], check=False).returncode != 0
    netns_net.link_up("a", "b")
    res = a.cmd(["ping", "-c", "1", "-W", "2", "10.0.0.2"], check=False)
    assert res.returncode == 0, res.stdout + res.stderr

    # A second link gets the next interface index on each side.
    link2 = netns_net.add_link("b", "a", mtu=9000)
    assert (link2.intf_a, link2.intf_b) == ("b-eth1", "a-eth1")
    assert "mtu 9000" in a.cmd(["ip", "link", "show", "a-eth1"]).stdout


def test_popen_logs_and_stop_cleans_up(netns_net: NetnsNetwork) -> None:
    a = netns_net.add_node("a")
    proc = a.popen(["sh", "-c", "echo hello from $0; exec sleep 1000", "ns"], "sleeper")
    log = a.workdir / "sleeper.log"
    for _ in range(3000):  # 60 s: a hang limit
        if log.exists() and "hello" in log.read_text():
            break
        time.sleep(0.02)
    assert log.read_text().strip() == "hello from ns"
    netns_net.stop()
    assert proc.poll() is not None
    assert not _netns_exists(a.netns)
    assert is_done(read_records(netns_net.run_dir))


CRASHING_LAB = textwrap.dedent("""
    import sys
    from pathlib import Path
    from topologies.netns import NetnsNetwork
    net = NetnsNetwork(Path(sys.argv[1]))
    net.add_node("a"); net.add_node("b"); net.add_link("a", "b")
    p = net.node("a").popen(["sleep", "1000"], "sleep")
    print(p.pid, net.node("a").netns, net.node("b").netns, flush=True)
    sys.stdin.read()  # wait to be killed
""")


def test_clean_after_kill_9() -> None:
    """A lab process killed with SIGKILL leaves a namespace and a process; clean removes both."""
    run_dir = new_run_dir("test-crash")
    unrelated = subprocess.Popen(["sleep", "1000"])  # not in any records: must survive
    lab = subprocess.Popen([sys.executable, "-c", CRASHING_LAB, str(run_dir)], cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid_s, ns_a, ns_b = lab.stdout.readline().split()
        sleep_pid = int(pid_s)
        entry = next(e for e in read_records(run_dir) if e["kind"] == "pid")
        assert entry["pid"] == sleep_pid and is_same_process(sleep_pid, entry["starttime"])

        lab.send_signal(signal.SIGKILL)
        lab.wait()
        assert _netns_exists(ns_a) and _netns_exists(ns_b)
        assert is_same_process(sleep_pid, entry["starttime"])  # orphaned, still running

        res = subprocess.run([sys.executable, "-m", "topologies.clean", str(run_dir)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"removed process {sleep_pid} (sleep)" in res.stdout
        assert f"removed netns {ns_a}" in res.stdout and f"removed netns {ns_b}" in res.stdout

        assert not is_same_process(sleep_pid, entry["starttime"])
        assert not _netns_exists(ns_a) and not _netns_exists(ns_b)
        assert unrelated.poll() is None
        assert is_done(read_records(run_dir))
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait()
        subprocess.run([sys.executable, "-m", "topologies.clean", str(run_dir)], cwd=REPO,
                       capture_output=True)
        unrelated.kill()
        unrelated.wait()
