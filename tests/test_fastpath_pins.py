"""Where pins are visible: the bpffs pin root across mount namespaces.

A bpffs mounted by the root mount namespace at a /run path is the same bpffs
(same pins) for processes that only setns() into a network namespace and for
those started with ``ip netns exec`` after the mount; /sys/fs/bpf is not usable
because ``ip netns exec`` mounts a fresh sysfs over /sys. Test roots are
/run/dmsc/bpf-fpt<pid>-*, not the real pin root; all are unmounted at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastpath_helpers import Namespaces, fastpath, kernel, pins, require_kernel

pytestmark = pytest.mark.netns

PKG = fastpath.__name__
PKG_PARENT = str(Path(fastpath.__file__).resolve().parents[len(PKG.split("."))])

CHILD = textwrap.dedent(f"""
    import importlib, json, os, sys
    pins = importlib.import_module("{PKG}.pins")
    kernel = importlib.import_module("{PKG}.kernel")
    root, pin_dir, action = sys.argv[1], sys.argv[2], sys.argv[3]
    if action == "wait":
        sys.stdin.readline()
    out = {{"mount_ns": pins.mount_ns(), "root_is_bpffs": pins.is_bpffs(root),
           "sys_fs_bpf_type": hex(pins.fs_type("/sys/fs/bpf"))}}
    if out["root_is_bpffs"] and os.path.exists(pin_dir):
        m = kernel.FastPathMaps.open_pinned(pin_dir)
        out["generation"] = m.generation()
        m.set_generation(out["generation"] + 1)
        m.close_maps()
    if action == "wait":   # the fallback: mount our own, pin there
        r = pins.ensure_pin_root(root)
        fp = kernel.FastPath(os.path.join(root, "private"), flows_max=16)
        out["private_mounted_now"] = r.mounted_now
        out["private_pins"] = sorted(os.listdir(fp.pin_dir))
        fp.close()
    print(json.dumps(out))
""")


def _env() -> dict:
    env = dict(os.environ)
    parts = [PKG_PARENT] + [p for p in sys.path if p.endswith("/work/main") or "forwarder" in p]
    env["PYTHONPATH"] = os.pathsep.join(parts + [env.get("PYTHONPATH", "")])
    return env


def _root_is_shared() -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/":
                return any(x.startswith("shared:") for x in fields[6:fields.index("-")])
    return False


@pytest.fixture
def setup():
    require_kernel()
    nets = Namespaces("n")
    roots = []
    try:
        yield nets, nets.add("x"), roots
    finally:
        nets.cleanup()
        for r in roots:
            pins.unmount_pin_root(r, only_if_empty=False)
            if os.path.isdir(r) and not pins.is_bpffs(r):
                os.rmdir(r)


def test_pins_shared_with_ip_netns_exec_and_setns(setup):
    nets, ns, roots = setup
    root = f"/run/dmsc/bpf-fpt{os.getpid()}-a"
    roots.append(root)
    r = pins.ensure_pin_root(root)
    assert r.mounted_now and pins.is_bpffs(root)
    fp = kernel.FastPath(os.path.join(root, "node1"), flows_max=64)
    try:
        fp.set_generation(4242)
        # 1. ip netns exec: a private mount namespace copied after the mount
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, root,
                            fp.pin_dir, "now"], capture_output=True, text=True, env=_env())
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["mount_ns"] != pins.mount_ns()          # it is another mount namespace
        assert got["root_is_bpffs"] and got["generation"] == 4242
        assert got["sys_fs_bpf_type"] == hex(0x62656572)   # SYSFS_MAGIC: /sys is a fresh sysfs
        assert fp.generation() == 4243                     # and its write reached us
        # 2. setns() only (nsenter --net): same mount namespace, same pins
        p = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", CHILD,
                            root, fp.pin_dir, "now"], capture_output=True, text=True, env=_env())
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["mount_ns"] == pins.mount_ns()
        assert got["generation"] == 4243 and fp.generation() == 4244
    finally:
        fp.close()
    assert not os.path.exists(fp.pin_dir)                  # close() removed its pins and dir


def test_mount_after_the_private_namespace_was_made(setup):
    """A process whose mount namespace predates the mount does not see it (here "/" is
    a private mount: nothing propagates); it falls back to a bpffs of its own."""
    nets, ns, roots = setup
    root = f"/run/dmsc/bpf-fpt{os.getpid()}-b"
    os.makedirs(root, exist_ok=True)
    roots.append(root)
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, root,
                              os.path.join(root, "none"), "wait"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env())
    try:
        import time
        deadline = time.monotonic() + 30
        # wait until the child has entered its mount namespace (ip netns exec execs python)
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{child.pid}/ns/mnt") != pins.mount_ns() and \
                        "python" in Path(f"/proc/{child.pid}/comm").read_text():
                    break
            except OSError:
                pass
            time.sleep(0.05)
        r = pins.ensure_pin_root(root)
        assert r.mounted_now
        out, err = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    got = json.loads(out)
    assert got["root_is_bpffs"] is _root_is_shared()
    if not got["root_is_bpffs"]:
        assert got["private_mounted_now"] is True                 # its own bpffs...
        assert "fp_flows" in got["private_pins"]                   # ...where it could pin
        assert not os.path.exists(os.path.join(root, "private"))   # invisible to us


def test_available_reports_ok():
    require_kernel()
    ok, reason = kernel.available()
    assert ok, reason
    ok, reason = kernel.available(obj_path="/nonexistent/fastpath.bpf.o")
    assert not ok and "no BPF object" in reason and "\n" not in reason
