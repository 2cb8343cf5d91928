"""FRR (zebra + ospfd + bfdd) per node on real namespaces: topologies/frr.py.

Triangle a - b - c - a. Every wait is a poll with a hang detector (10x what
it normally takes); nothing here compares a measured duration with a budget.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from topologies.frr import FRR_DIR, FrrConfig, FrrConfigError, FrrInterface, FrrNetwork, OspfTimers, route_devs
from topologies.fwd_net import intf_between, wait_for
from topologies.netns import NetnsNetwork, require_netns
from topologies.records import is_done, is_same_process, new_run_dir, read_records

REPO = Path(__file__).resolve().parent.parent
HANG_S = 60  # FRR converges a triangle in about a second


def _need_frr() -> None:
    if not (FRR_DIR / "zebra").exists():
        reason = f"FRR is not installed ({FRR_DIR}/zebra missing); run make setup"
        if os.environ.get("DMSC_NO_SKIP") == "1":
            pytest.fail(f"DMSC_NO_SKIP=1 but this test cannot run here: {reason}")
        pytest.skip(reason)


# -- configuration, no namespaces needed ----------------------------------------------------
def _cfg(**kw) -> FrrConfig:
    base = dict(hostname="r1", router_id="10.0.0.1", loopback="10.0.0.1/32",
                interfaces=[FrrInterface("r1-eth0", "10.1.0.0/31"), FrrInterface("r1-eth1", "10.1.0.2/31")])
    base.update(kw)
    return FrrConfig(**base)


def test_config_renders_the_chosen_timers() -> None:
    cfg = _cfg()
    cfg.validate(existing_intfs=["r1-eth0", "r1-eth1"])
    text = cfg.render()
    assert set(text) == {"zebra", "ospfd", "bfdd"}
    assert " ip address 10.1.0.0/31" in text["zebra"] and " ip address 10.0.0.1/32" in text["zebra"]
    ospf = text["ospfd"]
    assert ospf.count(" ip ospf network point-to-point") == 2
    assert " ip ospf dead-interval minimal hello-multiplier 10" in ospf
    assert " timers throttle spf 0 10 100" in ospf and " ospf router-id 10.0.0.1" in ospf
    assert "  receive-interval 50" in text["bfdd"]
    assert set(_cfg(timers=OspfTimers(bfd=False)).render()) == {"zebra", "ospfd"}


@pytest.mark.parametrize("change, field", [
    (dict(router_id="10.0.0"), "router_id"),
    (dict(loopback="10.0.0.1/24"), "loopback"),
    (dict(interfaces=[FrrInterface("r1-eth0", "10.1.0.0/24")]), "r1-eth0"),
    (dict(interfaces=[FrrInterface("r1-eth0", "10.1.0.0/31"), FrrInterface("r1-eth1", "10.1.0.1/31")]),
     "overlapping"),
    (dict(interfaces=[FrrInterface("r1-eth9", "10.1.0.0/31")]), "does not exist"),
    (dict(timers=OspfTimers(hello_multiplier=11)), "hello_multiplier"),
    (dict(timers=OspfTimers(bfd_rx_ms=5)), "bfd_rx_ms"),
    (dict(timers=OspfTimers(spf_initial_hold_ms=50, spf_max_hold_ms=10)), "spf_max_hold_ms"),
])
def test_config_validation_names_the_field(change, field) -> None:
    with pytest.raises(FrrConfigError, match=field):
        _cfg(**change).validate(existing_intfs=["r1-eth0", "r1-eth1"])


# -- real namespaces --------------------------------------------------------------------------
def _triangle(net: NetnsNetwork) -> FrrNetwork:
    for n in ("a", "b", "c"):
        net.add_node(n)
    net.add_link("a", "b")
    net.add_link("b", "c")
    net.add_link("a", "c")
    return FrrNetwork(net)


def _route(frr: FrrNetwork, node: str, dst: str) -> dict:
    return next((r for r in frr[node].routes() if r["dst"] in (dst, f"{dst}/32")), {})


def _started_triangle(net: NetnsNetwork):
    """The triangle with FRR on every node, converged (hang limit HANG_S)."""
    _need_frr()
    frr = _triangle(net)
    frr.start_all()
    frr.wait_converged(HANG_S)
    return frr


@pytest.mark.netns
def test_frr_converges_and_routes_ip(netns_net: NetnsNetwork) -> None:
    frr = _started_triangle(netns_net)
    # each daemon is recorded for `clean`, and keeps its files in the node's work folder
    recorded = {e["pid"] for e in read_records(netns_net.run_dir) if e["kind"] == "pid"}
    for n in ("a", "b", "c"):
        assert set(frr[n].pids()) == {"zebra", "ospfd", "bfdd"}
        assert set(frr[n].pids().values()) <= recorded
        for f in ("zebra.conf", "ospfd.conf", "bfdd.conf", "zebra.pid", "zserv.api", "ospfd.vty"):
            assert (netns_net.node(n).workdir / "frr" / f).exists(), f
    # the routes are OSPF's, and real traffic follows them: a pings c's loopback from its own
    route = _route(frr, "a", frr.loopbacks["c"])
    assert route.get("protocol") == "ospf", route
    res = netns_net.node("a").cmd(["ping", "-c", "1", "-W", "5", "-I", frr.loopbacks["a"],
                                   frr.loopbacks["c"]], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # the neighbours are full over point-to-point links, with BFD sessions up
    wait_for(lambda: frr["a"].vtysh("show ip ospf neighbor").count("Full/-") == 2, HANG_S,
             interval=0.1, what="two full adjacencies on a")
    wait_for(lambda: frr["a"].vtysh("show bfd peers brief").count(" up ") == 2, HANG_S,
             interval=0.1, what="two BFD sessions up on a")


@pytest.mark.netns
def test_link_cut_moves_the_route(netns_net: NetnsNetwork) -> None:
    frr = _started_triangle(netns_net)
    c_lo = frr.loopbacks["c"]
    direct, around = intf_between(netns_net, "a", "c"), intf_between(netns_net, "a", "b")
    wait_for(lambda: route_devs(_route(frr, "a", c_lo)) == [direct], HANG_S, interval=0.05,
             what="a's route to c over the direct link")

    netns_net.link_down("a", "c")
    wait_for(lambda: route_devs(_route(frr, "a", c_lo)) == [around], HANG_S, interval=0.05,
             what="a's route to c to move over b")
    route = _route(frr, "a", c_lo)
    assert route["gateway"] == frr.intf_address("b", intf_between(netns_net, "b", "a"))
    res = netns_net.node("a").cmd(["ping", "-c", "1", "-W", "5", "-I", frr.loopbacks["a"], c_lo],
                                  check=False)
    assert res.returncode == 0, res.stdout + res.stderr

    netns_net.link_up("a", "c")
    wait_for(lambda: route_devs(_route(frr, "a", c_lo)) == [direct], HANG_S, interval=0.05,
             what="a's route to c back on the direct link")


CRASHING_HARNESS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from topologies.netns import NetnsNetwork, require_netns
    from topologies.frr import FrrNetwork
    net = NetnsNetwork(Path(sys.argv[1]))
    for n in ("a", "b"):
        net.add_node(n)
    net.add_link("a", "b")
    frr = FrrNetwork(net)
    frr.start_all()
    frr.wait_converged(60)
    print(json.dumps({"pids": frr.pids(), "netns": [n.netns for n in net.nodes.values()]}), flush=True)
    sys.stdin.read()  # wait to be killed
""")


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (here: the run folder)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.mark.netns
def test_clean_after_kill_9_stops_frr() -> None:
    """The harness running FRR dies by SIGKILL; `clean` stops every daemon and removes the namespaces."""
    _need_frr()
    reason = require_netns()  # this test builds its namespaces in a child, not with netns_net
    if reason:
        if os.environ.get("DMSC_NO_SKIP") == "1":
            pytest.fail(f"DMSC_NO_SKIP=1 but this test cannot run here: {reason}")
        pytest.skip(reason)
    run_dir = new_run_dir("test-frr-crash")
    harness = subprocess.Popen([sys.executable, "-c", CRASHING_HARNESS, str(run_dir)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = harness.stdout.readline()
        assert line, f"the harness exited with {harness.wait()}"
        info = json.loads(line)
        entries = {e["pid"]: e for e in read_records(run_dir) if e["kind"] == "pid"}
        daemons = [(pid, entries[pid]["starttime"]) for p in info["pids"].values() for pid in p.values()]
        assert len(daemons) == 6

        harness.send_signal(signal.SIGKILL)
        harness.wait()
        assert all(is_same_process(pid, st) for pid, st in daemons)  # orphaned, still running
        assert all(os.path.exists(f"/run/netns/{ns}") for ns in info["netns"])

        res = subprocess.run([sys.executable, "-m", "topologies.clean", str(run_dir)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not any(is_same_process(pid, st) for pid, st in daemons)
        assert _processes_mentioning(str(run_dir)) == []
        assert not any(os.path.exists(f"/run/netns/{ns}") for ns in info["netns"])
        assert is_done(read_records(run_dir))
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        subprocess.run([sys.executable, "-m", "topologies.clean", str(run_dir)], cwd=REPO,
                       capture_output=True)


def test_addresses_are_point_to_point_pairs() -> None:
    """FrrNetwork's addressing without namespaces: each link's two ends share one /31."""
    class FakeNet:
        def __init__(self):
            from topologies.netns import NsLink
            self.nodes = {"a": None, "b": None, "c": None}
            self.links = [NsLink("a", "b", "a-eth0", "b-eth0"), NsLink("b", "c", "b-eth1", "c-eth0")]

        def node(self, name):
            class N:
                intfs = {"a": ["a-eth0"], "b": ["b-eth0", "b-eth1"], "c": ["c-eth0"]}[name]
                workdir = Path("/nonexistent")
            return N()
    frr = FrrNetwork(FakeNet())
    nets = {}
    for n in ("a", "b", "c"):
        for i in frr[n].config.interfaces:
            nets.setdefault(ipaddress.ip_interface(i.address).network, []).append(n)
    assert sorted(sorted(v) for v in nets.values()) == [["a", "b"], ["b", "c"]]
    assert len(set(frr.loopbacks.values())) == 3
