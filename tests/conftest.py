"""Shared fixtures and the skip rules for tests that need root, namespaces or Mininet.

Tests marked ``netns`` or ``mininet`` are skipped with the reason shown by
``pytest -ra`` when the machine cannot run them; with ``DMSC_NO_SKIP=1`` (set
by .ci/run, which runs as root) they fail instead, so CI never passes
without having exercised the network tests.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from typing import Iterator, Optional

import pytest

from topologies.netns import NetnsNetwork, require_netns
from topologies.records import new_run_dir


@functools.lru_cache(maxsize=None)
def _netns_reason() -> Optional[str]:
    return require_netns()


@functools.lru_cache(maxsize=None)
def _mininet_reason() -> Optional[str]:
    reason = _netns_reason()
    if reason:
        return reason
    try:
        import mininet.net  # noqa: F401
    except ImportError as e:
        return f"Mininet is not importable ({e}); run make setup (Debian package mininet)"
    if shutil.which("mnexec") is None:
        return "mnexec (Debian package mininet) is not installed; run make setup"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("DMSC_NO_SKIP") == "1":
        pytest.fail(f"DMSC_NO_SKIP=1 but this test cannot run here: {reason}")
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("mininet"):
        reason = _mininet_reason()
    elif item.get_closest_marker("netns"):
        reason = _netns_reason()
    else:
        return
    if reason:
        _skip_or_fail(reason)


DATAPLANES = ("python", "ebpf")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `dataplanes` that build forwarders on `netns_net` run once per data
    plane: the Python forwarder alone, and with the kernel fast path (forced, so a
    kernel that cannot load it fails the test instead of quietly running Python)."""
    if metafunc.definition.get_closest_marker("dataplanes") and "netns_net" in metafunc.fixturenames:
        metafunc.parametrize("dataplane", DATAPLANES)


@pytest.fixture
def dataplane() -> str:
    """The data plane forwarders on `netns_net` run unless a test configures one."""
    return "auto"


@pytest.fixture
def netns_net(request: pytest.FixtureRequest, dataplane: str) -> Iterator[NetnsNetwork]:
    """A NetnsNetwork recording into ``runs/test-<testname>-<ts>-<rand>/``, stopped after the test."""
    reason = _netns_reason()
    if reason:
        _skip_or_fail(reason)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:40]
    net = NetnsNetwork(new_run_dir(f"test-{name}"))
    net.dataplane = dataplane
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
def authority(tmp_path):
    """An SPA authority for a test: (Authority, its public key file, its revocation list
    file); a test revokes by writing ``auth.revocation_list()`` to the list again."""
    from forwarder.spa import Authority, public_key_pem
    auth = Authority.generate()
    pub = tmp_path / "authority.pub"
    pub.write_bytes(public_key_pem(auth.public_key))
    crl = tmp_path / "crl.bin"
    crl.write_bytes(auth.revocation_list())
    return auth, pub, crl
