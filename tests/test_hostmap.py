"""The documented host name <-> service prefix mapping (forwarder/hostmap.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from forwarder.dataplane.hostmap import HostMap, host_to_prefix, normalize_host, prefix_to_host
from forwarder.dataplane.names import Name


@pytest.mark.parametrize("host,prefix", [
    ("cart.shop.dmsc", "/shop/cart"),
    ("cart.shop.dmsc:8080", "/shop/cart"),
    ("Cart.SHOP.Dmsc", "/shop/cart"),
    ("cart.shop.dmsc.", "/shop/cart"),
    ("v2.cart.shop.dmsc", "/shop/cart/v2"),
    ("shop.dmsc", "/shop"),
    ("a-b_c.x1.dmsc", "/x1/a-b_c"),
    (".".join("abcdefgh") + ".dmsc", "/h/g/f/e/d/c/b/a"),
])
def test_rule(host, prefix):
    assert host_to_prefix(host) == Name.parse(prefix)


@pytest.mark.parametrize("host,needle", [
    ("cart.shop.com", "must end in .dmsc"),
    ("dmsc", "must end in .dmsc"),
    ("", "no host"),
    ("127.0.0.1:8080", "must end in .dmsc"),
    ("[::1]:8080", "must end in .dmsc"),
    ("cart..shop.dmsc", "not a valid name component"),
    ("ca rt.shop.dmsc", "not a valid name component"),
    ("c%41rt.shop.dmsc", "not a valid name component"),
    ("x" * 64 + ".dmsc", "not a valid name component"),
    (".".join("abcdefghi") + ".dmsc", "at most 8"),
    ("hello._dmsc.dmsc", "reserved"),
])
def test_rejects(host, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        host_to_prefix(host)


def test_prefix_to_host():
    assert prefix_to_host("/shop/cart") == "cart.shop.dmsc"
    assert prefix_to_host(Name.parse("/shop/cart/v2")) == "v2.cart.shop.dmsc"
    for bad in ("/", "/Shop/cart", "/shop/a.b", "/shop/%00"):
        with pytest.raises(ValueError):
            prefix_to_host(bad)


def test_normalize():
    assert normalize_host(" Cart.Shop.DMSC.:80 ") == "cart.shop.dmsc"
    assert normalize_host("[::1]:80") == "[::1]"


def test_overrides_win_and_allow_other_hosts():
    hm = HostMap.from_args(["localhost=/shop/echo", "Cart.Shop.dmsc=/shop/cart/v2"])
    assert hm.lookup("localhost:8080") == Name.parse("/shop/echo")
    assert hm.lookup("cart.shop.dmsc") == Name.parse("/shop/cart/v2")
    assert hm.lookup("pay.shop.dmsc") == Name.parse("/shop/pay")
    hm2 = HostMap({"api.example": "/api"})
    assert hm2.lookup("API.example") == Name.parse("/api")
    with pytest.raises(ValueError, match="must end in"):
        hm2.lookup("other.example")


@pytest.mark.parametrize("arg", ["nohost", "x=", "x=shop", "=/shop", "x=/a//b"])
def test_bad_override(arg):
    with pytest.raises(ValueError):
        HostMap.from_args([arg])


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)


@given(st.lists(_label, min_size=1, max_size=8).filter(lambda ls: ls[0] != "_dmsc"))
def test_round_trip(labels):
    prefix = Name(lab.encode() for lab in labels)
    host = prefix_to_host(prefix)
    assert host.endswith(".dmsc")
    assert host_to_prefix(host) == prefix
    assert host_to_prefix(host.upper() + ":1234") == prefix
